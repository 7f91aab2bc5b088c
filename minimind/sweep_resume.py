"""Relaunching a sweep: what each of its jobs already did, and running only the rest.

Hydra numbers a sweep's jobs from 0 at every launch and reruns all of them (hydra #3328), so a
sweep whose launching process died, or whose jobs partly failed, starts over and overwrites its
own folders. Here the same ``-m`` command run again with ``hydra.sweep.dir=<that sweep>`` reads
every job's folder first (:func:`read_jobs`):

* ``completed`` (its summary.json and its last attempt say so): not launched again; its result
  is read back and returned to Hydra as that job's return value;
* ``running``: its run folder is locked by a live process (a local job that outlived its
  launcher) or SLURM still has it queued or running (``squeue``, the job ids from submitit's
  folder): not submitted twice; the relaunch waits for it and then reads it like the others;
* ``unfinished`` (killed, preempted, interrupted), ``failed`` and ``new``: launched under their
  own job number, into their own folder, where ``loop.resume=auto`` continues from the last
  checkpoint (a failed job too: after fixing the cause, only its remaining steps run).

A relaunch whose job list differs from the one the sweep was made with (``multirun.yaml``, and
each job's ``.hydra/overrides.yaml``) is refused before anything runs, with the differences.
Jobs are launched in runs of consecutive numbers (the launchers number a batch from its first
job), at most ``max_batch_size`` at once, as the BasicSweeper would. While a submitit launcher
runs them, :class:`JobLines` prints each job's start and end (their output goes to files).

No torch: the launching process only reads files and asks ``squeue``.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from minimind.report import submitit_files
from minimind.report.jobs import TERMINAL, _events_status
from minimind.report.reading import load_yaml, number, read_json, read_jsonl, split_override
from minimind.report.sweep import job_dirs, overrides_on_disk, varying_keys

log = logging.getLogger("minimind.sweep")

POLL_S = 5.0  # how often a relaunch looks at the jobs it waits for


class SweepMismatch(ValueError):
    """The relaunch would run other jobs than the sweep folder holds (the message lists them)."""


@dataclass
class Job:
    num: int
    overrides: List[str]
    folder: Optional[Path] = None
    state: str = "new"  # completed | running | unfinished | failed | new
    detail: str = ""
    result: Any = None
    summary: Dict[str, Any] = field(default_factory=dict)


def _show(overrides: Optional[Sequence[str]], other: Optional[Sequence[str]], common: frozenset = frozenset()) -> str:
    """One side of a difference: its overrides that the other side lacks (and that not every job
    shares)."""
    if overrides is None:
        return "(no such job)"
    shown = [o for o in overrides if o not in common and (other is None or o not in other)]
    return " ".join(shown) or "(the same overrides in another order)"


def differences(before: Sequence[Sequence[str]], now: Sequence[Sequence[str]], ordered: bool = True) -> List[str]:
    """``job N: <before> -> <now>`` for every job number whose overrides differ."""
    lists = [set(x) for x in list(before) + list(now)]
    common = frozenset(set.intersection(*lists)) if lists else frozenset()
    out = []
    for n in range(max(len(before), len(now))):
        a = list(before[n]) if n < len(before) else None
        b = list(now[n]) if n < len(now) else None
        same = a == b if ordered else (a is not None and b is not None and sorted(a) == sorted(b))
        if not same:
            out.append(f"job {n}: {_show(a, b, common)} -> {_show(b, a, common)}")
    return out


def mismatch(sweep_dir: Path, what: str, diffs: List[str]) -> SweepMismatch:
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    return SweepMismatch(f"hydra.sweep.dir={sweep_dir} holds {what} that this command would change: {shown}. "
                         "Relaunch it with the overrides it was made with, or give a new hydra.sweep.dir")


def previous_jobs(sweep_dir: Path) -> Optional[List[List[str]]]:
    """The job list the sweep folder was made with (its ``multirun.yaml``), None if there is none."""
    from minimind.report.hydra_sweep import expand_sweep

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        data = load_yaml(path)
        return expand_sweep(data if isinstance(data, dict) else {})[0]
    except Exception:  # noqa: BLE001 - another sweeper's folder: the jobs' own overrides still count
        return None


def check_job_list(sweep_dir: Path, jobs: Sequence[Sequence[str]], ordered: bool = True) -> None:
    """Raise :class:`SweepMismatch` when ``jobs`` are not the jobs this sweep folder was made
    with: its ``multirun.yaml``'s list, and the overrides each existing job folder records."""
    before = previous_jobs(sweep_dir)
    if before is not None:
        diffs = differences(before, jobs, ordered)
        if diffs:
            raise mismatch(sweep_dir, f"a sweep of {len(before)} jobs", diffs)
    if sweep_dir.is_dir():
        folders = job_dirs(sweep_dir)
        diffs = []
        for num, folder in sorted(folders.items()):
            on_disk = overrides_on_disk(folder)
            if on_disk is None:
                continue
            want = list(jobs[num]) if num < len(jobs) else None
            same = want == on_disk if ordered else (want is not None and sorted(want) == sorted(on_disk))
            if not same:
                diffs.append(f"job {num} ({folder.name}/): {_show(on_disk, want)} -> {_show(want, on_disk)}")
        if diffs:
            raise mismatch(sweep_dir, "job folders", diffs)


