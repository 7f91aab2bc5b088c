"""The data group's part for the loop: the dataset, its sample order and the DataLoader.

:class:`Batches` is built from ``cfg.data`` and the process's place in the job. The sample order
is :class:`~minimind.data.sampler.ShardedBatchSampler`'s (a pure function of seed, epoch, rank,
world size and the samples already done), so a resumed run continues at the same sample.
Padding is trimmed while the batch is collated, in the loader (its workers, if any), on the
host: the step never pays for it. ``indices`` (when samples are held out for evaluation,
:mod:`minimind.data.holdout`) are the dataset indices this run trains on; the order is drawn over
them, and without them over the whole dataset, exactly as before hold-outs existed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader, default_collate

from minimind.data.packing import PackingCollate
from minimind.data.sampler import ShardedBatchSampler

IGNORE_INDEX = -100


def trim_padding(batch: Any, multiple: int = 8) -> Any:
    """Drop the columns after the last supervised label of a micro-batch.

    Attention is causal, so positions after the last label cannot change any loss term: the
    loss and gradients are those of the full-length batch, for a fraction of the compute
    (the demo's dialogues fill 40% of max_length). Rounded up to a multiple of 8 so kernels
    and torch.compile see few distinct shapes. ``batch``: ``(input_ids, labels)`` or a dict
    with ``labels``; every (B, T) tensor of it is cut the same way.
    """
    labels = batch["labels"] if isinstance(batch, Mapping) else batch[1]
    cols = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    keep = int(cols[-1]) + 1 if len(cols) else 2
    width = labels.shape[1]
    keep = min(width, max(2, -(-keep // multiple) * multiple))
    if keep == width:
        return batch

    def cut(t):
        return t[:, :keep] if torch.is_tensor(t) and t.dim() == 2 and t.shape[1] == width else t

    if isinstance(batch, Mapping):
        return {k: cut(v) for k, v in batch.items()}
    return type(batch)(cut(t) for t in batch)


class TrimmingCollate:
    """default_collate, then :func:`trim_padding` (a class, so spawned workers can pickle it)."""

    def __call__(self, items):
        return trim_padding(default_collate(items))


def dataset_kwargs(target: Any, data: Mapping, seed: int) -> Dict[str, Any]:
    """The ``data.*`` values (and the run's seed) that the dataset class has parameters for."""
    params = inspect.signature(target).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        wanted = set(data) | {"seed"}
    else:
        wanted = set(params)
    values = dict(data, seed=seed)
    return {k: values[k] for k in wanted if k in values and k != "dataset"}


class Batches:
    """Micro-batches of one rank: ``loader(sampler(epoch, start))`` yields them in order."""

    def __init__(self, dataset, *, batch_size: int, num_workers: int, shuffle: bool, seed: int,
                 trim_padding: bool, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 indices: Optional[torch.Tensor] = None, packing: bool = False):
        self.dataset = dataset
        self.packing = bool(packing)  # data.packing: the micro-batch's samples share rows (data/packing.py)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.shuffle, self.seed, self.trim = bool(shuffle), int(seed), bool(trim_padding)
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self.indices = indices  # the training samples; None: every sample of the dataset

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def sampler(self, epoch: int, start: int = 0) -> ShardedBatchSampler:
        """This rank's batches of ``epoch``, ``start`` samples (all ranks) into it."""
        return ShardedBatchSampler(len(self), self.batch_size, self.world_size, self.rank,
                                   self.seed, epoch, self.shuffle, start, index_map=self.indices)

    def batches_left(self, epoch: int, start: int = 0) -> int:
        return len(self.sampler(epoch, start))

    def windows_left(self, epoch: int, start: int, epochs: int, accumulation_steps: int) -> int:
        """Optimizer steps from ``start`` samples into ``epoch`` to the end of the last epoch (a
        window cut short by an epoch's end is a step of its own)."""
        return sum(-(-self.batches_left(e, start if e == epoch else 0) // accumulation_steps)
                   for e in range(epoch, epochs))

    def loader(self, sampler: ShardedBatchSampler) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(sampler.epoch)  # workers copy the dataset at iter() time
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate(),
                          pin_memory=self.pin_memory, persistent_workers=False,
                          # the iterator's base seed from a generator of its own: from the global RNG
                          # it would shift the dropout stream by one draw at each resume
                          generator=torch.Generator())

    def collate(self):
        """How b samples become a micro-batch: packed, trimmed, or stacked as they are."""
        if self.packing:
            pad_id = getattr(getattr(self.dataset, "tokenizer", None), "pad_token_id", None) or 0
            return PackingCollate(pad_id=pad_id, trim=self.trim)
        return TrimmingCollate() if self.trim else None

    def stats(self) -> Dict[str, Any]:
        return self.dataset.stats() if hasattr(self.dataset, "stats") else {}
