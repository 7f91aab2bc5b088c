"""Training checkpoints: atomic writes, newest-good-first loading, upstream's resume format.

A training checkpoint is one file, ``<run dir>/checkpoints/step_<N>.pt``. Every file this
module writes goes to a temporary name in the same folder, is flushed and fsync'd, then
renamed over the final name (and the folder fsync'd), so a kill at any instant leaves either
the old file or the new one, never half of one. Loading walks from the newest checkpoint to
older ones and names each file it has to skip.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from minimind.errors import CheckpointError
from minimind.files import atomic_write, list_checkpoints

log = logging.getLogger(__name__)

FORMAT = "minimind-hydra/1"


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """torch.save through minimind.files.atomic_write: the old file or the new one, never half."""
    atomic_write(path, lambda f: torch.save(obj, f))


# --------------------------------------------------------------------------- RNG state


def rng_state() -> Dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], npv[1].numpy().astype(np.uint32), npv[2], npv[3], npv[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def is_upstream_resume(obj: Any) -> bool:
    """Upstream MiniMind's ``*_resume.pth``: model, optimizer, epoch, step, world_size..."""
    return isinstance(obj, dict) and obj.get("format") != FORMAT and \
        {"model", "optimizer", "epoch", "step"} <= set(obj)


def load_file(path: os.PathLike) -> Dict[str, Any]:
    """Load one checkpoint file; any failure becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, wrong file...
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(obj, dict) or not (obj.get("format") == FORMAT or is_upstream_resume(obj)):
        raise CheckpointError(f"{path} is not a training checkpoint: expected this framework's "
                              f"checkpoint or upstream MiniMind's *_resume.pth (model, optimizer, "
                              f"epoch, step)")
    return obj


class CheckpointManager:
    """The ``checkpoints/`` folder of a run: save, list, load newest good, keep the last N."""

    def __init__(self, directory: os.PathLike, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def list(self) -> List[Path]:
        """Checkpoints, newest first."""
        return list_checkpoints(self.directory)

    def save(self, state: Dict[str, Any], step: int) -> Path:
        state = dict(state, format=FORMAT)
        path = self.path_for(step)
        atomic_torch_save(state, path)
        self.prune()
        return path

    def prune(self) -> None:
        for old in self.list()[self.keep_last:]:
            try:
                old.unlink()
            except OSError as e:
                log.warning("could not remove old checkpoint %s: %s", old, e)

    def load_latest(self) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """The newest checkpoint that loads; unloadable ones are reported and skipped."""
        for path in self.list():
            try:
                return path, load_file(path)
            except CheckpointError as e:
                log.warning("%s; trying the next older checkpoint", e)
        return None
