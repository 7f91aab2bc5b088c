"""``data.packing=true``: the samples of a micro-batch share rows, so it computes on tokens, not padding.

Every sample arrives padded to ``max_length``; SFT conversations mostly fill a fraction of it,
and ``trim_padding`` only drops the columns that are padding in *every* row, so a micro-batch
with one long sample stays almost all padding. :class:`PackingCollate` instead packs the
micro-batch's samples first-fit-decreasing into as few rows of ``max_length`` as they need, and
hands the model ``position_ids`` that restart at 0 at each sample; the model then attends only
within a sample (:mod:`minimind.attention`). The batch becomes a dict::

    input_ids, labels, position_ids   (rows, width) int64
    cu_seqlens                        (documents + 1,) int32: where each sample (and each row's
                                      padding tail) starts and ends in the flattened rows

Why pack inside the collate, and not in the sampler (a token budget per micro-batch, as some
frameworks do): a packed micro-batch holds *exactly* the samples of the unpacked one. The sample
order, resume (by samples consumed), DDP sharding and the accumulation window stay those of
:class:`~minimind.data.sampler.ShardedBatchSampler`, the loss terms are the same terms, and the
gradient is the same gradient, which is what tests/test_packing.py checks directly. What changes
is the compute: fewer, fuller rows. With packing on, ``data.batch_size`` can be raised (more
samples in the same memory); the log's loss tokens/s shows the effect.

Exactness, term by term:

- a sample is kept through its last supervised label; later tokens (padding, an unanswered turn)
  cannot change any loss term, since attention is causal (the same argument as trim_padding);
  a sample without any supervised label is left out (it adds nothing to loss or gradient);
- position 0 of a sample is never a target unpacked (the loss pairs position t with label t+1),
  so its label is set to -100 in the packed row: the previous sample's last token predicts
  nothing, exactly as unpacked, where it is followed by padding;
- each sample's position ids are 0..L-1 and it attends only to itself: its logits are those of
  its own row, up to float rounding (different matmul shapes).

The MoE balance loss is a statistic of the batch's tokens (padding included) and so is not the
same number packed; the language-modelling loss and its gradient are.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch.utils.data import default_collate

IGNORE_INDEX = -100


def useful_lengths(labels: torch.Tensor) -> List[int]:
    """Per row: the positions through its last supervised label (0 when it has none)."""
    supervised = labels != IGNORE_INDEX
    width = labels.shape[1]
    last_from_end = supervised.flip(1).to(torch.int8).argmax(dim=1)
    lengths = torch.where(supervised.any(dim=1), width - last_from_end, 0)
    return lengths.tolist()


def first_fit_decreasing(lengths: List[int], capacity: int) -> List[List[int]]:
    """Rows of sample indices: longest first, each into the first row it fits; every row's
    samples in their original order. Deterministic (ties keep the original order)."""
    rows: List[List[int]] = []
    free: List[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n == 0:
            continue
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return [sorted(row) for row in rows]


def pack(input_ids: torch.Tensor, labels: torch.Tensor, pad_id: int, trim: bool = True,
         multiple: int = 8) -> Dict[str, torch.Tensor]:
    """Pack a (b, max_length) micro-batch into rows of max_length (see the module docstring).

    ``trim``: cut the rows to the fullest one, rounded up to ``multiple`` (as trim_padding does,
    so kernels and torch.compile see few distinct widths); otherwise rows keep max_length.
    """
    capacity = labels.shape[1]
    lengths = useful_lengths(labels)
    rows = first_fit_decreasing(lengths, capacity) or [[]]
    fill = max(sum(lengths[i] for i in row) for row in rows)
    width = min(capacity, max(2, -(-fill // multiple) * multiple)) if trim else capacity

    ids = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=labels.dtype)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    ramp = torch.arange(width)
    cu = [0]
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            ids[r, at:at + n] = input_ids[i, :n]
            lab[r, at:at + n] = labels[i, :n]
            lab[r, at] = IGNORE_INDEX          # no sample's first token is a target (see above)
            pos[r, at:at + n] = ramp[:n]
            at += n
            cu.append(r * width + at)
        if at < width:                         # the row's padding: a "document" of its own
            pos[r, at:] = ramp[:width - at]
            cu.append((r + 1) * width)
    return {"input_ids": ids, "labels": lab, "position_ids": pos,
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}


class PackingCollate:
    """default_collate, then :func:`pack` (a class, so spawned DataLoader workers can pickle it)."""

    def __init__(self, pad_id: int = 0, trim: bool = True):
        self.pad_id, self.trim = int(pad_id), bool(trim)

    def __call__(self, items) -> Dict[str, Any]:
        batch = default_collate(items)
        if isinstance(batch, dict):
            input_ids, labels = batch["input_ids"], batch["labels"]
        else:
            input_ids, labels = batch[0], batch[1]
        return pack(input_ids, labels, self.pad_id, self.trim)
