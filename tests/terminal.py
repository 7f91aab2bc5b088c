"""Run a command on a pseudo-terminal of a given width, as a user's terminal would show it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from typing import Callable, List, Optional, Sequence, Tuple


def run_on_terminal(cmd: Sequence[str], cwd, columns: int = 120, timeout: float = 300,
                    env: Optional[dict] = None, interrupt_when: Optional[Callable[[bytes], bool]] = None,
                    ) -> Tuple[int, str]:
    """(exit code, everything written to the terminal); SIGINT once ``interrupt_when(output)``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS=str(columns), WANDB_MODE="offline",
                    WANDB_SILENT="true")
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=full_env,
                            close_fds=True)
    os.close(slave)
    out, sent, deadline = b"", False, time.time() + timeout
    try:
        while time.time() < deadline:
            if interrupt_when is not None and not sent and interrupt_when(out):
                proc.send_signal(signal.SIGINT)
                sent = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        proc.wait()
        os.close(master)
    return proc.returncode, out.decode("utf-8", errors="replace")


def screen_segments(output: str) -> List[str]:
    """What is drawn between carriage returns / newlines: each is at most one terminal row."""
    return [s for s in re.split(r"[\r\n]", output) if s.strip()]
