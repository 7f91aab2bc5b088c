"""The training loop. It owns the update step and the run; the library owns the parts.

One optimizer step ("window") is ``accumulation_steps`` micro-batches (:class:`UpdateStep`):

1. forward under autocast through the objective; each micro-batch's loss (summed over its
   units: supervised tokens, DPO pairs) is divided by the units of the whole window over all
   ranks, so the accumulated gradient is the exact mean of the window however the loss mask
   spreads units across micro-batches (``optim.loss_normalization=micro_batch`` restores
   upstream's mean / accumulation_steps); an objective's per-micro-batch term (the MoE aux
   loss) is added divided by the window's micro-batches, as upstream does
2. ``scaler.scale(loss).backward()``; under DDP gradients are all-reduced only on the last
   micro-step (``no_sync`` before it)
3. ``scaler.unscale_`` -> ``clip_grad_norm_`` over the trainable parameters (the norm is
   logged) -> ``scaler.step`` -> ``scaler.update`` -> ``zero_grad(set_to_none=True)``;
   ``empty_cache`` only if asked

The run (:class:`Trainer`): every ``log_interval`` steps one read of the device (loss, norm,
skipped steps) for the console line, metrics.jsonl and wandb; every ``save_interval`` steps and
at the end a training checkpoint and inference weights; resume at the start. A window cut short
by the end of an epoch is still stepped, normalised by its own units. Nothing in the step reads
a device value on the host (``loop.on_nan=skip`` is the documented exception: it checks every
step).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from minimind import checkpoint as ckpt
from minimind import env, resume, run_identity, runlock
from minimind.adapters import NoAdapter
from minimind.console import TruncationNote
from minimind.data.holdout import split_key
from minimind.errors import CheckpointError
from minimind.evaluate import Evaluator, run_result
from minimind.metrics import StepMetrics, StepResult
from minimind.nonfinite import NonFinite
from minimind.objectives import to_device
from minimind.progress import Progress, RunClock
from minimind.runfolder import continue_hint
from minimind.signals import StopRequest
from minimind.weights import save_weights, weights_filename

log = logging.getLogger("minimind")


class UpdateStep:
    """One optimizer step over a window of micro-batches (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, *, objective, optimization, precision, dist,
                 on_nan: str, empty_cache: bool, compile: bool, compile_backend: str):
        self.raw_model = model  # the nn.Module whose state_dict has upstream's keys
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ddp_model = dist.wrap(model)
        # compile the DDP wrapper (TorchDynamo splits graphs at DDP's buckets); state dicts and
        # checkpoints always come from raw_model, so their keys carry no _orig_mod. prefix
        self.model = torch.compile(self.ddp_model, backend=compile_backend) if compile else self.ddp_model
        self.objective, self.dist, self.precision = objective, dist, precision
        self.optimizer, self.scaler = optimization.optimizer, precision.scaler
        self.grad_clip = optimization.grad_clip
        self.loss_norm = optimization.loss_normalization
        self.check_nan = on_nan == "skip" and not self.scaler.is_enabled()
        self.empty_cache = empty_cache and dist.device.type == "cuda"
        objective.setup(model=model, autocast=precision.autocast, device=dist.device)

    def _no_sync(self, last_micro_step: bool):
        if self.dist.distributed and not last_micro_step:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, window: List[Any], lr: float) -> StepResult:
        k, dev = len(window), self.dist.device
        # the host copies of the batches: counting units here costs no device sync
        counts = [self.objective.count(b) for b in window]
        tokens = sum(self.objective.tokens(b) for b in window)
        n_window = sum(counts)
        if self.loss_norm == "window_tokens":
            if self.dist.distributed:  # one all-reduce of the count; DDP then averages over ranks
                n = self.dist.all_reduce_sum(torch.full((), float(n_window), device=dev))
                unit_scale = self.dist.world_size / n.clamp(min=1.0)
            else:
                unit_scale = 1.0 / max(n_window, 1)

        loss_sum, aux_sum, extras = 0, 0, {}
        for i, (batch, n_i) in enumerate(zip(window, counts)):
            batch = to_device(batch, dev)
            with self._no_sync(i == k - 1):
                out = self.objective(self.model, batch)
                if self.loss_norm == "window_tokens":
                    loss = out.loss * unit_scale
                else:  # upstream: the micro-batch's mean loss / the window's micro-batches
                    loss = out.loss / (max(n_i, 1) * k)
                if out.aux is not None:  # upstream: (loss + aux loss) / accumulation_steps
                    loss = loss + out.aux / k
                    aux_sum = aux_sum + out.aux.detach()
                self.scaler.scale(loss).backward()
            loss_sum = loss_sum + out.loss.detach()
            for name, value in out.metrics.items():
                extras[name] = extras[name] + value.detach() if name in extras else value.detach()

        self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        finite = torch.isfinite(grad_norm)
        result = StepResult(loss_sum=loss_sum, count=n_window, grad_norm=grad_norm, finite=finite,
                            tokens=tokens, lr=lr, aux=aux_sum / k, extras=extras)
        if self.check_nan and not bool(finite):  # the one per-step host read, only in this opt-in mode
            self.optimizer.zero_grad(set_to_none=True)
            result.nan_skipped = True
            return result
        self.scaler.step(self.optimizer)  # fp16: skipped when the gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.empty_cache:
            torch.cuda.empty_cache()
        return result


