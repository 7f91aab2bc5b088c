"""Where metrics go: the console line, a progress bar, metrics.jsonl, events.jsonl, wandb.

Only rank 0 writes. Nothing here touches a tensor: the loop hands over plain numbers, read
from the device once per log interval.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger("minimind")


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# the stage objectives' metrics shown on the console line (all of them go to metrics.jsonl / wandb)
OBJECTIVE_METRICS = ("reward_acc", "margin", "ce", "kl")


def console_line(m: Dict[str, Any]) -> str:
    """MiniMind's ``Epoch:[e/E](step/iters) loss lr epoch_Time`` plus the update-step numbers."""
    scale = "-" if m.get("scale") is None else f"{m['scale']:.0f}"
    parts = [
        f"Epoch:[{m['epoch']}/{m['epochs']}]({m['step']}/{m['total_steps']})",
        f"loss:{m['loss']:.4f}",
    ]
    if m.get("aux_loss"):
        parts.append(f"aux:{m['aux_loss']:.4f}")
    parts += [f"{k}:{m[k]:.4f}" for k in OBJECTIVE_METRICS if k in m]
    parts += [
        f"lr:{m['lr']:.3e}",
        f"grad_norm:{m['grad_norm']:.3f}",
        f"scale:{scale}",
        f"skipped:{m['skipped']}",
        f"tok/s:{m['tokens_per_s']:.0f}",
        f"elapsed:{_fmt_duration(m['elapsed_s'])}",
        f"ETA:{_fmt_duration(m['eta_s'])}",
    ]
    return " ".join(parts)


class Tracker:
    """The ``logger`` node's target."""

    def __init__(self, console: bool = True, metrics_file: Optional[str] = "metrics.jsonl",
                 wandb: Optional[Dict[str, Any]] = None, *, run_dir: str = ".",
                 is_main: bool = True, config: Optional[dict] = None, group: Optional[str] = None):
        self.console = console
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.metrics_path = self.run_dir / metrics_file if metrics_file else None
        self.events_path = self.run_dir / "events.jsonl"
        self.wandb_cfg = {k: str(v) if k == "mode" else v for k, v in wandb.items()} if wandb is not None else None
        if self.wandb_cfg is not None and not self.wandb_cfg.get("group"):
            self.wandb_cfg["group"] = group  # the jobs of one sweep, grouped
        self.config = config or {}
        self._run = None
        self._bar = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, total_steps: int, initial_step: int = 0, wandb_id: Optional[str] = None,
              progress: Optional[bool] = None) -> None:
        """Open the progress bar (``progress``: None = only on a terminal) and the wandb run."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        show = progress if progress is not None else sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, leave=False)
        if self.wandb_cfg is not None and self.wandb_cfg.get("mode") != "disabled":
            self._start_wandb(wandb_id)

    def _start_wandb(self, wandb_id: Optional[str]) -> None:
        import wandb

        c = self.wandb_cfg
        self._run = wandb.init(
            project=c.get("project"), entity=c.get("entity"),
            name=c.get("name") or self.run_dir.name, group=c.get("group"),
            tags=list(c.get("tags") or []), mode=c.get("mode", "offline"),
            dir=str(self.run_dir), config=self.config,
            id=wandb_id, resume="allow" if wandb_id else None)

    @property
    def wandb_id(self) -> Optional[str]:
        return self._run.id if self._run is not None else None

    def close(self, failed: bool = False) -> None:
        """Close the bar and finish the wandb run (marked failed when ``failed``); idempotent, so
        every exit path of a job can call it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None

    # ------------------------------------------------------------------ per step / interval

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def log(self, metrics: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self.console:
            line = console_line(metrics)
            if self._bar is not None:
                self._bar.clear()
            log.info(line)
            if self._bar is not None:
                self._bar.refresh()
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self._run is not None:
            self._run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                          step=metrics["step"])

    def event(self, name: str, **fields: Any) -> None:
        """A line in events.jsonl: start, resume, checkpoint, interrupted, completed, failed."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.events_path, "a") as f:
            f.write(json.dumps({"event": name, "time": time.time(), **fields}) + "\n")

    def summary(self, data: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        from minimind.files import atomic_write_text

        atomic_write_text(self.run_dir / "summary.json", json.dumps(data, indent=2) + "\n")
        if self._run is not None:
            for k, v in data.items():
                if isinstance(v, (int, float, str)):
                    self._run.summary[k] = v
