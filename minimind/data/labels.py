"""Upstream's SFT labelling rule: which tokens of a rendered conversation carry the loss.

The labels keep the tokens after each ``<|im_start|>assistant\\n`` up to and including the
``<|im_end|>\\n`` that closes it, and are -100 everywhere else (MiniMind-3's
``SFTDataset.generate_labels`` in ``dataset/lm_dataset.py``, d65ef2c, with its edge cases).
:func:`assistant_labels` is that rule on a list of ids, written as upstream's; the datasets
use :func:`assistant_label_rows`, the same labels for a whole (B, n) batch in numpy (tests
hold the two equal).

``start_last``: token ids accepted in place of the marker's last token, the newline. A
byte-level BPE merges that newline with whitespace that opens the reply (MiniMind2's
tokenizer: ``"\\n  "`` is one token, ``"\\n\\t\\t"`` another), and d65ef2c's exact marker then
never matches: the reply gets no label at all. MiniMind2's dataset (c090b69) finds
``<|im_start|>assistant`` and skips the one token after it, whatever it is, so it labels such
a reply from its next token on; with ``start_last`` = the whitespace tokens that begin with a
newline (:func:`newline_tokens`) the rule gives those labels, and d65ef2c's everywhere else.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


def newline_tokens(tokenizer) -> list[int]:
    """Ids of the tokens that are whitespace beginning with a newline (``"\\n"``, ``"\\n  "``...)."""
    backend = tokenizer.backend
    size = backend.get_vocab_size(with_added_tokens=True)
    texts = backend.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
    return [i for i, t in enumerate(texts) if t.startswith("\n") and not t.strip()]


def _opens(ids, i: int, start_seq: Sequence[int], start_last) -> bool:
    """Whether the marker (its last token, or one of ``start_last``) starts at ids[i]."""
    lb = len(start_seq)
    if start_last is None:
        return list(ids[i:i + lb]) == list(start_seq)
    return (list(ids[i:i + lb - 1]) == list(start_seq[:-1]) and i + lb <= len(ids)
            and (ids[i + lb - 1] == start_seq[-1] or ids[i + lb - 1] in start_last))


def assistant_labels(ids: list[int], start_seq: list[int], end_seq: list[int],
                     start_last=None) -> list[int]:
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
    start_last = set(start_last) if start_last and lb > 1 else None
    i = 0
    while i < n:
        try:
            i = ids.index(b0, i)
        except ValueError:
            break
        if not _opens(ids, i, start_seq, start_last):
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


def assistant_label_rows(ids: np.ndarray, start_seq: Sequence[int], end_seq: Sequence[int],
                         start_last=None) -> np.ndarray:
    """:func:`assistant_labels` for every row of a (B, n) integer array (or one row): the same
    labels, as int64, without Python lists of ids (both markers are found with ``bytes.find``
    on the rows' int64 bytes, then upstream's rule walks their positions)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim == 1:
        return assistant_label_rows(ids[None], start_seq, end_seq, start_last)[0]
    labels = np.full(ids.shape, -100, dtype=np.int64)
    n = ids.shape[1]
    lb, le = len(start_seq), len(end_seq)
    last = set(start_last) | {start_seq[-1]} if start_last and lb > 1 else None
    pat_start = np.asarray(start_seq if last is None else start_seq[:-1], dtype=np.int64).tobytes()
    pat_end = np.asarray(end_seq, dtype=np.int64).tobytes()
    for r in range(ids.shape[0]):
        row = ids[r].tobytes()
        s_pos = _occurrences(row, pat_start, 8)
        if last is not None:  # the prefix found; its last token must be one of ``last``
            s_pos = [p for p in s_pos if p + lb <= n and int(ids[r, p + lb - 1]) in last]
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
