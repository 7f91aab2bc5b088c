"""Upstream's SFT labelling rule: which tokens of a rendered conversation carry the loss.

The labels keep the tokens after each ``<|im_start|>assistant\\n`` up to and including the
``<|im_end|>\\n`` that closes it, and are -100 everywhere else (MiniMind-3's
``SFTDataset.generate_labels`` in ``dataset/lm_dataset.py``, d65ef2c, with its edge cases).
:func:`assistant_labels` is that rule on a list of ids, written as upstream's; the datasets
use :func:`assistant_label_rows`, the same labels for a whole (B, n) batch in numpy (tests
hold the two equal).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np


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
