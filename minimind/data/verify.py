"""Caches are verified, never trusted: the checks the line index and the token cache run on
what they read back, cheap enough for every start.

- :func:`checksum`: a CRC-32 over the cache's arrays and the facts its header states (counts,
  bad lines), written at build time and compared at load: a damaged body or header is found.
- :func:`table_problem`: the line table is well formed (each line ends after it starts, lines
  in file order, inside the file).
- :func:`line_start_problem`: the table matches the file: the byte before each checked line
  start and the byte at each line end are newlines (every entry for a small table, an even
  spread of them for a large one). A file edited in place that kept its size, its first and
  last 64 KiB and its mtime (what the signature sees) is found here.
- :func:`read_checked`: the same test on every line read later, for free (the two bytes come
  with the read), so an entry a spread of checks missed is reported as the cache's fault.

Whoever finds a problem rebuilds the cache with a warning naming the cache file.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np


def checksum(arrays, facts: dict | None = None) -> str:
    crc = zlib.crc32(json.dumps(facts or {}, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.size:
            crc = zlib.crc32(memoryview(a).cast("B"), crc)
    return f"{crc:08x}"


def table_problem(starts: np.ndarray, ends: np.ndarray, linenos: np.ndarray, size: int) -> str | None:
    if not len(starts):
        return None
    if starts[0] < 0 or ends[-1] > size:
        return f"a line lies outside the file's {size} bytes"
    if not np.all(ends > starts):
        return "a line ends before it starts"
    if len(starts) > 1 and not (np.all(starts[1:] > ends[:-1]) and np.all(linenos[1:] > linenos[:-1])):
        return "lines out of file order"
    return None


def _byte(fd: int, pos: int) -> bytes:
    return os.pread(fd, 1, pos)


def line_start_problem(fd: int, starts: np.ndarray, ends: np.ndarray, size: int, check_all_below: int,
                       spot_checks: int) -> str | None:
    """The first entry whose bytes are not one whole line of the file, or None."""
    n = len(starts)
    if n == 0:
        return None
    which = range(n) if n <= check_all_below else \
        np.unique(np.linspace(0, n - 1, max(2, spot_checks)).astype(np.int64)).tolist()
    for i in which:
        start, end = int(starts[i]), int(ends[i])
        if (start > 0 and _byte(fd, start - 1) != b"\n") or (end < size and _byte(fd, end) != b"\n"):
            return f"entry {i} (bytes {start}-{end}) is not a line of the file"
    return None


def table_problem_in_file(path: str, table: np.ndarray, facts: dict, stored: str | None, size: int,
                          check_all_below: int, spot_checks: int) -> str | None:
    """Why a cached (3, n) line table of ``path`` cannot be trusted, or None."""
    if checksum([table], facts) != stored:
        return "its checksum does not match: the cache file is damaged"
    problem = table_problem(table[0], table[1], table[2], size)
    if problem is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            problem = line_start_problem(fd, table[0], table[1], size, check_all_below, spot_checks)
        finally:
            os.close(fd)
    return problem


def mismatch_message(index, i: int, what: str, changed: bool) -> str:
    """The error for an entry of ``index`` that is not a line of its file: the file's fault if
    it ``changed`` since it was indexed, else the cache's (named, with what to do)."""
    from minimind.data.errors import bad_line_message

    if changed:
        return bad_line_message(index.path, index.line_number(i),
                                f"{what}: the file changed while in use (it is not the file that was "
                                "indexed at the start of the run); restart the run")
    where = index.cache_path or "(in memory)"
    start, end = index.byte_range(i)
    return (f"the line index {where} does not match {index.path} ({what} at entry {i}, bytes {start}-{end}): "
            f"the cache is stale or damaged, not the data file; delete {where} and run again (it is "
            "rebuilt from the file)")


def read_checked(fd: int, start: int, end: int, size: int) -> bytes | None:
    """Bytes [start, end) of the file, or None if they are not one whole line (the byte before
    ``start`` and the byte at ``end`` must be newlines, or the file's ends)."""
    lo = start - 1 if start > 0 else start
    hi = end + 1 if end < size else end
    buf = os.pread(fd, hi - lo, lo)
    if len(buf) != hi - lo:
        return None
    if start > 0 and buf[0:1] != b"\n":
        return None
    if end < size and buf[-1:] != b"\n":
        return None
    return buf[start - lo:len(buf) - (hi - end)]
