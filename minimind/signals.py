"""Stop requests: SIGTERM / SIGINT / SIGUSR2 become a flag the loop reads at a step boundary.

SLURM (and submitit) send SIGUSR2 before a time limit or preemption and SIGTERM when a job is
requeued or cancelled; Ctrl-C sends SIGINT. The loop saves a checkpoint at the next step
boundary and stops. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

log = logging.getLogger("minimind")

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR2")


class StopRequest:
    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the replaced handlers back (``previous`` is kept for forward_to_previous)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                    signal.Signals(signum).name)

    def forward_to_previous(self) -> None:
        """Hand the signal on to the handler it replaced (submitit's: requeue, then exit)."""
        prev = self.previous.get(self.signum) if self.signum is not None else None
        if callable(prev):
            prev(self.signum, None)