def refuse_if_different(sweep_dir: Path, jobs: Sequence[Sequence[str]], ordered: bool = True) -> None:
    """:func:`check_job_list` for a sweeper: the refusal is one logged line and exit code 2."""
    try:
        check_job_list(sweep_dir, jobs, ordered)
    except SweepMismatch as e:
        log.error("%s", e)
        raise SystemExit(2) from None


def live_slurm_jobs(sweep_dir: Path) -> Dict[int, str]:
    """Job number -> ``"<SLURM id> (<state>)"`` for the sweep's jobs SLURM still has queued or
    running (the ids submitit's folder records, against ``squeue``); {} without SLURM."""
    if not submitit_files.submitted_to_slurm(sweep_dir) or shutil.which("squeue") is None:
        return {}  # local jobs (their ids are pids) are seen by their run folders' locks
    ids = submitit_files.job_ids(sweep_dir)
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%o"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("squeue did not answer (%s): the sweep's SLURM jobs count as not running", e)
        return {}
    if out.returncode != 0:
        log.warning("squeue failed (%s): the sweep's SLURM jobs count as not running", out.stderr.strip())
        return {}
    # a job's command is its submission script in the sweep's submitit folder: a job id that a
    # fresh cluster gave to another job (ids restart at 1) is not this sweep's
    mine = str((sweep_dir / submitit_files.FOLDER).resolve())
    states: Dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and (parts[2].startswith(mine) or not parts[2].startswith("/")):
            states[parts[0].strip()] = parts[1].strip()
    live: Dict[int, str] = {}
    for job_id, num in sorted(ids.items()):
        if job_id in states:
            live[num] = f"SLURM job {job_id} ({states[job_id]})"
    return live


def read_job(num: int, overrides: List[str], folder: Optional[Path], live: Dict[int, str]) -> Job:
    """What job ``num`` did, from its folder, its run-folder lock and SLURM's queue."""
    from minimind.files import list_checkpoints
    from minimind.runlock import busy_message

    job = Job(num, list(overrides), folder)
    if num in live:
        job.state, job.detail = "running", live[num]
        return job
    if folder is None or not folder.is_dir():
        return job
    busy = busy_message(folder)
    if busy:
        holder = re.search(r"in use by a live run \((pid \d+ on \S+, running since [^:]+:\d+:\d+)", busy)
        job.state, job.detail = "running", f"its run folder is locked by {holder.group(1)}" if holder else busy
        return job
    job.summary = read_json(folder / "summary.json") or {}
    state, _, error, _ = _events_status(read_jsonl(folder / "events.jsonl"))
    status = job.summary.get("status")
    if status == "completed" and state in ("completed", None) and "result" in job.summary:
        job.state, job.result = "completed", job.summary["result"]
        job.detail = f"{job.summary.get('result_metric', 'result')} {job.result}"
        return job
    saved = list_checkpoints(folder / "checkpoints")
    if status == "failed" or state == "failed":
        job.state = "failed"
        job.detail = str(job.summary.get("error") or error or "see its train.log")
    else:
        job.state = "unfinished"
    job.detail += (f"{'; ' if job.detail else ''}continues from {saved[0].name}" if saved
                   else f"{'; ' if job.detail else ''}no checkpoint: starts over")
    return job


