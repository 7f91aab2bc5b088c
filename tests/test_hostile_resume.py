"""Resume under hostile use: pruning never loses the loadable checkpoints, a branch restarted
from an older checkpoint is the line ``loop.resume=auto`` continues, and a resume refuses a
checkpoint of another run (unless ``loop.resume_changes=allow``, which is then said)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import FAST, LAUNCH, run_launch

from minimind.checkpoint import CheckpointManager, load_file
from minimind.errors import CheckpointError

RUN = FAST + ["loop.log_interval=1", "loop.max_steps=12", "optim.lr=2e-3"]


def kill_at_save(step: int) -> str:
    """``python -c`` source: launch.py, SIGKILLed just as it starts to write the step ``step``
    checkpoint (the step before it is on disk, complete)."""
    return ("import os, signal, sys, runpy, torch\n"
            "import minimind.checkpoint as c\n"
            "real = torch.save\n"
            "def save(obj, f, *a, **k):\n"
            f"    if isinstance(obj, dict) and obj.get('global_step') == {step}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(obj, f, *a, **k)\n"
            "c.torch.save = save\n"
            f"sys.argv = [{str(LAUNCH)!r}] + sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def loads(path: Path) -> bool:
    try:
        load_file(path)
        return True
    except CheckpointError:
        return False


def set_aside(ckpts: Path) -> list:
    """Names of the checkpoints moved out of the line (under checkpoints/abandoned/)."""
    return sorted(p.name for p in (ckpts / "abandoned").rglob("step_*.pt")) if (ckpts / "abandoned").exists() else []


def resumed_lines(run: Path) -> list:
    return [line for line in (run / "train.log").read_text().splitlines() if "resumed from" in line]


# ------------------------------------------------------------------ 1. pruning and lineage


def test_prune_after_a_fallback_keeps_the_loadable_checkpoints(tmp_path):
    """Unloadable newer files must not count as the keep_last that are kept."""
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    mgr.save({"global_step": 3, "model": {}}, 3)
    for step in (6, 9):
        mgr.path_for(step).write_bytes(b"PK\x03\x04 truncated")
    fresh = CheckpointManager(tmp_path / "checkpoints", keep_last=2)  # the next process
    path, _ = fresh.load_latest()
    assert path == fresh.path_for(3)
    fresh.save({"global_step": 4, "model": {}}, 4)
    names = [p.name for p in fresh.list()]
    assert "step_00000004.pt" in names and "step_00000003.pt" in names, names
    fresh.save({"global_step": 5, "model": {}}, 5)
    good = [p.name for p in fresh.list() if loads(p)]
    assert good == ["step_00000005.pt", "step_00000004.pt"]  # keep_last loadable ones


@pytest.mark.slow
def test_fallback_past_damaged_checkpoints_then_a_kill_leaves_a_loadable_one(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    args = RUN + [f"hydra.run.dir={run}"]
    r = run_launch(args + ["loop.save_interval=3", "loop.keep_last=3"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in (9, 12):  # the two newest are damaged (a bad disk, a copy cut short)
        p = ckpts / f"step_{step:08d}.pt"
        p.write_bytes(p.read_bytes()[:1000])
    # continue (another save_interval and keep_last: allowed changes), killed as step 12 is written
    more = ["loop.save_interval=4", "loop.keep_last=2"]
    r = run_launch(args + more, cwd=tmp_path, module=["-c", kill_at_save(12)])
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert "step_00000012.pt cannot be loaded" in (run / "train.log").read_text()
    good = [p.name for p in CheckpointManager(ckpts).list() if loads(p)]
    assert good == ["step_00000008.pt", "step_00000006.pt"], good
    assert set_aside(ckpts) == ["step_00000009.pt", "step_00000012.pt"]  # moved, never deleted
    r = run_launch(args + more, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from {ckpts / 'step_00000008.pt'}: step 8" in resumed_lines(run)[-1]


@pytest.mark.slow
def test_a_run_restarted_from_an_older_checkpoint_is_the_line_auto_continues(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    args = RUN + ["loop.save_interval=3", "loop.keep_last=4", f"hydra.run.dir={run}"]
    r = run_launch(args, cwd=tmp_path)  # steps 3, 6, 9, 12
    assert r.returncode == 0, r.stdout + r.stderr
    first_line = {s: (ckpts / f"step_{s:08d}.pt").stat().st_mtime_ns for s in (6, 9, 12)}
    # back to step 3 (say, to change something there), killed as it writes step 9
    r = run_launch(args + [f"loop.resume={ckpts / 'step_00000003.pt'}"], cwd=tmp_path,
                   module=["-c", kill_at_save(9)])
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    # the abandoned line's files are kept aside, not overwritten by the new line's step 6
    assert set_aside(ckpts) == ["step_00000006.pt", "step_00000009.pt", "step_00000012.pt"]
    assert (ckpts / "step_00000006.pt").stat().st_mtime_ns != first_line[6]
    r = run_launch(args, cwd=tmp_path)  # loop.resume=auto: the new line, not step 12 of the old one
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from {ckpts / 'step_00000006.pt'}: step 6" in resumed_lines(run)[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 12


# ------------------------------------------------------------------ 3. what a resume continues

BASE = FAST + ["loop.max_steps=4", "loop.save_interval=2", "loop.log_interval=1"]


def error_lines(r) -> list:
    return [line for line in r.stderr.splitlines() if line.startswith("Error: ")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run on a copy of the demo data, to be resumed with changes."""
    from minimind.data import asset_path

    d = tmp_path_factory.mktemp("finished")
    data = d / "sft.jsonl"
    shutil.copy(asset_path("demo/sft.jsonl"), data)
    r = run_launch(BASE + [f"data.path={data}", f"hydra.run.dir={d}/run"], cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    return run


@pytest.mark.slow
def test_resume_refuses_a_changed_run_and_lists_what_changed(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = (run / "events.jsonl").read_text()
    changed = ["optim.lr=1e-3", "seed=7", "optim.accumulation_steps=2", "model.rope_theta=10000.0",
               "loop.max_steps=6"]
    r = run_launch(BASE + [f"data.path={finished / 'sft.jsonl'}", f"hydra.run.dir={run}"] + changed,
                   cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    [line] = error_lines(r)
    for needle in ("step_00000004.pt", "optim.lr: 0.0005 -> 0.001", "seed: 42 -> 7",
                   "model.rope_theta: 1000000.0 -> 10000.0", "loop.max_steps: 4 -> 6",
                   "optim.accumulation_steps", "4 -> 8", "loop.resume_changes=allow"):
        assert needle in line, (needle, line)
    assert (run / "events.jsonl").read_text().startswith(before)
    assert not [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
                if e["event"] == "resume"]


@pytest.mark.slow
def test_decay_all_params_changed_is_refused_not_a_traceback(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    r = run_launch(BASE + [f"data.path={finished / 'sft.jsonl'}", f"hydra.run.dir={run}",
                           "optim.decay_all_params=true"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "optim.decay_all_params: False -> True" in line


@pytest.mark.slow
def test_resume_changes_allow_continues_and_says_so(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    r = run_launch(BASE + [f"data.path={finished / 'sft.jsonl'}", f"hydra.run.dir={run}",
                           "optim.decay_all_params=true", "loop.max_steps=6", "loop.resume_changes=allow"],
                   cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (run / "train.log").read_text()
    assert "continuing with changes (loop.resume_changes=allow)" in log
    assert "optim.decay_all_params: False -> True" in log and "loop.max_steps: 4 -> 6" in log
    resume = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
              if e["event"] == "resume"][-1]
    assert resume["changes"]["optim.decay_all_params"] == [False, True]
    assert resume["changes"]["loop.max_steps"] == [4, 6]
    state = torch.load(run / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert len(state["optimizer"]["param_groups"]) == 1  # decay_all_params: one group now
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.01
    assert all(len(s) for s in state["optimizer"]["state"].values())  # Adam moments carried over


@pytest.mark.slow
def test_a_grown_data_file_or_another_data_kind_is_refused(tmp_path):
    from minimind.data import asset_path

    data = tmp_path / "sft.jsonl"
    shutil.copy(asset_path("demo/sft.jsonl"), data)
    run = tmp_path / "run"
    args = BASE + [f"hydra.run.dir={run}"]
    r = run_launch(args + [f"data.path={data}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = data.read_text().splitlines(keepends=True)
    with open(data, "a") as f:  # the file grows: the epoch would repeat some samples, skip others
        f.writelines(lines[:10])
    r = run_launch(args + [f"data.path={data}"], cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "data file" in line and "16000 -> 16010 samples" in line, line
    r = run_launch(args + ["data=pretrain", f"data.path={asset_path('demo/pretrain.jsonl')}"], cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    [line] = error_lines(r)
    assert "data.kind: sft -> pretrain" in line, line


def test_what_may_change_on_resume(cfg_factory, tmp_path):
    """Logging, saving, workers and the layout (same samples per step) are not the run."""
    from minimind import run_identity
    from minimind.train import build_trainer

    base = build_trainer(cfg_factory(["loop.max_steps=2"]), tmp_path / "a")
    other = build_trainer(cfg_factory(["loop.max_steps=2", "loop.log_interval=3", "loop.save_interval=7",
                                       "data.num_workers=2", "loop.keep_last=5", "data.batch_size=2",
                                       "optim.accumulation_steps=2", "device=cpu", "loop.compile=true"]),
                          tmp_path / "b")
    assert run_identity.differences(base.identity, other.identity) == {}
    changed = build_trainer(cfg_factory(["loop.max_steps=2", "data.max_length=32", "optim.warmup_steps=1",
                                         "optim.optimizer.betas=[0.9,0.95]"]), tmp_path / "c")
    diff = run_identity.differences(base.identity, changed.identity)
    assert set(diff) == {"data.max_length", "optim.warmup_steps", "optim.optimizer.betas"}, diff
