"""Training checkpoints: atomic writes, newest-good-first loading, upstream's resume format.

The loop saves ``Trainer.state_dict()`` (model, optimizer, scaler, progress, the interval's
metrics, layout, config) plus every rank's RNG state, and restores what
:func:`find_resume_state` returns; upstream MiniMind's ``*_resume.pth`` is converted to the
same layout by :func:`from_upstream` first.

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
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from minimind.errors import CheckpointError
from minimind.files import atomic_write, list_checkpoints, refuse_used_run_dir

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
    """The ``checkpoints/`` folder of a run: save, list, load newest good, keep the last N.

    Pruning deletes only what is older than the newest ``keep_last`` checkpoints *known to
    load* (written by this process, or loaded by it), so files that do not load never count
    as kept. A resume from an older checkpoint sets the newer ones (another line of the run)
    aside in ``checkpoints/abandoned/<time>/`` instead of deleting or overwriting them.
    """

    def __init__(self, directory: os.PathLike, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.good: set = set()  # paths known to load

    def path_for(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def list(self) -> List[Path]:
        """Checkpoints, newest first."""
        return list_checkpoints(self.directory)

    def save(self, state: Dict[str, Any], step: int) -> Path:
        state = dict(state, format=FORMAT)
        path = self.path_for(step)
        atomic_torch_save(state, path)
        self.good.add(path)
        self.prune()
        return path

    def prune(self) -> None:
        found = self.list()
        kept = [p for p in found if p in self.good][:self.keep_last]
        if len(kept) < self.keep_last:
            return  # fewer loadable ones than keep_last: delete nothing
        oldest_kept = found.index(kept[-1])
        for old in found[oldest_kept + 1:]:
            try:
                old.unlink()
                self.good.discard(old)
            except OSError as e:
                log.warning("could not remove old checkpoint %s: %s", old, e)

    def load_latest(self) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """The newest checkpoint that loads; unloadable ones are reported and skipped."""
        for path in self.list():
            try:
                found = path, load_file(path)
                self.good.add(path)
                return found
            except CheckpointError as e:
                log.warning("%s; trying the next older checkpoint", e)
        return None

    def set_aside(self, resumed_from: os.PathLike) -> List[Path]:
        """After a resume from ``resumed_from``: move every checkpoint that is not on its line
        (the newer ones of this folder; all of them when it lies elsewhere) to
        ``checkpoints/abandoned/<time>-from-<name>/``, so that ``loop.resume=auto`` continues
        this line and pruning never mixes two lines. Returns the new paths."""
        src = Path(resumed_from).resolve()
        here = src.parent == self.directory.resolve()
        step = _step_of(src) if here else -1
        if here:
            self.good.add(self.directory / src.name)  # it loaded: it counts as kept
        off_line = [p for p in self.list() if p.resolve() != src and (not here or _step_of(p) > step)]
        if not off_line:
            return []
        target = self.directory / "abandoned" / f"{time.strftime('%Y%m%d-%H%M%S')}-from-{src.stem}"
        target.mkdir(parents=True, exist_ok=True)
        moved = []
        for p in sorted(off_line, key=_step_of):
            dest = target / p.name
            os.replace(p, dest)
            self.good.discard(p)
            moved.append(dest)
        return moved


def _step_of(path: Path) -> int:
    digits = path.stem.rpartition("_")[2]
    return int(digits) if digits.isdigit() else -1


# --------------------------------------------------------------------------- resuming


def find_resume_state(spec: str, manager: CheckpointManager) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The checkpoint ``loop.resume`` asks for: ``auto`` (the newest good one in the run dir, or
    None for a fresh run), ``never`` (refuses a run dir that has checkpoints), or a path."""
    if spec == "never":
        refuse_used_run_dir(manager.directory)
        return None
    if spec == "auto":
        found = manager.load_latest()
        if found is None and manager.list():
            raise CheckpointError(f"no checkpoint in {manager.directory} could be loaded "
                                  "(see the warnings above); move them away to start over")
        return found
    return Path(spec), load_file(spec)


def load_model(model: torch.nn.Module, path: os.PathLike, state_dict: Dict[str, torch.Tensor]) -> None:
    from minimind.weights import load_weights

    try:
        load_weights(model, state_dict, strict=True)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None


def restore_rng(state: Dict[str, Any], rank: int, world_size: int, batch_size: int) -> bool:
    """Put this rank's RNG states back when the run's layout is the saved one (then the resumed
    run continues bit for bit); returns whether it was."""
    rngs = state.get("rng") or []
    same = int(state["world_size"]) == world_size and state.get("batch_size") == batch_size
    if same and len(rngs) == world_size:
        set_rng_state(rngs[rank])
    return same


