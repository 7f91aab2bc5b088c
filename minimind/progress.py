"""Where a run is: one dataclass, saved in every checkpoint and restored on resume.

Everything here is global (the same on every rank): the epoch, how many samples of it are
done (all ranks together, so a run can resume on another world size at the same sample), the
optimizer steps done, the input positions processed, the best and last logged loss, the
wandb run id so a resumed run continues the same wandb run, and the samples trained on and
time spent over every attempt (checkpoints from before these fields load with zeros). torchtune keeps the same facts in
its ``TrainingProgress``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

# the checkpoint's keys for these fields (the format predates this class: old files still load)
_KEYS = {"step": "global_step", "tokens": "tokens_seen"}


@dataclass
class Progress:
    epoch: int = 0                     # current epoch, 0-based
    samples_in_epoch: int = 0          # samples of this epoch trained on, all ranks
    step: int = 0                      # optimizer steps done
    tokens: int = 0                    # input positions processed, all ranks
    nan_skips: int = 0                 # updates skipped for a NaN/inf loss (loop.on_nan=skip)
    best_loss: Optional[float] = None  # lowest logged window loss
    final_loss: Optional[float] = None  # the last logged window loss
    wandb_id: Optional[str] = None
    samples: int = 0                   # samples trained on since the run began, all ranks
    elapsed_s: float = 0.0             # training time since the run began, over every resume

    def state_dict(self) -> Dict[str, Any]:
        return {_KEYS.get(k, k): v for k, v in asdict(self).items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for f in fields(self):
            key = _KEYS.get(f.name, f.name)
            if key in state:
                value = state[key]
                setattr(self, f.name, int(value) if isinstance(f.default, int) and value is not None else value)

    def record_loss(self, loss: float) -> None:
        self.final_loss = loss
        self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)


class RunClock:
    """Training time over every attempt of a run: ``progress.elapsed_s`` (saved in checkpoints)
    goes on from where the last attempt stopped, so metrics.jsonl and wandb never restart at 0."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.start()

    def start(self) -> None:
        self.started, self.before = time.time(), self.progress.elapsed_s

    def read(self, now: Optional[float] = None) -> float:
        now = time.time() if now is None else now
        self.progress.elapsed_s = self.before + (now - self.started)
        return self.progress.elapsed_s
