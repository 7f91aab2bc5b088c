"""What a NaN/inf loss does to a run: ``loop.on_nan`` and ``loop.max_nan_skips``.

- ``stop`` (the default): the update step only notes the first non-finite step on the device
  (:class:`~minimind.metrics.StepMetrics`, no host sync); :meth:`NonFinite.check`, at every log
  line and before every save, ends the run with that step's number, so a checkpoint never holds
  NaN weights and the last good one is kept.
- ``skip``: the update step drops a non-finite update (its one per-step host read, opt-in);
  :meth:`NonFinite.after_step` counts the drops and ends the run after ``max_nan_skips`` in a row.

Kept out of the Trainer so that the loop reads as the run, not as its failure policy.
"""

from __future__ import annotations

import logging

from minimind.errors import TrainingError

log = logging.getLogger("minimind")


class NonFinite:
    def __init__(self, max_skips: int, *, metrics, checkpoints, dist, progress):
        self.max_skips = max_skips
        self.metrics, self.checkpoints, self.dist, self.progress = metrics, checkpoints, dist, progress
        self.run = 0  # updates skipped in a row

    def after_step(self, skipped: bool) -> None:
        """on_nan=skip: count a dropped update; too many in a row end the run."""
        if not skipped:
            self.run = 0
            return
        self.run += 1
        self.progress.nan_skips += 1
        step = self.progress.step + 1
        log.warning("step %d: non-finite loss/gradient, update skipped (%d in a row, limit %d)",
                    step, self.run, self.max_skips)
        if self.run >= self.max_skips:
            raise TrainingError(
                f"loss was NaN/inf for {self.run} steps in a row (loop.max_nan_skips="
                f"{self.max_skips}) at step {step}; the last good checkpoint is "
                f"kept. Try a lower optim.lr, optim.grad_clip=1.0, or precision=bf16")

    def check(self) -> None:
        """on_nan=stop: a NaN/inf step since the last check ends the run before anything is saved."""
        step = self.metrics.first_bad_step(self.dist)
        if step >= 0:
            last = self.checkpoints.list()
            kept = f"the last good checkpoint is {last[0]}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"loss became NaN/inf at step {step} (loop.on_nan=stop); {kept}. Try a lower "
                f"optim.lr, gradient clipping (optim.grad_clip=1.0), precision=bf16 instead of fp16, "
                f"or loop.on_nan=skip to skip such updates")
