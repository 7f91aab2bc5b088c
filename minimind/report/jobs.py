"""One job's row: its status and numbers, from the files it wrote and what submitit kept.

A job writes ``events.jsonl`` (one event per start / resume / checkpoint / end), ``metrics.jsonl``
(one line per log interval, and a ``{"kind": "eval", ...}`` line per evaluation of held-out data)
and ``summary.json`` (at the end of each attempt). After requeues they
hold several attempts, and a killed attempt leaves no terminal event: the events decide the
state, a summary newer than the last start tells how that attempt ended, and submitit's result
or log fills in a job that never got as far as writing.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from minimind.report.reading import finite_numbers, last_line, load_yaml, number, read_json, read_jsonl, split_override
from minimind.report.submitit_files import SubmititJob
from minimind.report.update_step import job_grad_clip, tokens_at, update_stats

TERMINAL = ("completed", "failed", "interrupted")
# short names for the compact overrides column; any other key shows its last component
_ALIASES = {"accumulation_steps": "accum"}


def _events_status(events: List[Dict[str, Any]]) -> Tuple[Optional[str], int, Optional[str], float]:
    """(state, requeues, error, time of the last start) from events.jsonl. Every attempt begins
    with "start", or ends with a terminal event before reaching it (a restart that failed while
    loading its checkpoint)."""
    state: Optional[str] = None
    attempts = 0
    ended = True  # no attempt open
    error = None
    started_at = -math.inf
    for e in events:
        name = e.get("event")
        if name == "start":
            attempts += 1
            state, ended = "running", False
            started_at = number(e.get("time")) or started_at
        elif name in TERMINAL:
            if ended:
                attempts += 1
            state, ended = name, True
            if name == "failed":
                error = last_line(e.get("error") or "") or error
    return state, max(attempts - 1, 0), error, started_at


def job_row(num: int, job_dir: Optional[Path], overrides: List[str], swept: List[str],
            sub: Optional[SubmititJob]) -> Dict[str, Any]:
    """Job ``num``'s row (the keys :func:`minimind.report.collect` lists) from what it wrote in
    ``job_dir`` (either may be missing) and what submitit kept about it (``sub``)."""
    events = metrics = evals = []
    summary = None
    if job_dir is not None:
        events = read_jsonl(job_dir / "events.jsonl")
        metrics = read_jsonl(job_dir / "metrics.jsonl")
        evals = [m for m in metrics if m.get("kind") == "eval"]
        metrics = [m for m in metrics if "kind" not in m]  # the training rows
        summary = read_json(job_dir / "summary.json")
        on_disk = job_dir / ".hydra" / "overrides.yaml"
        if on_disk.is_file():
            try:
                data = load_yaml(on_disk)
                if isinstance(data, list):
                    overrides = [str(x) for x in data]
            except Exception:  # noqa: BLE001 - keep the expected overrides
                pass

    state, requeues, error, started_at = _events_status(events)
    if summary and summary.get("status") in TERMINAL and state in (None, "running"):
        # no terminal event after the last start: a summary written since then still tells how
        # the attempt ended (one left by an earlier attempt is older than that start)
        try:
            newer = (job_dir / "summary.json").stat().st_mtime >= started_at
        except OSError:
            newer = False
        if state is None or newer:
            state = summary["status"]
    if state == "failed" and not error and summary:
        error = last_line(summary.get("error") or "")
    if state in (None, "running") and sub is not None:
        if sub.outcome == "failed":
            state, error = "failed", sub.error
        elif sub.outcome == "completed":  # the process returned: it is not running any more
            state = "completed"
        elif state is None and sub.stderr_error:
            state, error = "failed", sub.stderr_error
    if state is None:
        started = sub is not None and sub.started
        if job_dir is not None and (job_dir / ".hydra").is_dir():
            started = True
        state = "running" if started else "pending"
    if state == "failed" and not error:
        error = (sub.error or sub.stderr_error) if sub is not None else None

    losses = finite_numbers(m.get("loss") for m in metrics)
    grad_norms = finite_numbers(m.get("grad_norm") for m in metrics)
    last = metrics[-1] if metrics else {}
    # the summary describes the attempt that ended: trust it when the events agree
    s = summary if summary and summary.get("status") == state and state != "failed" else {}

    def pick(summary_key: str, metrics_key: str) -> Optional[float]:
        v = number(s.get(summary_key))
        return v if v is not None else number(last.get(metrics_key))

    final_loss = number(last.get("loss")) if metrics else number((summary or {}).get("final_loss"))
    val_curve = _curve(evals, "val_loss")
    val_loss = val_curve[-1][1] if val_curve else number((summary or {}).get("val_loss"))
    best_val = min(val_curve, key=lambda p: p[1]) if val_curve else None
    best_loss = min(losses) if losses else number((summary or {}).get("best_loss"))
    steps = pick("optimizer_steps", "step")
    skipped = pick("skipped_steps", "skipped")

    update = update_stats(metrics, job_grad_clip(job_dir, summary))
    if update["tokens"] is None:
        update["tokens"] = int(number((summary or {}).get("tokens")) or 0) or None
    params = dict(split_override(o) for o in overrides)
    labels = label_keys(swept)
    row: Dict[str, Any] = {
        "job": num,
        "overrides": " ".join(f"{labels[k]}={short_value(params[k])}" for k in swept if k in params),
        "status": state + (f" (requeued {requeues}x)" if requeues else ""),
        "state": state,
        "requeues": requeues,
        "final_loss": final_loss,
        "best_loss": best_loss,
        "val_loss": val_loss,
        "best_val_loss": best_val[1] if best_val else number((summary or {}).get("best_val_loss")),
        "best_val_step": int(best_val[0]) if best_val else number((summary or {}).get("best_val_step")),
        "optimizer_steps": int(steps) if steps is not None else None,
        "tokens_per_s": pick("tokens_per_s", "tokens_per_s"),
        "skipped_steps": int(skipped) if skipped is not None else None,
        "grad_norm_median": statistics.median(grad_norms) if grad_norms else None,
        "grad_norm_max": max(grad_norms) if grad_norms else None,
        "wall_time_s": pick("wall_time_s", "elapsed_s"),
        "error": error if state == "failed" else None,
        "all_overrides": list(overrides),
        "params": params,
        "swept": {k: params.get(k) for k in swept},
        "job_dir": str(job_dir) if job_dir is not None else None,
        "submitit_job_id": sub.job_id if sub is not None else None,
        "curve": _curve(metrics),
        "val_curve": val_curve,
    }
    # the update step (clipping, loss scale, tokens) and the curves against tokens seen
    row.update(update)
    row["val_token_curve"] = tokens_at(metrics, val_curve)
    return row


def _curve(metrics: List[Dict[str, Any]], key: str = "loss") -> List[Tuple[float, float]]:
    """(step, value of ``key``), one point per step: after a requeue the rerun steps replace the
    old ones."""
    points: Dict[float, float] = {}
    for m in metrics:
        step, loss = number(m.get("step")), number(m.get(key))
        if step is not None and loss is not None:
            points[step] = loss
    return sorted(points.items())


def short_value(value: str) -> str:
    """A value as the compact column shows it: a float an Optuna trial drew (0.10255552094216984)
    to 4 significant digits (0.1026); anything else as written."""
    if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", value):
        return f"{float(value):.4g}"
    return value


def label_keys(swept: Sequence[str]) -> Dict[str, str]:
    """Short names for the swept keys (``optim.grad_clip`` -> ``grad_clip``) unless they clash."""
    short = {k: _ALIASES.get(k.split(".")[-1].split("@")[0], k.split(".")[-1].split("@")[0]) for k in swept}
    counts: Dict[str, int] = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (v if counts[v] == 1 else k) for k, v in short.items()}
