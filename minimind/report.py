"""Compare the jobs of a sweep: ``python -m minimind.report <sweep dir>``.

    python launch.py -m optim.grad_clip=0.3,0.5,1.0 optim.accumulation_steps=1,4,8 hydra/launcher=slurm
    python -m minimind.report multirun/2026-11-28/12-00-00
    python -m minimind.report SWEEP --csv out.csv --png out.png --color-by optim.lr --split-by precision
    python -m minimind.report SWEEP --no-plot

One row per job (ordered by job number): the swept overrides, the status (completed, failed,
running, interrupted, pending; ``(requeued Nx)`` when SLURM restarted it), final and best loss,
optimizer steps, tokens/s, skipped (overflow) steps, grad-norm median and max, wall time and,
for a failed job, the last line of its error. The table goes to stdout, the same rows to
``<sweep dir>/report.csv`` and the loss curves to ``<sweep dir>/report.png`` (one colour per
``--color-by`` value, one panel per ``--split-by`` value).

The job list comes from the sweep definition in ``multirun.yaml`` (``hydra.sweeper.params`` and
``hydra.overrides.task``, expanded in the BasicSweeper's order with Hydra's own parser), so a job
that died before writing anything still has a row; what each job wrote (``events.jsonl``,
``metrics.jsonl``, ``summary.json``) and what submitit kept (``.submitit/<job id>/``) fill it in.

Python API: :func:`collect`, :func:`write_csv`, :func:`plot`, :func:`format_table`, :func:`main`.
Importing this module is cheap: Hydra's parser, omegaconf and matplotlib load on first use, and
submitit's pickles are read without importing anything they name (no torch).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pickle
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["SweepError", "collect", "expand_sweep", "write_csv", "plot", "format_table", "main"]

DEFAULT_COLOR_BY = "optim.grad_clip"
DEFAULT_SPLIT_BY = "optim.accumulation_steps"

_TERMINAL = ("completed", "failed", "interrupted")
# short names for the compact overrides column; any other key shows its last component
_ALIASES = {"accumulation_steps": "accum"}
# the CSV columns, in order (the swept keys are inserted after "overrides")
CSV_FIELDS = ["job", "overrides", "status", "requeues", "final_loss", "best_loss", "optimizer_steps",
              "tokens_per_s", "skipped_steps", "grad_norm_median", "grad_norm_max", "wall_time_s",
              "error", "all_overrides", "job_dir", "submitit_job_id"]
_MAX_PICKLE_BYTES = 256 * 1024 * 1024


class SweepError(ValueError):
    """The path is not a sweep directory (the message is one line, for the CLI)."""


# ====================================================================== the sweep definition


def _load_yaml(path: Path) -> Any:
    """A YAML file written by OmegaConf/Hydra, as plain Python data (no interpolation resolved)."""
    import yaml  # PyYAML: an omegaconf dependency

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return yaml.load(f, Loader=loader)


def _split_override(text: str) -> Tuple[str, str]:
    """``+optim.grad_clip=0.3`` -> (``optim.grad_clip``, ``0.3``); ``~key`` -> (``key``, ``""``)."""
    key, _, value = str(text).partition("=")
    return key.strip().lstrip("+~"), value.strip()


def expand_sweep(multirun: Dict[str, Any]) -> Tuple[List[List[str]], List[str], Optional[int]]:
    """The job list of a BasicSweeper sweep, from its ``multirun.yaml`` (as a dict).

    Returns ``(jobs, swept_keys, max_batch_size)``: ``jobs[n]`` is job n's override list, exactly
    as the BasicSweeper built it (``hydra.sweeper.params`` first, then the command line's task
    overrides, the cartesian product in that order). Raises ``ValueError`` for a sweep this
    cannot expand (another sweeper, a sweep that needs the config loader such as ``glob``).
    """
    hydra_node = (multirun or {}).get("hydra") or {}
    sweeper = hydra_node.get("sweeper") or {}
    target = str(sweeper.get("_target_") or "")
    if target and not target.endswith(".BasicSweeper"):
        raise ValueError(f"sweeper {target} is not Hydra's BasicSweeper")
    params = sweeper.get("params") or {}
    task = list((hydra_node.get("overrides") or {}).get("task") or [])
    # the BasicSweeper's _parse_config: f"{k}={v}" for the params, then the task overrides
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = parser.parse_overrides(arguments)
    swept: List[str] = []
    for o in overrides:
        if o.is_sweep_override():
            key = o.get_key_element().lstrip("+~")
            if key not in swept:
                swept.append(key)
    batches = BasicSweeper.split_arguments(overrides, None)
    jobs = [list(job) for job in batches[0]]
    mbs = sweeper.get("max_batch_size")
    try:
        mbs = int(mbs) if mbs is not None and int(mbs) > 0 else None
    except (TypeError, ValueError):
        mbs = None
    return jobs, swept, mbs


# ====================================================================== submitit's files


class _Stub:
    """Stands in for every class or function a pickle names: records what it was built from."""

    _stub_module = "?"
    _stub_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Stub":
        obj = object.__new__(cls)
        obj._stub_args = args
        obj._stub_state = None
        obj._stub_items = []
        return obj

    def __setstate__(self, state: Any) -> None:
        self._stub_state = state

    def append(self, item: Any) -> None:
        self._stub_items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self._stub_items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._stub_items.append((key, value))

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        # a stub instance used as a class: e.g. one cloudpickle rebuilt by value
        # (_make_skeleton_class(type_constructor, name, ...)): keep the class name
        obj = _Stub(*args, **kwargs)
        if len(self._stub_args) >= 2 and isinstance(self._stub_args[1], str):
            obj._stub_name = self._stub_args[1]
        return obj


class _StubUnpickler(pickle.Unpickler):
    """Unpickles without importing or calling anything: every global becomes a :class:`_Stub`."""

    _classes: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> type:
        key = (module, name)
        if key not in self._classes:
            self._classes[key] = type(str(name), (_Stub,), {"_stub_module": module, "_stub_name": name})
        return self._classes[key]

    def persistent_load(self, pid: Any) -> Any:
        return _Stub(pid)


def _read_pickle(path: Path) -> Any:
    """The pickle's data with stubs for every object; None when it cannot be read."""
    try:
        if path.stat().st_size > _MAX_PICKLE_BYTES:
            return None
        with open(path, "rb") as f:
            return _StubUnpickler(f).load()
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle: no information
        return None


