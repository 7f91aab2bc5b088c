"""A byte-offset index over a JSONL file: random access to line i without loading the file.

Upstream MiniMind loads whole files through HF ``datasets`` (RAM grows with the file on every
rank). Here one pass over the file in large binary chunks finds the newlines with numpy and
records where every non-empty line starts and ends; an optional validator parses each line in
the same pass (for large files in a pool of forked processes, each over byte ranges that start
at line starts, merged in file order: the same result as one process). The result is cached on
disk and memory-mapped, so a warm start costs a stat, two 64 KiB reads, an ``mmap`` and the
checks below (a CRC over the table, a few thousand 1-byte reads).

Cache file (:mod:`minimind.data.cachefile`'s format and places): ``<file>.idx`` next to the
data when that directory is writable, otherwise ``$XDG_CACHE_HOME/minimind/index/<name>-<hash
of the path>.idx`` (``cache_dir`` overrides). Its header stores the file's size, ``mtime_ns``
and a hash of its first and last 64 KiB, plus the validator's key and its findings; any
mismatch rebuilds. The body is verified too (:mod:`minimind.data.verify`: a checksum, the
table's shape, line starts checked against the file, and every later read), so a damaged or
stale cache is rebuilt with a warning naming it, and never blamed on the data file.
Concurrent builders (DDP ranks) serialise on an advisory ``flock`` of the data file, so one
builds and the others load.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from minimind.data import verify
from minimind.data.cachefile import (
    DataFileLock,
    cache_candidates,
    file_signature,
    progress_mode,
    read_header,
    write_cache,
    write_header_and_arrays,
)
from minimind.data.errors import DataError, bad_line_message

_VERSION = 2  # 2: the header holds a checksum of the table and of its findings
_CHUNK = 8 * 1024 * 1024
_MAX_BAD_EXAMPLES = 20
# Validation (json.loads of every line: 70-170 MB/s per core) runs in a pool of forked
# processes, each over byte ranges of about this size, for files of at least twice that.
_RANGE_BYTES = 64 * 1024 * 1024
_MAX_WORKERS = 16
# A cache's line starts are checked for every entry below this size, else for a spread of them.
_CHECK_ALL_BELOW = 4096
_SPOT_CHECKS = 1024

Validator = Callable[[bytes], Optional[str]]

log = logging.getLogger(__name__)


def validator_key(validate: Validator | None) -> str | None:
    """Identity of a validator inside the cache header (its ``cache_key`` attribute if any)."""
    if validate is None:
        return None
    key = getattr(validate, "cache_key", None)
    if key:
        return str(key)
    return f"{getattr(validate, '__module__', '?')}.{getattr(validate, '__qualname__', repr(validate))}"


class _RangeResult(NamedTuple):
    """What scanning a byte range found; line numbers counted from the range's start (1 = its
    first line)."""

    parts: list  # (3, m) int64 arrays: starts, ends (file offsets), line numbers
    n_lines: int  # lines in the range, empty ones included
    n_bad: int
    bad: list  # the first _MAX_BAD_EXAMPLES (line number, reason)
    first_bad: tuple | None  # fail_fast: the first bad line, where the scan stopped


def _scan_range(fd: int, lo: int, hi: int, size: int, validate: Validator | None, fail_fast: bool,
                chunk_size: int, progress=None) -> _RangeResult:
    """Index the lines of bytes [lo, hi) of the file (lo at a line start; hi at one, or the end
    of the file). Each chunk is read at the start of the first line it has not finished
    (``pread``), so partial lines are re-read instead of buffers concatenated."""
    parts: list[np.ndarray] = []
    bad: list[tuple[int, str]] = []
    n_bad = 0
    n_lines = 0  # lines passed so far in this range, empty ones included
    base = lo  # file offset of buf[0]
    want = chunk_size
    while base < hi:
        buf = os.pread(fd, min(want, hi - base), base)
        if not buf:
            break  # the file shrank while we read it
        at_end = base + len(buf) >= hi
        arr = np.frombuffer(buf, dtype=np.uint8)
        ends = np.flatnonzero(arr == 10)
        if at_end and hi >= size and (len(ends) == 0 or ends[-1] != len(buf) - 1):
            ends = np.append(ends, len(buf))  # a last line without a trailing newline
        if len(ends) == 0:
            want *= 2  # a line longer than the chunk: read more of it
            continue
        want = chunk_size
        ends = ends.astype(np.int64, copy=False)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        numbers = np.arange(n_lines + 1, n_lines + 1 + len(ends), dtype=np.int64)
        keep = ends > starts
        # A whitespace-only line starts with whitespace; check those few in Python.
        lead = np.flatnonzero(keep)
        lead = lead[np.isin(arr[starts[lead]], (9, 11, 12, 13, 32))]
        for k in lead.tolist():
            if not buf[starts[k]:ends[k]].strip():
                keep[k] = False
        if validate is not None:
            lines = buf.split(b"\n")  # lines[k] is the k-th line for k < len(ends)
            for k in np.flatnonzero(keep).tolist():
                reason = validate(lines[k])
                if reason is not None:
                    keep[k] = False
                    n_bad += 1
                    if len(bad) < _MAX_BAD_EXAMPLES:
                        bad.append((int(numbers[k]), reason))
                    if fail_fast:
                        return _RangeResult([], 0, n_bad, bad, (int(numbers[k]), reason))
            del lines
        parts.append(np.stack([starts[keep] + base, ends[keep] + base, numbers[keep]]))
        n_lines += len(ends)
        consumed = min(int(ends[-1]) + 1, len(buf))
        base += consumed
        if progress is not None:
            progress(consumed)
    return _RangeResult(parts, n_lines, n_bad, bad, None)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _can_fork() -> bool:
    import multiprocessing as mp

    # A daemonic process (a DataLoader worker) may not have children.
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def _line_ranges(path: str, size: int, n: int) -> list[tuple[int, int]]:
    """About ``n`` byte ranges covering the file, each starting at a line start."""
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, n):
            pos = max(k * size // n, cuts[-1])
            f.seek(pos)
            while True:
                block = f.read(1 << 16)
                if not block:
                    pos = size
                    break
                nl = block.find(b"\n")
                if nl >= 0:
                    pos += nl + 1
                    break
                pos += len(block)
            if pos >= size:
                break
            if pos > cuts[-1]:
                cuts.append(pos)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:]))


_worker_state: tuple | None = None


def _init_worker(path, size, validate, fail_fast, chunk_size):
    global _worker_state
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    _worker_state = (fd, size, validate, fail_fast, chunk_size)


def _scan_task(rng: tuple[int, int]) -> _RangeResult:
    fd, size, validate, fail_fast, chunk_size = _worker_state
    return _scan_range(fd, rng[0], rng[1], size, validate, fail_fast, chunk_size)


class JsonlIndex:
    """Byte offsets of the non-empty lines of a JSONL file.

    ``validate(line_bytes) -> None | reason`` runs on every non-empty line during the build;
    lines it rejects are left out of the index and recorded in ``bad_lines`` (line number,
    reason; the first 20) and ``n_bad``. With ``fail_fast=True`` the first rejected line
    raises DataError at once (file, line number, reason) and nothing is cached.

    ``len(index)``, ``index.line(i) -> bytes`` (read with ``pread`` on a handle reopened lazily
    in each process, so the index survives fork into DataLoader workers),
    ``index.line_number(i)`` (1-based line in the file).

    ``workers``: processes that validate the lines while the index is built (forked; each
    scans byte ranges of the file). None (auto): the usable cores, up to 16, for a validated
    file of at least 128 MB; 1: in this process. The result is the same either way.
    """

    def __init__(self, path, cache_dir: str | None = None, validate: Validator | None = None,
                 progress: bool = True, fail_fast: bool = False, chunk_size: int = _CHUNK,
                 workers: int | None = None):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.exists(self.path):
            raise DataError(f"data file not found: {self.path}; "
                            "expected a JSONL file (one JSON object per line)")
        if not os.path.isfile(self.path):
            raise DataError(f"data path {self.path} is not a file; "
                            "expected a JSONL file (one JSON object per line)")
        self.cache_dir = cache_dir
        self.validate = validate
        self.validator_key = validator_key(validate)
        self.progress = progress
        self.chunk_size = int(chunk_size)
        self.workers = workers
        self.cache_hit = False
        self.build_seconds = 0.0
        self.cache_path: str | None = None
        self.table_checksum: str | None = None
        self._fd_: int | None = None
        self._fd_pid: int | None = None

        self.signature = file_signature(self.path)
        candidates = cache_candidates(self.path, cache_dir)
        if not self._load(candidates):
            with DataFileLock(self.path):
                if not self._load(candidates):  # another process may have built it meanwhile
                    t0 = time.perf_counter()
                    parts = self._build(fail_fast)
                    # Written part by part and then memory-mapped: the whole table is never
                    # held twice in memory.
                    written = write_cache(candidates, lambda f: self._write(f, parts))
                    if written is None or not self._load([written]):
                        table = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
                        self._set_table(np.ascontiguousarray(table, dtype=np.int64))
                        self.table_checksum = verify.checksum([self._table], self._facts())
                    del parts
                    self.cache_hit = False
                    self.build_seconds = time.perf_counter() - t0

    # -- cache ---------------------------------------------------------------------------
    def _facts(self) -> dict:
        """What the header says besides the signature; the checksum covers these too."""
        return {"validator": self.validator_key, "n": int(self._n), "n_lines": int(self.n_lines),
                "n_bad": int(self.n_bad), "bad": [list(b) for b in self.bad_lines]}

    def _write(self, f, parts: list[np.ndarray]) -> None:
        # The table is (3, n) row-major: every part's starts, then ends, then line numbers.
        arrays = [p[row] for row in range(3) for p in parts]
        self.table_checksum = verify.checksum(arrays, self._facts())
        header = {"version": _VERSION, "kind": "jsonl-index", **self.signature, **self._facts(),
                  "checksum": self.table_checksum}
        write_header_and_arrays(f, header, arrays)

    def _load(self, candidates: list[str]) -> bool:
        for cand in candidates:
            got = read_header(cand)
            if got is None:
                continue
            header, offset = got
            if (header.get("version") != _VERSION or header.get("kind") != "jsonl-index"
                    or any(header.get(k) != v for k, v in self.signature.items())
                    or header.get("validator") != self.validator_key):
                continue  # another file version, format or validator: rebuilt, nothing wrong
            try:
                n = int(header["n"])
                table = (np.memmap(cand, dtype=np.int64, mode="r", offset=offset, shape=(3, n))
                         if n else np.zeros((3, 0), dtype=np.int64))
                facts = {k: header[k] for k in ("validator", "n", "n_lines", "n_bad", "bad")}
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("index cache %s of %s cannot be read (%s); rebuilding it", cand, self.path, e)
                continue
            problem = self._problem(table, facts, header.get("checksum"))
            if problem:
                log.warning("index cache %s does not match %s (%s); rebuilding it", cand, self.path, problem)
                del table
                continue
            self._set_table(table)
            self.n_lines = int(header["n_lines"])
            self.n_bad = int(header["n_bad"])
            self.bad_lines = [(int(a), str(b)) for a, b in header["bad"]]
            self.cache_path, self.cache_hit, self.table_checksum = cand, True, header["checksum"]
            return True
        return False

    def _problem(self, table: np.ndarray, facts: dict, stored: str | None) -> str | None:
        """Why the cached table cannot be trusted, or None (:mod:`minimind.data.verify`)."""
        return verify.table_problem_in_file(self.path, table, facts, stored, self.signature["size"],
                                            _CHECK_ALL_BELOW, _SPOT_CHECKS)

    def mismatch_message(self, i: int, what: str) -> str:
        """Whose fault it is that entry i cannot be used: the file's (it changed since it was
        indexed) or the cache's (the file is as indexed): never the data file for the cache."""
        return verify.mismatch_message(self, i, what, changed=file_signature(self.path) != self.signature
                                       if os.path.exists(self.path) else True)

    def _set_table(self, table: np.ndarray) -> None:
        self._table = table
        self._starts, self._ends, self._linenos = table[0], table[1], table[2]
        self._n = table.shape[1]

    # -- build ---------------------------------------------------------------------------
    def _build(self, fail_fast: bool) -> list[np.ndarray]:
        """One pass over the file; returns the index as parts, (3, m) arrays of line starts,
        ends and numbers. With a validator and a large file, byte ranges that start at line
        starts are scanned by a pool of forked processes (:func:`_validation_workers`), and
        their results merged in file order: the same index, the same bad lines and line
        numbers, and with ``fail_fast`` the same (first) bad line, as one process gives."""
        from tqdm import tqdm

        validate = self.validate
        size = self.signature["size"]
        show, bar_on = progress_mode(size) if self.progress else (False, False)
        workers = self._workers(size)
        t0 = time.perf_counter()
        if show and not bar_on:  # a log file (SLURM): one line now, one at the end, no bar
            log.info("indexing %s (%.0f MB%s) ...", self.path, size / 2**20,
                     (f", validating every line in {workers} processes" if workers > 1 else
                      ", validating every line") if validate is not None else "")
        parts: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        n_bad = 0
        n_lines = 0  # lines before the current range, empty ones included (for line numbers)
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"indexing {os.path.basename(self.path)}", disable=not bar_on, leave=False) as bar:
            for r in self._scan(size, workers, fail_fast, bar.update):
                if r.first_bad is not None:  # fail_fast: the earlier ranges had no bad line
                    number, reason = r.first_bad
                    raise DataError(bad_line_message(self.path, n_lines + number, reason))
                for p in r.parts:
                    p[2] += n_lines
                parts += r.parts
                bad += [(n_lines + number, reason) for number, reason in r.bad[:_MAX_BAD_EXAMPLES - len(bad)]]
                n_bad += r.n_bad
                n_lines += r.n_lines
        self._n = sum(p.shape[1] for p in parts)
        if show and not bar_on:
            dt = time.perf_counter() - t0
            log.info("indexed %s in %.1f s (%.0f MB/s): %d samples, %d bad line(s)", self.path, dt,
                     size / 2**20 / max(dt, 1e-9), self._n, n_bad)
        self.n_lines, self.n_bad, self.bad_lines = n_lines, n_bad, bad
        return parts

    def _workers(self, size: int) -> int:
        """Processes for the build: ``workers`` if given, else (auto) up to the usable cores
        for a validated file of at least two ranges; 1 where forking is not possible."""
        if self.validate is None:
            return 1
        if self.workers is None:
            if size < 2 * _RANGE_BYTES:
                return 1
            want = min(_usable_cores(), _MAX_WORKERS, -(-size // _RANGE_BYTES))
        else:
            want = int(self.workers)
        if want <= 1 or not _can_fork():
            return 1
        return want

    def _scan(self, size: int, workers: int, fail_fast: bool, progress):
        """_RangeResults in file order: of the whole file (one process), or of byte ranges
        scanned by ``workers`` forked processes."""
        if workers <= 1:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                yield _scan_range(fd, 0, size, size, self.validate, fail_fast, self.chunk_size, progress)
            finally:
                os.close(fd)
            return
        import multiprocessing as mp

        n_ranges = max(4 * workers, -(-size // _RANGE_BYTES))
        ranges = _line_ranges(self.path, size, n_ranges)
        ctx = mp.get_context("fork")
        # Forked: the validator (any callable, a lambda too) is inherited, not pickled.
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(self.path, size, self.validate, fail_fast, self.chunk_size)) as pool:
            for (lo, hi), r in zip(ranges, pool.imap(_scan_task, ranges)):
                progress(hi - lo)
                yield r
                if r.first_bad is not None:
                    break  # leaving the with block terminates the pool

    # -- access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return (f"JsonlIndex({self.path!r}, lines={self._n}, bad={self.n_bad}, "
                f"cache={'hit' if self.cache_hit else 'built'}: {self.cache_path})")

    def _fd(self) -> int:
        pid = os.getpid()
        if self._fd_ is None or self._fd_pid != pid:
            # A handle inherited through fork shares its offset with the parent; pread does not
            # use the offset, but a fresh handle per process keeps things obvious.
            self._fd_ = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fd_pid = pid
        return self._fd_

    def line(self, i: int) -> bytes:
        """The raw bytes of the i-th indexed line (without its newline); DataError (naming the
        cache or, if it changed, the file) when they are not one whole line of the file."""
        start, end = int(self._starts[i]), int(self._ends[i])
        got = verify.read_checked(self._fd(), start, end, self.signature["size"])
        if got is None:
            raise DataError(self.mismatch_message(i, "not a whole line"))
        return got

    def line_number(self, i: int) -> int:
        """1-based line number of the i-th indexed line in the file."""
        return int(self._linenos[i])

    def byte_range(self, i: int) -> tuple[int, int]:
        return int(self._starts[i]), int(self._ends[i])

    @property
    def offsets(self) -> np.ndarray:
        """Start byte offsets of the indexed lines (int64)."""
        return self._starts

    # -- pickling (spawned DataLoader workers) -------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fd_"], state["_fd_pid"] = None, None
        if self.cache_path and isinstance(self._table, np.memmap):
            for k in ("_table", "_starts", "_ends", "_linenos"):
                state[k] = None  # re-mapped from the cache file on the other side
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._table is None:
            header, offset = read_header(self.cache_path)
            n = int(header["n"])
            self._set_table(np.memmap(self.cache_path, dtype=np.int64, mode="r", offset=offset, shape=(3, n)))

    def __del__(self):
        fd = getattr(self, "_fd_", None)
        if fd is not None and getattr(self, "_fd_pid", None) == os.getpid():
            try:
                os.close(fd)
            except OSError:
                pass
