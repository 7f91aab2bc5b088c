"""Pretrain and SFT datasets over JSONL files, with upstream MiniMind's sample semantics.

Items are ``(input_ids, labels)``: two LongTensors of length ``max_length``, labels aligned
with input_ids (the model shifts inside), -100 where no loss is taken. Like MiniMind-3's
``dataset/lm_dataset.py`` (d65ef2c):

* pretrain: ``bos + tokens(text)[:max_length-2] + eos`` right-padded with the pad id; labels
  are the ids with every pad-id position set to -100. ``add_bos_eos=False`` is MiniMind2's
  form (c090b69): ``tokens(text)[:max_length]``, the texts carrying their own specials. In both,
  as upstream, a real ``<|endoftext|>`` written in a text has the pad id and so gets -100 too.
* SFT: the conversation rendered with the tokenizer's chat template (``tools`` taken from a
  system message, ``tool_calls`` given as JSON strings decoded, ``add_generation_prompt=False``),
  tokenized, cut to ``max_length``, padded; labels keep the tokens after each
  ``<|im_start|>assistant\\n`` up to and including the ``<|im_end|>\\n`` that closes it
  (:func:`assistant_labels`, upstream's ``generate_labels`` with its edge cases).

Unlike upstream, nothing is loaded up front: a :class:`~minimind.data.index.JsonlIndex`
(validated and cached) gives line i, tokenized in ``__getitem__``; ``pretokenize=True``
tokenizes the file once into a memory-mapped token cache instead.

Speed (same items, see ``docs/data-benchmark.md``):

* only the part of a text that survives truncation is tokenized
  (:meth:`~minimind.data.tokenizer.Tokenizer.encode_prefix_batch`, exact: the ids are those of
  the whole text, cut);
* ``__getitems__`` (the DataLoader's batched fetch) reads, tokenizes and pads a whole batch at
  once: one tokenizer call per batch, padding and labels in numpy, no Python lists of ids on
  the token-cache path. ``__getitem__`` is the same code for one index.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import random
import time
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from minimind.data.cachefile import (
    DataFileLock,
    cache_candidates,
    progress_mode,
    read_header,
    write_cache,
    write_header_at_start,
)
from minimind.data.errors import DataError, bad_line_message
from minimind.data.index import JsonlIndex
from minimind.data.tokenizer import Tokenizer, load_tokenizer

# Upstream sets this too: the Rust thread pool and DataLoader's fork do not mix.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

ON_BAD_LINE = ("error", "skip")
EMPTY_THINK = "<think>\n\n</think>\n\n"
# Our own short list (upstream picks from ten similar prompts, Chinese and English).
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are MiniMind, a small but useful language model.",
    "You are a friendly assistant. Answer the user's question clearly.",
    "You are a knowledgeable assistant. Give accurate, short answers.",
    "你是MiniMind，一个乐于助人的小型语言模型。",
    "你是一个可靠的AI助手，请准确地回答问题。",
)
_COUNTER_SLOTS = 65  # row 0: the main process; rows 1..64: DataLoader workers
_TRUNCATED, _SEEN = 0, 1
# Flags stored per sample in the token cache.
_F_TRUNCATED, _F_EMPTY_THINK, _F_SYSTEM_OK = 1, 2, 4


# -- validators (run on every line while indexing; return None or what is wrong) -----------
def _parse(line: bytes):
    try:
        return json.loads(line.decode("utf-8")), None
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason} at byte {e.start}); expected one JSON object per line"
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        col = getattr(e, "colno", None)
        where = f" at column {col}" if col else ""
        return None, f"not valid JSON ({msg}{where}); expected one JSON object per line"


def _kind(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def validate_pretrain(line: bytes) -> str | None:
    obj, err = _parse(line)
    if err:
        return err
    if not isinstance(obj, dict):
        return f'expected a JSON object {{"text": "..."}}, got a JSON {_kind(obj)}'
    if "text" not in obj:
        keys = ", ".join(map(repr, list(obj)[:5])) or "none"
        return f'missing key "text" (keys present: {keys}); expected {{"text": "..."}}'
    if not isinstance(obj["text"], str):
        return f'"text" is a JSON {_kind(obj["text"])}; expected a string'
    return None


validate_pretrain.cache_key = "pretrain-text-v1"


def _check_json_field(msg: dict, key: str, where: str, want: type) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return (f'{where} "{key}" is a string but not valid JSON; '
                    f'expected a JSON {want.__name__} (or its JSON text)')
    if not isinstance(value, want):
        return f'{where} "{key}" is a JSON {_kind(value)}; expected an array of objects'
    return None


def validate_sft(line: bytes) -> str | None:
    obj, err = _parse(line)
    expected = 'expected {"conversations": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}'
    if err:
        return err
    if not isinstance(obj, dict):
        return f"got a JSON {_kind(obj)}; {expected}"
    if "conversations" not in obj:
        keys = ", ".join(map(repr, list(obj)[:5])) or "none"
        return f'missing key "conversations" (keys present: {keys}); {expected}'
    conv = obj["conversations"]
    if not isinstance(conv, list) or not conv:
        return f'"conversations" is {"an empty array" if conv == [] else "a JSON " + _kind(conv)}; {expected}'
    has_assistant = False
    for k, msg in enumerate(conv):
        where = f"conversations[{k}]"
        if not isinstance(msg, dict):
            return f"{where} is a JSON {_kind(msg)}; expected an object with \"role\" and \"content\""
        role = msg.get("role")
        if not isinstance(role, str):
            return f'{where} has no "role" string; expected "system", "user", "assistant" or "tool"'
        content = msg.get("content")
        if content is None and not (role == "assistant" and msg.get("tool_calls")):
            return f'{where} ({role}) has no "content"; expected a string'
        if content is not None and not isinstance(content, str):
            return f'{where} ({role}) "content" is a JSON {_kind(content)}; expected a string'
        if role == "assistant":
            has_assistant = True
        for key, want in (("tools", list), ("functions", list), ("tool_calls", list)):
            bad = _check_json_field(msg, key, where, want)
            if bad:
                return bad
    if not has_assistant:
        roles = ", ".join(str(m.get("role")) for m in conv[:6])
        return (f'no assistant turn (roles: {roles}); '
                'expected at least one {"role": "assistant", ...} to train on')
    return None


validate_sft.cache_key = "sft-conversations-v1"


# -- labels --------------------------------------------------------------------------------
def assistant_labels(ids: list[int], start_seq: list[int], end_seq: list[int]) -> list[int]:
    """Upstream's ``SFTDataset.generate_labels`` (d65ef2c), step for step but searching with
    ``list.index``. Scanning left to right: at each occurrence of ``start_seq``
    (``<|im_start|>assistant\\n``), the labels from just after it up to and including the next
    ``end_seq`` (``<|im_end|>\\n``) copy the ids; scanning resumes after that ``end_seq``.
    Edge cases kept: a reply with no closing ``end_seq`` (cut by truncation) is labelled to
    the end of the sequence, padding included; everything else is -100."""
    n = len(ids)
    labels = [-100] * n
    lb, le = len(start_seq), len(end_seq)
    b0, e0 = start_seq[0], end_seq[0]
    i = 0
    while i < n:
        try:
            i = ids.index(b0, i)
        except ValueError:
            break
        if ids[i:i + lb] != start_seq:
            i += 1
            continue
        start = end = i + lb
        while True:
            try:
                end = ids.index(e0, end)
            except ValueError:
                end = n
                break
            if ids[end:end + le] == end_seq:
                break
            end += 1
        stop = min(end + le, n)
        if stop > start:
            labels[start:stop] = ids[start:stop]
        i = end + le if end < n else n
    return labels


def _occurrences(row: bytes, pattern: bytes, width: int) -> list[int]:
    """Sorted element positions where ``pattern`` (whole elements of ``width`` bytes) starts in
    ``row``, overlapping ones included: a C-speed ``bytes.find`` walk, element-aligned only."""
    out = []
    pos = row.find(pattern)
    while pos != -1:
        if pos % width == 0:
            out.append(pos // width)
        pos = row.find(pattern, pos + 1)
    return out


def assistant_label_rows(ids: np.ndarray, start_seq: Sequence[int], end_seq: Sequence[int]) -> np.ndarray:
    """:func:`assistant_labels` for every row of a (B, n) integer array (or one row): the same
    labels, as int64, without Python lists of ids (both markers are found with ``bytes.find``
    on the rows' int64 bytes, then upstream's rule walks their positions)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim == 1:
        return assistant_label_rows(ids[None], start_seq, end_seq)[0]
    labels = np.full(ids.shape, -100, dtype=np.int64)
    n = ids.shape[1]
    lb, le = len(start_seq), len(end_seq)
    pat_start = np.asarray(start_seq, dtype=np.int64).tobytes()
    pat_end = np.asarray(end_seq, dtype=np.int64).tobytes()
    for r in range(ids.shape[0]):
        row = ids[r].tobytes()
        s_pos = _occurrences(row, pat_start, 8)
        if not s_pos:
            continue
        e_pos = _occurrences(row, pat_end, 8)
        i = 0
        while i < n:
            k = bisect.bisect_left(s_pos, i)
            if k == len(s_pos):
                break
            start = s_pos[k] + lb
            k = bisect.bisect_left(e_pos, start)
            end = e_pos[k] if k < len(e_pos) else n
            stop = min(end + le, n)
            if stop > start:
                labels[r, start:stop] = ids[r, start:stop]
            i = end + le if end < n else n
    return labels


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


