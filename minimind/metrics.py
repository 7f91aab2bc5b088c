"""The update step's numbers, kept on the device and read on the host once per log interval.

Reading a CUDA tensor on the host (``.item()``, ``float()``) waits for every queued kernel, so
the step only folds its results into device-side accumulators (a handful of tiny ops per step)
and :meth:`StepMetrics.read` fetches them all in one transfer, with one all-reduce under DDP,
at log time. Host integers (the window's supervised tokens, the input positions) are counted
where they are known, on the host, and summed over ranks at the same moments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


@dataclass
class StepResult:
    """What one optimizer step produced. Tensors stay on the device; ints are host values."""

    loss_sum: torch.Tensor                 # the window's summed loss (over its units, this rank)
    count: int                             # the window's units on this rank (tokens, pairs)
    grad_norm: torch.Tensor                # the global gradient norm before clipping
    finite: torch.Tensor                   # bool: the gradient norm is finite
    tokens: int                            # input positions fed to the model, this rank
    lr: float
    aux: Any = 0.0                         # mean per micro-batch of the MoE balance loss (tensor or 0)
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)  # objective metrics, summed over units
    nan_skipped: bool = False              # loop.on_nan=skip dropped this update


class StepMetrics:
    """Device-side accumulators of the step results between two log lines (see the module doc).

    ``count_overflows``: fp16 with a GradScaler, where a non-finite gradient means the scaler
    skipped the step (counted). ``watch_nan``: ``loop.on_nan=stop``, which remembers the first
    step whose gradient was not finite, for :meth:`first_bad_step` to report at the next check.
    """

    def __init__(self, device: torch.device, *, count_overflows: bool, watch_nan: bool):
        self.device = device
        self.count_overflows, self.watch_nan = count_overflows, watch_nan
        self.last: Optional[StepResult] = None
        self.interval_loss = torch.zeros((), device=device, dtype=torch.float64)
        self.interval_count = 0                                              # host
        self.interval_extras: Dict[str, torch.Tensor] = {}
        self.skipped = torch.zeros((), device=device, dtype=torch.int64)      # fp16 overflow steps
        self._first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.pending_tokens = 0                                              # this rank, since the last sync

    def record(self, result: StepResult, step_number: int) -> None:
        """Fold one step in: references and host ints, few device ops, no sync."""
        self.last = result
        self.interval_loss += result.loss_sum
        self.interval_count += result.count
        for name, value in result.extras.items():
            total = self.interval_extras.get(name)
            self.interval_extras[name] = value.double() if total is None else total + value
        if self.count_overflows:
            self.skipped += result.finite.logical_not()
        elif self.watch_nan:
            # masked_fill_ with a Python scalar: no host->device copy (torch.tensor(x, device=cuda) syncs)
            self._first_bad.masked_fill_((self._first_bad < 0) & result.finite.logical_not(), step_number)
        self.pending_tokens += result.tokens

    def first_bad_step(self, dist) -> int:
        """The first step (1-based) with a non-finite gradient since the start, or -1 (a host read)."""
        if not self.watch_nan:
            return -1
        first = self._first_bad.clone()
        if dist.distributed:  # the same on every rank (gradients are all-reduced); agree anyway
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)
        return int(first.item())

    def sync_tokens(self, dist) -> int:
        """Every rank's input positions since the last sync, summed (a collective under DDP)."""
        pending, self.pending_tokens = self.pending_tokens, 0
        if dist.distributed:
            pending = int(dist.all_reduce_sum(torch.tensor(pending, dtype=torch.int64,
                                                            device=self.device)).item())
        return pending

    def read(self, dist) -> Dict[str, Any]:
        """The interval's numbers on the host, reduced over ranks; resets the interval.

        ``loss``: the last window's true mean (its summed loss over its units, all ranks);
        ``loss_avg`` and every objective metric: the mean over the interval's units.
        ``units``: how many units (supervised tokens, pairs) the interval's steps had.
        """
        last = self.last
        names: List[str] = sorted(self.interval_extras)
        values = [torch.as_tensor(last.loss_sum, dtype=torch.float64, device=self.device),
                  torch.as_tensor(last.aux, dtype=torch.float64, device=self.device),
                  self.interval_loss] + [self.interval_extras[n] for n in names]
        counts = torch.tensor([last.count, self.interval_count], dtype=torch.float64, device=self.device)
        # note: the one host read of the interval (all values in one transfer)
        got = dist.all_reduce_sum(torch.cat([torch.stack(values), counts])).tolist()
        last_n, interval_n = got[-2], got[-1]
        out = {
            "loss": got[0] / max(last_n, 1.0),
            "aux_loss": got[1] / dist.world_size,
            "loss_avg": got[2] / max(interval_n, 1.0),
            "grad_norm": float(last.grad_norm.item()),
            "skipped": int(self.skipped.item()),
            "units": int(interval_n),  # the interval's units (loss tokens, pairs), all ranks
        }
        out.update({n: got[3 + i] / max(interval_n, 1.0) for i, n in enumerate(names)})
        self.interval_loss.zero_()
        self.interval_count = 0
        self.interval_extras = {}
        return out

    # checkpoints: the interval so far and the overflow count continue across a resume
    def state_dict(self) -> Dict[str, Any]:
        return {"interval": [float(self.interval_loss), self.interval_count],
                "interval_extras": {n: float(v) for n, v in self.interval_extras.items()},
                "skipped": int(self.skipped.item())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.skipped.fill_(int(state.get("skipped", 0)))
        interval = state.get("interval") or [0.0, 0]
        self.interval_loss.fill_(float(interval[0]))
        self.interval_count = int(interval[1])
        self.interval_extras = {n: torch.tensor(v, dtype=torch.float64, device=self.device)
                                for n, v in (state.get("interval_extras") or {}).items()}
