"""What the pretrain and SFT datasets share: a validated, indexed JSONL file and the batch path.

Items are ``(input_ids, labels)``: two LongTensors of length ``max_length``, labels aligned
with input_ids (the model shifts inside), -100 where no loss is taken, with upstream
MiniMind's sample semantics (MiniMind-3's ``dataset/lm_dataset.py``, d65ef2c; what a sample
is: :mod:`minimind.data.pretrain`, :mod:`minimind.data.sft`).

Unlike upstream, nothing is loaded up front: a :class:`~minimind.data.index.JsonlIndex`
(every line validated by the dataset's validator while it is built, and cached) gives line
i, tokenized in ``__getitem__``; ``pretokenize=True`` tokenizes the file once into a
memory-mapped :class:`~minimind.data.tokens.TokenCache` instead. Counters (truncated, seen)
and the epoch of the augmentation draws live in shared memory, so DataLoader workers' counts
reach the main process and persistent workers see a new epoch.

Speed (same items, see ``docs/data-benchmark.md``):

* only the part of a text that survives truncation is tokenized
  (:meth:`~minimind.data.tokenizer.Tokenizer.encode_prefix_batch`, exact: the ids are those of
  the whole text, cut);
* ``__getitems__`` (the DataLoader's batched fetch) reads, tokenizes and pads a whole batch at
  once: one tokenizer call per batch, padding and labels in numpy, no Python lists of ids on
  the token-cache path. ``__getitem__`` is the same code for one index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from minimind.data.errors import DataError, bad_line_message
from minimind.data.index import JsonlIndex
from minimind.data.tokenizer import Tokenizer, load_tokenizer
from minimind.data.tokens import TokenCache

# Upstream sets this too: the Rust thread pool and DataLoader's fork do not mix.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

ON_BAD_LINE = ("error", "skip")
_COUNTER_SLOTS = 65  # row 0: the main process; rows 1..64: DataLoader workers
_TRUNCATED, _SEEN, _EMPTY = 0, 1, 2


# -- line validators (run on every line while indexing; return None or what is wrong) -------
def parse_line(line: bytes) -> tuple[object, str | None]:
    """(the JSON value of a line, None), or (None, what is wrong with it): what every line
    validator starts with."""
    try:
        return json.loads(line.decode("utf-8")), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason} at byte {e.start}); expected one JSON object per line"
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        col = getattr(e, "colno", None)
        where = f" at column {col}" if col else ""
        return None, f"not valid JSON ({msg}{where}); expected one JSON object per line"


def json_kind(v) -> str:
    """The JSON name of a parsed value's type, for messages (``got a JSON array``)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


class BadLines(NamedTuple):
    """What ``on_bad_line="skip"`` dropped: how many, and the first (line number, reason)s."""

    count: int
    first: list

    def __int__(self) -> int:
        return self.count

    def __index__(self) -> int:
        return self.count

    def __str__(self) -> str:
        if not self.count:
            return "no bad lines"
        lines = ", ".join(str(n) for n, _ in self.first[:5])
        return f"{self.count} bad line(s) skipped (first at line(s) {lines})"


