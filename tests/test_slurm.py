"""Sweeps through a real SLURM cluster (hydra-submitit-launcher), requeue and the report.

CI starts a one-node cluster (../shared/slurm/start-slurm.sh) and sets MINIMIND_REQUIRE_SLURM=1,
so these tests cannot skip there; elsewhere they skip when no cluster answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import FAST, LAUNCH, compose, run_launch

# jobs here are CPU jobs (the overrides)
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=10"]


def cluster_answers() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "up" in r.stdout


@pytest.fixture(scope="module")
def slurm():
    if not cluster_answers():
        if os.environ.get("MINIMIND_REQUIRE_SLURM") == "1":
            pytest.fail("MINIMIND_REQUIRE_SLURM=1 but no SLURM cluster answers (sinfo)")
        pytest.skip("no SLURM cluster answers here (sinfo); .ci/run starts a one-node cluster and sets "
                    "MINIMIND_REQUIRE_SLURM=1, which makes these tests fail instead of skipping")


def sweep_dir(tmp_path: Path) -> Path:
    # job ids restart at 1 on a fresh cluster: a fresh folder per sweep keeps stale results out
    return tmp_path / f"sweep-{uuid.uuid4().hex[:8]}"


def report(sweep: Path):
    from minimind.report import collect

    r = run_launch([str(sweep)], cwd=sweep.parent, module=["-m", "minimind.report"])
    assert r.returncode == 0, r.stdout + r.stderr
    return collect(sweep), r.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_two_by_two_sweep_runs_four_jobs_and_reports(slurm, tmp_path):
    sweep = sweep_dir(tmp_path)
    r = run_launch(["-m", "optim.grad_clip=0.5,1.0", "optim.accumulation_steps=1,2", *SLURM, *FAST,
                    "loop.max_steps=8", "loop.log_interval=2", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    rows, table = report(sweep)
    assert len(rows) == 4
    assert [row["status"] for row in rows] == ["completed"] * 4
    assert {(row["params"]["optim.grad_clip"], row["params"]["optim.accumulation_steps"]) for row in rows} \
        == {("0.5", "1"), ("0.5", "2"), ("1.0", "1"), ("1.0", "2")}
    assert all(row["optimizer_steps"] == 8 for row in rows)
    png = sweep / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (sweep / "report.csv").read_text().count("\n") == 5
    # one stable folder per job, its SLURM array job's submitit files beside them
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    assert any((sweep / ".submitit").iterdir())


def wait_for(predicate, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(what)


def job_id_of(job_dir: Path):
    """The SLURM job id of a sweep job, from the submitit folder beside it."""
    subs = [p.name for p in (job_dir.parent / ".submitit").iterdir()] if (job_dir.parent / ".submitit").exists() else []
    return subs[0] if subs else None


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_and_a_failed_job_is_reported(slurm, tmp_path):
    """SIGUSR2 (what SLURM sends before a time limit / preemption) -> checkpoint -> requeue ->
    the requeued job continues from that checkpoint. The sweep's second job fails at once."""
    sweep = sweep_dir(tmp_path)
    args = ["-m", "optim.accumulation_steps=1,0", *SLURM, *FAST, "loop.max_steps=400",
            "loop.save_interval=25", "loop.log_interval=25", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(LAUNCH)] + args, cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = sweep / "0"
    wait_for(lambda: (job / "checkpoints").is_dir() and any((job / "checkpoints").glob("step_*.pt")),
             300, "no checkpoint from job 0")
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split()
    array_task = next(j for j in jobs if j.endswith("_0"))
    subprocess.run(["scancel", "--signal=USR2", array_task], check=True)
    out, _ = proc.communicate(timeout=600)
    events = [json.loads(x) for x in (job / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("start") == 2, names  # started, requeued once
    assert "interrupted" in names and names[-1] == "completed"
    second_start = [e for e in events if e["event"] == "start"][1]
    assert second_start["step"] > 0  # the step count did not restart
    assert "resumed from" in (job / "train.log").read_text()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 400
    assert summary["resumed_from"].endswith(f"step_{second_start['step']:08d}.pt")

    rows, table = report(sweep)
    assert len(rows) == 2
    assert rows[0]["status"] == "completed (requeued 1x)"
    assert rows[1]["state"] == "failed"
    assert "accumulation_steps=0 is invalid" in rows[1]["error"]
    assert "failed" in table and "requeued 1x" in table


def test_launcher_config_gives_the_sbatch_parameters(tmp_path, monkeypatch):
    """The slurm launcher config -> submitit executor parameters -> the sbatch header."""
    import submitit
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                   "hydra.launcher.tasks_per_node=4", "hydra.launcher.account=proj",
                   f"hydra.sweep.dir={tmp_path}/sweep", "+hydra.launcher.additional_parameters.constraint=a100"],
                  fast=False, return_hydra_config=True)
    recorded = {}

    class FakeJob:
        def results(self):
            r = JobReturn()
            r.status, r._return_value = JobStatus.COMPLETED, 0.0
            return [r]

    class FakeExecutor:
        def __init__(self, **kwargs):
            recorded["init"] = kwargs

        def update_parameters(self, **kwargs):
            recorded["params"] = kwargs

        def map_array(self, fn, *args):
            recorded["jobs"] = list(zip(*args))
            return [FakeJob() for _ in recorded["jobs"]]

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    launcher.launch([["optim.grad_clip=0.3"], ["optim.grad_clip=1.0"]], initial_job_idx=0)

    assert recorded["init"]["folder"] == f"{tmp_path}/sweep/.submitit/%j"
    assert recorded["init"]["slurm_max_num_timeout"] == 5
    p = recorded["params"]
    assert p["gpus_per_node"] == 4 and p["tasks_per_node"] == 4 and p["nodes"] == 1
    assert p["timeout_min"] == 240 and p["cpus_per_task"] == 8 and p["mem_gb"] == 64
    assert p["slurm_partition"] == "gpu" and p["slurm_account"] == "proj"
    assert p["slurm_signal_delay_s"] == 120 and p["slurm_array_parallelism"] == 16
    assert p["slurm_additional_parameters"] == {"constraint": "a100"}
    assert [j[2] for j in recorded["jobs"]] == [0, 1]  # job numbers -> the stable job folders 0, 1

    # and what sbatch receives, rendered by submitit's own SLURM executor
    from submitit.slurm.slurm import _make_sbatch_string

    slurm_params = {k[len("slurm_"):]: v for k, v in p.items() if k.startswith("slurm_")}
    slurm_params.pop("array_parallelism")
    text = _make_sbatch_string(command="python -m x", folder=tmp_path, job_name="train",
                               nodes=p["nodes"], gpus_per_node=p["gpus_per_node"],
                               ntasks_per_node=p["tasks_per_node"], cpus_per_task=p["cpus_per_task"],
                               mem=f"{p['mem_gb']}GB", time=p["timeout_min"], **slurm_params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --signal=USR2@120", "#SBATCH --time=240", "#SBATCH --account=proj",
                 "#SBATCH --constraint=a100", "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8"):
        assert line in text, line
    OmegaConf.to_yaml(cfg.hydra.launcher)  # the node resolves


