"""One run folder, one process: an advisory lock on ``<run dir>/.minimind.lock``.

Two processes training in one folder would interleave metrics.jsonl and events.jsonl, resume
from each other's checkpoints and prune each other's files. So the job (rank 0 only: under
DDP every rank shares the folder) takes an exclusive ``flock`` on a lock file in the run
folder for as long as it runs, and writes who holds it into the file (pid, host, start time,
command). A second process is refused with that information. The kernel drops the lock when
its holder dies, however it dies (SIGKILL, OOM kill), so a dead run never blocks the next
one: a SLURM requeue of the same job, or the same command run again, just takes it.

A forked child (a DataLoader worker) would inherit the locked file, and with it the lock,
outliving a SIGKILLed holder by seconds: children close their copy right after the fork.

The lock file itself is never replaced or deleted: the lock belongs to its inode, and a
process that recreated the file would lock another inode while the holder keeps the old one.
Where the filesystem has no ``flock`` (some network filesystems), the recorded pid is checked
instead: alive on this host means busy; on another host it cannot be checked (said in the log).

Torch-free: ``launch.py`` asks :func:`busy_message` before Hydra writes into a folder named on
the command line (``hydra.run.dir=...``), so a refused launch leaves the live run's
``.hydra/`` untouched.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from minimind.errors import UserError

log = logging.getLogger("minimind")

LOCK_NAME = ".minimind.lock"
_HELD: set = set()  # the RunLocks this process holds


def _close_in_child() -> None:
    """After a fork, in the child: point its copy of each lock file's descriptor at /dev/null
    (dup2 closes the copy, so only the parent holds the lock; the file object stays valid)."""
    for lock in list(_HELD):
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, lock._f.fileno())
            os.close(null)
        except (OSError, AttributeError):
            pass
        lock._f = None  # the child holds nothing to release
    _HELD.clear()


def release_all() -> None:
    """Let go of every run folder this process holds (before it hands itself to a requeue)."""
    for lock in list(_HELD):
        lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunDirBusy(UserError):
    """Another live process trains in this run folder."""


def _holder_text(info: dict) -> str:
    if not info:
        return "another process (it has just started and not yet written who it is)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"pid {info.get('pid')} on {info.get('host')}, running since {started}: "
            f"{info.get('command', '?')}")


def _message(run_dir: Path, info: dict) -> str:
    return (f"hydra.run.dir={run_dir} is in use by a live run ({_holder_text(info)}); one run folder "
            "takes one process: wait for that run to end (or stop it), or choose another hydra.run.dir")


def _read(f) -> dict:
    try:
        f.seek(0)
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def _alive_here(info: dict) -> bool:
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return info["pid"] != os.getpid()


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder; RunDirBusy names the live holder."""

    def __init__(self, run_dir: os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._f = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # never truncated before it is held, never replaced
        except OSError as e:
            from minimind.errors import ConfigError

            raise ConfigError(f"hydra.run.dir={str(self.run_dir)!r} is not writable ({e.strerror or e}): "
                              "checkpoints and weights could not be saved there") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                info = _read(f)
                f.close()
                raise RunDirBusy(_message(self.run_dir, info)) from None
            info = _read(f)  # no flock here: fall back to the recorded pid
            if _alive_here(info):
                f.close()
                raise RunDirBusy(_message(self.run_dir, info)) from None
            if info.get("host") not in (None, socket.gethostname()):
                log.warning("%s: this filesystem has no flock and the last holder ran on %s; cannot tell "
                            "whether it still runs", self.path, info.get("host"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info) + "\n")
        f.flush()
        self._f = f
        _HELD.add(self)
        return self

    def release(self) -> None:
        _HELD.discard(self)
        if self._f is not None:
            self._f.close()  # closing the file drops the flock
            self._f = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def busy_message(run_dir: os.PathLike) -> Optional[str]:
    """The refusal for ``run_dir`` if a live process holds it, else None. Takes nothing: the
    lock is tested and let go at once."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        lock = RunLock(run_dir).acquire()
    except RunDirBusy as e:
        return str(e)
    except OSError:
        return None  # unreadable or unwritable: the job's own checks will say so
    lock.release()
    return None


def busy_message_from_argv(argv) -> Optional[str]:
    """:func:`busy_message` for the folder a plain (not ``-m``) command line names with
    ``hydra.run.dir=``; None when it names none (the folder is known only once Hydra composed
    the config: then the job's own lock refuses)."""
    if any(a in ("-m", "--multirun") for a in argv):
        return None
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if not dirs or "${" in dirs[-1]:
        return None
    return busy_message(dirs[-1])
