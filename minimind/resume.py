"""Continuing a run: what ``Trainer.restore`` does at the start of ``fit``.

1. Temporary files that a kill left in the run's folders (:func:`minimind.files.atomic_write`'s
   ``.<name>.<random>.tmp``) are removed (rank 0; the run folder's lock says no other process
   writes there).
2. The checkpoint ``loop.resume`` names is found (:func:`minimind.checkpoint.find_resume_state`;
   upstream's ``*_resume.pth`` converted first).
3. It must be of this run (:mod:`minimind.run_identity`): refused with the differences, unless
   ``loop.resume_changes=allow``, and hold out the same samples (:mod:`minimind.data.holdout`,
   always refused); then restored (:func:`minimind.checkpoint.restore`), the evaluator's
   best-so-far too.
4. Checkpoints that are not on its line (newer ones of the folder after a fallback or a
   ``loop.resume=PATH`` to an older step) are set aside in ``checkpoints/abandoned/``, so
   that ``loop.resume=auto`` continues this line afterwards and pruning never counts them.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

from minimind import checkpoint as ckpt
from minimind import run_identity
from minimind.data.holdout import check_resume, split_key
from minimind.files import remove_stale_temps

log = logging.getLogger("minimind")


def remove_temps(trainer) -> None:
    """Step 1: the temp files of interrupted writes of this run's checkpoints, weights, summary."""
    from minimind.weights import weights_filename

    weights = [weights_filename(trainer.save_weight, trainer.raw_model, ext=ext) for ext in (".pth", ".safetensors")]
    removed = remove_stale_temps(trainer.checkpoints.directory)
    removed += remove_stale_temps(trainer.run_dir, ["summary.json"] + weights)
    if trainer.save_dir.resolve() != trainer.run_dir.resolve():
        removed += remove_stale_temps(trainer.save_dir, weights)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                 ", ".join(str(p) for p in removed))


def restore(trainer) -> None:
    t = trainer
    if t.dist.is_main:
        remove_temps(t)
    found = ckpt.find_resume_state(t.resume_spec, t.checkpoints)
    if found is None:
        return
    path, state = found
    if ckpt.is_upstream_resume(state):
        state = ckpt.from_upstream(path, state, t.raw_model, t.optimizer, t.batches, t.accum, t.dist.world_size)
    check_resume(state, split_key(t.batches.indices), path)  # the same samples held out
    changes: Dict[str, Any] = {}

    def check(s: Dict[str, Any]) -> None:
        if not s.get("upstream"):  # upstream's file records no run; from_upstream says so
            changes.update(run_identity.check(s.get("run"), t.identity, allow=t.resume_changes == "allow",
                                              path=path))

    ckpt.restore(state, path, model=t.raw_model, optimizer=t.optimizer, scaler=t.scaler, progress=t.progress,
                 metrics=t.metrics, dist=t.dist, batch_size=t.batches.batch_size, check=check)
    if t.evaluator:
        t.evaluator.load_state_dict(state.get("eval"))
    t.last_saved_step = t.progress.step
    t.resumed_from = str(path)
    t.dist.barrier()  # every rank has read its checkpoint before rank 0 moves files
    if t.dist.is_main:
        moved = t.checkpoints.set_aside(path)
        if moved:
            log.warning("resuming from %s: %d checkpoint(s) of another line of this run (%s) moved to %s, "
                        "not deleted; loop.resume=auto continues from %s", path, len(moved),
                        ", ".join(p.name for p in moved), moved[0].parent, path)
            t.tracker.event("set_aside", resumed_from=str(path), moved=[str(p) for p in moved])
    p = t.progress
    t.tracker.event("resume", path=str(path), step=p.step, epoch=p.epoch, samples_in_epoch=p.samples_in_epoch,
                    world_size=t.dist.world_size, saved_world_size=int(state["world_size"]),
                    **({"upstream": True} if state.get("upstream") else {}),
                    **({"changes": changes} if changes else {}))
