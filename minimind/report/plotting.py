"""Curves of a sweep's jobs in one PNG (matplotlib, loaded on the first call), against tokens seen.

The x axis is input tokens, not optimizer steps: accumulation changes the tokens per step, so
steps would compare unequal amounts of data. Per panel, training loss as lines (a job that
evaluated held-out data also gets its val loss as dots on a dashed line of the same colour) and,
below it, the pre-clip gradient norm with each job's grad_clip drawn as a horizontal line.

One colour per value of ``color_by`` and one panel per value of ``split_by`` (by default the
grad-clip x accumulation sweep the project is for); a key that was not an override is looked up
in the job's composed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from minimind.report.jobs import label_keys
from minimind.report.reading import load_yaml, number

DEFAULT_COLOR_BY = "optim.grad_clip"
DEFAULT_SPLIT_BY = "optim.accumulation_steps"


def _value_of(row: Dict[str, Any], key: Optional[str]) -> Optional[str]:
    """The row's value for ``key``: its override (exact key, or a unique last-component match),
    else the job's composed config (``.hydra/config.yaml``)."""
    if not key:
        return None
    key = key.lstrip("+~")
    params = row.get("params") or {}
    if key in params:
        return params[key]
    matches = [k for k in params if k.split(".")[-1] == key or k.endswith("." + key)]
    if len(matches) == 1:
        return params[matches[0]]
    job_dir = row.get("job_dir")
    if job_dir:
        cfg_path = Path(job_dir) / ".hydra" / "config.yaml"
        if cfg_path.is_file():
            try:
                node: Any = load_yaml(cfg_path)
                for part in key.split("."):
                    node = node[part] if isinstance(node, dict) else None
                if node is not None and not isinstance(node, (dict, list)):
                    return str(node)
            except Exception:  # noqa: BLE001
                pass
    return None


def _sort_key(v: Optional[str]) -> Tuple[int, float, str]:
    if v is None:
        return (2, 0.0, "")
    f = number(v)
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def plot(rows: Sequence[Dict[str, Any]], path: Any, color_by: Optional[str] = DEFAULT_COLOR_BY,
         split_by: Optional[str] = DEFAULT_SPLIT_BY, title: Optional[str] = None) -> Path:
    """Loss and grad-norm curves (vs tokens) of every job in one PNG: a colour per ``color_by`` value, a panel per
    ``split_by`` value (one colour / one panel when the key is not swept). Failed jobs are
    dashed and end with an x, running and interrupted ones are dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    colors = {id(r): _value_of(r, color_by) for r in rows}
    splits = {id(r): _value_of(r, split_by) for r in rows}
    # panels and colours come from the jobs that have a curve (a job that never logged a loss
    # may lack the key, e.g. one with no .hydra/config.yaml); all jobs when none has one
    drawn = [r for r in rows if r.get("token_curve")] or list(rows)
    color_values = sorted({colors[id(r)] for r in drawn}, key=_sort_key)
    split_values = sorted({splits[id(r)] for r in drawn}, key=_sort_key) or [None]
    color_name = label_keys([color_by])[color_by] if color_by else ""
    split_name = label_keys([split_by])[split_by] if split_by else ""

    n = len(split_values)
    cols = min(n, 3)
    nrows = -(-n // cols)
    # per panel two axes: the loss on top, the pre-clip grad norm under it (same tokens axis)
    fig, grid = plt.subplots(2 * nrows, cols, figsize=(5.2 * cols, 6.4 * nrows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2] * nrows})
    loss_axes, grad_axes = grid[0::2], grid[1::2]
    for ax in list(loss_axes.flat)[1:]:
        ax.sharey(loss_axes.flat[0])
    cmap = plt.get_cmap("viridis" if len(color_values) > 10 else "tab10")
    palette = {v: cmap(i / max(len(color_values) - 1, 1) if len(color_values) > 10 else i % 10)
               for i, v in enumerate(color_values)}
    styles = {"completed": "-", "failed": "--", "running": ":", "interrupted": ":", "pending": ":"}
    for ax, gax, split in zip(loss_axes.flat, grad_axes.flat, split_values):
        plotted, missing, has_val, clips = set(), [], False, {}
        for r in rows:
            if splits[id(r)] != split:
                continue
            curve = r.get("token_curve") or []
            if not curve:
                missing.append(f"{r['job']} ({r.get('state')})")
                continue
            c = colors[id(r)]
            if c not in palette:
                palette[c] = "0.5"
            label = None
            if c not in plotted:
                label = f"{color_name}={c}" if c is not None else "all jobs"
                plotted.add(c)
            style = styles.get(r.get("state"), "-")
            xs, ys = zip(*curve)
            ax.plot(xs, ys, style, color=palette[c], lw=1.3, alpha=0.9, label=label)
            if r.get("state") == "failed":
                ax.plot(xs[-1], ys[-1], "x", color=palette[c], ms=7)
            if r.get("val_token_curve"):  # held-out loss: dots joined by a thin dashed line, same colour
                vx, vy = zip(*r["val_token_curve"])
                ax.plot(vx, vy, "o--", color=palette[c], lw=0.8, ms=3.5, alpha=0.9)
                has_val = True
            if r.get("grad_curve"):
                gx, gy = zip(*r["grad_curve"])
                gax.plot(gx, gy, style, color=palette[c], lw=1.0, alpha=0.9)
            if r.get("grad_clip") is not None:
                clips.setdefault(r["grad_clip"], palette[c])
        for clip, color in clips.items():  # each job's threshold: above the line the step was clipped
            gax.axhline(clip, color=color, ls="-.", lw=0.9, alpha=0.8)
            gax.annotate(f"clip {clip:g}", (1.0, clip), xycoords=("axes fraction", "data"), ha="right",
                         va="bottom", fontsize=7, color=color)
        if len(split_values) > 1 or split is not None:
            ax.set_title(f"{split_name}={split}")
        gax.set_xlabel("tokens seen")
        for a in (ax, gax):
            a.grid(True, alpha=0.3)
        if has_val:  # one legend entry that says what the dots are
            ax.plot([], [], "o--", color="0.4", lw=0.8, ms=3.5, label="val loss (held out)")
        if plotted:
            ax.legend(fontsize=8, loc="upper right")
        if missing:
            ax.text(0.02, 0.02, "no metrics: job " + ", ".join(missing), transform=ax.transAxes,
                    fontsize=8, color="0.4")
        if not plotted:
            ax.text(0.5, 0.5, "no loss logged yet", transform=ax.transAxes, ha="center", va="center",
                    color="0.4")
    for ax in loss_axes[:, 0]:
        ax.set_ylabel("loss")
    for ax in grad_axes[:, 0]:
        ax.set_ylabel("grad norm (pre-clip)")
    for ax in list(loss_axes.flat)[n:] + list(grad_axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
