"""What a run shows on the terminal: the line prefix, the progress bar, notes about the data.

* :class:`ConsoleFormatter` (Hydra's console handler uses it, ``conf/config.yaml``): the run's own
  INFO lines read ``[12:00:00] Epoch:[1/1](500/1000) loss:...``, everything else (warnings, other
  libraries) ``[12:00:00][name][LEVEL] - ...``. Hydra's full prefix (date, milliseconds, logger,
  level: 44 columns) left 76 for the line; this one leaves 109, so a line fits 120 columns.
  ``train.log`` keeps Hydra's full format.
* :class:`ProgressBar`: one bar whose ETA is the log line's (the loop's estimate, counting down
  between log lines, not tqdm's own), with the last logged loss; while it is open, console log
  records are written through ``tqdm.write`` so a line never lands in the middle of the bar.
* :class:`TruncationNote`: says once when samples start being cut to ``data.max_length``, and
  how many were at the end.

No torch (Hydra imports the formatter while configuring logging).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Optional

log = logging.getLogger("minimind")

HYDRA_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def fmt_duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ConsoleFormatter(logging.Formatter):
    """Short prefix for the framework's INFO lines, Hydra's for everything else."""

    def __init__(self, datefmt: str = "%H:%M:%S", **kwargs):
        super().__init__(HYDRA_FORMAT, datefmt=datefmt)
        self._short = logging.Formatter("[%(asctime)s] %(message)s", datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        ours = record.name == "minimind" or record.name.startswith("minimind.")
        if ours and record.levelno == logging.INFO:
            return self._short.format(record)
        return super().format(record)


class _TqdmHandler(logging.StreamHandler):
    """A console handler's stand-in while a bar is open: tqdm.write clears the bar, writes the
    line, and redraws the bar below it."""

    def __init__(self, original: logging.StreamHandler, tqdm_class):
        super().__init__(original.stream)
        self.setFormatter(original.formatter)
        self.setLevel(original.level)
        for f in original.filters:
            self.addFilter(f)
        self.tqdm_class = tqdm_class

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.tqdm_class.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never stop training
            self.handleError(record)


def _console_handlers(logger: logging.Logger):
    return [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]


class ProgressBar:
    """`` 50%|#####     | 500/1000, loss:0.9383 ETA:0m50s`` on stderr."""

    FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"  # tqdm puts ", " before postfix

    def __init__(self, total: int, initial: int = 0):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.total, self.initial = total, initial
        self.started = time.time()
        self.loss: Optional[float] = None
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False,
                        bar_format=self.FORMAT, file=sys.stderr)
        self._swapped = []
        for logger in (logging.getLogger(), log):
            for h in _console_handlers(logger):
                i = logger.handlers.index(h)
                logger.handlers[i] = _TqdmHandler(h, tqdm)
                self._swapped.append((logger, i, h))
        self._show(initial)

    def eta(self, now: float, n: int) -> Optional[float]:
        """The loop's estimate (time per step of this attempt x steps left; the bar opens when the
        loop's clock starts), not tqdm's smoothed rate: the bar and the log line agree."""
        done = n - self.initial
        return (now - self.started) / done * (self.total - n) if done > 0 else None

    def _show(self, n: int, eta: Optional[float] = None) -> None:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        eta = self.eta(time.time(), n) if eta is None else eta
        self.bar.set_postfix_str(f"loss:{loss} ETA:{'?' if eta is None else fmt_duration(eta)}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        self._show(self.bar.n + steps)
        self.bar.update(steps)  # redraws at most every tqdm mininterval (0.1 s)

    def logged(self, loss: Optional[float], eta_s: Optional[float], refresh: bool = True) -> None:
        """A log line is being printed: show its loss and its ETA (the very number it prints).
        Called before the line is written, whose tqdm.write redraws the bar (``refresh=False``)."""
        self.loss = loss
        self._show(self.bar.n, eta_s)
        if refresh:
            self.bar.refresh()

    def close(self) -> None:
        for logger, i, original in reversed(self._swapped):
            if i < len(logger.handlers) and isinstance(logger.handlers[i], _TqdmHandler):
                logger.handlers[i] = original
        self._swapped = []
        self.bar.close()


class TruncationNote:
    """The datasets count samples cut to ``data.max_length``; say so when it starts, and the total."""

    def __init__(self, batches, is_main: bool = True):
        self.batches, self.is_main = batches, is_main
        self.noted = False

    def _counts(self):
        stats = self.batches.stats() if hasattr(self.batches, "stats") else {}
        return int(stats.get("truncated", 0) or 0), int(stats.get("samples_seen", 0) or 0)

    def _max_length(self):
        return getattr(getattr(self.batches, "dataset", None), "max_length", "?")

    def check(self, step: int) -> None:
        if self.noted or not self.is_main:
            return
        truncated, read = self._counts()
        if truncated:
            self.noted = True
            log.info("data: %d of the first %d samples were cut to data.max_length=%s (step %d; "
                     "summary.json: data_truncated)", truncated, read, self._max_length(), step)

    def report(self) -> None:
        if not self.is_main:
            return
        truncated, read = self._counts()
        if truncated:
            log.info("data: %d of %d samples read were truncated to data.max_length=%s (%.1f%%)",
                     truncated, read, self._max_length(), 100.0 * truncated / max(read, 1))
