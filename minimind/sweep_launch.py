"""What the launching process of a ``-m`` sweep says and decides before and after Hydra runs it.

Before: the sweep folder, fixed once (``hydra.sweep.dir=<resolved>`` is added when the command
does not set it, so the folder printed is the folder used, not a second later's), and, for
``hydra/launcher=local``, the jobs sized to this machine's cores (``os.sched_getaffinity``):
submitit's local executor starts every job of a launch batch at once and ignores
``cpus_per_task``, and each torch process opens one thread per core, so 4 jobs on 2 cores ran
at 189-328 tok/s each, slower in total than one after another. The launching process therefore
sets how many run at once (``hydra.sweeper.max_batch_size``: the BasicSweeper launches a batch
and waits for it; job numbers do not change) and the threads of each (``OMP_NUM_THREADS``, which
the job processes inherit), or refuses, in one line with the numbers, a setting that asks for
more CPUs than there are.

After: one line with the jobs' states, the sweep folder and the report command.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from minimind.plan import PlanError, expand

_SWEEP: Dict[str, str] = {}  # the sweep folder of this process's -m command, for the final line


def cores() -> int:
    """The cores this process may run on (a cgroup / taskset limit included, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def size_local(jobs: int, n_cores: int, cpus: Optional[int] = None, tasks: int = 1,
               at_once: Optional[int] = None) -> Tuple[int, int]:
    """``(jobs at once, threads per task)`` for ``jobs`` local jobs on ``n_cores`` cores; what the
    command set (``cpus`` per task, ``tasks`` per job, ``at_once``) is kept, and refused with
    :class:`PlanError` when it needs more CPUs than there are."""
    tasks = max(1, int(tasks or 1))
    if cpus is None:  # split the cores between the jobs that run at once
        want = at_once or min(jobs, max(1, n_cores // tasks))
        cpus = max(1, n_cores // (max(1, want) * tasks))
    if cpus * tasks > n_cores:
        raise PlanError(f"hydra/launcher=local: one job needs {tasks} task(s) x {cpus} CPUs = {cpus * tasks} CPUs, "
                        f"this machine has {n_cores} cores (os.sched_getaffinity); set "
                        f"hydra.launcher.cpus_per_task={max(1, n_cores // tasks)} or fewer")
    if at_once is None:
        at_once = max(1, min(jobs, n_cores // (cpus * tasks)))
    running = min(at_once, jobs)
    if running * cpus * tasks > n_cores:
        raise PlanError(f"hydra/launcher=local would run {running} jobs at once x {tasks} task(s) x {cpus} CPUs = "
                        f"{running * cpus * tasks} CPUs on {n_cores} cores (os.sched_getaffinity); set "
                        f"hydra.sweeper.max_batch_size={max(1, n_cores // (cpus * tasks))} or lower "
                        "hydra.launcher.cpus_per_task")
    return at_once, cpus


def override(key: str, value: str) -> str:
    """``key=value`` as the override grammar reads it back: quoted unless plain."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return f"{key}={value}"
    # Hydra's quoted values: backslashes are literal except before a quote or at the end
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"{key}='{text}'"


def _is_local(base) -> bool:
    return str(base.hydra.launcher.get("_target_", "")).endswith(".LocalLauncher")


def _size(base, jobs: int, env) -> Tuple[int, int]:
    launcher = base.hydra.launcher
    cpus = launcher.get("cpus_per_task")
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cpus = int(omp)  # it wins in every job: count what the jobs will use
    # the Optuna sweeper launches n_jobs trials at a time, the grid max_batch_size jobs
    at_once = base.hydra.sweeper.get("n_jobs") if _is_optuna(base) else base.hydra.sweeper.get("max_batch_size")
    return size_local(jobs, cores(), cpus, launcher.get("tasks_per_node") or 1, at_once)


def local_sizing(base, jobs: int, env: Optional[Dict[str, str]] = None) -> str:
    """What :func:`prepare` will decide for the local launcher, in words (for the plan)."""
    at_once, cpus = _size(base, jobs, os.environ if env is None else env)
    return f"{min(at_once, jobs)} at a time x {cpus} thread(s) on {cores()} cores"


def _is_optuna(base) -> bool:
    return str(base.hydra.sweeper.get("_target_", "")).endswith(".OptunaSweeper")


def prepare(args: Sequence[str], env: Optional[Dict[str, str]] = None) -> List[str]:
    """The overrides to add to a ``-m`` command line (the sweep folder; for the local launcher
    the sizing), after printing the sweep's first line. Sets ``OMP_NUM_THREADS`` in ``env``
    (default: this process's) for the local jobs. Raises :class:`PlanError` (one line): for a
    relaunch (``hydra.sweep.dir=`` given) whose job list differs from the sweep's too."""
    from minimind.plan import compose_command

    env = os.environ if env is None else env
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        composed = compose_command(overrides)
        base = composed[0]
        study = _is_optuna(base)
        if study:
            n_trials, at_once = int(base.hydra.sweeper.n_trials), int(base.hydra.sweeper.n_jobs)
            jobs: List[List[str]] = []
        else:
            base, jobs, _, _ = expand(overrides, composed)
            n_trials = at_once = len(jobs)
    except PlanError:
        return []  # Hydra says what is wrong with it (or another sweeper runs it)
    hydra_side = composed[1]
    extra: List[str] = []
    given = {o.split("=", 1)[0].lstrip("+") for o in hydra_side}
    sweep_dir = str(base.hydra.sweep.dir)
    if "hydra.sweep.dir" not in given:
        extra.append(override("hydra.sweep.dir", sweep_dir))
    elif not study:  # a relaunch: the same jobs or none (sweep_resume)
        from pathlib import Path

        from minimind.sweep_resume import SweepMismatch, check_job_list

        try:
            check_job_list(Path(sweep_dir), jobs)
        except SweepMismatch as e:
            raise PlanError(str(e)) from None
    _SWEEP["dir"] = sweep_dir
    how = "one after another in this process"
    if _is_local(base):
        launcher = base.hydra.launcher
        n = cores()
        at_once_local, cpus = _size(base, at_once, env)
        if not study and base.hydra.sweeper.get("max_batch_size") is None:
            extra.append(f"hydra.sweeper.max_batch_size={at_once_local}")
        if launcher.get("cpus_per_task") is None:
            extra.append(f"hydra.launcher.cpus_per_task={cpus}")
        env.setdefault("OMP_NUM_THREADS", str(cpus))
        how = (f"local: {min(at_once_local, at_once)} at a time x {cpus} thread(s) on {n} cores "
               "(os.sched_getaffinity)")
    elif str(base.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher"):
        parallel = base.hydra.launcher.get("array_parallelism")
        how = (f"SLURM: one job each, {min(at_once, parallel or at_once)} at a time at most"
               + (f", {at_once} trials asked at a time" if study else ""))
    elif study and at_once > 1:
        how = f"{at_once} trials asked at a time, run one after another in this process"
    what = (f"Optuna study of {n_trials} trials" if study else f"{n_trials} job{'s' if n_trials != 1 else ''}")
    print(f"sweep: {what} in {sweep_dir} ({how})", flush=True)
    return extra


def finish() -> None:
    """The sweep's last line: how its jobs ended, where they are, the report command."""
    sweep_dir = _SWEEP.pop("dir", None)
    if not sweep_dir:
        return
    states = ""
    try:
        from minimind.report import collect

        counts: Dict[str, int] = {}
        for r in collect(sweep_dir):
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        states = ": " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    except Exception:  # noqa: BLE001 - the folder is still worth saying
        pass
    print(f"sweep done{states}; folder {sweep_dir}; compare the jobs: python -m minimind.report {sweep_dir}",
          flush=True)


def before_hydra(argv: List[str]) -> None:
    """For entry points: extend ``argv`` (sys.argv) for a ``-m`` command, or exit 2 with one line."""
    if not any(a in ("-m", "--multirun") for a in argv[1:]) or any(a in ("--cfg", "-c", "--info") for a in argv):
        return
    try:
        argv += prepare(argv[1:])
    except PlanError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