def _last_line(text: Any) -> Optional[str]:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _state(obj: Any) -> Dict[str, Any]:
    state = getattr(obj, "_stub_state", None)
    if isinstance(state, tuple) and state and isinstance(state[0], dict):  # (dict, slots)
        state = state[0]
    return state if isinstance(state, dict) else {}


def _exception_line(exc: Any) -> Optional[str]:
    """``ValueError: boom`` for a stubbed exception (its last line, like the run's own record)."""
    if isinstance(exc, _Stub):
        args = exc._stub_args
        msg = str(args[0]) if args else ""
        return _last_line(f"{exc._stub_name}: {msg}" if msg else exc._stub_name)
    if exc is None:
        return None
    return _last_line(exc)


def _result_outcome(obj: Any) -> Tuple[Optional[str], Optional[str]]:
    """(outcome, error) from a ``*_result.pkl``: ("completed"|"failed"|None, last error line)."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and obj[0] in ("success", "error")):
        return None, None
    kind, payload = obj
    if kind == "error":  # submitit caught it: a traceback string
        return "failed", _last_line(payload) or "error (no message)"
    # success: Hydra's JobReturn; the task's exception is kept in it with status FAILED (2)
    if isinstance(payload, _Stub) and payload._stub_name == "JobReturn":
        st = _state(payload)
        status = st.get("status")
        code = status._stub_args[0] if isinstance(status, _Stub) and status._stub_args else None
        if code == 2 or str(code).upper() == "FAILED":
            return "failed", _exception_line(st.get("_return_value")) or "failed (no message)"
        if code == 1 or str(code).upper() == "COMPLETED":
            return "completed", None
        return None, None
    return "completed", None


_STDERR_ERROR = re.compile(
    r"(slurmstepd|srun|sbatch): error|CANCELLED|DUE TO TIME LIMIT|oom[-_ ]kill|out of memory|"
    r"\bKilled\b|Segmentation fault|core dumped|Bus error", re.IGNORECASE)


def _error_from_stderr(path: Path) -> Optional[str]:
    """The error in a job's ``*_log.err``: a SLURM kill line or a traceback's exception line."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    for ln in reversed(lines[-20:]):
        if _STDERR_ERROR.search(ln):
            return ln.strip()
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tb:
        after = lines[tb[-1] + 1:]
        exc = [ln for ln in after if not ln.startswith((" ", "\t"))]
        if exc:
            return exc[0].strip()
    return None