def read_jobs(sweep_dir: Path, job_overrides, nums: Optional[Iterable[int]] = None) -> List[Job]:
    """The state of the jobs in ``nums`` (default: every job), in job-number order;
    ``job_overrides[n]`` is job n's override list (a list of lists, or a dict by job number)."""
    folders = job_dirs(sweep_dir) if sweep_dir.is_dir() else {}
    live = live_slurm_jobs(sweep_dir) if sweep_dir.is_dir() else {}
    wanted = range(len(job_overrides)) if nums is None else sorted(nums)
    return [read_job(n, list(job_overrides[n]), folders.get(n), live) for n in wanted]


def say_states(sweep_dir: Path, jobs: Sequence[Job]) -> None:
    """The relaunch's first lines: how many jobs are in which state, and what happens to them."""
    counts: Dict[str, List[int]] = {}
    for j in jobs:
        counts.setdefault(j.state, []).append(j.num)
    what = {"completed": "read back, not run again", "running": "waited for, not submitted again",
            "unfinished": "run again from their last checkpoint, if any", "failed": "run again", "new": "start"}
    parts = [f"{len(v)} {k} ({what[k]}: {_nums(v)})" for k, v in counts.items()]
    log.info("relaunch of %s: %s", sweep_dir, "; ".join(parts))
    for j in jobs:
        if j.state in ("running", "failed", "unfinished"):
            log.info("  job %d %s: %s", j.num, j.state, j.detail)


def _nums(nums: Sequence[int]) -> str:
    return ", ".join(str(n) for n in nums[:12]) + (f", ... ({len(nums)})" if len(nums) > 12 else "")


def wait_for_running(sweep_dir: Path, jobs: List[Job], poll_s: float = POLL_S) -> List[Job]:
    """Wait until no job of ``jobs`` runs elsewhere any more; the jobs, read again."""
    overrides = {j.num: j.overrides for j in jobs}
    waiting = [j.num for j in jobs if j.state == "running"]
    if not waiting:
        return jobs
    log.info("waiting for job(s) %s, still running: they finish where they run", _nums(waiting))
    lines = JobLines(sweep_dir, [j for j in jobs if j.num in waiting], [j.overrides for j in jobs], since=0.0)
    lines.start()
    try:
        while True:
            again = {j.num: j for j in read_jobs(sweep_dir, overrides, waiting)}
            waiting = [n for n, j in again.items() if j.state == "running"]
            if not waiting:
                break
            time.sleep(poll_s)
    finally:
        lines.stop()
    return read_jobs(sweep_dir, overrides, sorted(overrides))


def job_return(job: Job, task_name: str = "train"):
    """A Hydra ``JobReturn`` for a job read from disk: its result, or its error."""
    from hydra.core.utils import JobReturn, JobStatus

    if job.state == "completed":
        return JobReturn(overrides=list(job.overrides), working_dir=str(job.folder), task_name=task_name,
                         status=JobStatus.COMPLETED, _return_value=job.result)
    error = RuntimeError(f"job {job.num} {job.state}: {job.detail or 'no result'}")
    return JobReturn(overrides=list(job.overrides), working_dir=str(job.folder) if job.folder else None,
                     task_name=task_name, status=JobStatus.FAILED, _return_value=error)


