"""The one on-disk format of the data caches (the line index and the token cache), and where
they live.

A cache file is ``MAGIC``, an 8-byte little-endian header length, a JSON header, zero padding
to a multiple of 64 bytes, then raw arrays (memory-mapped by the reader). The header says what
the cache holds (``kind``) and what it was built from (the data file's :func:`file_signature`
and the builder's key); a reader that finds anything else rebuilds.

A cache for ``<file>`` lives at ``<file><suffix>`` next to the data when that directory is
writable, otherwise under ``$XDG_CACHE_HOME/minimind/index/`` (``cache_dir`` overrides both):
:func:`cache_candidates`. Builders serialise on an advisory ``flock`` of the data file itself
(:class:`DataFileLock`), so of several processes (DDP ranks) one builds and the others load,
and write through :func:`write_cache`, i.e. :func:`minimind.files.atomic_write`: a reader
never sees a half-written cache, and a crash leaves none.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Callable

import numpy as np

from minimind.files import atomic_write

MAGIC = b"MMJSONLIDX\x01\n"
_SIG_BYTES = 64 * 1024
# Files smaller than this are cached in well under a second: no progress output for them.
_PROGRESS_MIN_BYTES = 32 * 1024 * 1024


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


def write_cache(candidates: list[str], write: Callable[[object], None]) -> str | None:
    """Write through ``write(fileobj)`` to the first candidate whose directory takes it; None
    when none does. Each try is :func:`minimind.files.atomic_write` (a hidden ``.<name>.*.tmp``
    beside the target, fsync'd and renamed: never taken for a cache or a packaged asset)."""
    for target in candidates:
        directory = os.path.dirname(target)
        try:
            os.makedirs(directory, exist_ok=True)
            if not os.access(directory, os.W_OK):
                continue
            atomic_write(target, write)
            return target
        except OSError:
            continue
    return None


class DataFileLock:
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
    """``MAGIC``, 8-byte header length, JSON header, zero padding to 64 bytes, raw arrays."""
    blob = json.dumps(header, ensure_ascii=False).encode()
    f.write(MAGIC)
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    pos = len(MAGIC) + 8 + len(blob)
    f.write(b"\0" * (-pos % 64))
    for a in arrays:
        f.write(np.ascontiguousarray(a).tobytes())


def write_header_at_start(f, header: dict, room: int) -> None:
    """Write ``MAGIC``, the length and the header at the start of ``f``, into the ``room``
    bytes reserved there (for a cache whose header is known only after its arrays)."""
    blob = json.dumps(header).encode()
    assert len(MAGIC) + 8 + len(blob) <= room
    f.seek(0)
    f.write(MAGIC + len(blob).to_bytes(8, "little") + blob)


def read_header(path: str) -> tuple[dict, int] | None:
    """(header, offset of the first array) of a cache file, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode())
        pos = len(MAGIC) + 8 + n
        return header, pos + (-pos % 64)
    except (OSError, ValueError):
        return None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_mode(size: int) -> tuple[bool, bool]:
    """(report the build at all, as a bar) for a cache of a ``size``-byte data file. A bar only
    on a terminal: in a log file (SLURM) every refresh is a line, so there the builders log one
    line at the start and one at the end instead."""
    show = size >= _PROGRESS_MIN_BYTES
    return show, show and _stderr_is_terminal()
