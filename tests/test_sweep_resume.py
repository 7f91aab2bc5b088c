"""Sweeps that a relaunch continues: the job states read from disk, the refusals, and real relaunches.

The end-to-end tests kill the launching process of a real ``launch.py -m`` (no launcher, and
``hydra/launcher=local``, whose jobs outlive it) and run the same command again; the SLURM
versions are in tests/test_slurm.py, the Optuna study in tests/test_sweep_study.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml
from conftest import FAST, LAUNCH, ROOT, run_launch

from minimind import sweep_resume as sr
from minimind.sweep_resume import SweepMismatch

GRID = "hydra_plugins.minimind_sweepers.GridSweeper"
JOBS = [["optim.grad_clip=0.5"], ["optim.grad_clip=1.0"], ["optim.grad_clip=2.0"]]


def write_sweep(sweep: Path, task: List[str]) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    cfg = {"hydra": {"sweeper": {"_target_": GRID, "max_batch_size": None, "params": None},
                     "overrides": {"task": task}, "sweep": {"subdir": "${hydra.job.num}"}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg))


def write_job(sweep: Path, num: int, overrides: List[str], summary: Dict = None, events: List[Dict] = (),
              checkpoints: List[int] = ()) -> Path:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    for step in checkpoints:
        (d / "checkpoints").mkdir(exist_ok=True)
        (d / "checkpoints" / f"step_{step:08d}.pt").write_bytes(b"x")
    return d


# ------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize("nums, size, expected", [
    ([0, 1, 2, 3], None, [[0, 1, 2, 3]]),
    ([0, 1, 2, 3], 2, [[0, 1], [2, 3]]),
    ([1, 3, 4, 5, 9], None, [[1], [3, 4, 5], [9]]),
    ([5, 3, 4], 2, [[3, 4], [5]]),
    ([], 2, []),
])
def test_consecutive_chunks(nums, size, expected):
    assert sr.consecutive_chunks(nums, size) == expected


def test_job_states_from_the_folders(tmp_path):
    sweep = tmp_path / "sw"
    write_sweep(sweep, ["optim.grad_clip=0.5,1.0,2.0,4.0,8.0"])
    jobs = [[f"optim.grad_clip={c}"] for c in ("0.5", "1.0", "2.0", "4.0", "8.0")]
    write_job(sweep, 0, jobs[0], {"status": "completed", "result": 2.5, "result_metric": "val_loss"},
              [{"event": "start", "time": 1}, {"event": "completed", "time": 2}])
    write_job(sweep, 1, jobs[1], {"status": "failed", "error": "ValueError: bad"},
              [{"event": "start", "time": 1}, {"event": "failed", "time": 2, "error": "ValueError: bad"}], [10])
    write_job(sweep, 2, jobs[2], None, [{"event": "start", "time": 1}], [10, 20])  # killed
    # completed once, then relaunched with more steps and killed: not completed
    write_job(sweep, 3, jobs[3], {"status": "completed", "result": 3.0},
              [{"event": "start", "time": 1}, {"event": "completed", "time": 2}, {"event": "start", "time": 3}])
    states = sr.read_jobs(sweep, jobs)
    assert [(j.num, j.state) for j in states] == [(0, "completed"), (1, "failed"), (2, "unfinished"),
                                                   (3, "unfinished"), (4, "new")]
    assert states[0].result == 2.5 and states[0].detail == "val_loss 2.5"
    assert states[1].detail == "ValueError: bad; continues from step_00000010.pt"
    assert states[2].detail == "continues from step_00000020.pt"
    assert states[3].detail == "no checkpoint: starts over"
    r = sr.job_return(states[0])
    assert r.return_value == 2.5 and r.working_dir == str(sweep / "0")


def test_a_job_whose_folder_is_locked_is_running(tmp_path):
    sweep = tmp_path / "sw"
    write_sweep(sweep, ["optim.grad_clip=0.5,1.0,2.0"])
    folder = write_job(sweep, 1, JOBS[1], None, [{"event": "start", "time": 1}])
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from minimind.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(folder)], stdout=subprocess.PIPE, text=True,
        cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        job = sr.read_jobs(sweep, JOBS)[1]
        assert job.state == "running"
        assert job.detail.startswith(f"its run folder is locked by pid {holder.pid} on ")
    finally:
        holder.kill()
        holder.wait()
    assert sr.read_jobs(sweep, JOBS)[1].state == "unfinished"  # the kernel dropped the lock


def test_live_slurm_jobs_from_squeue_and_the_submitit_folder(tmp_path, monkeypatch):
    """The ids submitit recorded, against squeue: a job id of another sweep (a fresh cluster
    reuses ids) does not count."""
    submitit = pytest.importorskip("submitit")
    cloudpickle = pytest.importorskip("cloudpickle")
    sweep = tmp_path / "sw"
    write_sweep(sweep, ["optim.grad_clip=0.5,1.0,2.0"])
    for job_id, num in (("7_0", 0), ("7_1", 1), ("7_2", 2), ("9_0", 1)):
        folder = sweep / ".submitit" / job_id
        folder.mkdir(parents=True)
        with open(folder / f"{job_id}_submitted.pkl", "wb") as f:
            cloudpickle.dump(submitit.helpers.DelayedSubmission(print, JOBS[num], "hydra.sweep.dir", num,
                                                                f"job_id_for_{num}", {}), f)
    mine = (sweep / ".submitit").resolve()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(
        "#!/bin/sh\n"
        f"echo '7_0|COMPLETING|{mine}/.submission_file_1.sh'\n"
        f"echo '9_0|PENDING|{mine}/.submission_file_2.sh'\n"
        "echo '7_2|RUNNING|/elsewhere/.submitit/.submission_file_3.sh'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert sr.live_slurm_jobs(sweep) == {}  # no sbatch script in the folder: local jobs (pids), not asked
    (sweep / ".submitit" / ".submission_file_1.sh").write_text("#!/bin/sh\n")
    assert sr.live_slurm_jobs(sweep) == {0: "SLURM job 7_0 (COMPLETING)", 1: "SLURM job 9_0 (PENDING)"}
    states = sr.read_jobs(sweep, JOBS)
    assert [j.state for j in states] == ["running", "running", "new"]


def test_a_changed_job_list_is_refused_with_the_differences(tmp_path):
    sweep = tmp_path / "sw"
    write_sweep(sweep, ["optim.grad_clip=0.5,1.0,2.0"])
    sr.check_job_list(sweep, JOBS)  # the same jobs: fine
    with pytest.raises(SweepMismatch) as e:
        sr.check_job_list(sweep, [["optim.grad_clip=0.5"], ["optim.grad_clip=1.5"], ["optim.grad_clip=2.0"],
                                  ["optim.grad_clip=4.0"]])
    assert str(e.value) == (
        f"hydra.sweep.dir={sweep} holds a sweep of 3 jobs that this command would change: "
        "job 1: optim.grad_clip=1.0 -> optim.grad_clip=1.5; job 3: (no such job) -> optim.grad_clip=4.0. "
        "Relaunch it with the overrides it was made with, or give a new hydra.sweep.dir")
    # no multirun.yaml, but a job folder that says otherwise
    (sweep / "multirun.yaml").unlink()
    write_job(sweep, 0, ["optim.grad_clip=0.3"])
    with pytest.raises(SweepMismatch, match=r"holds job folders that this command would change: job 0 \(0/\): "
                                            r"optim.grad_clip=0.3 -> optim.grad_clip=0.5"):
        sr.check_job_list(sweep, JOBS)


def test_job_lines_say_each_start_and_end(tmp_path, caplog):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    jobs = [sr.Job(n, o) for n, o in enumerate(JOBS)]
    lines = sr.JobLines(sweep, jobs[:2], JOBS, since=0.0)
    lines.quiet_start = False
    write_job(sweep, 0, JOBS[0], {"status": "completed", "result": 2.25, "result_metric": "val_loss",
                                  "optimizer_steps": 40},
              [{"event": "start", "time": 100.0, "step": 0, "total_steps": 40},
               {"event": "completed", "time": 130.0}])
    write_job(sweep, 1, JOBS[1], None,
              [{"event": "resume", "time": 100.0, "step": 20}, {"event": "start", "time": 100.0, "step": 20,
                                                                "total_steps": 40}])
    with caplog.at_level(logging.INFO, logger="minimind.sweep"):
        lines.poll()
        (sweep / "1" / "events.jsonl").open("a").write(json.dumps({"event": "failed", "time": 112.0,
                                                                   "error": "RuntimeError: boom"}) + "\n")
        lines.poll()
        lines.poll()  # each line once
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"job 0 started (from step 0 of 40 steps): optim.grad_clip=0.5 -> {sweep / '0'}",
        "job 0 completed in 30 s: val_loss 2.2500, 40 steps",
        f"job 1 started (resumes at step 20 of 40 steps): optim.grad_clip=1.0 -> {sweep / '1'}",
        "job 1 failed after 12 s: RuntimeError: boom",
    ]


# ------------------------------------------------------------------------------------ end to end

# long enough (seconds per job here) that the kill lands while job 1 trains
STEPS = ["loop.max_steps=1500", "loop.save_interval=100", "loop.log_interval=50"]


def start_sweep(args: List[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, str(LAUNCH), "-m"] + args, cwd=cwd, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(path_test, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path_test():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def events(folder: Path) -> List[Dict]:
    return [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines() if x.strip()]


def starts_from_zero(folder: Path) -> int:
    return sum(1 for e in events(folder) if e["event"] == "start" and e["step"] == 0)


@pytest.mark.slow
def test_killed_sweep_relaunched_completes_without_training_a_job_twice(tmp_path):
    """No launcher: the jobs run in the launching process. It is SIGKILLed while job 1 trains;
    the same command again reads job 0 back, continues job 1 from its checkpoint, starts job 2."""
    sweep = tmp_path / "sw"
    args = FAST + STEPS + ["optim.grad_clip=0.5,1.0,2.0", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path, tmp_path / "first.log")
    try:
        wait_for(lambda: any((sweep / "1" / "checkpoints").glob("step_*.pt")))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    job0_events = (sweep / "0" / "events.jsonl").read_text()
    r = run_launch(["-m"] + args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "relaunch of" in out and "1 completed (read back, not run again: 0)" in out
    assert "1 unfinished (run again from their last checkpoint, if any: 1)" in out and "1 new (start: 2)" in out
    assert (sweep / "0" / "events.jsonl").read_text() == job0_events  # not launched again
    resumed = [e for e in events(sweep / "1") if e["event"] == "resume"]
    assert len(resumed) == 1 and 100 <= resumed[0]["step"] < 1500
    assert [starts_from_zero(sweep / str(n)) for n in range(3)] == [1, 1, 1]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1", "2"]
    for n in range(3):
        s = json.loads((sweep / str(n) / "summary.json").read_text())
        assert s["status"] == "completed" and s["optimizer_steps"] == 1500
        overrides = yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text())
        assert overrides[-1] == "optim.grad_clip=" + ("0.5", "1.0", "2.0")[n]
    # a third launch: everything is read back, nothing runs
    r = run_launch(["-m"] + args, cwd=tmp_path)
    assert r.returncode == 0 and "3 completed (read back, not run again: 0, 1, 2)" in r.stdout + r.stderr
    assert [starts_from_zero(sweep / str(n)) for n in range(3)] == [1, 1, 1]
    assert "Launching" not in r.stdout + r.stderr


@pytest.mark.slow
def test_a_failed_job_is_rerun_and_a_changed_job_list_refused(tmp_path):
    """Job 1 reads a data file that does not exist yet: it fails, the others complete, the
    sweep exits 1 naming it. With the file in place, the same command reruns only job 1."""
    from minimind.data import asset_path

    sweep = tmp_path / "sw"
    late = tmp_path / "late.jsonl"
    demo = asset_path("demo/sft.jsonl")
    args = FAST + ["loop.max_steps=4", f"data.path={demo},{late}", f"hydra.sweep.dir={sweep}"]
    r = run_launch(["-m"] + args, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "job 1 failed:" in out and f"1 of 2 jobs failed (1); after fixing the cause, the same command with " \
                                      f"hydra.sweep.dir={sweep} reruns only them" in out
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "failed"
    job0 = (sweep / "0" / "events.jsonl").read_text()
    late.write_text(Path(asset_path("demo/sft.jsonl")).read_text()[:200_000].rsplit("\n", 1)[0] + "\n")
    r = run_launch(["-m"] + args, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 completed (read back, not run again: 0); 1 failed (run again: 1)" in out
    assert (sweep / "0" / "events.jsonl").read_text() == job0
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    # another job list into the same folder: refused before Hydra runs, nothing changes
    before = (sweep / "multirun.yaml").read_text()
    r = run_launch(["-m"] + FAST + ["loop.max_steps=4", f"data.path={late}", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"Error: hydra.sweep.dir={sweep} holds a sweep of 2 jobs that this "
                                       "command would change")
    assert f"job 0: data.path={asset_path('demo/sft.jsonl')} -> data.path={late}; job 1: data.path={late} -> " \
           "(no such job)" in r.stderr
    assert (sweep / "multirun.yaml").read_text() == before


@pytest.mark.slow
def test_local_launcher_killed_relaunch_waits_for_its_jobs(tmp_path):
    """hydra/launcher=local: the jobs outlive a SIGKILLed launcher (submitit's controllers), so
    the relaunch finds their folders locked, waits for them without starting them again, and
    then launches only the job that had not started."""
    sweep = tmp_path / "sw"
    # long enough (about 20 s here) that the relaunch finds jobs 0 and 1 still running
    args = FAST + ["loop.max_steps=2000", "loop.save_interval=500", "loop.log_interval=100",
                   "optim.grad_clip=0.5,1.0,2.0", "hydra/launcher=local", "hydra.sweeper.max_batch_size=2",
                   "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path, tmp_path / "first.log")
    try:
        wait_for(lambda: all((sweep / n / "events.jsonl").is_file() for n in ("0", "1")))
    finally:
        proc.kill()  # the launching process only: its jobs are in their own sessions
        proc.wait()
    submitted = sorted(p.name for p in (sweep / ".submitit").iterdir())
    try:
        r = run_launch(["-m"] + args, cwd=tmp_path)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned jobs, should the relaunch have failed
        except ProcessLookupError:
            pass
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "2 running (waited for, not submitted again: 0, 1); 1 new (start: 2)" in out
    assert "job 0 completed in" in out and "job 1 completed in" in out and "job 2 completed in" in out
    assert "#0 :" not in out and "#1 :" not in out and "#2 :" in out
    assert [starts_from_zero(sweep / str(n)) for n in range(3)] == [1, 1, 1]
    assert len(list((sweep / ".submitit").iterdir())) == len(submitted) + 1  # job 2's only