# -- the token cache (pretokenize=True) ----------------------------------------------------
_TOKEN_HEADER_BYTES = 4096


class _parallel_tokenizers:
    """Let ``encode_batch`` use every core while the token cache is built, then switch the
    Rust thread pool off again (set explicitly, so a later fork neither warns nor deadlocks)."""

    def __enter__(self):
        self.before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"

    def __exit__(self, *exc):
        os.environ["TOKENIZERS_PARALLELISM"] = "false" if self.before is None else self.before


class _TokenCache:
    """Tokens of every indexed line in one file: a 4 KiB header, the tokens (uint16, or uint32
    for vocabularies over 65536), the n+1 offsets (int64) and n flag bytes."""

    def __init__(self, path: str, header: dict):
        self.path, self.header = path, header
        n, total = header["n"], header["total"]
        dtype = np.dtype(header["dtype"])
        self.tokens = (np.memmap(path, dtype=dtype, mode="r", offset=_TOKEN_HEADER_BYTES, shape=(total,))
                       if total else np.zeros(0, dtype=dtype))
        self.offsets = np.memmap(path, dtype=np.int64, mode="r", offset=header["offsets_at"], shape=(n + 1,))
        self.flags = (np.memmap(path, dtype=np.uint8, mode="r", offset=header["flags_at"], shape=(n,))
                      if n else np.zeros(0, dtype=np.uint8))

    def get(self, i: int) -> tuple[np.ndarray, int]:
        """(the stored ids of sample i, a read-only view of the memory map; its flags)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], int(self.flags[i])

    @staticmethod
    def open(candidates: list[str], key: str) -> "_TokenCache | None":
        for cand in candidates:
            got = read_header(cand)
            if got and got[0].get("kind") == "tokens" and got[0].get("key") == key:
                try:
                    return _TokenCache(cand, got[0])
                except (OSError, ValueError):
                    continue
        return None

    @staticmethod
    def build(dataset: "_JsonlDataset", candidates: list[str], key: str) -> "_TokenCache":
        from tqdm import tqdm

        n = len(dataset.index)
        dtype = np.uint16 if dataset.tokenizer.vocab_size <= 65536 else np.uint32
        offsets = np.zeros(n + 1, dtype=np.int64)
        flags = np.zeros(n, dtype=np.uint8)

        def write(f):
            f.write(b"\0" * _TOKEN_HEADER_BYTES)
            total = 0
            size = dataset.index.signature["size"]
            big, bar_on = progress_mode(size)
            step = 1024
            t0 = time.perf_counter()
            if big and not bar_on:  # a log file (SLURM): one line now, one at the end, no bar
                log.info("pretokenize: tokenizing %s (%d samples, %.0f MB) into a token cache ...",
                         dataset.path, n, size / 2**20)
            with tqdm(total=n, desc=f"tokenizing {os.path.basename(dataset.path)}", unit="line",
                      disable=not bar_on, leave=False, mininterval=1.0) as bar, _parallel_tokenizers():
                for lo in range(0, n, step):
                    done = dataset._tokenize_for_cache(range(lo, min(lo + step, n)))
                    batch = []
                    for i, (ids, flag) in enumerate(done, lo):
                        flags[i] = flag
                        total += len(ids)
                        offsets[i + 1] = total
                        batch.append(np.asarray(ids, dtype=dtype))
                    f.write(np.concatenate(batch).tobytes())
                    bar.update(min(step, n - lo))
            pos = _TOKEN_HEADER_BYTES + total * np.dtype(dtype).itemsize
            pad = -pos % 64
            f.write(b"\0" * pad)
            offsets_at = pos + pad
            f.write(offsets.tobytes())
            flags_at = offsets_at + offsets.nbytes
            f.write(flags.tobytes())
            if big and not bar_on:
                dt = time.perf_counter() - t0
                log.info("pretokenize: %s tokenized in %.1f s (%.1f MB/s, %d tokens)", dataset.path, dt,
                         size / 2**20 / max(dt, 1e-9), total)
            header = {"version": 1, "kind": "tokens", "key": key, "n": n, "total": total,
                      "dtype": np.dtype(dtype).name, "offsets_at": offsets_at, "flags_at": flags_at}
            write_header_at_start(f, header, _TOKEN_HEADER_BYTES)

        with DataFileLock(dataset.path):
            cache = _TokenCache.open(candidates, key)
            if cache is not None:
                return cache
            where = write_cache(candidates, write)
        if where is None:
            dirs = ", ".join(os.path.dirname(c) for c in candidates)
            raise DataError(f"pretokenize=True: cannot write a token cache for {dataset.path} to any of "
                            f"{dirs}; set cache_dir to a writable directory")
        return _TokenCache.open([where], key)


# -- datasets ------------------------------------------------------------------------------
class _JsonlDataset(Dataset):
    """What both datasets share: validation and indexing, tokenizer, counters, token cache."""

    _validator = None  # set by subclasses

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
        self._counters = torch.zeros((_COUNTER_SLOTS, 2), dtype=torch.int64).share_memory_()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._np_views = None

        self.pretokenize = bool(pretokenize)
        self._tokens: _TokenCache | None = None
        if self.pretokenize:
            key = self._token_cache_key()
            candidates = cache_candidates(self.path, cache_dir, suffix=f".tok-{key[:16]}.idx")
            self._tokens = _TokenCache.open(candidates, key) or _TokenCache.build(self, candidates, key)

    # -- subclass hooks ------------------------------------------------------------------
    def _cache_params(self) -> str:
        raise NotImplementedError

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        """(ids as stored, flags) for each index: one batched encode per call."""
        raise NotImplementedError

    def _token_cache_key(self) -> str:
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

    def _count(self, truncated: bool, seen: int = 1) -> None:
        """Add ``seen`` samples, ``truncated`` (a bool or a count) of them truncated."""
        info = torch.utils.data.get_worker_info()
        row = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        counts = self._views()[1]
        counts[row, _SEEN] += seen
        if truncated:
            counts[row, _TRUNCATED] += int(truncated)

    def stats(self) -> dict:
        """Samples truncated to max_length and samples produced so far (all processes, the
        DataLoader's workers included), and bad lines dropped at indexing."""
        totals = self._counters.sum(0)
        return {"truncated": int(totals[_TRUNCATED]), "bad_lines": int(self.bad_lines.count),
                "samples_seen": int(totals[_SEEN])}

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
        except ValueError as e:  # the file changed under the index
            raise DataError(bad_line_message(
                self.path, self.index.line_number(i),
                f"cannot be parsed any more ({e}); was the file changed while in use?"))

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
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_np_views"] = None
        if state.get("_tokens") is not None:
            state["_tokens"] = (state["_tokens"].path, state["_tokens"].header)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._tokens, tuple):
            self._tokens = _TokenCache(*self._tokens)


