"""What the benchmarks read from the kernel: memory high-water marks, RSS and PSS, CPU time.

One copy for ``step.py`` and ``data.py``. Everything comes from Linux's /proc; a probe whose
file is missing answers None (or nothing), so a benchmark still runs elsewhere, with fewer
numbers. Nothing here imports torch until a GPU needs it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

Pid = Union[int, str]  # a process id, or "self"


# ============================================================================ memory

def _kb_fields(path: str, fields: Sequence[str]) -> Dict[str, int]:
    """The ``Field:   123 kB`` lines of a /proc file that ``fields`` names, in kB."""
    out: Dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, rest = line.partition(":")
                if sep and key in fields:
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def status_kb(pid: Pid = "self") -> Dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (its high-water mark) of a process, in kB."""
    return _kb_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))


def pss_kb(pid: Pid) -> Optional[int]:
    """Proportional set size: shared pages (e.g. a forked worker's copy of its parent) counted
    once over all the processes that share them."""
    return _kb_fields(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss")


def meminfo_kb(field: str) -> Optional[int]:
    """A field of /proc/meminfo (``MemTotal``, ...), in kB."""
    return _kb_fields("/proc/meminfo", (field,)).get(field)


def current_rss_mb() -> Optional[float]:
    """Resident set now, from /proc/self/statm (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def maxrss_mb() -> float:
    """``ru_maxrss`` of this process (kB on Linux, bytes on macOS)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemProbe:
    """Peak memory of one timed segment of this process: on CPU the RSS high-water mark, reset
    before the segment (``/proc/self/clear_refs``, which also resets ``ru_maxrss``), or where that
    reset is unavailable ``ru_maxrss`` (process-wide, monotone); on GPU
    ``torch.cuda.max_memory_allocated``, reset before the segment."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.can_reset = (not self.cuda) and reset_peak_rss()
        self.kind = ("cuda_max_memory_allocated" if self.cuda
                     else "rss_high_water_mark" if self.can_reset else "ru_maxrss (process-wide)")

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.can_reset:
            reset_peak_rss()

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = status_kb().get("VmHWM") if self.can_reset else None
        return hwm / 1024 if hwm is not None else maxrss_mb()


# ============================================================================ processes

def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its descendants (a training process and its DataLoader workers)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


# ============================================================================ CPU

def cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process) from /proc (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest is in user)
        tck = os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.perf_counter(), busy / tck, t.user + t.system
    except (OSError, ValueError, IndexError):
        return None


def other_cpu(before, after) -> Optional[float]:
    """CPU seconds that other processes used between two snapshots, per wall second (0 = idle)."""
    if before is None or after is None:
        return None
    wall = after[0] - before[0]
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others) / max(wall, 1e-9)


def wait_for_idle(threshold: Optional[float], limit_s: float, probe_s: float = 1.0) -> float:
    """Sleep until other processes use at most ``threshold`` cores over ``probe_s`` (or ``limit_s``
    passed); returns the seconds waited. For shared CPU machines, where a neighbour's job
    slows a 2-thread OpenMP pool several-fold."""
    t0 = time.perf_counter()
    threshold = 0.1 if threshold is None else threshold
    while True:
        a = cpu_snapshot()
        time.sleep(probe_s)
        o = other_cpu(a, cpu_snapshot())
        if o is None or o <= threshold or time.perf_counter() - t0 > limit_s:
            return time.perf_counter() - t0


def cpu_name() -> str:
    """The CPU's model name and core count, for the report's header."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"
