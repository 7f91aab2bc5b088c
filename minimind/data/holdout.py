"""Held-out samples: which samples of ``data.path`` evaluation keeps out of training.

``data.val_size`` holds out a count (>= 1) or a fraction (< 1) of the file. The held-out
indices are the first ones of a permutation drawn from the run's seed alone (no epoch, rank or
world size goes in), so every rank, every resume and every world size holds out the same
samples, and ``python -m minimind.eval`` finds them again from the run's config. The training
order is then the usual :class:`~minimind.data.sampler.ShardedBatchSampler` order over the
*remaining* samples (``Batches(indices=...)`` maps positions to dataset indices), still a pure
function of (seed, epoch, rank, world size). Without a hold-out nothing changes: the sampler
gets no index map and the order is the one of a run before this module existed.

Both index lists are sorted (file order), so ``data.shuffle=false`` trains in file order minus
the held-out lines. A checkpoint records :func:`split_key` of the training samples; resuming with
another hold-out (a changed ``val_size`` or seed) would train on samples that used to be held
out, so :func:`check_resume` refuses it.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Optional

import torch

from minimind.errors import CheckpointError, ConfigError


class Split(NamedTuple):
    train: Optional[torch.Tensor]  # dataset indices to train on (sorted); None: all of them
    val: Optional[torch.Tensor]    # held-out indices of data.path (sorted); None: no hold-out


def holdout_count(val_size: Optional[float], num_samples: int) -> int:
    """How many samples ``data.val_size`` holds out of ``num_samples`` (0: none); refuses a value
    that leaves nothing to hold out or nothing to train on, in one line."""
    if not val_size:
        return 0
    v = float(val_size)
    n = int(round(v * num_samples)) if v < 1 else int(v)
    what = f"{v:g} of {num_samples}" if v < 1 else f"{n}"
    if n < 1:
        raise ConfigError(f"data.val_size={v:g} holds out no sample of the {num_samples} in data.path "
                          f"({what} rounds to 0); valid: a fraction of at least {1 / num_samples:.2g}, or a count >= 1")
    if n >= num_samples:
        raise ConfigError(f"data.val_size={v:g} holds out {what} samples, but data.path has only {num_samples}: "
                          f"nothing would be left to train on; valid: a count below {num_samples} or a fraction < 1")
    return n


def _generator(seed: int) -> torch.Generator:
    # a stream of its own (not the epoch permutations' seed * 1_000_003 + epoch), so the
    # held-out set is not the head of any epoch's order
    digest = hashlib.blake2b(f"minimind-holdout/{int(seed)}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") >> 1)
    return g


def split(num_samples: int, val_size: Optional[float], seed: int) -> Split:
    """The training and held-out indices of a file of ``num_samples`` samples."""
    n = holdout_count(val_size, num_samples)
    if n == 0:
        return Split(None, None)
    perm = torch.randperm(num_samples, generator=_generator(seed))
    return Split(train=perm[n:].sort().values, val=perm[:n].sort().values)


def split_key(train: Optional[torch.Tensor]) -> Optional[str]:
    """A short fingerprint of the training samples (None: the whole file), kept in checkpoints."""
    if train is None:
        return None
    digest = hashlib.blake2b(train.to(torch.int64).numpy().tobytes(), digest_size=8).hexdigest()
    return f"{len(train)}:{digest}"


def check_resume(state: dict, current: Optional[str], path) -> None:
    """Refuse to continue a checkpoint that trained on another set of samples than this run would."""
    if state.get("upstream"):  # upstream's order is its own anyway (said when it is loaded)
        return
    saved = state.get("train_split")
    if saved != current:
        def says(key):
            return "the whole data file" if key is None else f"{key.split(':')[0]} samples (a hold-out)"

        raise CheckpointError(
            f"checkpoint {path} trained on {says(saved)}, this run would train on {says(current)}: "
            f"data.val_size or seed differ from the run's, and continuing would train on held-out samples "
            f"(or hold out trained ones); use the run's values, or a new hydra.run.dir")
