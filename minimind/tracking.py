"""Where metrics go: the console line, a progress bar, metrics.jsonl, events.jsonl, wandb.

Evaluations (:mod:`minimind.evaluate`) go to the same places as rows of their own: an ``Eval:``
console line, a ``{"kind": "eval", ...}`` row in metrics.jsonl (training rows have no ``kind``),
``val_*`` values in wandb, and their generated answers in samples.jsonl and a wandb table.
Only rank 0 writes. Nothing here touches a tensor: the loop hands over plain numbers, read
from the device once per log interval. The terminal's pieces (prefix, bar, notes) are in
:mod:`minimind.console`, the wandb run in :mod:`minimind.wandb_run`; metrics.jsonl gets every
field of every log line, wandb only the ones that are metrics.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from minimind.console import ProgressBar, fmt_duration

log = logging.getLogger("minimind")
_fmt_duration = fmt_duration  # the old name


def _rate(v: float) -> str:
    return f"{v:.0f}" if v < 100_000 else f"{v / 1000:.0f}k"


def _norm(v: float) -> str:
    """Five characters below 1000: 1.333, 12.35, 123.5."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{3 if abs(v) < 10 else 2 if abs(v) < 100 else 1 if abs(v) < 1000 else 0}f}"


# the stage objectives' metrics shown on the console line (all of them go to metrics.jsonl / wandb)
OBJECTIVE_METRICS = ("reward_acc", "margin", "ce", "kl")


def console_line(m: Dict[str, Any]) -> str:
    """MiniMind's ``Epoch:[e/E](step/iters) loss lr`` plus the update-step numbers.

    It must fit 120 columns with the console prefix (``[12:00:00] ``, 11): the demo's line is
    83 characters, a 5-digit-step fp16 line with skipped steps 109. So the loss scale shows only when fp16
    has one, the skipped steps only once there are some (summary.json and the report have both),
    and the elapsed time is in metrics.jsonl, not here. ``tok/s:IN/LOSS`` is input tokens and
    loss units (supervised tokens; pairs for DPO) per second.
    """
    parts = [
        f"Epoch:[{m['epoch']}/{m['epochs']}]({m['step']}/{m['total_steps']})",
        f"loss:{m['loss']:.4f}",
    ]
    if m.get("aux_loss"):
        parts.append(f"aux:{m['aux_loss']:.4f}")
    parts += [f"{k}:{_norm(m[k])}" for k in OBJECTIVE_METRICS if k in m]
    parts += [f"lr:{m['lr']:.2e}", f"grad_norm:{_norm(m['grad_norm'])}"]
    if m.get("scale") is not None:
        parts.append(f"scale:{m['scale']:.0f}")
    if m.get("skipped"):
        parts.append(f"skipped:{m['skipped']}")
    loss_rate = next((v for k, v in m.items() if k.startswith("loss_") and k.endswith("s_per_s")), None)
    rate = _rate(m["tokens_per_s"]) + (f"/{_rate(loss_rate)}" if loss_rate is not None else "")
    parts += [f"tok/s:{rate}", f"ETA:{fmt_duration(m['eta_s'])}"]  # input / loss tokens (or pairs) per s
    return " ".join(parts)


def eval_line(m: Dict[str, Any]) -> str:
    """``Eval:(step/total) val_loss ppl`` and the objective's held-out metrics."""
    parts = [f"Eval:({m['step']}/{m['total_steps']})", f"val_loss:{m['val_loss']:.4f}"]
    if m.get("val_ppl") is not None:
        parts.append(f"ppl:{m['val_ppl']:.3f}")
    skip = {"val_loss", "val_ppl", "val_samples", "val_units", "best_val_loss", "best_val_step"}
    parts += [f"{k}:{v:.4f}" for k, v in m.items() if k.startswith("val_") and k not in skip]
    parts += [f"best:{m['best_val_loss']:.4f}@{m['best_val_step']}", f"samples:{m['val_samples']}",
              f"time:{m['eval_s']:.1f}s"]
    return " ".join(parts)


class Tracker:
    """The ``logger`` node's target."""

    def __init__(self, console: bool = True, metrics_file: Optional[str] = "metrics.jsonl",
                 wandb: Optional[Dict[str, Any]] = None, *, run_dir: str = ".",
                 is_main: bool = True, config: Optional[dict] = None, group: Optional[str] = None,
                 overrides: Optional[List[str]] = None):
        self.console = console
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.metrics_path = self.run_dir / metrics_file if metrics_file else None
        self.events_path = self.run_dir / "events.jsonl"
        self.wandb_cfg = {k: str(v) if k == "mode" else v for k, v in wandb.items()} if wandb is not None else None
        if self.wandb_cfg is not None and not self.wandb_cfg.get("group"):
            self.wandb_cfg["group"] = group  # the jobs of one sweep, grouped
        self.config = config or {}
        self.overrides: List[str] = list(overrides or [])
        self._run = None  # a minimind.wandb_run.WandbRun
        self._bar: Optional[ProgressBar] = None
        self._samples: List[list] = []  # every evaluation's answers, for the wandb table

    # ------------------------------------------------------------------ lifecycle

    def start(self, total_steps: int, initial_step: int = 0, wandb_id: Optional[str] = None,
              progress: Optional[bool] = None) -> None:
        """Open the progress bar (``progress``: None = only on a terminal) and the wandb run."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        show = progress if progress is not None else sys.stderr.isatty()
        if show:
            self._bar = ProgressBar(total_steps, initial_step)
        if self.wandb_cfg is not None and self.wandb_cfg.get("mode") != "disabled":
            self._start_wandb(wandb_id)

    def _start_wandb(self, wandb_id: Optional[str]) -> None:
        from minimind.wandb_run import WandbRun

        self._run = WandbRun(self.wandb_cfg, run_dir=self.run_dir, config=self.config,
                             overrides=self.overrides, wandb_id=wandb_id)

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
            self._run.finish(failed=failed)
            self._run = None

    # ------------------------------------------------------------------ per step / interval

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(steps)

    def log(self, metrics: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self._bar is not None:  # first: the line's tqdm.write redraws the bar with its loss and ETA
            self._bar.logged(metrics.get("loss"), metrics.get("eta_s"), refresh=not self.console)
        if self.console:
            log.info(console_line(metrics))  # through tqdm.write while the bar is open
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self._run is not None:
            self._run.log(metrics)  # the metrics; the counters stay in metrics.jsonl

    def log_eval(self, row: Dict[str, Any], samples: List[Dict[str, Any]]) -> None:
        """One evaluation: its row (metrics.jsonl, wandb, the console) and its generated answers
        (samples.jsonl, a wandb table of all of them so far; the console shows the first)."""
        if not self.is_main:
            return
        if self.console:
            if self._bar is not None:
                self._bar.clear()
            log.info(eval_line(row))
            if samples:
                log.info("  sample: %r -> %r", samples[0]["prompt"], samples[0]["answer"])
            if self._bar is not None:
                self._bar.refresh()
        for path, rows in ((self.metrics_path, [row]), (self.run_dir / "samples.jsonl", samples)):
            if path is not None and rows:
                with open(path, "a") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if self._run is not None:
            values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            if samples:
                import wandb

                self._samples += [[s["step"], s["prompt"], s["answer"]] for s in samples]
                values["samples"] = wandb.Table(columns=["step", "prompt", "answer"], data=list(self._samples))
            self._run.log(values, step=row["step"])

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
            self._run.summary(data)
