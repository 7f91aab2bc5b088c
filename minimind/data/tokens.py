"""The token cache (``pretokenize=True``): the tokens of every indexed line of a JSONL file,
computed once, then memory-mapped by every process that trains on it.

One file in :mod:`minimind.data.cachefile`'s format, beside the line index (the same
candidate places, ``<file>.tok-<key>.idx``): a header in a reserved 4 KiB (it is known only
at the end), the tokens of all samples back to back (uint16, or uint32 for vocabularies over
65536), the n+1 offsets (int64) of each sample's tokens, and one flag byte per sample
(``FLAG_*``), which tells the SFT dataset without re-reading the line whether an augmentation
would change the sample. The key is the dataset's hash of everything the tokens depend on
(file version, tokenizer, max_length, the dataset's options); another key is another file.

A cache is verified before it is used (:meth:`TokenCache._problem`): its exact size, the shape
of its offsets, and a checksum of the offsets, the flags and the first and last 64 KiB of the
tokens; a damaged one is rebuilt with a warning naming it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np

from minimind.data import verify
from minimind.data.cachefile import (
    DataFileLock,
    cache_candidates,
    progress_mode,
    read_header,
    write_cache,
    write_header_at_start,
)
from minimind.data.errors import DataError

# Flags stored per sample: the stored ids were cut to max_length; (SFT) the rendered text has
# an empty think block; (SFT) a system prompt may be added to the conversation; (pretrain) the
# text is empty or whitespace.
FLAG_TRUNCATED, FLAG_EMPTY_THINK, FLAG_SYSTEM_OK, FLAG_EMPTY_TEXT = 1, 2, 4, 8
_TOKEN_HEADER_BYTES = 4096
_STEP = 1024  # samples per tokenizer call while building
_EDGE = 64 * 1024  # bytes of the tokens at each end that the checksum covers
_TOKEN_VERSION = 2  # 2: the header holds a checksum

# (ids as stored, flags) of each index of a range: one batched encode per call.
Tokenize = Callable[[range], list]

log = logging.getLogger(__name__)


class _parallel_tokenizers:
    """Let ``encode_batch_fast`` use every core while the token cache is built, then switch the
    Rust thread pool off again (set explicitly, so a later fork neither warns nor deadlocks)."""

    def __enter__(self):
        self.before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"

    def __exit__(self, *exc):
        os.environ["TOKENIZERS_PARALLELISM"] = "false" if self.before is None else self.before


class TokenCache:
    """The memory-mapped token cache of one file: ``get(i) -> (ids, flags)``.

    Pickles as (path, header) and re-maps on the other side (DataLoader workers), never as the
    tokens themselves."""

    def __init__(self, path: str, header: dict):
        self.path, self.header = path, header
        n, total = header["n"], header["total"]
        dtype = np.dtype(header["dtype"])
        self.tokens = (np.memmap(path, dtype=dtype, mode="r", offset=_TOKEN_HEADER_BYTES, shape=(total,))
                       if total else np.zeros(0, dtype=dtype))
        self.offsets = np.memmap(path, dtype=np.int64, mode="r", offset=header["offsets_at"], shape=(n + 1,))
        self.flags = (np.memmap(path, dtype=np.uint8, mode="r", offset=header["flags_at"], shape=(n,))
                      if n else np.zeros(0, dtype=np.uint8))

    def __reduce__(self):
        return TokenCache, (self.path, self.header)

    def get(self, i: int) -> tuple[np.ndarray, int]:
        """(the stored ids of sample i, a read-only view of the memory map; its flags)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], int(self.flags[i])

    @classmethod
    def load_or_build(cls, index, cache_dir: str | None, key: str, vocab_size: int,
                      tokenize: Tokenize) -> "TokenCache":
        """The cache ``key`` of the file ``index`` (a :class:`~minimind.data.index.JsonlIndex`)
        covers, built through ``tokenize`` if no candidate place holds it; DataError if none
        can take it."""
        candidates = cache_candidates(index.path, cache_dir, suffix=f".tok-{key[:16]}.idx")
        cache = cls._open(candidates, key, len(index))
        if cache is not None:
            return cache
        with DataFileLock(index.path):
            cache = cls._open(candidates, key, len(index))  # another process may have built it meanwhile
            if cache is not None:
                return cache
            write = cls._writer(index, key, vocab_size, tokenize)
            where = write_cache(candidates, write)
        if where is None:
            dirs = ", ".join(os.path.dirname(c) for c in candidates)
            raise DataError(f"pretokenize=True: cannot write a token cache for {index.path} to any of "
                            f"{dirs}; set cache_dir to a writable directory")
        return cls._open([where], key, len(index))

    @classmethod
    def _open(cls, candidates: list[str], key: str, n: int | None = None) -> "TokenCache | None":
        for cand in candidates:
            got = read_header(cand)
            if got and got[0].get("kind") == "tokens" and got[0].get("key") == key:
                try:
                    cache = cls(cand, got[0])
                    problem = cache._problem(n)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    problem = f"it cannot be read: {e}"
                if problem is None:
                    return cache
                log.warning("token cache %s is damaged (%s); rebuilding it", cand, problem)
        return None

    def _problem(self, n: int | None) -> str | None:
        """Why this cache cannot be trusted, or None."""
        h = self.header
        if h.get("version") != _TOKEN_VERSION:
            return f"format version {h.get('version')}, expected {_TOKEN_VERSION}"
        size, want = os.path.getsize(self.path), h["flags_at"] + h["n"]
        if size != want:
            return f"{size} bytes, expected {want}"
        if n is not None and h["n"] != n:
            return f"{h['n']} samples, the data file has {n}"
        off = self.offsets
        if off[0] != 0 or off[-1] != h["total"] or not np.all(off[1:] >= off[:-1]):
            return "its sample offsets are out of order"
        if _checksum(self.offsets, self.flags, self.tokens) != h.get("checksum"):
            return "its checksum does not match"
        return None

    @staticmethod
    def _writer(index, key: str, vocab_size: int, tokenize: Tokenize) -> Callable[[object], None]:
        """``write(fileobj)``: tokenizes every indexed line, streaming the tokens to the file."""
        from tqdm import tqdm

        path, n, size = index.path, len(index), index.signature["size"]
        dtype = np.uint16 if vocab_size <= 65536 else np.uint32
        offsets = np.zeros(n + 1, dtype=np.int64)
        flags = np.zeros(n, dtype=np.uint8)
        head, tail = b"", b""  # the first and last _EDGE bytes of the tokens, for the checksum

        def write(f):
            nonlocal head, tail
            f.write(b"\0" * _TOKEN_HEADER_BYTES)
            total = 0
            big, bar_on = progress_mode(size)
            t0 = time.perf_counter()
            if big and not bar_on:  # a log file (SLURM): one line now, one at the end, no bar
                log.info("pretokenize: tokenizing %s (%d samples, %.0f MB) into a token cache ...",
                         path, n, size / 2**20)
            with tqdm(total=n, desc=f"tokenizing {os.path.basename(path)}", unit="line",
                      disable=not bar_on, leave=False, mininterval=1.0) as bar, _parallel_tokenizers():
                for lo in range(0, n, _STEP):
                    batch = []
                    for i, (ids, flag) in enumerate(tokenize(range(lo, min(lo + _STEP, n))), lo):
                        flags[i] = flag
                        total += len(ids)
                        offsets[i + 1] = total
                        batch.append(np.asarray(ids, dtype=dtype))
                    chunk = np.concatenate(batch).tobytes()
                    f.write(chunk)
                    if len(head) < _EDGE:
                        head += chunk[:_EDGE - len(head)]
                    tail = (tail + chunk)[-_EDGE:]
                    bar.update(min(_STEP, n - lo))
            pos = _TOKEN_HEADER_BYTES + total * np.dtype(dtype).itemsize
            pad = -pos % 64
            f.write(b"\0" * pad)
            offsets_at = pos + pad
            f.write(offsets.tobytes())
            flags_at = offsets_at + offsets.nbytes
            f.write(flags.tobytes())
            if big and not bar_on:
                dt = time.perf_counter() - t0
                log.info("pretokenize: %s tokenized in %.1f s (%.1f MB/s, %d tokens)", path, dt,
                         size / 2**20 / max(dt, 1e-9), total)
            header = {"version": _TOKEN_VERSION, "kind": "tokens", "key": key, "n": n, "total": total,
                      "dtype": np.dtype(dtype).name, "offsets_at": offsets_at, "flags_at": flags_at,
                      "checksum": verify.checksum([offsets, flags, np.frombuffer(head, dtype=np.uint8),
                                                  np.frombuffer(tail, dtype=np.uint8)])}
            write_header_at_start(f, header, _TOKEN_HEADER_BYTES)

        return write


def _checksum(offsets: np.ndarray, flags: np.ndarray, tokens: np.ndarray) -> str:
    """CRC of the offsets, the flags and the first and last _EDGE bytes of the tokens (all of
    them would cost a read of the whole cache at every start)."""
    raw = tokens.view(np.uint8) if tokens.size else np.zeros(0, dtype=np.uint8)
    return verify.checksum([offsets, flags, raw[:_EDGE], raw[-_EDGE:] if raw.size else raw])
