"""Checkpoints and exact resume: killed and resumed, a run ends with the same weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, LAUNCH, run_launch

from minimind.checkpoint import CheckpointManager, atomic_torch_save, load_file
from minimind.errors import CheckpointError

# a run with windows of 2 micro-batches, a checkpoint every 3 steps, a log line every step
RUN = FAST + ["optim.accumulation_steps=2", "loop.log_interval=1", "loop.save_interval=3", "loop.max_steps=48",
              "optim.lr=2e-3", "optim.warmup_steps=4"]


def final_state(run_dir: Path) -> dict:
    ckpts = CheckpointManager(run_dir / "checkpoints").list()
    return torch.load(ckpts[0], weights_only=True)


def losses(run_dir: Path) -> dict:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out.setdefault(m["step"], []).append(m["loss"])
    return out


def assert_same_run(ref: Path, run: Path) -> None:
    a, b = final_state(ref), final_state(run)
    assert a["global_step"] == b["global_step"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), f"{key} differs from the uninterrupted run"
    for i, st in a["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, b["optimizer"]["state"][i][name]), f"optimizer state {i}.{name}"
    ref_losses = {s: v[0] for s, v in losses(ref).items()}
    for step, values in losses(run).items():  # re-run steps log the very same loss
        assert all(v == ref_losses[step] for v in values), (step, values, ref_losses[step])
    w_ref = torch.load(next(ref.glob("full_sft_*.pth")), weights_only=True)  # the demo is SFT data
    w_run = torch.load(next(run.glob("full_sft_*.pth")), weights_only=True)
    assert all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)


def start(args, cwd, env=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, str(LAUNCH)] + args, cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def metric_count(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_lines(run_dir: Path, lines: int, proc, timeout=120) -> None:
    """Wait until this attempt has logged up to ``lines`` lines in total (or ended)."""
    t = time.time()
    while time.time() - t < timeout:
        if metric_count(run_dir) >= lines or proc.poll() is not None:
            return
        time.sleep(0.02)
    raise TimeoutError(f"metrics.jsonl of {run_dir} did not reach {lines} lines")


def wait_for_step(run_dir: Path, step: int, proc, timeout=120) -> None:
    t = time.time()
    path = run_dir / "metrics.jsonl"
    while time.time() - t < timeout:
        if path.exists() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()
                                 if line.strip()):
            return
        if proc.poll() is not None:
            return
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {path}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs the interrupted ones must reproduce (num_workers 0 and 2)."""
    refs = {}
    for workers in (0, 2):
        d = tmp_path_factory.mktemp(f"ref{workers}")
        r = run_launch(RUN + [f"data.num_workers={workers}", f"hydra.run.dir={d}/run"],
                       cwd=d)
        assert r.returncode == 0, r.stdout + r.stderr
        refs[workers] = d / "run"
    return refs


def kill_and_resume(run: Path, args, cwd: Path, kills: int, rng: random.Random, span: int) -> int:
    """Start the run, SIGKILL it ``kills`` times at random moments, then let it finish."""
    done = 0
    for attempt in range(kills + 6):
        proc = start(args, cwd)
        if done < kills:
            lines = metric_count(run)
            wait_for_lines(run, lines + 1 + rng.randrange(span), proc)
            # anywhere: mid-window, mid-save, between steps (a step of the tiny model takes 5-50 ms:
            # a longer pause lets a fast machine run to the end before the kill)
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.kill()
                done += 1
            elif proc.wait() == 0:  # it finished before the kill came (a short run on a fast moment)
                return done
            proc.wait()
            continue
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return done
    raise AssertionError("the run did not finish")


@pytest.mark.slow
def test_sigkill_at_random_moments_with_workers_then_resume_is_bit_exact(reference, tmp_path):
    run = tmp_path / "run"
    kills = kill_and_resume(run, RUN + ["data.num_workers=2", f"hydra.run.dir={run}"], tmp_path,
                            kills=3, rng=random.Random(7), span=8)
    assert kills >= 2
    assert "resumed from" in (run / "train.log").read_text()
    assert_same_run(reference[2], run)


