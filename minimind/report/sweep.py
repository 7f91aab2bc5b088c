"""A sweep directory -> one row per job: which jobs there are, and where each one's files are.

The job list is the sweep's definition (``multirun.yaml``, expanded by :mod:`hydra_sweep`), so a
job that never started still has a row; the job dirs (numbered, or named by their
``.hydra/hydra.yaml``) and submitit's folders (:mod:`submitit_files`) are matched to it by job
number, and :mod:`jobs` turns each job's files into its row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from minimind.report import submitit_files
from minimind.report.hydra_sweep import expand_sweep
from minimind.report.jobs import job_row
from minimind.report.reading import last_line, load_yaml, split_override


class SweepError(ValueError):
    """The path is not a sweep directory (the message is one line, for the CLI)."""


def _check_sweep_dir(sweep: Path) -> None:
    if not sweep.exists():
        raise SweepError(f"{sweep}: no such directory")
    if not sweep.is_dir():
        raise SweepError(f"{sweep}: not a directory")
    if (sweep / "multirun.yaml").is_file():
        return
    if any(d.is_dir() and (d / ".hydra" / "overrides.yaml").is_file() for d in sweep.iterdir()):
        return  # job dirs without multirun.yaml: report what is there
    hint = ""
    if (sweep / ".hydra").is_dir() and (sweep.parent / "multirun.yaml").is_file():
        hint = f"; it is a job dir of the sweep {sweep.parent}"
    else:
        inner = sorted(str(p.parent.relative_to(sweep)) for p in sweep.glob("*/multirun.yaml"))
        inner += sorted(str(p.parent.relative_to(sweep)) for p in sweep.glob("*/*/multirun.yaml"))
        if inner:
            shown = ", ".join(inner[-5:])
            hint = f"; sweeps inside it: {shown}"
    raise SweepError(f"{sweep}: not a sweep dir (no multirun.yaml and no job dirs with .hydra/){hint}")


def job_dirs(sweep: Path) -> Dict[int, Path]:
    """Job number -> job dir: numbered dirs (``hydra.sweep.subdir=${hydra.job.num}``), or any
    dir whose ``.hydra/hydra.yaml`` names its ``hydra.job.num``."""
    dirs: Dict[int, Path] = {}
    for d in sorted(sweep.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if d.name.isdigit():
            dirs.setdefault(int(d.name), d)
            continue
        job = _hydra_job(d)
        num = job.get("num")
        if isinstance(num, int) and not isinstance(num, bool):
            dirs.setdefault(num, d)
    return dirs


def _hydra_job(job_dir: Path) -> Dict[str, Any]:
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        job = ((load_yaml(path) or {}).get("hydra") or {}).get("job") or {}
    except Exception:  # noqa: BLE001
        return {}
    return job if isinstance(job, dict) else {}


def collect(sweep_dir: Any) -> List[Dict[str, Any]]:
    """One dict per job of the sweep, ordered by job number.

    Keys: job, overrides (compact swept keys), status, state (status without the requeue note),
    requeues, final_loss, best_loss, val_loss, best_val_loss, best_val_step (held-out evaluation),
    optimizer_steps, tokens_per_s, skipped_steps,
    grad_norm_median, grad_norm_max, wall_time_s, error, all_overrides (list), params (every
    override, key -> value), swept (swept key -> value), job_dir, submitit_job_id, curve
    ([(step, loss)]), val_curve ([(step, val_loss)]). Numbers are None when unknown. Raises :class:`SweepError`.
    """
    sweep = Path(sweep_dir)
    _check_sweep_dir(sweep)
    expected: List[List[str]] = []
    swept: List[str] = []
    max_batch_size: Optional[int] = None
    if (sweep / "multirun.yaml").is_file():
        try:
            multirun = load_yaml(sweep / "multirun.yaml")
        except Exception as e:  # noqa: BLE001
            raise SweepError(f"{sweep / 'multirun.yaml'}: cannot be read ({last_line(e)})") from None
        try:
            expected, swept, max_batch_size = expand_sweep(multirun if isinstance(multirun, dict) else {})
        except Exception:  # noqa: BLE001 - another sweeper: only the jobs on disk
            expected, swept = [], []

    dirs = job_dirs(sweep)
    ids: Dict[str, int] = {}
    if submitit_files.present(sweep):
        for num, d in dirs.items():
            job_id = _hydra_job(d).get("id")
            if job_id is not None:
                ids.setdefault(str(job_id), num)
    subs = submitit_files.scan(sweep, ids, max_batch_size)

    nums = sorted(set(range(len(expected))) | set(dirs) | ({n for n in subs if n < len(expected)}
                                                             if expected else set(subs)))
    if not swept:  # not expandable: the keys whose values differ between jobs
        swept = varying_keys([overrides_on_disk(dirs.get(n)) or [] for n in nums])
    rows = []
    for n in nums:
        overrides = expected[n] if n < len(expected) else []
        rows.append(job_row(n, dirs.get(n), overrides, swept, subs.get(n)))
    return rows


def overrides_on_disk(job_dir: Optional[Path]) -> Optional[List[str]]:
    """The job's ``.hydra/overrides.yaml``; None when there is none (or it cannot be read)."""
    if job_dir is None:
        return None
    try:
        data = load_yaml(job_dir / ".hydra" / "overrides.yaml")
    except Exception:  # noqa: BLE001 - missing or cut short
        return None
    return [str(x) for x in data] if isinstance(data, list) else None


def varying_keys(override_lists: List[List[str]]) -> List[str]:
    keys: List[str] = []
    values: Dict[str, set] = {}
    for lst in override_lists:
        for o in lst:
            k, v = split_override(o)
            if k not in values:
                keys.append(k)
                values[k] = set()
            values[k].add(v)
    n = len(override_lists)
    return [k for k in keys if len(values[k]) > 1 or
            sum(1 for lst in override_lists if any(split_override(o)[0] == k for o in lst)) < n]
