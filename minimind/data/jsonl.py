"""A byte-offset index over a JSONL file: random access to line i without loading the file.

Upstream MiniMind loads whole files through HF ``datasets`` (RAM grows with the file on every
rank). Here one pass over the file in large binary chunks finds the newlines with numpy and
records where every non-empty line starts and ends; an optional validator parses each line in
the same pass. The result is cached on disk and memory-mapped, so a warm start costs a stat,
two 64 KiB reads and an ``mmap``.

Cache file: ``<file>.idx`` next to the data when that directory is writable, otherwise
``$XDG_CACHE_HOME/minimind/index/<name>-<hash of the path>.idx`` (``cache_dir`` overrides). Its
header stores the file's size, ``mtime_ns`` and a hash of its first and last 64 KiB, plus the
validator's key and its findings; any mismatch rebuilds. Concurrent builders (DDP ranks)
serialise on an advisory ``flock`` of the data file, so one builds and the others load.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable, Optional

import numpy as np

from minimind.data.errors import DataError, bad_line_message

_MAGIC = b"MMJSONLIDX\x01\n"
_VERSION = 1
_SIG_BYTES = 64 * 1024
_CHUNK = 8 * 1024 * 1024
_MAX_BAD_EXAMPLES = 20
# Files smaller than this index in well under a second: no progress bar for them.
_PROGRESS_MIN_BYTES = 32 * 1024 * 1024

Validator = Callable[[bytes], Optional[str]]


def file_signature(path: str, st: os.stat_result | None = None) -> dict:
    """What identifies a version of the file: size, mtime_ns, hash of its first/last 64 KiB."""
    st = st or os.stat(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_SIG_BYTES))
        if st.st_size > _SIG_BYTES:
            f.seek(max(_SIG_BYTES, st.st_size - _SIG_BYTES))
            h.update(f.read(_SIG_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail": h.hexdigest()}


def validator_key(validate: Validator | None) -> str | None:
    """Identity of a validator inside the cache header (its ``cache_key`` attribute if any)."""
    if validate is None:
        return None
    key = getattr(validate, "cache_key", None)
    if key:
        return str(key)
    return f"{getattr(validate, '__module__', '?')}.{getattr(validate, '__qualname__', repr(validate))}"


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minimind", "index")


def cache_candidates(path: str, cache_dir: str | None, suffix: str = ".idx") -> list[str]:
    """Where a cache for ``path`` may live, in the order they are tried."""
    name = os.path.basename(path)
    tag = hashlib.blake2b(path.encode(), digest_size=6).hexdigest()
    if cache_dir is not None:
        return [os.path.join(os.path.abspath(os.path.expanduser(str(cache_dir))), f"{name}-{tag}{suffix}")]
    return [os.path.join(os.path.dirname(path), name + suffix),
            os.path.join(default_cache_root(), f"{name}-{tag}{suffix}")]


def write_atomic(candidates: list[str], write: Callable[[object], None]) -> str | None:
    """Write through ``write(fileobj)`` to the first candidate whose directory takes it
    (temporary file + ``os.replace``); None when none does."""
    for target in candidates:
        directory = os.path.dirname(target)
        try:
            os.makedirs(directory, exist_ok=True)
            if not os.access(directory, os.W_OK):
                continue
            tmp = f"{target}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    write(f)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return target
        except OSError:
            continue
    return None


class _FileLock:
    """Advisory exclusive lock on the data file itself (nothing extra is created)."""

    def __init__(self, path: str):
        self.path, self.f = path, None

    def __enter__(self):
        try:
            import fcntl

            self.f = open(self.path, "rb")
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.f is not None:
                self.f.close()
            self.f = None
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # closing releases the flock


def write_header_and_arrays(f, header: dict, arrays: list[np.ndarray]) -> None:
    """``_MAGIC``, 8-byte header length, JSON header, zero padding to 64 bytes, raw arrays."""
    blob = json.dumps(header, ensure_ascii=False).encode()
    f.write(_MAGIC)
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    pos = len(_MAGIC) + 8 + len(blob)
    f.write(b"\0" * (-pos % 64))
    for a in arrays:
        f.write(np.ascontiguousarray(a).tobytes())


def read_header(path: str) -> tuple[dict, int] | None:
    """(header, offset of the first array) of a cache file, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode())
        pos = len(_MAGIC) + 8 + n
        return header, pos + (-pos % 64)
    except (OSError, ValueError):
        return None