class _Submitit:
    """What ``.submitit/<job id>/`` says about one job."""

    def __init__(self, job_id: str, folder: Path):
        self.job_id = job_id
        self.folder = folder
        self.outcome: Optional[str] = None  # completed | failed | None (no result yet)
        self.error: Optional[str] = None
        self.stderr_error: Optional[str] = None
        self.started = False  # submitit wrote its logs: the job got a node

    def read(self) -> "_Submitit":
        def by_task(p: Path) -> int:
            return _task_of(p, self.job_id)

        results = sorted(self.folder.glob(f"{self.job_id}_*_result.pkl"), key=by_task)
        for path in results:
            outcome, error = _result_outcome(_read_pickle(path))
            if outcome == "failed":
                self.outcome, self.error = "failed", error
                break
            if outcome is not None and self.outcome is None:
                self.outcome = outcome
        logs = sorted(self.folder.glob(f"{self.job_id}_*_log.*"), key=by_task)
        self.started = bool(logs)
        for path in logs:
            if path.name.endswith("_log.err"):
                self.stderr_error = _error_from_stderr(path)
                if self.stderr_error:
                    break
        return self


def _task_of(path: Path, job_id: str) -> int:
    middle = path.name[len(job_id) + 1:].split("_", 1)[0]
    return int(middle) if middle.isdigit() else 1 << 30


def _submitted_job_num(folder: Path, job_id: str) -> Optional[int]:
    """The Hydra job number in ``<job id>_submitted.pkl`` (the submitit launcher's third argument)."""
    obj = _read_pickle(folder / f"{job_id}_submitted.pkl")
    args = _state(obj).get("args") if isinstance(obj, _Stub) else None
    if not (isinstance(args, tuple) and len(args) >= 3 and isinstance(args[0], list)):
        return None
    num = args[2]
    if isinstance(num, int) and not isinstance(num, bool) and all(isinstance(a, str) for a in args[0]):
        return num
    return None


def _scan_submitit(sweep: Path, ids_from_jobs: Dict[str, int], max_batch_size: Optional[int]
                   ) -> Dict[int, _Submitit]:
    """Job number -> its submitit folder. The number comes from the job's ``.hydra/hydra.yaml``
    (``hydra.job.id``), else from the submission pickle, else from the array index."""
    root = sweep / ".submitit"
    if not root.is_dir():
        return {}
    found: Dict[int, _Submitit] = {}
    unmatched: List[Tuple[str, Path]] = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or "%" in folder.name:
            continue
        job_id = folder.name
        num = ids_from_jobs.get(job_id)
        if num is None:
            num = _submitted_job_num(folder, job_id)
        if num is None:
            unmatched.append((job_id, folder))
        elif num not in found:
            found[num] = _Submitit(job_id, folder)
    # SLURM array jobs: <array id>_<index>, index = position in its batch (one array per batch)
    arrays: Dict[int, List[Tuple[int, str, Path]]] = {}
    for job_id, folder in unmatched:
        m = re.fullmatch(r"(\d+)_(\d+)", job_id)
        if m:
            arrays.setdefault(int(m.group(1)), []).append((int(m.group(2)), job_id, folder))
    for batch, array_id in enumerate(sorted(arrays)):
        offset = batch * max_batch_size if max_batch_size else 0
        for index, job_id, folder in arrays[array_id]:
            found.setdefault(offset + index, _Submitit(job_id, folder))
    return {num: s.read() for num, s in found.items()}


