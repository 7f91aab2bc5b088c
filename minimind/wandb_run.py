"""The wandb side of the tracker: a run named for what it tries, charts that are metrics only.

* name: ``logger.wandb.name``, else the top-level ``name``, else the overrides that make this run
  what it is (``grad_clip=0.5 accumulation_steps=4``: a sweep's jobs are told apart by them),
  else the run folder (``2026-11-28/06-22-21``); ``notes`` goes to wandb's notes; a sweep's jobs
  share its folder as their group.
* charts: the numbers of each log line except the counters (step is the x axis; epoch, total
  steps, ETA and the position in the epoch are in metrics.jsonl, not charts).
* config and summary: the resolved config at init, the summary's scalars at the end. An
  offline run also gets them as files (``files/config.yaml``, ``files/wandb-summary.json``,
  the files an online run has), so the folder says what ran before it is synced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

# fields of a metrics line that count or place, not measure: kept out of the charts
COUNTERS = frozenset({"step", "total_steps", "epoch", "epochs", "eta_s", "samples_in_epoch"})
MAX_NAME = 128


def chart_values(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: v for k, v in metrics.items()
            if k not in COUNTERS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def overrides_label(overrides: Iterable[str]) -> str:
    """``optim.grad_clip=0.5 data.path=/d/x.jsonl`` -> ``grad_clip=0.5 path=x.jsonl``."""
    parts = []
    for o in overrides:
        key, sep, value = str(o).lstrip("+~").partition("=")
        if not sep or key.startswith("hydra.") or key.startswith("hydra/") or key in ("name", "notes"):
            continue
        leaf = key.split(".")[-1]
        if "/" in value:
            value = os.path.basename(value.rstrip("/")) or value
        parts.append(f"{leaf}={value}")
    return " ".join(parts)[:MAX_NAME]


def run_name(explicit: Optional[str], name: Optional[str], overrides: Iterable[str], run_dir: Path) -> str:
    for candidate in (explicit, name, overrides_label(overrides)):
        if candidate:
            return str(candidate)[:MAX_NAME]
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name


class WandbRun:
    """One wandb run (resumed when the checkpoint carries its id)."""

    def __init__(self, settings: Dict[str, Any], *, run_dir: Path, config: Dict[str, Any],
                 overrides: Iterable[str], wandb_id: Optional[str]):
        import wandb

        c = settings
        self.mode = str(c.get("mode", "offline"))
        self.run = wandb.init(
            project=c.get("project"), entity=c.get("entity"),
            name=run_name(c.get("name"), config.get("name"), overrides, run_dir),
            notes=config.get("notes"), group=c.get("group"), tags=list(c.get("tags") or []),
            mode=self.mode, dir=str(run_dir), config=config,
            id=wandb_id, resume="allow" if wandb_id else None)
        if self.mode == "offline":
            self._write("config.yaml", _wandb_config_yaml(config))

    @property
    def id(self) -> str:
        return self.run.id

    def _write(self, name: str, text: str) -> None:
        from minimind.files import atomic_write_text

        try:
            atomic_write_text(Path(self.run.dir) / name, text)
        except OSError:
            pass  # a courtesy copy; the run's own log holds the same data

    def log(self, metrics: Dict[str, Any]) -> None:
        self.run.log(chart_values(metrics), step=int(metrics["step"]))

    def summary(self, data: Dict[str, Any]) -> None:
        kept = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != "traceback"}
        for k, v in kept.items():
            self.run.summary[k] = v
        if self.mode == "offline":
            self._write("wandb-summary.json", json.dumps(kept, indent=2) + "\n")

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _wandb_config_yaml(config: Dict[str, Any]) -> str:
    """The resolved config in the layout of wandb's own config.yaml (``key: {value: ...}``)."""
    import yaml

    return yaml.safe_dump({k: {"value": v} for k, v in config.items()}, sort_keys=False)