class JsonlIndex:
    """Byte offsets of the non-empty lines of a JSONL file.

    ``validate(line_bytes) -> None | reason`` runs on every non-empty line during the build;
    lines it rejects are left out of the index and recorded in ``bad_lines`` (line number,
    reason; the first 20) and ``n_bad``. With ``fail_fast=True`` the first rejected line
    raises DataError at once (file, line number, reason) and nothing is cached.

    ``len(index)``, ``index.line(i) -> bytes`` (read with ``pread`` on a handle reopened lazily
    in each process, so the index survives fork into DataLoader workers),
    ``index.line_number(i)`` (1-based line in the file).
    """

    def __init__(self, path, cache_dir: str | None = None, validate: Validator | None = None,
                 progress: bool = True, fail_fast: bool = False, chunk_size: int = _CHUNK):
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
        self.cache_hit = False
        self.build_seconds = 0.0
        self.cache_path: str | None = None
        self._fd_: int | None = None
        self._fd_pid: int | None = None

        self.signature = file_signature(self.path)
        candidates = cache_candidates(self.path, cache_dir)
        if not self._load(candidates):
            with _FileLock(self.path):
                if not self._load(candidates):  # another process may have built it meanwhile
                    t0 = time.perf_counter()
                    parts = self._build(fail_fast)
                    # Written part by part and then memory-mapped: the whole table is never
                    # held twice in memory.
                    written = write_atomic(candidates, lambda f: self._write(f, parts))
                    if written is None or not self._load([written]):
                        table = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
                        self._set_table(np.ascontiguousarray(table, dtype=np.int64))
                    del parts
                    self.cache_hit = False
                    self.build_seconds = time.perf_counter() - t0

    # -- cache ---------------------------------------------------------------------------
    def _header(self) -> dict:
        return {"version": _VERSION, "kind": "jsonl-index", **self.signature,
                "validator": self.validator_key, "n": int(self._n), "n_lines": int(self.n_lines),
                "n_bad": int(self.n_bad), "bad": [list(b) for b in self.bad_lines]}

    def _write(self, f, parts: list[np.ndarray]) -> None:
        # The table is (3, n) row-major: every part's starts, then ends, then line numbers.
        write_header_and_arrays(f, self._header(), [p[row] for row in range(3) for p in parts])

    def _load(self, candidates: list[str]) -> bool:
        for cand in candidates:
            got = read_header(cand)
            if got is None:
                continue
            header, offset = got
            if (header.get("version") != _VERSION or header.get("kind") != "jsonl-index"
                    or any(header.get(k) != v for k, v in self.signature.items())
                    or header.get("validator") != self.validator_key):
                continue
            n = int(header["n"])
            try:
                table = (np.memmap(cand, dtype=np.int64, mode="r", offset=offset, shape=(3, n))
                         if n else np.zeros((3, 0), dtype=np.int64))
            except (OSError, ValueError):
                continue
            self._set_table(table)
            self.n_lines = int(header["n_lines"])
            self.n_bad = int(header["n_bad"])
            self.bad_lines = [(int(a), str(b)) for a, b in header["bad"]]
            self.cache_path, self.cache_hit = cand, True
            return True
        return False

    def _set_table(self, table: np.ndarray) -> None:
        self._table = table
        self._starts, self._ends, self._linenos = table[0], table[1], table[2]
        self._n = table.shape[1]

    # -- build ---------------------------------------------------------------------------
    def _build(self, fail_fast: bool) -> list[np.ndarray]:
        """One pass over the file; returns the index as parts, (3, m) arrays of line starts,
        ends and numbers. Each chunk is read at the start of the first line it has not
        finished (``pread``), so partial lines are re-read instead of buffers concatenated."""
        from tqdm import tqdm

        validate = self.validate
        size = self.signature["size"]
        parts: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        n_bad = 0
        n_lines = 0  # lines passed so far, empty ones included (for line numbers)
        base = 0  # file offset of buf[0]
        want = self.chunk_size
        show = self.progress and size >= _PROGRESS_MIN_BYTES
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"indexing {os.path.basename(self.path)}", disable=not show, leave=False) as bar:
                while base < size:
                    buf = os.pread(fd, want, base)
                    if not buf:
                        break  # the file shrank while we read it
                    at_eof = base + len(buf) >= size
                    arr = np.frombuffer(buf, dtype=np.uint8)
                    ends = np.flatnonzero(arr == 10)
                    if at_eof and (len(ends) == 0 or ends[-1] != len(buf) - 1):
                        ends = np.append(ends, len(buf))  # a last line without a trailing newline
                    if len(ends) == 0:
                        want *= 2  # a line longer than the chunk: read more of it
                        continue
                    want = self.chunk_size
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
                                    raise DataError(bad_line_message(self.path, int(numbers[k]), reason))
                        del lines
                    parts.append(np.stack([starts[keep] + base, ends[keep] + base, numbers[keep]]))
                    n_lines += len(ends)
                    consumed = min(int(ends[-1]) + 1, len(buf))
                    base += consumed
                    bar.update(consumed)
        finally:
            os.close(fd)
        self._n = sum(p.shape[1] for p in parts)
        self.n_lines, self.n_bad, self.bad_lines = n_lines, n_bad, bad
        return parts

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
        """The raw bytes of the i-th indexed line (without its newline)."""
        start, end = int(self._starts[i]), int(self._ends[i])
        fd = self._fd()
        if hasattr(os, "pread"):
            return os.pread(fd, end - start, start)
        os.lseek(fd, start, os.SEEK_SET)  # pragma: no cover (no pread: Windows)
        return os.read(fd, end - start)

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