class PretrainDataset(_JsonlDataset):
    """``{"text": ...}`` per line -> (input_ids, labels), both of length ``max_length``.

    ``add_bos_eos=True`` (MiniMind-3): ``bos + tokens[:max_length-2] + eos``, then padding.
    ``add_bos_eos=False`` (MiniMind2): ``tokens[:max_length]``; the texts carry their specials
    (``<|im_start|>...<|im_end|>``), which the tokenizer parses as such. Labels: the ids, with
    -100 wherever the id is the pad id (padding, and a literal ``<|endoftext|>``, as upstream).
    """

    _validator = staticmethod(validate_pretrain)

    def __init__(self, path, tokenizer=None, max_length: int = 512, add_bos_eos: bool = True,
                 on_bad_line: str = "error", cache_dir=None, pretokenize: bool = False):
        self.add_bos_eos = bool(add_bos_eos)
        super().__init__(path, tokenizer, max_length, on_bad_line, cache_dir, pretokenize)

    def _cache_params(self) -> str:
        return f"add_bos_eos={self.add_bos_eos}"

    @property
    def _limit(self) -> int:
        """Tokens of the text that are kept."""
        return self.max_length - 2 if self.add_bos_eos else self.max_length

    def _finish(self, tokens: list[int]) -> tuple[list[int], bool]:
        """(ids before padding, truncated?) from the tokens of the whole text (or their first
        ``_limit + 1``: the same result)."""
        limit = self._limit
        if self.add_bos_eos:
            tok = self.tokenizer
            return [tok.bos_token_id] + tokens[:limit] + [tok.eos_token_id], len(tokens) > limit
        return tokens[:limit], len(tokens) > limit

    def _encode_texts(self, texts: list[str]) -> list[list[int]]:
        # The first _limit + 1 tokens of each text: enough to keep _limit and to know whether
        # the text was truncated. MiniMind-3 encodes without special tokens added, MiniMind2
        # with (no post-processor in MiniMind's tokenizers, so the same ids either way).
        return self.tokenizer.encode_prefix_batch(texts, self._limit, add_special_tokens=not self.add_bos_eos)

    def _ids(self, text: str) -> tuple[list[int], bool]:
        return self._finish(self._encode_texts([text])[0])

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        out = []
        for tokens in self._encode_texts([self._obj(i)["text"] for i in indices]):
            ids, truncated = self._finish(tokens)
            out.append((ids, _F_TRUNCATED if truncated else 0))
        return out

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens is not None:
            got = [self._tokens.get(i) for i in indices]
            rows = [ids for ids, _ in got]
            truncated = sum(1 for _, flags in got if flags & _F_TRUNCATED)
        else:
            done = [self._finish(t) for t in self._encode_texts([self._obj(i)["text"] for i in indices])]
            rows = [ids for ids, _ in done]
            truncated = sum(t for _, t in done)
        self._count(truncated, len(indices))
        ids = self._pad_rows(rows)
        return ids, np.where(ids == self.tokenizer.pad_token_id, -100, ids)