@pytest.mark.slow
def test_chaos_ten_sigkills_including_during_checkpoint_writes(reference, tmp_path):
    """10 kills at random moments of a run that writes a checkpoint every step (so many kills
    land inside a write); every resume succeeds and the end is bit-identical."""
    run = tmp_path / "run"
    args = RUN + ["loop.save_interval=1", "loop.keep_last=2", "data.num_workers=0", f"hydra.run.dir={run}"]
    kills = kill_and_resume(run, args, tmp_path, kills=10, rng=random.Random(2024), span=3)
    assert kills >= 8
    assert (run / "train.log").read_text().count("resumed from") >= kills - 1
    assert_same_run(reference[0], run)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path):
    """SIGKILL halfway through writing step 9's checkpoint: step 6 survives and the run resumes."""
    run = tmp_path / "run"
    killer = (
        "import os, signal, sys, runpy, torch\n"
        "import minimind.checkpoint as c\n"
        "real = torch.save\n"
        "def save(obj, f, *a, **k):\n"
        "    if isinstance(obj, dict) and obj.get('global_step') == 9:\n"
        "        f.write(b'PK' + os.urandom(4096)); f.flush(); os.fsync(f.fileno())\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(obj, f, *a, **k)\n"
        "c.torch.save = save\n"
        f"sys.argv = [{str(LAUNCH)!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = RUN + ["data.num_workers=0", f"hydra.run.dir={run}"]
    r = run_launch(args, cwd=tmp_path, module=["-c", killer])
    assert r.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step_00000006.pt" in names and "step_00000009.pt" not in names
    assert any(n.endswith(".tmp") for n in names)  # the half-written file, under a temp name
    load_file(run / "checkpoints" / "step_00000006.pt")
    r = run_launch(args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from" in (run / "train.log").read_text()
    assert_same_run(reference[0], run)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_0(reference, tmp_path):
    run = tmp_path / "run"
    args = RUN + ["loop.save_interval=1000", f"hydra.run.dir={run}"]
    proc = start(args, tmp_path)
    wait_for_step(run, 5, proc)
    logged = metric_count(run)  # log_interval=1: the steps done when the signal is sent
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    saved = CheckpointManager(run / "checkpoints").list()
    assert len(saved) == 1
    step = torch.load(saved[0], weights_only=True)["global_step"]
    # saved at the step boundary after the signal (allowing for steps finished while it was sent)
    assert 5 <= step <= logged + 2 < 48, (step, logged)
    events = [json.loads(x)["event"] for x in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1] == "interrupted"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    r = run_launch(args, cwd=tmp_path)  # the same command continues
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from {saved[0]}: step {step}" in (run / "train.log").read_text()
    assert_same_run(reference[0], run)


@pytest.mark.slow
def test_resume_never_refuses_a_used_run_dir(reference, tmp_path):
    r = run_launch(FAST + ["loop.resume=never", f"hydra.run.dir={reference[0]}"], cwd=tmp_path)
    assert r.returncode != 0
    assert "loop.resume=never" in r.stderr and "refusing to overwrite" in r.stderr
    assert len(CheckpointManager(reference[0] / "checkpoints").list()) == 2  # untouched


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=3)
    mgr.save({"global_step": 1, "model": {}}, 1)
    mgr.save({"global_step": 2, "model": {}}, 2)
    mgr.path_for(3).write_bytes(b"PK\x03\x04 truncated")
    path, state = mgr.load_latest()
    assert path == mgr.path_for(2) and state["global_step"] == 2
    assert "step_00000003.pt cannot be loaded" in caplog.text


def test_keep_last_prunes_old_checkpoints(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (3, 6, 9):
        mgr.save({"global_step": step}, step)
    assert [p.name for p in mgr.list()] == ["step_00000009.pt", "step_00000006.pt"]


def test_atomic_save_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"a": Boom()}, path)
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


def test_not_a_checkpoint_is_named(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"model.embed_tokens.weight": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="weights.pth is not a training checkpoint"):
        load_file(bad)


def test_upstream_resume_file_continues(cfg_factory, tmp_path):
    """Upstream's *_resume.pth: fp16 weights, one-group AdamW, epoch/step/world_size/wandb_id."""
    from minimind.train import build_trainer

    cfg = cfg_factory(["loop.max_steps=6", "loop.save_interval=100", "data.shuffle=false"])
    src = build_trainer(cfg, tmp_path / "src")
    model = src.raw_model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # upstream: one group, every parameter
    x, y = src.batches.dataset[0]
    model(x[None]).logits.sum().backward()
    opt.step()
    upstream = {"model": {k: v.half() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scaler": None, "epoch": 0, "step": 3,
                "world_size": 1, "wandb_id": "abc123"}
    path = tmp_path / "pretrain_64_resume.pth"
    torch.save(upstream, path)

    cfg = cfg_factory(["loop.max_steps=6", "loop.save_interval=100", f"loop.resume={path}"])
    tr = build_trainer(cfg, tmp_path / "dst")
    tr.fit()
    assert tr.resumed_from == str(path) and tr.progress.wandb_id == "abc123"
    assert tr.progress.step == 6
    events = [json.loads(x) for x in (tmp_path / "dst" / "events.jsonl").read_text().splitlines()]
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["upstream"] and resume["samples_in_epoch"] == 3 * 4  # 3 micro-batches of 4


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    run = tmp_path / "run"
    base = FAST + ["logger=wandb", "loop.log_interval=1", f"hydra.run.dir={run}"]
    r = run_launch(base + ["loop.max_steps=3"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    first = torch.load(run / "checkpoints" / "step_00000003.pt", weights_only=True)["wandb_id"]
    assert first
    # continues (resume=auto) a longer run: a change of the run, allowed explicitly
    r = run_launch(base + ["loop.max_steps=6", "loop.resume_changes=allow"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{first}") for name in runs)
    assert torch.load(run / "checkpoints" / "step_00000006.pt", weights_only=True)["wandb_id"] == first
