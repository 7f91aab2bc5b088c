"""The rows as text: an aligned table for the terminal, CSV with raw numbers, and report.md.

The table is for reading (rounded losses, ``6m13s``, errors clipped to 100 characters); the CSV
for further work (every float as ``repr``, wall time in seconds, one column per swept key).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# the CSV columns, in order (the swept keys are inserted after "overrides")
CSV_FIELDS = ["job", "overrides", "status", "requeues", "final_loss", "best_loss", "val_loss", "best_val_loss",
              "best_val_step", "optimizer_steps",
              "tokens_per_s", "skipped_steps", "grad_norm_median", "grad_norm_max", "wall_time_s",
              "tokens", "grad_clip", "logged_steps", "clipped_steps", "clip_share",
              "scale_first", "scale_last", "scale_min", "error", "all_overrides", "job_dir", "submitit_job_id"]


def _fmt_float(v: Optional[float], digits: int = 4) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}"


def _fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _fmt_int(v: Optional[float]) -> str:
    return "-" if v is None else f"{int(round(v))}"


_TABLE = [  # header, row -> text, right-aligned
    ("job", lambda r: str(r["job"]), True),
    ("overrides", lambda r: r["overrides"] or " ".join(r["all_overrides"]) or "-", False),
    ("status", lambda r: r["status"], False),
    ("final loss", lambda r: _fmt_float(r["final_loss"]), True),
    ("best loss", lambda r: _fmt_float(r["best_loss"]), True),
    ("val loss", lambda r: _fmt_float(r.get("val_loss")), True),
    ("best val", lambda r: _fmt_float(r.get("best_val_loss")), True),
    ("steps", lambda r: _fmt_int(r["optimizer_steps"]), True),
    ("tok/s", lambda r: _fmt_int(r["tokens_per_s"]), True),
    ("skipped", lambda r: _fmt_int(r["skipped_steps"]), True),
    ("gnorm med", lambda r: _fmt_float(r["grad_norm_median"], 3), True),
    ("gnorm max", lambda r: _fmt_float(r["grad_norm_max"], 3), True),
    ("wall", lambda r: _fmt_duration(r["wall_time_s"]), True),
    ("tokens", lambda r: _fmt_int(r.get("tokens")), True),
    ("clipped", lambda r: _fmt_share(r.get("clip_share")), True),
    ("scale", lambda r: "-" if r.get("scale_first") is None else
     f"{r['scale_first']:g}->{r['scale_last']:g} (min {r['scale_min']:g})", True),
    ("error", lambda r: _clip(r["error"] or "", 100), False),
]


def _fmt_share(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0%}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table, with a status count line at the end. The val
    columns appear when some job evaluated held-out data."""
    evaluated = any(r.get("val_loss") is not None for r in rows)
    scaled = any(r.get("scale_first") is not None for r in rows)  # fp16 jobs
    columns = [c for c in _TABLE if (evaluated or c[0] not in ("val loss", "best val"))
               and (scaled or c[0] != "scale")]
    cells = [[fn(r) for _, fn, _ in columns] for r in rows]
    headers = [h for h, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w)
                 for v, w, (_, _, right) in zip(values, widths, columns)]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    order = ["completed", "running", "interrupted", "failed", "pending"]
    summary = ", ".join(f"{counts[s]} {s}" for s in order + sorted(set(counts) - set(order)) if s in counts)
    out.append(f"{len(rows)} job{'s' if len(rows) != 1 else ''}" + (f": {summary}" if summary else ""))
    return "\n".join(out)


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def write_csv(rows: Sequence[Dict[str, Any]], path: Any) -> Path:
    """The rows as CSV: the fields of :data:`CSV_FIELDS` with one column per swept key after
    ``overrides`` (raw numbers, wall time in seconds, all_overrides joined by spaces)."""
    path = Path(path)
    swept: List[str] = []
    for r in rows:
        for k in r.get("swept") or {}:
            if k not in swept and k not in CSV_FIELDS:
                swept.append(k)
    i = CSV_FIELDS.index("overrides") + 1
    fields = CSV_FIELDS[:i] + swept + CSV_FIELDS[i:]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            values = []
            for k in fields:
                if k == "all_overrides":
                    v = " ".join(r.get("all_overrides") or [])
                elif k in swept and k not in r:
                    v = (r.get("swept") or {}).get(k)
                else:
                    v = r.get(k)
                values.append(_csv_value(v))
            w.writerow(values)
    return path


def write_markdown(rows: Sequence[Dict[str, Any]], path: Any, title: str = "", extra: Sequence[str] = ()) -> Path:
    """report.md, for notes and PRs: the table as a markdown table, then ``extra`` (markdown lines:
    the Optuna study's section), then per job a paragraph on what the update step did (computed
    from its numbers, see :func:`update_step.describe`)."""
    from minimind.report.update_step import describe

    path = Path(path)
    evaluated = any(r.get("val_loss") is not None for r in rows)
    scaled = any(r.get("scale_first") is not None for r in rows)
    columns = [c for c in _TABLE if c[0] != "error" and (evaluated or c[0] not in ("val loss", "best val"))
               and (scaled or c[0] != "scale")]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [f"# Sweep report: {title}" if title else "# Sweep report", ""]
    out.append("| " + " | ".join(h for h, _, _ in columns) + " |")
    out.append("|" + "|".join("---:" if right else "---" for _, _, right in columns) + "|")
    out += ["| " + " | ".join(cell(fn(r)) for _, fn, _ in columns) + " |" for r in rows]
    out += ["", "clipped: share of logged steps whose pre-clip gradient norm exceeded the job's grad_clip; "
                "tokens: input tokens seen.", ""] + list(extra) + ["## What the update step did", ""]
    for r in rows:
        name = r["overrides"] or " ".join(r["all_overrides"]) or "-"
        text = describe(r)
        if r.get("error"):
            text += f" Failed: {_clip(r['error'], 200)}"
        out += [f"- **job {r['job']}** ({cell(name)}, {r['status']}): {text}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
