"""Where a run lives, and the exact command that continues it (no torch).

Hydra names a single run's folder by the time it started (``outputs/<date>/<time>``, see
:func:`minimind.env.run_stamp`), so running the same command again starts a new run. That is
kept on purpose: the folder is Hydra's identity of a run, and adopting "the last unfinished
run with the same overrides" would have to guess (the same command is also how one starts a
fresh run after changing the code or the data), and two runs started together would adopt the
same folder. Instead every place that says "continue" prints the command that does:
the command as it was typed, with ``hydra.run.dir=<this run's folder>`` (a sweep: with
``hydra.sweep.dir=<the sweep's folder>``, every job resumes in its own ``<job num>`` folder).
Under torchrun or SLURM tasks the folder already comes from the launcher's id.

A run refused before training (a bad value, a missing file, a ``???`` key) leaves no folder:
Hydra creates ``<run dir>/.hydra`` before the task starts, so :class:`RunFolderCallback`
notes, before that, whether the folder existed, and :func:`remove_if_refused` deletes it only
when this run created it and it holds nothing but what Hydra put there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from minimind.runlock import LOCK_NAME

# run folders created by this process, with the first ancestor that already existed
_CREATED: dict = {}
_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def display_path(path: os.PathLike) -> str:
    """``path`` relative to the current folder when it is inside it (as Hydra's defaults read)."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------- the command


def program(argv: Optional[Sequence[str]] = None, env: Optional[dict] = None) -> str:
    """How this process was started, as a user would type it again."""
    argv = list(sys.argv if argv is None else argv)
    env = os.environ if env is None else env
    script = argv[0] if argv else "launch.py"
    name = Path(script).name
    if name == "__main__.py" and Path(script).parent.name == "minimind":
        cmd = "python -m minimind"
    elif name.endswith(".py"):
        cmd = f"python {shlex.quote(script)}"
    else:  # a console script (minimind-train)
        cmd = shlex.quote(name)
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun starts the Python itself
        return f"torchrun <the same torchrun options> {cmd.removeprefix('python ')}"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return f"srun <the same srun options> {cmd}"
    return cmd


def _with(args: List[str], key: str, value: str) -> List[str]:
    kept = [a for a in args if not a.startswith(f"{key}=")]
    return kept + [f"{key}={value}"]


def continue_command(run_dir: os.PathLike, argv: Optional[Sequence[str]] = None) -> str:
    """The command that continues this run (or, for a job of a sweep, the whole sweep)."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if not a.startswith("hydra.output_subdir=")]  # added for ranks > 0
    sweep = sweep_dir()
    if sweep is not None and ("-m" in args or "--multirun" in args):
        args = _with(args, "hydra.sweep.dir", display_path(sweep))
    else:
        args = _with(args, "hydra.run.dir", display_path(run_dir))
    return f"{program(argv)} {' '.join(shlex.quote(a) for a in args)}"


def continue_hint(run_dir: os.PathLike) -> str:
    """What to do to continue: a requeued SLURM job continues by itself, anything else by command."""
    from minimind import env

    if env.in_submitit_job():
        return "submitit requeues the job and it continues from this checkpoint"
    return f"to continue: {continue_command(run_dir)}"


def sweep_dir() -> Optional[Path]:
    """The sweep folder of a -m job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(str(HydraConfig.get().sweep.dir))
    return None


# --------------------------------------------------------------------------- refused runs


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class RunFolderCallback(Callback):
    """``hydra.callbacks.run_folder``: before Hydra creates a single run's folder, note whether
    it exists, and which of its parents do (they go too if this run created them)."""

    def on_run_start(self, config, **kwargs) -> None:
        try:
            run_dir = Path(str(config.hydra.run.dir)).absolute()
        except Exception:  # noqa: BLE001 - never stop a run over this bookkeeping
            return
        if run_dir.exists():
            return
        first_existing = run_dir.parent
        while not first_existing.exists() and first_existing != first_existing.parent:
            first_existing = first_existing.parent
        _CREATED[str(run_dir)] = first_existing


def _only_hydra_files(run_dir: Path, log_name: str) -> bool:
    for entry in run_dir.iterdir():
        if entry.name == ".hydra" and entry.is_dir():
            if any(f.name not in _HYDRA_FILES or not f.is_file() for f in entry.iterdir()):
                return False
        elif not (entry.name in (log_name, LOCK_NAME) and entry.is_file()):
            return False
    return True


def remove_if_refused(run_dir: os.PathLike) -> bool:
    """Delete ``run_dir`` if this process created it (a single run, not a sweep job) and it holds
    only ``.hydra/`` and the log file; then its parents that this run created and left empty.
    Returns whether the folder is gone."""
    from minimind import env

    run_dir = Path(run_dir).absolute()
    stop_at = _CREATED.get(str(run_dir))
    if stop_at is None or env.rank() != 0 or sweep_dir() is not None or not run_dir.is_dir():
        return False
    log_name = "train.log"
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            log_name = f"{HydraConfig.get().job.name}.log"
    except ImportError:
        pass
    if not _only_hydra_files(run_dir, log_name):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    while parent != stop_at and parent != parent.parent:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent
    _CREATED.pop(str(run_dir), None)
    return not run_dir.exists()


def recorded_weights(run_dir: os.PathLike) -> List[str]:
    """The inference weights a run wrote, as it recorded them: summary.json's ``weights``, else
    those of its last checkpoint event (a run killed before its end). ``generate`` and ``export``
    read them: they may be in ``loop.save_dir``, outside the run folder."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            paths = json.load(f).get("weights") or []
        if paths:
            return list(paths)
    except (OSError, ValueError, AttributeError):
        pass
    last: list = []
    try:
        with open(os.path.join(run_dir, "events.jsonl")) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if event.get("event") == "checkpoint" and event.get("weights"):
                    last = list(event["weights"])
    except OSError:
        pass
    return last
