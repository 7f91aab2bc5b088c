"""Run folders under hostile use: one process per folder, a real full disk, temporary files of
killed writes, a double Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST, LAUNCH, run_launch

from minimind.checkpoint import CheckpointManager, load_file


def start(args, cwd, env=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, str(LAUNCH)] + list(args), cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(run_dir: Path, step: int, proc, timeout=180) -> None:
    path = run_dir / "metrics.jsonl"
    t = time.time()
    while time.time() - t < timeout:
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x.strip()):
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} in {path}")


def events(run_dir: Path) -> list:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def error_lines(r) -> list:
    return [line for line in r.stderr.splitlines() if line.startswith("Error: ")]


# ------------------------------------------------------------------ 2. one run folder, one process


def test_the_run_lock_is_exclusive_and_names_its_holder(tmp_path):
    from minimind.runlock import RunDirBusy, RunLock

    with RunLock(tmp_path):
        with pytest.raises(RunDirBusy) as e:
            RunLock(tmp_path).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and str(tmp_path) in msg
    with RunLock(tmp_path):  # released: the next one takes it
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A DataLoader worker forked from the holder must not hold the lock once the holder lets go
    (or dies): the next run would be refused for seconds."""
    from minimind.runlock import RunLock

    lock = RunLock(tmp_path).acquire()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its at-fork hooks have run): outlives the holder's lock, then leaves
        os.write(ready_w, b"x")
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        lock.release()
        with RunLock(tmp_path):  # would raise RunDirBusy if the child had inherited the lock
            pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.slow
def test_a_second_launch_on_a_live_run_folder_is_refused(tmp_path):
    run = tmp_path / "outputs" / "live"
    env = {"MINIMIND_RUN_STAMP": "live"}  # the default run folder, outputs/live, for both
    live = FAST + ["loop.max_steps=100000", "loop.log_interval=1", "loop.save_interval=1000000"]
    first = start(live, tmp_path, env)
    try:
        wait_for_step(run, 6, first)
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        # named on the command line: refused before Hydra writes anything into the folder
        r = run_launch(FAST + ["loop.max_steps=3", "optim.lr=1e-3", f"hydra.run.dir={run}"], cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        [line] = error_lines(r)
        assert f"pid {first.pid}" in line and socket.gethostname() in line and "launch.py" in line, line
        assert (run / ".hydra" / "overrides.yaml").read_text() == overrides
        # the same folder by default (same overrides): refused when the job starts
        r = run_launch(live, cwd=tmp_path, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        [line] = error_lines(r)
        assert f"pid {first.pid}" in line, line
        assert first.poll() is None  # the first run goes on, alone
        names = [e["event"] for e in events(run)]
        assert names.count("start") == 1 and "failed" not in names and "resume" not in names, names
    finally:
        first.kill()  # SIGKILL: the lock file stays behind
        first.wait()
    assert (run / ".minimind.lock").exists()
    r = run_launch(FAST + ["loop.max_steps=3"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr  # a dead holder does not block
    assert [e["event"] for e in events(run)][-1] == "completed"


# ------------------------------------------------------------------ 4. a real full disk, temp files


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs the tests as root)")
def test_a_real_full_disk_gives_the_one_line_message(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)], capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {m.stderr.strip()}")
    try:
        run = disk / "run"
        r = run_launch(FAST + ["loop.max_steps=50", "loop.save_interval=1", "loop.keep_last=2",
                               f"hydra.run.dir={run}"], cwd=tmp_path)
        out = r.stdout + r.stderr
        assert r.returncode == 2, out
        assert "Traceback" not in out and "unexpected pos" not in out, out
        [line] = error_lines(r)
        assert "No space left on device" in line and "is intact" in line, line
        saved = CheckpointManager(run / "checkpoints").list()
        assert saved and f"{saved[0]} is intact" in line
        load_file(saved[0])
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    killer = (
        "import os, signal, sys, runpy, torch\n"
        "import minimind.checkpoint as c\n"
        "real = torch.save\n"
        "def save(obj, f, *a, **k):\n"
        "    if isinstance(obj, dict) and obj.get('global_step') == 4:\n"
        "        f.write(b'PK' + os.urandom(4096)); f.flush(); os.fsync(f.fileno())\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(obj, f, *a, **k)\n"
        "c.torch.save = save\n"
        f"sys.argv = [{str(LAUNCH)!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = FAST + ["loop.max_steps=6", "loop.save_interval=2", f"hydra.run.dir={run}"]
    r = run_launch(args, cwd=tmp_path, module=["-c", killer])
    assert r.returncode == -signal.SIGKILL
    left = [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".step_00000004.pt.")
    (run / ".full_sft_64.pth.x1y2z3.tmp").write_bytes(b"half a weights file")  # killed mid-write too
    (run / "notes.tmp").write_text("not ours")
    r = run_launch(args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not (run / ".full_sft_64.pth.x1y2z3.tmp").exists() and (run / "notes.tmp").exists()
    log = (run / "train.log").read_text()
    assert "removed 2 temporary file(s) left by an interrupted write" in log and left[0] in log


# ------------------------------------------------------------------ 9. a double Ctrl-C


@pytest.mark.slow
def test_a_double_ctrl_c_is_recorded_as_interrupted(tmp_path):
    run = tmp_path / "run"
    # long steps (32 x 8 samples), so the second Ctrl-C arrives while the step is still running
    proc = start(FAST + ["data.batch_size=32", "optim.accumulation_steps=8", "loop.max_steps=1000",
                         "loop.log_interval=1", "loop.save_interval=1000000", f"hydra.run.dir={run}"], tmp_path)
    seen = threading.Event()
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "received SIGINT" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for_step(run, 2, proc)
        proc.send_signal(signal.SIGINT)
        assert seen.wait(60), "".join(lines)
        proc.send_signal(signal.SIGINT)  # the second: stop at once
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode != 0, out
    last = events(run)[-1]
    assert last["event"] == "interrupted" and last["checkpoint"] is None and last["step"] >= 2, last
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert "Traceback" not in out, out
