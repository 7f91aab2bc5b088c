"""What the update step did in one job: clipping, the fp16 loss scale, skipped steps, tokens.

Read from the job's training rows of ``metrics.jsonl`` (rows without ``kind``: one per log
interval, ``grad_norm`` is the global norm of the interval's last step BEFORE clipping, ``scale``
the GradScaler's scale or null, ``skipped`` the overflow / NaN skips so far, ``tokens`` the input
tokens seen so far) and the job's ``grad_clip`` (its ``.hydra/config.yaml``, else its
``summary.json``). Curves are against tokens, not steps: with accumulation a step holds more
tokens, so steps would compare unequal amounts of data.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from minimind.report.reading import finite_numbers, load_yaml, number

_MISSING = object()


def job_grad_clip(job_dir: Optional[Path], summary: Optional[Dict[str, Any]]) -> Optional[float]:
    """The job's clip threshold; None when clipping is off (null or 0) or nothing says."""
    value: Any = _MISSING
    if job_dir is not None and (job_dir / ".hydra" / "config.yaml").is_file():
        try:
            optim = (load_yaml(job_dir / ".hydra" / "config.yaml") or {}).get("optim") or {}
            if isinstance(optim, dict) and "grad_clip" in optim:
                value = optim["grad_clip"]
        except Exception:  # noqa: BLE001 - fall back to the summary
            pass
    if value is _MISSING and summary and "grad_clip" in summary:
        value = summary["grad_clip"]
    clip = number(None if value is _MISSING else value)
    return clip if clip is not None and clip > 0 else None


def by_step(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One training row per step, in step order: after a requeue the rerun steps replace the old."""
    out: Dict[float, Dict[str, Any]] = {}
    for m in rows:
        step = number(m.get("step"))
        if step is not None:
            out[step] = m
    return [out[s] for s in sorted(out)]


def update_stats(rows: Sequence[Dict[str, Any]], grad_clip: Optional[float]) -> Dict[str, Any]:
    """The per-job numbers (keys below; None when unknown) from the training rows."""
    rows = by_step(rows)
    # a non-finite norm is a skipped step (counted in skipped_steps), not a clipped one
    norms = finite_numbers(m.get("grad_norm") for m in rows)
    clipped = sum(1 for n in norms if grad_clip is not None and n > grad_clip)
    scales = [s for s in (number(m.get("scale")) for m in rows) if s is not None]
    tokens = [t for t in (number(m.get("tokens")) for m in rows) if t is not None]
    return {
        "grad_clip": grad_clip,
        "logged_steps": len(norms),  # steps with a finite logged grad norm
        "clipped_steps": clipped if grad_clip is not None else None,
        "clip_share": clipped / len(norms) if grad_clip is not None and norms else None,
        "scale_first": scales[0] if scales else None,
        "scale_last": scales[-1] if scales else None,
        "scale_min": min(scales) if scales else None,
        "tokens": int(tokens[-1]) if tokens else None,
        "token_curve": _points(rows, "loss"),
        "grad_curve": _points(rows, "grad_norm"),
    }


def _points(rows: Sequence[Dict[str, Any]], key: str) -> List[Tuple[float, float]]:
    out = []
    for m in rows:
        t, v = number(m.get("tokens")), number(m.get(key))
        if t is not None and v is not None:
            out.append((t, v))
    return out


def tokens_at(rows: Sequence[Dict[str, Any]], steps: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """(step, value) points (the val curve: eval rows carry no tokens) -> (tokens, value), the
    tokens interpolated linearly between the training rows' (step, tokens); points outside the
    logged steps are dropped rather than guessed."""
    known = [(number(m.get("step")), number(m.get("tokens"))) for m in by_step(rows)]
    known = [(s, t) for s, t in known if s is not None and t is not None]
    if not known:
        return []
    xs = [s for s, _ in known]
    out = []
    for step, value in steps:
        i = bisect.bisect_left(xs, step)
        if i < len(xs) and xs[i] == step:
            out.append((known[i][1], value))
        elif 0 < i < len(xs):
            (s0, t0), (s1, t1) = known[i - 1], known[i]
            out.append((t0 + (t1 - t0) * (step - s0) / (s1 - s0), value))
    return out


def describe(row: Dict[str, Any]) -> str:
    """A few sentences, computed from the row's numbers, on what the update step did."""
    parts = []
    accum = _param(row, "accumulation_steps")
    steps, tokens = row.get("optimizer_steps"), row.get("tokens")
    if steps and tokens:
        per = f" ({tokens / steps:,.0f} tokens per optimizer step" + (f", accumulation {accum}" if accum else "") + ")"
        parts.append(f"{steps} optimizer steps saw {tokens:,} tokens{per}.")
    clip, share = row.get("grad_clip"), row.get("clip_share")
    if clip is None:
        parts.append("Clipping was off (grad_clip null).")
    elif share is None:
        parts.append(f"grad_clip={clip:g}, but no gradient norm was logged.")
    else:
        n, k = row["logged_steps"], row["clipped_steps"]
        verdict = ("clipping shaped nearly every update" if share >= 0.9 else
                   "clipping was active on part of the run" if share > 0 else "clipping never engaged")
        med = row.get("grad_norm_median")
        medtxt = f", median pre-clip norm {med:.3g}" if med is not None else ""
        parts.append(f"The pre-clip gradient norm exceeded grad_clip={clip:g} on {k} of {n} logged steps "
                     f"({share:.0%}{medtxt}): {verdict}.")
    if row.get("scale_first") is not None:
        parts.append(f"fp16 loss scale went {row['scale_first']:g} -> {row['scale_last']:g} "
                     f"(min {row['scale_min']:g}).")
    skipped = row.get("skipped_steps")
    if skipped:
        parts.append(f"{skipped} steps were skipped (overflow or non-finite gradients).")
    elif skipped == 0:
        parts.append("No step was skipped.")
    if row.get("val_loss") is not None:
        parts.append(f"Last val loss {row['val_loss']:.4f}.")
    return " ".join(parts) if parts else "Nothing logged yet."


def _param(row: Dict[str, Any], name: str) -> Optional[str]:
    for k, v in (row.get("params") or {}).items():
        if k.split(".")[-1] == name:
            return v
    return None