# ====================================================================== one job's files


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(obj, dict):
                    out.append(obj)
    except OSError:
        pass
    return out


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(values: Iterable[Any]) -> List[float]:
    out = []
    for v in values:
        f = _num(v)
        if f is not None and math.isfinite(f):
            out.append(f)
    return out


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
            started_at = _num(e.get("time")) or started_at
        elif name in _TERMINAL:
            if ended:
                attempts += 1
            state, ended = name, True
            if name == "failed":
                error = _last_line(e.get("error") or "") or error
    return state, max(attempts - 1, 0), error, started_at


def _job_row(num: int, job_dir: Optional[Path], overrides: List[str], swept: List[str],
             sub: Optional[_Submitit]) -> Dict[str, Any]:
    events = metrics = []
    summary = None
    if job_dir is not None:
        events = _read_jsonl(job_dir / "events.jsonl")
        metrics = _read_jsonl(job_dir / "metrics.jsonl")
        summary = _read_json(job_dir / "summary.json")
        on_disk = job_dir / ".hydra" / "overrides.yaml"
        if on_disk.is_file():
            try:
                data = _load_yaml(on_disk)
                if isinstance(data, list):
                    overrides = [str(x) for x in data]
            except Exception:  # noqa: BLE001 - keep the expected overrides
                pass

    state, requeues, error, started_at = _events_status(events)
    if summary and summary.get("status") in _TERMINAL and state in (None, "running"):
        # no terminal event after the last start: a summary written since then still tells how
        # the attempt ended (one left by an earlier attempt is older than that start)
        try:
            newer = (job_dir / "summary.json").stat().st_mtime >= started_at
        except OSError:
            newer = False
        if state is None or newer:
            state = summary["status"]
    if state == "failed" and not error and summary:
        error = _last_line(summary.get("error") or "")
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

    losses = _finite(m.get("loss") for m in metrics)
    grad_norms = _finite(m.get("grad_norm") for m in metrics)
    last = metrics[-1] if metrics else {}
    # the summary describes the attempt that ended: trust it when the events agree
    s = summary if summary and summary.get("status") == state and state != "failed" else {}

    def pick(summary_key: str, metrics_key: str) -> Optional[float]:
        v = _num(s.get(summary_key))
        return v if v is not None else _num(last.get(metrics_key))

    final_loss = _num(last.get("loss")) if metrics else _num((summary or {}).get("final_loss"))
    best_loss = min(losses) if losses else _num((summary or {}).get("best_loss"))
    steps = pick("optimizer_steps", "step")
    skipped = pick("skipped_steps", "skipped")

    params = dict(_split_override(o) for o in overrides)
    label_keys = _label_keys(swept)
    row: Dict[str, Any] = {
        "job": num,
        "overrides": " ".join(f"{label_keys[k]}={params[k]}" for k in swept if k in params),
        "status": state + (f" (requeued {requeues}x)" if requeues else ""),
        "state": state,
        "requeues": requeues,
        "final_loss": final_loss,
        "best_loss": best_loss,
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
    }
    return row


def _curve(metrics: List[Dict[str, Any]]) -> List[Tuple[float, float]]:
    """(step, loss), one point per step: after a requeue the rerun steps replace the old ones."""
    points: Dict[float, float] = {}
    for m in metrics:
        step, loss = _num(m.get("step")), _num(m.get("loss"))
        if step is not None and loss is not None:
            points[step] = loss
    return sorted(points.items())


def _label_keys(swept: Sequence[str]) -> Dict[str, str]:
    """Short names for the swept keys (``optim.grad_clip`` -> ``grad_clip``) unless they clash."""
    short = {k: _ALIASES.get(k.split(".")[-1].split("@")[0], k.split(".")[-1].split("@")[0]) for k in swept}
    counts: Dict[str, int] = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (v if counts[v] == 1 else k) for k, v in short.items()}


# ====================================================================== the sweep


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