class JsonlDataset(Dataset):
    """What both datasets share: validation and indexing, tokenizer, counters, token cache,
    padding and the batched fetch. A subclass sets ``_validator`` and implements
    ``_cache_params``, ``_tokenize_for_cache`` and ``_batch``."""

    _validator = None  # set by subclasses
    _counts_empty = False  # the pretrain dataset counts empty texts (``empty_texts`` in stats(), if any)

    def __init__(self, path, tokenizer, max_length: int, on_bad_line: str, cache_dir, pretokenize: bool):
        super().__init__()
        if on_bad_line not in ON_BAD_LINE:
            raise DataError(f"on_bad_line={on_bad_line!r} is not valid; "
                            f"expected one of: {', '.join(ON_BAD_LINE)}")
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
            raise DataError(f"max_length={max_length!r} is not valid; expected an integer >= 2")
        if path is None or str(path) in ("", "???"):
            raise DataError(f"no data file given (path={path!r}); expected the path of a JSONL file")
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.exists(self.path):
            raise DataError(f"data file not found: {self.path}; "
                            "expected a JSONL file with one JSON object per line")
        if not os.path.isfile(self.path):
            raise DataError(f"data path {self.path} is not a file; expected a JSONL file")
        if os.path.getsize(self.path) == 0:
            raise DataError(f"data file {self.path} is empty; expected one JSON object per line")
        self.max_length = int(max_length)
        self.on_bad_line = on_bad_line
        self.cache_dir = cache_dir
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer)  # cheap checks before the scan

        self.index = JsonlIndex(self.path, cache_dir=cache_dir, validate=type(self)._validator,
                                fail_fast=(on_bad_line == "error"))
        if self.index.n_bad and on_bad_line == "error":  # found in a cache built in skip mode
            line_no, reason = self.index.bad_lines[0]
            raise DataError(bad_line_message(self.path, line_no, reason)
                            + f" ({self.index.n_bad} bad line(s) in all; on_bad_line='skip' drops them)")
        if len(self.index) == 0:
            if self.index.n_bad:
                first_no, first_reason = self.index.bad_lines[0]
                what = (f"all {self.index.n_bad} non-empty line(s) are bad "
                        f"(first: line {first_no}: {first_reason})")
            else:
                what = "it has only blank lines"
            raise DataError(f"data file {self.path} has no samples: {what}")
        self.bad_lines = BadLines(self.index.n_bad, list(self.index.bad_lines))
        if self.index.n_bad:
            log.warning("%s: %s", self.path, self.bad_lines)

        # Shared memory, so counts made in DataLoader workers reach the main process; one row
        # per process, so no two processes ever write the same cell.
        self._counters = torch.zeros((_COUNTER_SLOTS, 3), dtype=torch.int64).share_memory_()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._np_views = None

        self.pretokenize = bool(pretokenize)
        self._tokens: TokenCache | None = None
        if self.pretokenize:
            self._tokens = TokenCache.load_or_build(self.index, cache_dir, self._token_cache_key(),
                                                    self.tokenizer.vocab_size, self._tokenize_for_cache)

    # -- subclass hooks ------------------------------------------------------------------
    def _cache_params(self) -> str:
        raise NotImplementedError

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        """(ids as stored, flags) for each index: one batched encode per call."""
        raise NotImplementedError

    def _token_cache_key(self) -> str:
        """Hash of everything the stored tokens depend on. It names the cache file, so the same
        inputs must keep giving the same key (or every existing token cache is rebuilt)."""
        sig = self.index.signature
        parts = [type(self).__name__, self._cache_params(), str(self.max_length), self.tokenizer.fingerprint,
                 str(sig["size"]), str(sig["mtime_ns"]), sig["head_tail"], str(self.index.validator_key)]
        return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()

    # -- shared helpers ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _views(self):
        pid = os.getpid()
        if self._np_views is None or self._np_views[0] != pid:
            self._np_views = (pid, self._counters.numpy(), self._epoch.numpy())
        return self._np_views

    def _count(self, truncated: bool, seen: int = 1, empty: int = 0) -> None:
        """Add ``seen`` samples, ``truncated`` (a bool or a count) of them truncated, ``empty``
        of them with no text (a pretrain sample of nothing but its specials)."""
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        counts = self._views()[1]
        counts[row, _SEEN] += seen
        if truncated:
            counts[row, _TRUNCATED] += int(truncated)
        if empty:
            counts[row, _EMPTY] += int(empty)

    def stats(self) -> dict:
        """Samples truncated to max_length and samples produced so far (all processes, the
        DataLoader's workers included), and bad lines dropped at indexing."""
        totals = self._counters.sum(0)
        out = {"truncated": int(totals[_TRUNCATED]), "bad_lines": int(self.bad_lines.count),
               "samples_seen": int(totals[_SEEN])}
        if self._counts_empty and int(totals[_EMPTY]):  # only when there were some: what to look into
            out["empty_texts"] = int(totals[_EMPTY])
        return out

    def reset_stats(self) -> None:
        self._counters.zero_()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws are a pure function of (seed, index, epoch). The epoch lives in
        shared memory, so persistent DataLoader workers see it change too."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._views()[2][0])

    def _obj(self, i: int) -> dict:
        raw = self.index.line(i)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as e:  # it was valid when indexed: the file changed, or the index is wrong
            raise DataError(self.index.mismatch_message(i, f"cannot be parsed any more ({e})")) from None

    def _pad_rows(self, rows: list) -> np.ndarray:
        """(B, max_length) int64: each row's ids (a list or an array, at most max_length of
        them), then the pad id."""
        out = np.full((len(rows), self.max_length), self.tokenizer.pad_token_id, dtype=np.int64)
        for b, ids in enumerate(rows):
            out[b, :len(ids)] = ids
        return out

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The items of ``indices``, built together (the DataLoader's batched fetch; its
        collate stacks them): ``[(input_ids, labels), ...]``, each a view of one row of a
        (B, max_length) batch."""
        ids, labels = self._batch(list(indices))
        return list(zip(torch.from_numpy(ids).unbind(0), torch.from_numpy(labels).unbind(0)))

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of ``indices``: two (B, max_length) int64 arrays."""
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_np_views"] = None
        return state