class Trainer:
    """``conf/loop/*.yaml`` builds this from its own keys plus the parts the other groups built.

    What a resume does lives in :mod:`minimind.resume`, the NaN policy in
    :mod:`minimind.nonfinite`, evaluation in :mod:`minimind.evaluate`; the checkpoint's contents
    (state_dict / save) are the next candidate to move out if the class grows."""

    def __init__(self, *, epochs: int, max_steps: Optional[int], log_interval: int, save_interval: int,
                 save_dir: Optional[str], save_weight: Optional[str], weights_format: str, keep_last: int,
                 resume: str, compile: bool, compile_backend: str, empty_cache: bool, on_nan: str,
                 max_nan_skips: int, progress: Optional[bool], eval_interval: Optional[int],
                 eval_batches: Optional[int], save_best: bool, eval_prompts: List[str],
                 model: torch.nn.Module, objective, optimization, precision, batches, dist, tracker,
                 run_dir: str, config: Optional[dict] = None, resume_changes: str = "refuse",
                 evaluator: Optional[Evaluator] = None, adapter=None):
        self.epochs, self.max_steps = epochs, max_steps
        self.log_interval, self.save_interval = log_interval, save_interval
        self.run_dir = Path(run_dir)
        self.save_dir = Path(save_dir) if save_dir else self.run_dir
        self.save_weight, self.weights_format = save_weight or "pretrain", str(weights_format)  # train.py: the stage's
        self.resume_spec, self.resume_changes = str(resume), str(resume_changes)
        self.adapter = adapter or NoAdapter()  # what the weights file holds: the model, or only a LoRA
        self.on_nan, self.max_nan_skips, self.show_progress = str(on_nan), max_nan_skips, progress
        self.optimization, self.precision, self.batches = optimization, precision, batches
        self.dist, self.tracker, self.config = dist, tracker, config or {}
        self.optimizer, self.scaler, self.device = optimization.optimizer, precision.scaler, dist.device
        self.accum = optimization.accumulation_steps
        self.raw_model = model
        self.identity = run_identity.describe(self.config, getattr(batches, "dataset", None), batches.batch_size,
                                              self.accum, dist.world_size)  # what a resume must continue
        self.update = UpdateStep(model, objective=objective, optimization=optimization, precision=precision,
                                 dist=dist, on_nan=self.on_nan, empty_cache=empty_cache, compile=compile,
                                 compile_backend=compile_backend)
        self.checkpoints = ckpt.CheckpointManager(self.run_dir / "checkpoints", keep_last)
        self.progress = Progress()
        self.metrics = StepMetrics(self.device, count_overflows=self.scaler.is_enabled(),
                                   watch_nan=self.on_nan == "stop" and not self.scaler.is_enabled())
        self.schedule, self.stop = None, StopRequest()  # the schedule: prepare() builds it
        self.is_moe = bool(getattr(getattr(model, "config", None), "use_moe", False))
        self.resumed_from: Optional[str] = None
        self.last_saved_step, self._interval_tokens = -1, 0
        self.nonfinite = NonFinite(max_nan_skips, metrics=self.metrics, checkpoints=self.checkpoints, dist=dist,
                                   progress=self.progress)  # loop.on_nan: stop or skip
        self._run_units = 0  # loss units (supervised tokens, pairs) of this run's logged steps, all ranks
        self.units_key = f"loss_{objective.unit}s_per_s"  # loss_tokens_per_s for objective=lm
        self.history: List[Dict[str, Any]] = []
        self.summary: Dict[str, Any] = {}
        self.truncation, self.clock = TruncationNote(batches, is_main=dist.is_main), RunClock(self.progress)
        self.weights_paths: List[str] = []  # the inference weights written last
        self.evaluator = evaluator and evaluator.configure(  # None: no held-out data (data.val_path/val_size)
            interval=eval_interval, max_batches=eval_batches, prompts=eval_prompts,
            save_best=(lambda: self._save_weights("_best")) if save_best else None)

    # ================================================================== the public step

    def prepare(self, total_steps: int) -> None:
        """Ready for a run of ``total_steps`` optimizer steps: the schedule, train mode."""
        self.schedule = self.optimization.schedule(total_steps)
        self.raw_model.train()

    def step(self, window: List[Any]) -> StepResult:
        """One optimizer step over ``window`` (a list of micro-batches); advances the step count."""
        p = self.progress
        lr = self.schedule.set_lr(self.optimizer, p.step)
        result = self.update(window, lr)
        self.nonfinite.after_step(result.nan_skipped)
        self.metrics.record(result, p.step + 1)
        p.step += 1
        return result

    def _sync_tokens(self) -> None:
        added = self.metrics.sync_tokens(self.dist)
        self.progress.tokens += added
        self._interval_tokens += added

    # ================================================================== logging

    def _log(self, t_start: float, interval_t0: float, steps_this_run: int, total_steps: int) -> Dict[str, Any]:
        self.nonfinite.check()
        self._sync_tokens()
        interval_tokens, self._interval_tokens = self._interval_tokens, 0
        read = self.metrics.read(self.dist)
        p, now = self.progress, time.time()
        per_step = (now - t_start) / max(steps_this_run, 1)
        metrics = {
            "step": p.step, "total_steps": total_steps, "epoch": p.epoch + 1, "epochs": self.epochs,
            "loss": read.pop("loss"), "loss_avg": read.pop("loss_avg"), "lr": self.metrics.last.lr,
            "grad_norm": read.pop("grad_norm"),
            "scale": self.scaler.get_scale() if self.scaler.is_enabled() else None,
            "skipped": read.pop("skipped") + p.nan_skips,  # fp16 overflows + skipped NaN updates
            "tokens": p.tokens, "tokens_per_s": interval_tokens / max(now - interval_t0, 1e-9),
            "elapsed_s": self.clock.read(now), "eta_s": per_step * (total_steps - p.step),
            "samples_in_epoch": p.samples_in_epoch,
        }
        # what the step is for: supervised tokens per second (padding and prompts excluded)
        units = read.pop("units")
        self._run_units += units
        metrics[self.units_key] = units / max(now - interval_t0, 1e-9)
        aux = read.pop("aux_loss")
        if self.is_moe:
            metrics["aux_loss"] = aux
        metrics.update(read)  # the objective's own metrics
        p.record_loss(metrics["loss"])
        self.tracker.log(metrics)
        self.history.append(metrics)
        self.truncation.check(p.step)
        return metrics

    # ================================================================== checkpoints

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), **self.progress.state_dict(), **self.metrics.state_dict(),
                "world_size": self.dist.world_size, "batch_size": self.batches.batch_size,
                "accumulation_steps": self.accum, "config": self.config, "run": self.identity,
                "optimizer_params": ckpt.param_names(self.raw_model, self.optimizer),
                "train_split": split_key(self.batches.indices), "eval": self.evaluator and self.evaluator.state_dict()}

    def save(self, reason: str = "interval") -> None:
        """Checkpoint + inference weights, written by rank 0 with every rank's RNG state."""
        if self.progress.step == self.last_saved_step:
            return
        self.nonfinite.check()
        self._sync_tokens()
        self.clock.read()
        rngs = self.dist.gather_objects(ckpt.rng_state())
        if self.dist.is_main:
            state = dict(self.state_dict(), rng=rngs)
            previous = self.checkpoints.list()
            try:
                path = self.checkpoints.save(state, self.progress.step)
                weights = self.weights_paths = self._save_weights()
            except OSError as e:  # disk full, quota, unwritable folder: keep what was saved
                kept = f"the previous checkpoint {previous[0]} is intact" if previous else \
                    "no earlier checkpoint exists"
                raise CheckpointError(
                    f"could not write the step {self.progress.step} checkpoint in {self.checkpoints.directory} "
                    f"or the weights in {self.save_dir} ({e.strerror or e}); {kept}. Free space or "
                    f"choose another hydra.run.dir / loop.save_dir, then run again to resume") from e
            self.tracker.event("checkpoint", step=self.progress.step, epoch=self.progress.epoch,
                               samples_in_epoch=self.progress.samples_in_epoch, path=str(path), reason=reason,
                               weights=weights)
        self.dist.barrier()
        self.last_saved_step = self.progress.step

    def _save_weights(self, tag: str = "") -> List[str]:
        """Inference weights (``tag="_best"``: the best evaluation's, loop.save_best); returns the
        absolute paths written: the checkpoint event records them (generate reads them)."""
        formats = ["pth", "safetensors"] if self.weights_format == "both" else [self.weights_format]
        paths = [self.save_dir / weights_filename(self.save_weight, self.raw_model, ext=f"{tag}.{fmt}")
                 for fmt in formats]
        state = self.adapter.inference_state(self.raw_model)  # the whole model, or only a LoRA
        for path, fmt in zip(paths, formats):
            save_weights(state, path, fmt=fmt)
        return [str(path.absolute()) for path in paths]

    def restore(self) -> None:
        """Continue from a checkpoint, as ``loop.resume`` says (auto | never | PATH): see minimind/resume.py."""
        resume.restore(self)

    # ================================================================== the run

    def total_steps(self) -> int:
        """Optimizer steps from the start to the end of the run (max_steps or the last epoch)."""
        p = self.progress
        steps = self.batches.windows_left(p.epoch, p.samples_in_epoch, self.epochs, self.accum)
        return p.step + (steps if self.max_steps is None else min(steps, max(0, self.max_steps - p.step)))

    def fit(self) -> float:
        self.restore()
        total_steps = self.total_steps()
        self.prepare(total_steps)
        p = self.progress
        self.tracker.start(total_steps, initial_step=p.step, wandb_id=p.wandb_id, progress=self.show_progress)
        p.wandb_id = self.tracker.wandb_id or p.wandb_id
        self.tracker.event("start", step=p.step, total_steps=total_steps, world_size=self.dist.world_size,
                           resumed_from=self.resumed_from)
        log.info("training %d optimizer steps (%d done): %d samples/step = batch %d x accumulation "
                 "%d x %d rank(s)", total_steps, p.step, self.batches.batch_size * self.accum * self.dist.world_size,
                 self.batches.batch_size, self.accum, self.dist.world_size)
        self.stop.install()
        t_start = time.time()
        self.clock.start()
        tokens_at_start = p.tokens
        try:
            status = self._run_epochs(t_start, total_steps)
        finally:
            self.stop.uninstall()
        return self._finish(status, t_start, tokens_at_start)

    def _run_epochs(self, t_start: float, total_steps: int) -> str:
        p, steps_this_run, interval_t0 = self.progress, 0, time.time()
        while p.epoch < self.epochs:
            sampler = self.batches.sampler(p.epoch, p.samples_in_epoch)
            batches, done_batches = iter(self.batches.loader(sampler)), 0
            while p.step < total_steps:
                window = list(itertools.islice(batches, self.accum))
                if not window:
                    break
                self.step(window)
                done_batches += len(window)
                before, p.samples_in_epoch = p.samples_in_epoch, sampler.consumed_after(done_batches)
                p.samples += p.samples_in_epoch - before  # trained on (the loader may have read ahead)
                steps_this_run += 1
                self.tracker.advance()
                if p.step % self.log_interval == 0 or p.step >= total_steps:
                    self._log(t_start, interval_t0, steps_this_run, total_steps)
                    interval_t0 = time.time()
                if self.evaluator:  # every eval_interval steps and at the end
                    self.evaluator.after_step(self.raw_model, p, total_steps)
                if p.step % self.save_interval == 0:
                    self.save("interval")
                if self.dist.any_flag(self.stop.signum is not None):
                    self.save("signal")
                    return "interrupted"
            else:
                return "completed"  # max_steps reached inside the epoch
            p.epoch += 1
            p.samples_in_epoch = 0
        return "completed"

    def _finish(self, status: str, t_start: float, tokens_at_start: int) -> float:
        if status == "completed":
            self.save("final")
        p, wall = self.progress, time.time() - t_start
        self.summary = {
            "status": status, "final_loss": p.final_loss, "best_loss": p.best_loss, "optimizer_steps": p.step,
            "epochs": self.epochs, "tokens": p.tokens, "wall_time_s": wall,
            "tokens_per_s": (p.tokens - tokens_at_start) / max(wall, 1e-9),
            self.units_key: self._run_units / max(wall, 1e-9),
            "skipped_steps": (self.history[-1]["skipped"] if self.history else 0),
            "resumed_from": self.resumed_from, "world_size": self.dist.world_size,
        }
        self.summary.update({f"data_{k}": v for k, v in self.batches.stats().items()})
        self.summary.update(data_samples_seen=p.samples, elapsed_s=self.clock.read())
        evaluation, result = run_result(self.evaluator, p.final_loss)  # what sweeps optimise
        self.summary.update(evaluation)
        self.tracker.event(status, step=p.step, final_loss=p.final_loss)
        self.truncation.report()
        if status == "interrupted":
            log.info("stopped at step %d after a signal; the checkpoint is saved", p.step)
            log.info("%s", continue_hint(self.run_dir))
            if env.in_submitit_job():
                # submitit: hand the signal to its handler (it requeues the job and exits);
                # for SIGTERM (requeue or cancel by SLURM) leave without a result, SLURM decides
                self.tracker.close()
                runlock.release_all()  # saved and closed: the requeued job may take the folder
                self.stop.forward_to_previous()
                sys.exit(0)
        return result
