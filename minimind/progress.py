"""Where a run is: one dataclass, saved in every checkpoint and restored on resume.

Everything here is global (the same on every rank): the epoch, how many samples of it are
done (all ranks together, so a run can resume on another world size at the same sample), the
optimizer steps done, the input positions processed, the best and last logged loss, and the
wandb run id so a resumed run continues the same wandb run. torchtune keeps the same facts in
its ``TrainingProgress``.
"""

from __future__ import annotations

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
