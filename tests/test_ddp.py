"""DDP on CPU with gloo, real processes: torchrun and a simulated 2-task SLURM step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, LAUNCH, ROOT, run_launch

pytestmark = pytest.mark.slow

RUN = FAST + ["data.shuffle=true", "optim.accumulation_steps=2", "loop.log_interval=1",
              "loop.save_interval=4", "loop.max_steps=12", "optim.lr=2e-3", "dist.timeout_s=60"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, cwd, nproc=2, env=None, timeout=300, script=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script or LAUNCH)] + list(args)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def final_model(run_dir: Path) -> dict:
    ckpt = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(ckpt, weights_only=True)


def metric_lines(run_dir: Path):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    r = torchrun(RUN + ["dist=ddp", "data.batch_size=2", f"hydra.run.dir={d}/run"], cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d / "run", r


def test_torchrun_two_ranks_end_to_end_each_file_once(two_rank_run):
    run, proc = two_rank_run
    steps = [m["step"] for m in metric_lines(run)]
    assert steps == list(range(1, 13))  # one line per step, not one per rank
    events = [json.loads(x)["event"] for x in (run / "events.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("completed") == 1
    log = (run / "train.log").read_text()
    assert log.count("Epoch:[1/1](12/12)") == 1
    assert "rank 1/2" not in log  # only rank 0 writes the log file
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000008.pt", "step_00000012.pt"]
    state = final_model(run)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 12


def test_two_ranks_equal_one_rank_with_twice_the_batch(two_rank_run, tmp_path):
    run2, _ = two_rank_run
    r = run_launch(RUN + ["data.batch_size=4", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = final_model(tmp_path / "run")["model"], final_model(run2)["model"]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
    # and the logged (global) loss of every step agrees
    for a, b in zip(metric_lines(tmp_path / "run"), metric_lines(run2)):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)


PROBE = r'''
import os, sys
sys.path.insert(0, os.environ["TESTS_DIR"])
from ddp_probe import run
from torch.utils.data import default_collate

run([], 3, lambda ds, r, w: [default_collate([ds[(w * 8 + m * 2 + r) * 2 + i] for i in range(2)]) for m in range(4)])
'''


def test_one_gradient_all_reduce_per_window(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    r = torchrun([], cwd=tmp_path, script=script,
                 env={"TESTS_DIR": str(ROOT / "tests"), "OUT_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    # 4 micro-steps per window, one bucket: one all-reduce per window (no_sync before the last)
    assert json.loads((tmp_path / "allreduce.json").read_text()) == [1, 1, 1]


def slurm_env(rank: int, port: int, job: str = "4242") -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC"))}
    env.update({"SLURM_JOB_ID": job, "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
                "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_ID": "0", "MASTER_PORT": str(port),
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return env


def start_slurm_tasks(args, cwd, port):
    return [subprocess.Popen([sys.executable, str(LAUNCH)] + args, cwd=cwd, env=slurm_env(r, port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]


def test_simulated_slurm_two_tasks_match_torchrun(two_rank_run, tmp_path):
    procs = start_slurm_tasks(RUN + ["dist=ddp", "data.batch_size=2"], tmp_path, free_port())
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = list((tmp_path / "outputs" / "slurm").iterdir())
    assert [p.name for p in runs] == ["4242.0"]  # both tasks derived the same run dir
    assert "launcher slurm" in (runs[0] / "train.log").read_text()
    a, b = final_model(runs[0])["model"], final_model(two_rank_run[0])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same layout, same numbers


def test_a_dead_rank_ends_the_job_with_an_error(tmp_path):
    """Rank 1 dies at step 3 (SIGKILL): rank 0 must not hang; the job exits non-zero."""
    killer = tmp_path / "kill_rank1.py"
    killer.write_text(
        "import os, signal, sys, runpy\n"
        "import minimind.loop as loop\n"
        "real = loop.Trainer.step\n"
        "def step(self, window):\n"
        "    if self.dist.rank == 1 and self.progress.step == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, window)\n"
        "loop.Trainer.step = step\n"
        f"sys.argv = [{str(LAUNCH)!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    port = free_port()
    args = RUN + ["dist=ddp", "data.batch_size=2", "dist.timeout_s=20", f"hydra.run.dir={tmp_path}/run"]
    procs = [subprocess.Popen([sys.executable, str(killer)] + args, cwd=tmp_path, env=slurm_env(r, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    # rank 0 must end on its own (communicate raises TimeoutExpired if it hangs)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode not in (0, None), outs[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"


def test_torchrun_job_killed_and_resumed_is_exact(two_rank_run, tmp_path):
    run = tmp_path / "run"
    args = RUN + ["dist=ddp", "data.batch_size=2", f"hydra.run.dir={run}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(LAUNCH)] + args
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        ck = list((run / "checkpoints").glob("step_*.pt")) if (run / "checkpoints").exists() else []
        if ck:
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = torchrun(args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in (run / "train.log").read_text()
    a, b = final_model(run), final_model(two_rank_run[0])
    assert a["global_step"] == b["global_step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_world_size_change_continues_at_the_right_sample(two_rank_run, tmp_path):
    """A 2-rank checkpoint resumed by one process: same sample position, said in the log."""
    src = two_rank_run[0] / "checkpoints" / "step_00000008.pt"
    r = run_launch(RUN + ["data.batch_size=4", f"loop.resume={src}", f"hydra.run.dir={tmp_path}/run"],
                   cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 8, epoch 1, 64 samples into the epoch" in log  # 8 steps x 2 micro x 2 x 2 ranks
    assert "world size 2 -> 1" in log and "not bit-exact" in log
    assert final_model(tmp_path / "run")["global_step"] == 12


def test_torchrun_with_compile_matches_eager(two_rank_run, tmp_path):
    r = torchrun(RUN + ["dist=ddp", "data.batch_size=2", "loop.compile=true", "loop.compile_backend=eager",
                        f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = final_model(tmp_path / "run")["model"], final_model(two_rank_run[0])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
