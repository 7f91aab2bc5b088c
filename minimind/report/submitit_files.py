"""What submitit leaves in a sweep: ``.submitit/<job id>/`` and the pickles and logs in it.

The one module of the report that knows submitit's layout: the folder per SLURM job, the
``<job id>_submitted.pkl`` that holds the submitted call (the Hydra job number is its third
argument), the ``<job id>_<task>_result.pkl`` with ``("success", JobReturn)`` or
``("error", traceback)``, and the ``<job id>_<task>_log.err`` where SLURM writes why it killed a
job. Pickles are read with :class:`_StubUnpickler`, which imports and calls nothing they name:
reading a result that mentions ``torch.cuda.OutOfMemoryError`` does not import torch.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from minimind.report.reading import last_line

FOLDER = ".submitit"  # in the sweep dir: hydra-submitit-launcher's submitit_folder default
_MAX_PICKLE_BYTES = 256 * 1024 * 1024


def present(sweep: Path) -> bool:
    """Whether submitit ran this sweep (and :func:`scan` has anything to read)."""
    return (sweep / FOLDER).is_dir()


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


def read_pickle(path: Path) -> Any:
    """The pickle's data with stubs for every object; None when it cannot be read."""
    try:
        if path.stat().st_size > _MAX_PICKLE_BYTES:
            return None
        with open(path, "rb") as f:
            return _StubUnpickler(f).load()
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle: no information
        return None


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
        return last_line(f"{exc._stub_name}: {msg}" if msg else exc._stub_name)
    if exc is None:
        return None
    return last_line(exc)


def _result_outcome(obj: Any) -> Tuple[Optional[str], Optional[str]]:
    """(outcome, error) from a ``*_result.pkl``: ("completed"|"failed"|None, last error line)."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and obj[0] in ("success", "error")):
        return None, None
    kind, payload = obj
    if kind == "error":  # submitit caught it: a traceback string
        return "failed", last_line(payload) or "error (no message)"
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


class SubmititJob:
    """What ``.submitit/<job id>/`` says about one job."""

    def __init__(self, job_id: str, folder: Path):
        self.job_id = job_id
        self.folder = folder
        self.outcome: Optional[str] = None  # completed | failed | None (no result yet)
        self.error: Optional[str] = None
        self.stderr_error: Optional[str] = None
        self.started = False  # submitit wrote its logs: the job got a node

    def read(self) -> "SubmititJob":
        def by_task(p: Path) -> int:
            return _task_of(p, self.job_id)

        results = sorted(self.folder.glob(f"{self.job_id}_*_result.pkl"), key=by_task)
        for path in results:
            outcome, error = _result_outcome(read_pickle(path))
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
    obj = read_pickle(folder / f"{job_id}_submitted.pkl")
    args = _state(obj).get("args") if isinstance(obj, _Stub) else None
    if not (isinstance(args, tuple) and len(args) >= 3 and isinstance(args[0], list)):
        return None
    num = args[2]
    if isinstance(num, int) and not isinstance(num, bool) and all(isinstance(a, str) for a in args[0]):
        return num
    return None


def submitted_to_slurm(sweep: Path) -> bool:
    """Whether submitit sent any of the sweep's jobs to sbatch: its SLURM executor leaves the
    submission script (``.submission_file_<uuid>.sh``, kept as a link when moved into the job's
    folder as ``<id>_submission.sh``); the local executor writes none."""
    root = sweep / FOLDER
    return root.is_dir() and (any(root.glob(".submission_file_*.sh")) or any(root.glob("*/*_submission.sh")))


def job_ids(sweep: Path) -> Dict[str, int]:
    """SLURM / local job id -> Hydra job number, for every job submitit's folder records (a job
    relaunched into the sweep has several ids), from each ``<job id>_submitted.pkl``."""
    root = sweep / FOLDER
    if not root.is_dir():
        return {}
    out: Dict[str, int] = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and "%" not in folder.name:
            num = _submitted_job_num(folder, folder.name)
            if num is not None:
                out[folder.name] = num
    return out


def scan(sweep: Path, ids_from_jobs: Dict[str, int], max_batch_size: Optional[int]) -> Dict[int, SubmititJob]:
    """Job number -> what its submitit folder says. The number comes from ``ids_from_jobs`` (job
    id -> number, from the jobs' ``.hydra/hydra.yaml``), else from the submission pickle, else
    from the array index."""
    root = sweep / FOLDER
    if not root.is_dir():
        return {}
    found: Dict[int, SubmititJob] = {}
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
            found[num] = SubmititJob(job_id, folder)
    # SLURM array jobs: <array id>_<index>, index = position in its batch (one array per batch)
    arrays: Dict[int, List[Tuple[int, str, Path]]] = {}
    for job_id, folder in unmatched:
        m = re.fullmatch(r"(\d+)_(\d+)", job_id)
        if m:
            arrays.setdefault(int(m.group(1)), []).append((int(m.group(2)), job_id, folder))
    for batch, array_id in enumerate(sorted(arrays)):
        offset = batch * max_batch_size if max_batch_size else 0
        for index, job_id, folder in arrays[array_id]:
            found.setdefault(offset + index, SubmititJob(job_id, folder))
    return {num: s.read() for num, s in found.items()}