def _job_dirs(sweep: Path) -> Dict[int, Path]:
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
        job = ((_load_yaml(path) or {}).get("hydra") or {}).get("job") or {}
    except Exception:  # noqa: BLE001
        return {}
    return job if isinstance(job, dict) else {}


def collect(sweep_dir: Any) -> List[Dict[str, Any]]:
    """One dict per job of the sweep, ordered by job number.

    Keys: job, overrides (compact swept keys), status, state (status without the requeue note),
    requeues, final_loss, best_loss, optimizer_steps, tokens_per_s, skipped_steps,
    grad_norm_median, grad_norm_max, wall_time_s, error, all_overrides (list), params (every
    override, key -> value), swept (swept key -> value), job_dir, submitit_job_id, curve
    ([(step, loss)]). Numbers are None when unknown. Raises :class:`SweepError`.
    """
    sweep = Path(sweep_dir)
    _check_sweep_dir(sweep)
    expected: List[List[str]] = []
    swept: List[str] = []
    max_batch_size: Optional[int] = None
    if (sweep / "multirun.yaml").is_file():
        try:
            multirun = _load_yaml(sweep / "multirun.yaml")
        except Exception as e:  # noqa: BLE001
            raise SweepError(f"{sweep / 'multirun.yaml'}: cannot be read ({_last_line(e)})") from None
        try:
            expected, swept, max_batch_size = expand_sweep(multirun if isinstance(multirun, dict) else {})
        except Exception:  # noqa: BLE001 - another sweeper: only the jobs on disk
            expected, swept = [], []

    dirs = _job_dirs(sweep)
    ids: Dict[str, int] = {}
    if (sweep / ".submitit").is_dir():
        for num, d in dirs.items():
            job_id = _hydra_job(d).get("id")
            if job_id is not None:
                ids.setdefault(str(job_id), num)
    subs = _scan_submitit(sweep, ids, max_batch_size)

    nums = sorted(set(range(len(expected))) | set(dirs) | ({n for n in subs if n < len(expected)}
                                                             if expected else set(subs)))
    if not swept:  # not expandable: the keys whose values differ between jobs
        swept = _varying_keys([_overrides_on_disk(dirs.get(n)) for n in nums])
    rows = []
    for n in nums:
        overrides = expected[n] if n < len(expected) else []
        rows.append(_job_row(n, dirs.get(n), overrides, swept, subs.get(n)))
    return rows


def _overrides_on_disk(job_dir: Optional[Path]) -> List[str]:
    if job_dir is None:
        return []
    try:
        data = _load_yaml(job_dir / ".hydra" / "overrides.yaml")
    except Exception:  # noqa: BLE001
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _varying_keys(override_lists: List[List[str]]) -> List[str]:
    keys: List[str] = []
    values: Dict[str, set] = {}
    for lst in override_lists:
        for o in lst:
            k, v = _split_override(o)
            if k not in values:
                keys.append(k)
                values[k] = set()
            values[k].add(v)
    n = len(override_lists)
    return [k for k in keys if len(values[k]) > 1 or
            sum(1 for lst in override_lists if any(_split_override(o)[0] == k for o in lst)) < n]