def param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> List[List[str]]:
    """The names of each optimizer group's parameters, in order: saved with the optimizer state
    so that it can be mapped onto another grouping (``optim.decay_all_params`` changed)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]


def load_optimizer(optimizer: torch.optim.Optimizer, state: Dict[str, Any], path: os.PathLike,
                   model: torch.nn.Module) -> None:
    """The saved per-parameter state (Adam's moments, step counts) into ``optimizer``.

    The groups' settings (weight decay, betas, eps) stay this run's: they are the config's,
    which the resume check compared. Saved under another grouping, the state is mapped by
    parameter name when the checkpoint has the names, else refused in one line."""
    sd = state["optimizer"]
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_names = state.get("optimizer_params")
    now_names = param_names(model, optimizer)
    if saved_names and saved_names != now_names:  # another grouping: map the state by name
        saved_order = [n for group in saved_names for n in group]
        by_name = {saved_order[int(i)]: st for i, st in sd.get("state", {}).items() if int(i) < len(saved_order)}
        groups, state, i = [], {}, 0
        for names, kept in zip(now_names, settings):
            groups.append(dict(kept, params=list(range(i, i + len(names)))))
            state.update({i + k: by_name[n] for k, n in enumerate(names) if n in by_name})
            i += len(names)
        sd = {"state": state, "param_groups": groups}
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: its optimizer state does not fit this run's optimizer ({e}); "
            "was optim.decay_all_params or the set of trained parameters changed?") from None
    for group, kept in zip(optimizer.param_groups, settings):
        group.update(kept)


def restore(state: Dict[str, Any], path: os.PathLike, *, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scaler, progress, metrics, dist, batch_size: int,
            check=None) -> None:
    """Put a checkpoint's state back into the run's parts, and say where the run continues.
    ``check(state)`` runs once the model weights fit, before anything else is restored."""
    load_model(model, path, state["model"])
    if check is not None:
        check(state)
    load_optimizer(optimizer, state, path, model)
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    progress.load_state_dict(state)
    metrics.load_state_dict(state)
    same_layout = restore_rng(state, dist.rank, dist.world_size, batch_size)
    if state.get("upstream"):
        return  # from_upstream said what it did
    msg = (f"resumed from {path}: step {progress.step}, epoch {progress.epoch + 1}, "
           f"{progress.samples_in_epoch} samples into the epoch")
    if not same_layout:
        msg += (f"; world size {state['world_size']} -> {dist.world_size}, batch "
                f"{state.get('batch_size')} -> {batch_size}: continuing at the same sample, not bit-exact")
    log.info(msg)


def from_upstream(path: os.PathLike, s: Dict[str, Any], model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, batches, accumulation_steps: int,
                  world_size: int) -> Dict[str, Any]:
    """Upstream MiniMind's ``*_resume.pth`` (fp16 model, one-group AdamW, micro-step count) in
    this framework's layout. Upstream's sample order is its own: the continuation starts at the
    same number of samples, not at the same samples, and is not bit-exact (said in the log)."""
    saved_ws = int(s.get("world_size", 1) or 1)
    micro = int(s["step"])  # upstream: micro-batches of this epoch done, per rank
    epoch = int(s["epoch"])
    samples = micro * batches.batch_size * saved_ws
    per_epoch = -(-batches.batches_left(epoch, 0) // accumulation_steps)
    step = epoch * per_epoch + micro * saved_ws // (world_size * accumulation_steps)
    log.info("resumed from upstream MiniMind checkpoint %s: epoch %d, micro-step %d (world size %d) "
             "-> %d samples into the epoch, optimizer step %d. Upstream stored fp16 weights and "
             "its own sample order: the continuation is not bit-exact", path, epoch + 1,
             micro, saved_ws, samples, step)
    return {"model": s["model"], "optimizer": upstream_optimizer_state(s["optimizer"], model, optimizer),
            "scaler": s.get("scaler"), "global_step": step, "epoch": epoch, "samples_in_epoch": samples,
            "wandb_id": s.get("wandb_id"), "world_size": saved_ws, "batch_size": None, "upstream": True}


def upstream_optimizer_state(sd: Dict[str, Any], model: torch.nn.Module,
                             optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Upstream has one param group in model.parameters() order; map it onto our groups."""
    upstream_order = list(model.parameters())
    ours = [p for g in optimizer.param_groups for p in g["params"]]
    pos = {id(p): i for i, p in enumerate(ours)}
    state = {}
    for i, st in sd.get("state", {}).items():
        p = upstream_order[int(i)]
        if id(p) in pos:
            state[pos[id(p)]] = st
    groups = [dict({k: v for k, v in g.items() if k != "params"},
                   params=[pos[id(p)] for p in g["params"]]) for g in optimizer.param_groups]
    return {"state": state, "param_groups": groups}