def consecutive_chunks(nums: Sequence[int], size: Optional[int]) -> List[List[int]]:
    """``nums`` (sorted) cut into runs of consecutive numbers of at most ``size`` (None: any)."""
    chunks: List[List[int]] = []
    for n in sorted(nums):
        if chunks and n == chunks[-1][-1] + 1 and (size is None or len(chunks[-1]) < size):
            chunks[-1].append(n)
        else:
            chunks.append([n])
    return chunks


def is_slurm(config) -> bool:
    return str(config.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher")


def uses_submitit(config) -> bool:
    return "submitit" in str(config.hydra.launcher.get("_target_", ""))


def launch_jobs(launcher, config, sweep_dir: Path, jobs: Sequence[Job], all_overrides: Sequence[Sequence[str]],
                validate=None) -> Dict[int, Any]:
    """Launch ``jobs`` (one chunk of consecutive numbers) under their own numbers; job number ->
    JobReturn. A launcher that raises for a failed job (submitit's ``results()``) loses no other
    job's result: they are read back from the folders."""
    batch = [list(j.overrides) for j in jobs]
    if validate is not None:
        validate(batch)
    lines = JobLines(sweep_dir, jobs, all_overrides) if uses_submitit(config) else None
    if lines:
        lines.start()
    returns: Dict[int, Any] = {}
    try:
        results = launcher.launch(batch, initial_job_idx=jobs[0].num)
        returns = {j.num: r for j, r in zip(jobs, results)}
    except Exception as e:  # noqa: BLE001 - submitit raises for the first failed job of the batch
        log.debug("the launcher raised %s: the jobs' folders tell how each ended", e)
    finally:
        if lines:
            lines.stop()
    missing = [j.num for j in jobs if j.num not in returns]
    if missing:
        overrides = {j.num: j.overrides for j in jobs}
        for j in read_jobs(sweep_dir, overrides, missing):
            returns[j.num] = job_return(j)
    return returns


def report_failures(sweep_dir: Path, returns: Dict[int, Any]) -> List[int]:
    """Log one line per failed job (its error, its folder); their numbers."""
    from hydra.core.utils import JobStatus

    failed = [num for num in sorted(returns) if returns[num].status != JobStatus.COMPLETED]
    folders = job_dirs(sweep_dir) if failed and sweep_dir.is_dir() else {}
    for num in failed:
        error = str(returns[num]._return_value).strip()
        log.error("job %d failed: %s (folder %s)", num, error.splitlines()[-1] if error else
                  type(returns[num]._return_value).__name__, folders.get(num, "none"))
    return failed


def sweep_grid(sweeper, arguments: List[str]) -> Any:
    """:class:`hydra_plugins.minimind_sweepers.GridSweeper`'s ``sweep``: the BasicSweeper's jobs,
    resumable. Returns the JobReturns (one list, by job number); exits 1 after the last job when
    any job failed (the same command reruns them)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    config = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    overrides = parser.parse_overrides(sweeper._parse_config() + list(arguments))
    all_jobs = BasicSweeper.split_arguments(overrides, None)[0]
    sweeper.overrides = BasicSweeper.split_arguments(overrides, sweeper.max_batch_size)
    sweeper.batch_index = len(sweeper.overrides)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    relaunch = (sweep_dir / "multirun.yaml").is_file() or (sweep_dir.is_dir() and bool(job_dirs(sweep_dir)))
    refuse_if_different(sweep_dir, all_jobs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")

    jobs = read_jobs(sweep_dir, all_jobs)
    if relaunch:
        say_states(sweep_dir, jobs)
    returns = {j.num: job_return(j) for j in jobs if j.state == "completed"}
    running = [j for j in jobs if j.state == "running"]
    todo = [j for j in jobs if j.state not in ("completed", "running")]

    def run(batch: List[Job]) -> None:
        by_num = {j.num: j for j in batch}
        for chunk in consecutive_chunks(sorted(by_num), sweeper.max_batch_size):
            returns.update(launch_jobs(sweeper.launcher, config, sweep_dir, [by_num[n] for n in chunk], all_jobs,
                                       sweeper.validate_batch_is_legal))

    def settle(waited: List[Job]) -> List[Job]:
        again = wait_for_running(sweep_dir, waited)
        returns.update({j.num: job_return(j) for j in again if j.state == "completed"})
        return [j for j in again if j.state != "completed"]  # preempted, failed: launched

    if running and not is_slurm(config):  # local jobs hold this machine's cores: wait first
        todo, running = sorted(todo + settle(running), key=lambda j: j.num), []
    run(todo)
    if running:  # SLURM runs them elsewhere: the new jobs went first
        run(settle(running))
    failed = report_failures(sweep_dir, returns)
    if failed:
        log.error("%d of %d jobs failed (%s); after fixing the cause, the same command with "
                  "hydra.sweep.dir=%s reruns only them", len(failed), len(all_jobs), _nums(failed), sweep_dir)
        raise SystemExit(1)
    return [[returns[n] for n in sorted(returns)]]


class JobLines:
    """Prints, from a thread of the launching process, each job's start and end as its folder
    shows them (events.jsonl, summary.json): submitit's jobs write their output to files, so
    without these lines a local sweep is silent for its whole run."""

    def __init__(self, sweep_dir: Path, jobs: Sequence[Job], all_overrides: Sequence[Sequence[str]],
                 poll_s: float = 1.0, since: Optional[float] = None):
        self.sweep_dir = sweep_dir
        self.jobs = list(jobs)
        keys = set(varying_keys([list(o) for o in all_overrides]))
        self.label = {j.num: " ".join(o for o in j.overrides if split_override(o)[0] in keys) or "-" for j in jobs}
        self.poll_s = poll_s
        # since: the events that count (default: from now); 0 for jobs waited on, whose start
        # (before this process) is taken silently and whose end is said
        self.t0 = time.time() if since is None else since
        self.quiet_start = since is not None
        self.started: Dict[int, float] = {}
        self.ended: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-job-lines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()  # the ends the last interval missed

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a progress line is never worth a crash
                log.debug("job lines: %s", e)

    def poll(self) -> None:
        folders = job_dirs(self.sweep_dir)
        for j in self.jobs:
            folder = folders.get(j.num)
            if folder is None or j.num in self.ended:
                continue
            events = [e for e in read_jsonl(folder / "events.jsonl") if (number(e.get("time")) or 0) >= self.t0]
            starts = [i for i, e in enumerate(events) if e.get("event") == "start"]
            if not starts:
                continue
            first = events[starts[-1]]  # the attempt now running (a requeue starts another)
            if j.num not in self.started:
                self.started[j.num] = number(first.get("time")) or time.time()
                if not self.quiet_start:
                    resumed = starts[-1] > 0 and events[starts[-1] - 1].get("event") == "resume"
                    how = f"resumes at step {first.get('step')}" if resumed else "from step 0"
                    log.info("job %d started (%s of %s steps): %s -> %s", j.num, how, first.get("total_steps"),
                             self.label[j.num], folder)
            end = next((e for e in events[starts[-1] + 1:] if e.get("event") in TERMINAL), None)
            if end is None:
                continue
            self.ended.add(j.num)
            summary = read_json(folder / "summary.json") or {}
            took = (number(end.get("time")) or time.time()) - self.started[j.num]
            if end.get("event") == "completed":
                result = number(summary.get("result"))
                shown = f"{summary.get('result_metric', 'result')} {result:.4f}" if result is not None else "no result"
                log.info("job %d completed in %.0f s: %s, %s steps", j.num, took, shown,
                         summary.get("optimizer_steps"))
            else:
                log.info("job %d %s after %.0f s: %s", j.num, end.get("event"), took,
                         end.get("error") or end.get("reason") or "see its train.log")