# ====================================================================== output


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
    ("steps", lambda r: _fmt_int(r["optimizer_steps"]), True),
    ("tok/s", lambda r: _fmt_int(r["tokens_per_s"]), True),
    ("skipped", lambda r: _fmt_int(r["skipped_steps"]), True),
    ("gnorm med", lambda r: _fmt_float(r["grad_norm_median"], 3), True),
    ("gnorm max", lambda r: _fmt_float(r["grad_norm_max"], 3), True),
    ("wall", lambda r: _fmt_duration(r["wall_time_s"]), True),
    ("error", lambda r: _clip(r["error"] or "", 100), False),
]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table, with a status count line at the end."""
    cells = [[fn(r) for _, fn, _ in _TABLE] for r in rows]
    headers = [h for h, _, _ in _TABLE]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w)
                 for v, w, (_, _, right) in zip(values, widths, _TABLE)]
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
                node: Any = _load_yaml(cfg_path)
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
    f = _num(v)
    return (0, f, "") if f is not None else (1, 0.0, str(v))


def plot(rows: Sequence[Dict[str, Any]], path: Any, color_by: Optional[str] = DEFAULT_COLOR_BY,
         split_by: Optional[str] = DEFAULT_SPLIT_BY, title: Optional[str] = None) -> Path:
    """Loss curves of every job in one PNG: a colour per ``color_by`` value, a panel per
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
    drawn = [r for r in rows if r.get("curve")] or list(rows)
    color_values = sorted({colors[id(r)] for r in drawn}, key=_sort_key)
    split_values = sorted({splits[id(r)] for r in drawn}, key=_sort_key) or [None]
    color_name = _label_keys([color_by])[color_by] if color_by else ""
    split_name = _label_keys([split_by])[split_by] if split_by else ""

    n = len(split_values)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis" if len(color_values) > 10 else "tab10")
    palette = {v: cmap(i / max(len(color_values) - 1, 1) if len(color_values) > 10 else i % 10)
               for i, v in enumerate(color_values)}
    styles = {"completed": "-", "failed": "--", "running": ":", "interrupted": ":", "pending": ":"}
    for ax, split in zip(axes.flat, split_values):
        plotted, missing = set(), []
        for r in rows:
            if splits[id(r)] != split:
                continue
            curve = r.get("curve") or []
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
            xs, ys = zip(*curve)
            ax.plot(xs, ys, styles.get(r.get("state"), "-"), color=palette[c], lw=1.3, alpha=0.9,
                    label=label)
            if r.get("state") == "failed":
                ax.plot(xs[-1], ys[-1], "x", color=palette[c], ms=7)
        if len(split_values) > 1 or split is not None:
            ax.set_title(f"{split_name}={split}")
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(fontsize=8, loc="upper right")
        if missing:
            ax.text(0.02, 0.02, "no metrics: job " + ", ".join(missing), transform=ax.transAxes,
                    fontsize=8, color="0.4")
        if not plotted:
            ax.text(0.5, 0.5, "no loss logged yet", transform=ax.transAxes, ha="center", va="center",
                    color="0.4")
    for ax in axes[:, 0]:
        ax.set_ylabel("loss")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ====================================================================== CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minimind.report",
        description="Compare the jobs of a Hydra multirun sweep: a table on stdout, report.csv "
                    "and report.png (loss curves) in the sweep dir.")
    p.add_argument("sweep_dir", help="the sweep directory, e.g. multirun/2026-11-28/12-00-00")
    p.add_argument("--csv", metavar="PATH", help="where to write the CSV (default: <sweep dir>/report.csv)")
    p.add_argument("--png", metavar="PATH", help="where to write the plot (default: <sweep dir>/report.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    p.add_argument("--color-by", metavar="KEY", default=DEFAULT_COLOR_BY,
                   help=f"one colour per value of this key (default: {DEFAULT_COLOR_BY})")
    p.add_argument("--split-by", metavar="KEY", default=DEFAULT_SPLIT_BY,
                   help=f"one panel per value of this key (default: {DEFAULT_SPLIT_BY})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 when the report was made (failed jobs included), 2 for a bad sweep dir,
    1 when the CSV or the PNG could not be written."""
    args = _parser().parse_args(argv)
    sweep = Path(args.sweep_dir)
    try:
        rows = collect(sweep)
    except SweepError as e:
        print(f"minimind.report: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    sys.stdout.flush()
    rc = 0
    csv_path = Path(args.csv) if args.csv else sweep / "report.csv"
    try:
        write_csv(rows, csv_path)
        print(f"wrote {csv_path}", file=sys.stderr)
    except OSError as e:
        print(f"minimind.report: error: cannot write {csv_path}: {e}", file=sys.stderr)
        rc = 1
    if not args.no_plot:
        png_path = Path(args.png) if args.png else sweep / "report.png"
        try:
            plot(rows, png_path, color_by=args.color_by, split_by=args.split_by, title=str(sweep))
            print(f"wrote {png_path}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - the table and the CSV are made; say why the plot is not
            print(f"minimind.report: error: cannot draw {png_path}: {_last_line(e)}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