@pytest.mark.slurm
@pytest.mark.slow
def test_ddp_job_with_two_slurm_tasks(slurm, tmp_path):
    """tasks_per_node=2 + dist=ddp: submitit starts two tasks; the ranks come from SLURM_* variables."""
    sweep = sweep_dir(tmp_path)
    r = run_launch(["-m", "dist=ddp", "hydra.launcher.tasks_per_node=2", *SLURM, *FAST, "loop.max_steps=6",
                    "loop.log_interval=1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    job = sweep / "0"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    steps = [json.loads(x)["step"] for x in (job / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # written once, by rank 0
    assert "launcher slurm" in (job / "train.log").read_text()


def test_a_slurm_task_uses_the_cpus_it_was_given(monkeypatch):
    import torch

    from minimind.train import _respect_cpu_allocation

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        _respect_cpu_allocation(torch)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit setting wins
        torch.set_num_threads(before)
        _respect_cpu_allocation(torch)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


@pytest.mark.slurm
@pytest.mark.slow
def test_killed_launcher_relaunch_waits_for_the_slurm_jobs_without_resubmitting(slurm, tmp_path):
    """The launching process dies while SLURM runs the sweep's jobs; the same command again finds
    them in squeue, submits none of them twice, waits, and reads their results: same job numbers,
    every job trained once from step 0."""
    from test_sweep_resume import start_sweep, starts_from_zero, wait_for

    sweep = sweep_dir(tmp_path)
    args = FAST + SLURM + ["loop.max_steps=600", "loop.save_interval=100", "loop.log_interval=50",
                           "optim.grad_clip=0.5,1.0,2.0", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path, tmp_path / "first.log")
    try:
        wait_for(lambda: (sweep / "0" / "events.jsonl").is_file(), timeout=240)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    submitted = sorted(p.name for p in (sweep / ".submitit").iterdir())
    r = run_launch(["-m"] + args, cwd=tmp_path, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "waited for, not submitted again" in out and "SLURM job " in out
    assert "#0 :" not in out and "#1 :" not in out and "#2 :" not in out  # nothing launched again
    assert sorted(p.name for p in (sweep / ".submitit").iterdir()) == submitted
    assert [starts_from_zero(sweep / str(n)) for n in range(3)] == [1, 1, 1]
    rows, _ = report(sweep)
    assert [r["job"] for r in rows] == [0, 1, 2] and [r["state"] for r in rows] == ["completed"] * 3


@pytest.mark.slurm
@pytest.mark.slow
def test_optuna_study_on_slurm_killed_after_two_trials_ends_with_four(slurm, tmp_path):
    optuna = pytest.importorskip("optuna")
    from test_sweep_resume import start_sweep, starts_from_zero, wait_for

    sweep = sweep_dir(tmp_path)
    args = FAST + SLURM + ["hparams_search=clip_accum", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                           "loop.max_steps=200", "loop.save_interval=50", "loop.log_interval=50",
                           "data.val_size=64", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path, tmp_path / "first.log")

    def done(n):
        path = sweep / str(n) / "summary.json"
        return path.is_file() and json.loads(path.read_text()).get("status") == "completed"
    try:
        wait_for(lambda: done(0) and done(1), timeout=400)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    r = run_launch(["-m"] + args, cwd=tmp_path, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    trials = optuna.load_study(study_name="minimind", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    for t in trials:
        assert starts_from_zero(sweep / str(t.number)) == 1
        assert json.loads((sweep / str(t.number) / "summary.json").read_text())["result"] == pytest.approx(t.value)
