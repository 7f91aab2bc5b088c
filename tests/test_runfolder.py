"""A run says where it is and how to continue it; a refused run leaves no folder; ??? keys get
one line with an example; files keep the umask's mode."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import FAST, LAUNCH, compose, run_launch

from minimind.errors import ConfigError
from minimind.files import atomic_write_text
from minimind.required import refuse_missing
from minimind.runfolder import continue_command, program


def test_the_continue_command_is_the_typed_one_with_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-11-28" / "06-22-21"
    argv = ["launch.py", "loop.max_steps=40", "notes=two words", "hydra.run.dir=old"]
    assert continue_command(run, argv) == ("python launch.py loop.max_steps=40 'notes=two words' "
                                           "hydra.run.dir=outputs/2026-11-28/06-22-21")
    elsewhere = tmp_path.parent / "runs" / "a"
    assert continue_command(elsewhere, ["/src/launch.py"]) == f"python /src/launch.py hydra.run.dir={elsewhere}"
    assert program(["/venv/lib/python3.11/site-packages/minimind/__main__.py"], env={}) == "python -m minimind"
    assert program(["/venv/bin/minimind-train"], env={}) == "minimind-train"
    assert program(["launch.py"], env={"RANK": "0", "WORLD_SIZE": "2"}) == \
        "torchrun <the same torchrun options> launch.py"
    # ranks > 0 get hydra.output_subdir=null from launch.py: not part of what the user typed
    assert "output_subdir" not in continue_command(run, ["launch.py", "hydra.output_subdir=null"])


def test_a_missing_value_is_one_line_with_an_example():
    with pytest.raises(ConfigError) as e:
        refuse_missing(compose(["data=pretrain"], return_hydra_config=True))
    msg = str(e.value)
    assert msg.startswith("data.path is not set (data=pretrain leaves it to you)")
    assert "e.g. data.path=/data/pretrain_hq.jsonl" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match=r"e\.g\. data\.path=/data/sft_mini_512\.jsonl"):
        refuse_missing(compose(["data=sft"], return_hydra_config=True))
    with pytest.raises(ConfigError, match=r"^loop\.save_weight is not set: .*e\.g\. loop\.save_weight=\S+ "
                                          r"\(loop\.save_weight: weights file stem"):
        refuse_missing(compose(["loop.save_weight=???"]))
    with pytest.raises(ConfigError, match=r"^data\.path is not set.*; also not set: loop\.save_weight$"):
        refuse_missing(compose(["data=sft", "loop.save_weight=???"]))
    refuse_missing(compose([]))  # the demo sets everything


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_umasks_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_text(tmp_path / "a.json", "{}")  # rewritten
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


@pytest.mark.slow
def test_refused_runs_leave_no_run_folder(tmp_path):
    for args, needle in ((["data=pretrain"], "e.g. data.path=/data/pretrain_hq.jsonl"),
                         (FAST + ["optim.grad_clip=0"], "optim.grad_clip=0.0 is invalid")):
        r = run_launch(args, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and needle in errors[0], r.stderr
        assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))
    # a folder that existed before is kept, whatever it holds; so are the parents it had
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (kept, empty):
        r = run_launch(FAST + ["optim.grad_clip=0", f"hydra.run.dir={folder}"], cwd=tmp_path)
        assert r.returncode == 2 and folder.is_dir()
    assert (kept / "notes.txt").read_text() == "mine"
    # a new folder (and the parents this run created) goes
    r = run_launch(FAST + ["optim.grad_clip=0", f"hydra.run.dir={tmp_path}/new/deeper/run"], cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_ctrl_c_prints_the_command_that_continues_and_it_does(tmp_path):
    """The user's path: a run without hydra.run.dir, Ctrl-C, then the printed command."""
    weights_dir = tmp_path / "weights"
    args = FAST + ["loop.max_steps=30", "loop.log_interval=5", "loop.save_interval=100", "notes=two words",
                   f"loop.save_dir={weights_dir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(LAUNCH)] + args, cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob("outputs/*/*/metrics.jsonl")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out
    run = next(tmp_path.glob("outputs/*/*"))
    rel = str(run.relative_to(tmp_path))
    assert f"run folder: {rel}" in out
    lines = out.splitlines()
    stopped = next(i for i, line in enumerate(lines) if "stopped at step" in line)
    assert lines[stopped].endswith("after a signal; the checkpoint is saved")
    command = lines[stopped + 1].split("] to continue: ", 1)[1]
    assert command == (f"python {LAUNCH} " + " ".join(shlex.quote(a) for a in args) + f" hydra.run.dir={rel}")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert f"if it stops, continue it with: {command}" in out  # said at the start too (for a kill)

    argv = shlex.split(command)
    assert argv[0] == "python"
    r = subprocess.run([sys.executable] + argv[1:], cwd=tmp_path, env=env, text=True, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list(tmp_path.glob("outputs/*/*"))) == 1  # the same folder, no new one
    events = [json.loads(e) for e in (run / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 30
    assert summary["resumed_from"].endswith(".pt")
    assert re.search(rf"run folder: {re.escape(rel)} \(summary.json", r.stdout)

    # the weights went to loop.save_dir; summary.json and the checkpoint events record where
    weights = weights_dir / "full_sft_64.pth"
    assert summary["weights"] == [str(weights)]
    assert all(e["weights"] == [str(weights)] for e in events if e["event"] == "checkpoint")
    # ... and every file the run wrote has the umask's mode (0644 under the usual 022)
    mask = os.umask(0)
    os.umask(mask)
    for path in (weights, run / "summary.json", run / "metrics.jsonl", *run.glob("checkpoints/*.pt")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, path

    # generate finds them from the run folder alone
    g = run_launch(["--model", str(run), "--prompt", "hi", "--chat", "--greedy", "--max-new-tokens", "4",
                    "--device", "cpu"], cwd=tmp_path, module=["-m", "minimind.generate"])
    assert g.returncode == 0, g.stderr
    assert f"weights: {weights}" in g.stderr
