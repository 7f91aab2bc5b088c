"""The sample order: a pure function of (seed, epoch, rank, world size, start sample).

Each epoch draws one global permutation from (seed, epoch). Global batch j is the block
``perm[start + j*b*W : start + (j+1)*b*W]`` and rank r takes the r-th slice of b samples of
that block. So W ranks with batch b see exactly the samples one process with batch b*W
sees, step for step (what makes the 2-rank vs 1-rank equivalence testable), and a run that
stopped after ``start`` samples of an epoch resumes at sample ``start``, also with another
world size. The tail that cannot be split evenly across ranks (fewer than W samples) is
dropped, like DistributedSampler(drop_last=True) does, so every rank runs the same number of
batches and no collective waits forever. With an ``index_map`` (samples held out for
evaluation, :mod:`minimind.data.holdout`) the permutation orders the positions of the map and
each batch names the dataset indices at those positions.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import torch


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    if not shuffle:
        return torch.arange(num_samples)
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1))
    return torch.randperm(num_samples, generator=g)


class ShardedBatchSampler:
    """Batches of dataset indices for one rank, starting ``start`` samples into the epoch."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 42, epoch: int = 0, shuffle: bool = True, start: int = 0,
                 index_map: Optional[torch.Tensor] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank = world_size, rank
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.index_map = index_map  # position -> dataset index; None: the identity
        self.start = min(start, num_samples)
        remaining = num_samples - self.start
        self.usable = remaining - remaining % world_size  # samples this epoch still uses, all ranks
        per_rank = self.usable // world_size
        self._num_batches = -(-per_rank // batch_size)

    def __len__(self) -> int:
        return self._num_batches

    def consumed_after(self, batches: int) -> int:
        """Global samples of the epoch consumed once every rank has run ``batches`` batches."""
        return self.start + min(batches * self.batch_size * self.world_size, self.usable)

    def __iter__(self) -> Iterator[List[int]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        order = perm[self.start:self.start + self.usable]
        if self.index_map is not None:
            order = self.index_map[order]
        b, w = self.batch_size, self.world_size
        for j in range(self._num_batches):
            block = order[j * b * w:(j + 1) * b * w]
            share = len(block) // w  # b, except in the last (short) block
            yield block[self.rank * share:(self.rank + 1) * share].tolist()