class SFTDataset(_JsonlDataset):
    """``{"conversations": [{role, content, reasoning_content?, tools?, tool_calls?}, ...]}``
    per line -> (input_ids, labels), loss only on the assistant replies.

    Augmentations (off by default; upstream uses 0.2 and 0.8): with probability
    ``system_prompt_prob`` a conversation without a system turn (and without tools) gets one of
    :data:`SYSTEM_PROMPTS`; with probability ``drop_empty_think_prob`` every empty think block
    ``<think>\\n\\n</think>\\n\\n`` is removed from the rendered text. Each draw is a pure
    function of (seed, index, epoch) (see :meth:`set_epoch`), so order, resume and workers do
    not change what a sample becomes.
    """

    _validator = staticmethod(validate_sft)

    def __init__(self, path, tokenizer=None, max_length: int = 512, on_bad_line: str = "error",
                 system_prompt_prob: float = 0.0, drop_empty_think_prob: float = 0.0, seed: int = 42,
                 cache_dir=None, pretokenize: bool = False):
        for name, p in (("system_prompt_prob", system_prompt_prob),
                        ("drop_empty_think_prob", drop_empty_think_prob)):
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
                raise DataError(f"{name}={p!r} is not valid; expected a probability in [0, 1]")
        self.system_prompt_prob = float(system_prompt_prob)
        self.drop_empty_think_prob = float(drop_empty_think_prob)
        self.seed = int(seed)
        super().__init__(path, tokenizer, max_length, on_bad_line, cache_dir, pretokenize)
        tok = self.tokenizer
        # Upstream: tokenizer(f'{bos_token}assistant\n') and tokenizer(f'{eos_token}\n'),
        # without special tokens added.
        self.assistant_start = tok.encode(f"{tok.bos_token}assistant\n")
        self.assistant_end = tok.encode(f"{tok.eos_token}\n")

    def _cache_params(self) -> str:
        return "sft"

    # -- rendering -----------------------------------------------------------------------
    @staticmethod
    def _messages_and_tools(conversations: list[dict]) -> tuple[list[dict], list | None]:
        """Upstream's create_chat_prompt: tools come from a system message (``tools``, or
        MiniMind2's ``functions``), JSON strings decoded; ``tool_calls`` strings decoded."""
        messages, tools = [], None
        for m in conversations:
            m = dict(m)
            if m.get("role") == "system" and (m.get("tools") or m.get("functions")):
                raw = m.get("tools") or m.get("functions")
                tools = json.loads(raw) if isinstance(raw, str) else raw
            if m.get("tool_calls") and isinstance(m["tool_calls"], str):
                m["tool_calls"] = json.loads(m["tool_calls"])
            messages.append(m)
        return messages, tools

    @staticmethod
    def _system_ok(conversations: list[dict]) -> bool:
        # Upstream adds a system prompt only when the first turn is not a system turn and no
        # message carries tools.
        return conversations[0].get("role") != "system" and not any(m.get("tools") for m in conversations)

    def _draws(self, i: int) -> tuple[float, int, float]:
        """(u_system, system prompt choice, u_think): always drawn, in this order."""
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        return rng.random(), rng.randrange(len(SYSTEM_PROMPTS)), rng.random()

    def render(self, conversations: list[dict], system_prompt: str | None = None,
               drop_empty_think: bool = False) -> str:
        """The text the model trains on for one conversation."""
        if system_prompt is not None:
            conversations = [{"role": "system", "content": system_prompt}] + list(conversations)
        messages, tools = self._messages_and_tools(conversations)
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tools=tools)
        if drop_empty_think and EMPTY_THINK in prompt:
            prompt = prompt.replace(EMPTY_THINK, "")
        return prompt

    def _render_line(self, i: int, conversations: list[dict], system_prompt: str | None,
                     drop_think: bool) -> str:
        try:
            return self.render(conversations, system_prompt, drop_think)
        except Exception as e:  # jinja errors (raise_exception in the template), bad tools
            raise DataError(bad_line_message(
                self.path, self.index.line_number(i),
                f"the chat template of {self.tokenizer.path} cannot render this conversation: "
                f"{type(e).__name__}: {e}")) from None

    def _encode_prompts(self, prompts: list[str]) -> list[tuple[list[int], bool]]:
        """(ids cut to max_length, truncated?) of each rendered prompt. Upstream:
        ``self.tokenizer(prompt).input_ids``, i.e. with add_special_tokens=True; only the first
        max_length + 1 ids are computed (the same ids)."""
        n = self.max_length
        return [(ids[:n], len(ids) > n)
                for ids in self.tokenizer.encode_prefix_batch(prompts, n, add_special_tokens=True)]

    def _encode(self, i: int, conversations: list[dict], system_prompt: str | None,
                drop_think: bool) -> tuple[list[int], bool]:
        return self._encode_prompts([self._render_line(i, conversations, system_prompt, drop_think)])[0]

    def _tokenize_for_cache(self, indices: range) -> list[tuple[list[int], int]]:
        prompts, flags = [], []
        for i in indices:
            conversations = self._obj(i)["conversations"]
            prompt = self._render_line(i, conversations, None, False)
            prompts.append(prompt)
            flags.append((_F_EMPTY_THINK if EMPTY_THINK in prompt else 0)
                         | (_F_SYSTEM_OK if self._system_ok(conversations) else 0))
        return [(ids, flag | (_F_TRUNCATED if truncated else 0))
                for (ids, truncated), flag in zip(self._encode_prompts(prompts), flags)]

    def _batch(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        augment = self.system_prompt_prob > 0 or self.drop_empty_think_prob > 0
        rows: list = [None] * len(indices)
        truncated = 0
        prompts, where = [], []
        for b, i in enumerate(indices):
            u_sys, choice, u_think = self._draws(i) if augment else (1.0, 0, 1.0)
            want_sys = u_sys < self.system_prompt_prob
            want_drop = u_think < self.drop_empty_think_prob
            if self._tokens is not None:
                cached, flags = self._tokens.get(i)
                if not ((want_sys and flags & _F_SYSTEM_OK) or (want_drop and flags & _F_EMPTY_THINK)):
                    rows[b] = cached
                    truncated += bool(flags & _F_TRUNCATED)
                    continue
            conversations = self._obj(i)["conversations"]
            system = SYSTEM_PROMPTS[choice] if want_sys and self._system_ok(conversations) else None
            prompts.append(self._render_line(i, conversations, system, want_drop))
            where.append(b)
        for b, (ids, cut) in zip(where, self._encode_prompts(prompts) if prompts else ()):
            rows[b] = ids
            truncated += cut
        self._count(truncated, len(indices))
        ids = self._pad_rows(rows)
        return ids, assistant_label_rows(ids, self.assistant_start, self.assistant_end)
