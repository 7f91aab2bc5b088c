"""The training loop. It owns the update step; the library owns the parts.

One optimizer step ("window") is ``accumulation_steps`` micro-batches:

1. forward under autocast; the loss of each micro-batch is its summed token loss divided by
   the loss tokens of the whole window (over all ranks), so the accumulated gradient is the
   exact token mean of the window however the loss mask spreads tokens across micro-batches
   (``optim.loss_normalization=micro_batch`` restores upstream's mean / accumulation_steps)
2. ``scaler.scale(loss).backward()``; under DDP gradients are all-reduced only on the last
   micro-step (``no_sync`` before it)
3. ``scaler.unscale_`` -> ``clip_grad_norm_`` (the norm is logged) -> ``scaler.step`` ->
   ``scaler.update`` -> ``zero_grad(set_to_none=True)``; ``empty_cache`` only if asked
4. every ``log_interval`` steps: one read of the device (loss, norm, skipped steps), the
   console line, metrics.jsonl, wandb
5. every ``save_interval`` steps and at the end: a training checkpoint and inference weights

A window cut short by the end of an epoch is still stepped, normalised by its own tokens.
Nothing in the step reads a device value on the host: ``.item()`` happens at log and save
time only (``on_nan=skip`` is the documented exception: it checks every step).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from minimind.checkpoint import CheckpointManager, is_upstream_resume, load_file, rng_state, set_rng_state
from minimind.data.sampler import ShardedBatchSampler
from minimind.errors import CheckpointError, TrainingError
from minimind.files import refuse_used_run_dir
from minimind.model import (
    causal_lm_loss,
    count_loss_tokens,
    load_weights,
    save_weights,
    weights_filename,
)

log = logging.getLogger("minimind")

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR2")


def trim_padding(x: torch.Tensor, y: torch.Tensor, multiple: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns after the last supervised label of a micro-batch.

    Attention is causal, so positions after the last label cannot change any loss term: the
    loss and gradients are those of the full-length batch, for a fraction of the compute
    (the demo's dialogues fill 40% of max_length). Rounded up to a multiple of 8 so kernels
    and torch.compile see few distinct shapes. Runs on the host copy of the labels: no sync.
    """
    cols = (y != -100).any(dim=0).nonzero()
    keep = int(cols[-1]) + 1 if len(cols) else 2
    keep = min(y.shape[1], max(2, -(-keep // multiple) * multiple))
    if keep == y.shape[1]:
        return x, y
    return x[:, :keep], y[:, :keep]


class StopRequest:
    """Turns SIGTERM / SIGINT / SIGUSR2 into a flag the loop reads at a step boundary.

    SLURM (and submitit) send SIGUSR2 before a time limit or preemption and SIGTERM when a
    job is requeued or cancelled; Ctrl-C sends SIGINT. The loop saves a checkpoint at the
    next step boundary and stops. A second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the replaced handlers back (``previous`` is kept for forward_to_previous)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping",
                    signal.Signals(signum).name)

    def forward_to_previous(self) -> None:
        """Hand the signal on to the handler it replaced (submitit's: requeue, then exit)."""
        prev = self.previous.get(self.signum) if self.signum is not None else None
        if callable(prev):
            prev(self.signum, None)


class Trainer:
    """``conf/loop/*.yaml`` builds this; ``launch.py`` passes the parts built from the other groups."""

    def __init__(self, *, epochs: int, max_steps: Optional[int], log_interval: int,
                 save_interval: int, save_dir: Optional[str], save_weight: str,
                 weights_format: str, keep_last: int, resume: str, compile: bool,
                 compile_backend: str,
                 empty_cache: bool, on_nan: str, max_nan_skips: int, progress: str,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                 precision: Any, dataset: Any, dist: Any, tracker: Any, run_dir: str,
                 grad_clip: Optional[float], accumulation_steps: int, loss_normalization: str,
                 batch_size: int, num_workers: int, shuffle: bool, seed: int,
                 trim_padding: bool = True, run_config: Optional[dict] = None, model_config: Any = None):
        self.epochs, self.max_steps = epochs, max_steps
        self.log_interval, self.save_interval = log_interval, save_interval
        self.run_dir = Path(run_dir)
        self.save_dir = Path(save_dir) if save_dir else self.run_dir
        self.save_weight, self.weights_format = save_weight, weights_format
        self.resume_spec = str(resume)
        self.empty_cache, self.on_nan, self.max_nan_skips = empty_cache, on_nan, max_nan_skips
        self.grad_clip, self.accum = grad_clip, accumulation_steps
        self.loss_norm = loss_normalization
        self.batch_size, self.num_workers, self.shuffle, self.seed = batch_size, num_workers, shuffle, seed
        self.trim_padding = trim_padding
        self.config = run_config or {}
        self.dist, self.tracker, self.precision = dist, tracker, precision
        self.scaler = precision.scaler
        self.device = dist.device
        self.dataset = dataset
        self.optimizer = optimizer
        self.schedule_factory = schedule  # called with total_steps once the run length is known
        self.schedule = None
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep_last)

        self.raw_model = model  # the nn.Module whose state_dict has upstream's keys
        self.model_config = model_config if model_config is not None else getattr(model, "config", None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ddp_model = dist.wrap(model)
        # compile the DDP wrapper (TorchDynamo splits graphs at DDP's buckets); state dicts and
        # checkpoints always come from raw_model, so their keys carry no _orig_mod. prefix
        self.model = torch.compile(self.ddp_model, backend=compile_backend) if compile else self.ddp_model

        # progress through the data (all global, identical on every rank)
        self.epoch = 0                 # current epoch (0-based)
        self.samples_in_epoch = 0      # samples of this epoch already trained on, all ranks
        self.global_step = 0           # optimizer steps done
        self.tokens_seen = 0           # input positions processed, all ranks (synced at log/save)
        self._pending_tokens = 0       # this rank's positions since the last sync
        self._interval_tokens = 0      # all ranks' positions since the last log line
        self.wandb_id: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.last_saved_step = -1
        self.stop = StopRequest()

        # device-side accumulators, read only at log / save time
        dev = self.device
        self._zero = torch.zeros((), device=dev)
        # (kept minimal: each device op here is one more kernel launch per optimizer step)
        self.is_moe = bool(getattr(self.model_config, "use_moe", False))
        self._last: Optional[Tuple[torch.Tensor, int, Any]] = None  # the last window: loss sum, tokens, aux
        self._interval_loss = torch.zeros((), device=dev, dtype=torch.float64)  # since the last log line
        self._interval_n = 0                                                    # its loss tokens (host)
        self._grad_norm = torch.zeros((), device=dev)
        self._skipped = torch.zeros((), device=dev, dtype=torch.int64)          # fp16 overflow steps
        self._first_bad_step = torch.full((), -1, device=dev, dtype=torch.int64)  # on_nan=stop
        self._nan_run = 0  # on_nan=skip: skipped updates in a row (host int, checked per step)
        self.nan_skips = 0
        self.history: List[Dict[str, Any]] = []
        self.final_loss: Optional[float] = None
        self.best_loss: Optional[float] = None

    # ================================================================== the data

    def _sampler(self, epoch: int, start: int) -> ShardedBatchSampler:
        return ShardedBatchSampler(len(self.dataset), self.batch_size, self.dist.world_size,
                                   self.dist.rank, self.seed, epoch, self.shuffle, start)

    def _loader(self, sampler: ShardedBatchSampler) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(sampler.epoch)  # workers copy the dataset at iter() time
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _steps_left(self) -> int:
        """Optimizer steps from the current position to the end of the last epoch."""
        steps = 0
        for e in range(self.epoch, self.epochs):
            start = self.samples_in_epoch if e == self.epoch else 0
            steps += -(-len(self._sampler(e, start)) // self.accum)
        return steps

    # ================================================================== the update step

    def _no_sync(self, last_micro_step: bool):
        if self.dist.distributed and not last_micro_step:
            return self.ddp_model.no_sync()
        return contextlib.nullcontext()

    def train_step(self, window: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step over ``window`` (a list of (input_ids, labels) micro-batches)."""
        if self.trim_padding:
            window = [trim_padding(x, y) for x, y in window]
        k = len(window)
        dev = self.device
        lr = self.schedule.set_lr(self.optimizer, self.global_step)
        nb = dev.type == "cuda"
        # labels are still on the host: counting loss tokens here costs no device sync
        counts = [int(count_loss_tokens(y)) for _, y in window]
        n_window = sum(counts)
        if self.loss_norm == "window_tokens":
            if self.dist.distributed:  # one all-reduce of the count; DDP then averages over ranks
                n = self.dist.all_reduce_sum(torch.full((), float(n_window), device=dev))
                token_scale = self.dist.world_size / n.clamp(min=1.0)
            else:
                token_scale = 1.0 / max(n_window, 1)

        loss_sum, aux_sum, tokens = 0, 0, 0
        for i, ((x, y), n_i) in enumerate(zip(window, counts)):
            x, y = x.to(dev, non_blocking=nb), y.to(dev, non_blocking=nb)
            with self._no_sync(i == k - 1):
                with self.precision.autocast():
                    out = self.model(x)
                lm_sum = causal_lm_loss(out.logits, y, reduction="sum")
                if self.loss_norm == "window_tokens":
                    loss = lm_sum * token_scale
                else:  # upstream: the micro-batch's mean loss / the window's micro-batches
                    loss = lm_sum / (max(n_i, 1) * k)
                if self.is_moe:  # upstream: (LM loss + aux loss) / accumulation_steps
                    loss = loss + out.aux_loss / k
                    aux_sum = aux_sum + out.aux_loss.detach()
                self.scaler.scale(loss).backward()
            loss_sum = loss_sum + lm_sum.detach()
            tokens += x.numel()

        self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
        finite = torch.isfinite(grad_norm)
        if self.on_nan == "skip" and not self.scaler.is_enabled():
            if not bool(finite):  # the one per-step host read, only in this opt-in mode
                self.optimizer.zero_grad(set_to_none=True)
                self._after_nan_skip()
                self._account(loss_sum, n_window, aux_sum / k, grad_norm, finite, tokens, lr)
                return
            self._nan_run = 0
        self.scaler.step(self.optimizer)  # fp16: skipped when the gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.empty_cache and dev.type == "cuda":
            torch.cuda.empty_cache()
        self._account(loss_sum, n_window, aux_sum / k, grad_norm, finite, tokens, lr)

    def prepare(self, total_steps: int) -> None:
        """What fit() does before the first step, for a caller that drives the steps itself
        (benchmarks/step.py): the LR schedule for a run of ``total_steps``, train mode."""
        self.schedule = self.schedule_factory(total_steps=max(total_steps, 1))
        self.raw_model.train()

    def step(self, window: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One whole optimizer step over ``window``, the step counter advanced as fit() does."""
        self.train_step(window)
        self.global_step += 1

    def _account(self, loss_sum, n_window, aux, grad_norm, finite, tokens, lr) -> None:
        """Fold one step into the accumulators: references and host ints, few device ops, no sync."""
        self._last = (loss_sum, n_window, aux)
        self._interval_loss += loss_sum
        self._interval_n += n_window
        self._grad_norm = grad_norm
        if self.scaler.is_enabled():  # fp16: a non-finite gradient means the scaler skipped the step
            self._skipped += finite.logical_not()
        elif self.on_nan == "stop":
            # masked_fill_ with a Python scalar: no host->device copy (torch.tensor(x, device=cuda) syncs)
            self._first_bad_step.masked_fill_((self._first_bad_step < 0) & finite.logical_not(),
                                              self.global_step + 1)
        self._pending_tokens += tokens
        self.lr = lr

    def _after_nan_skip(self) -> None:
        self._nan_run += 1
        self.nan_skips += 1
        log.warning("step %d: non-finite loss/gradient, update skipped (%d in a row, limit %d)",
                    self.global_step + 1, self._nan_run, self.max_nan_skips)
        if self._nan_run >= self.max_nan_skips:
            raise TrainingError(
                f"loss was NaN/inf for {self._nan_run} steps in a row (loop.max_nan_skips="
                f"{self.max_nan_skips}) at step {self.global_step + 1}; the last good checkpoint is "
                f"kept. Try a lower optim.lr, optim.grad_clip=1.0, or precision=bf16")

    def _check_finite(self) -> None:
        """on_nan=stop: a NaN/inf step since the last check ends the run before anything is saved."""
        if self.on_nan != "stop" or self.scaler.is_enabled():
            return
        first = self._first_bad_step.clone()
        if self.dist.distributed:  # the same on every rank (gradients are all-reduced); agree anyway
            tdist_max = torch.distributed.ReduceOp.MAX
            torch.distributed.all_reduce(first, op=tdist_max)
        step = int(first.item())
        if step >= 0:
            last = self.ckpt.list()
            kept = f"the last good checkpoint is {last[0]}" if last else "no checkpoint was written yet"
            raise TrainingError(
                f"loss became NaN/inf at step {step} (loop.on_nan=stop); {kept}. Try a lower "
                f"optim.lr, gradient clipping (optim.grad_clip=1.0), precision=bf16 instead of fp16, "
                f"or loop.on_nan=skip to skip such updates")

    # ================================================================== logging

    def _sync_tokens(self) -> int:
        """Fold every rank's processed positions into ``tokens_seen``; returns the increase."""
        pending = self._pending_tokens
        if self.dist.distributed:
            pending = int(self.dist.all_reduce_sum(torch.tensor(pending, dtype=torch.int64,
                                                                device=self.device)).item())
        self.tokens_seen += pending
        self._interval_tokens += pending
        self._pending_tokens = 0
        return pending

    def _log(self, t_start: float, interval_t0: float, steps_this_run: int,
             total_steps: int) -> Dict[str, Any]:
        self._check_finite()
        self._sync_tokens()
        interval_tokens, self._interval_tokens = self._interval_tokens, 0
        # one host read per log interval: last window's loss sum + tokens + aux, interval sum + tokens
        last_loss, last_n, last_aux = self._last
        vals = torch.stack([torch.as_tensor(last_loss, dtype=torch.float64, device=self.device),
                            torch.as_tensor(last_aux, dtype=torch.float64, device=self.device),
                            self._interval_loss])
        counts = torch.tensor([last_n, self._interval_n], dtype=torch.float64, device=self.device)
        vals = self.dist.all_reduce_sum(torch.cat([vals, counts])).tolist()
        loss = vals[0] / max(vals[3], 1.0)
        aux = vals[1] / self.dist.world_size
        loss_avg = vals[2] / max(vals[4], 1.0)
        self._interval_loss.zero_()
        self._interval_n = 0
        now = time.time()
        per_step = (now - t_start) / max(steps_this_run, 1)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        metrics = {
            "step": self.global_step,
            "total_steps": total_steps,
            "epoch": self.epoch + 1,
            "epochs": self.epochs,
            "loss": loss,
            "loss_avg": loss_avg,
            "lr": self.lr,
            "grad_norm": float(self._grad_norm.item()),
            "scale": scale,
            "skipped": int(self._skipped.item()) + self.nan_skips,  # fp16 overflows + skipped NaN updates
            "tokens": self.tokens_seen,
            "tokens_per_s": interval_tokens / max(now - interval_t0, 1e-9),
            "elapsed_s": now - t_start,
            "eta_s": per_step * (total_steps - self.global_step),
            "samples_in_epoch": self.samples_in_epoch,
        }
        if self.is_moe:
            metrics["aux_loss"] = aux
        self.final_loss = loss
        self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)
        self.tracker.log(metrics)
        self.history.append(metrics)
        return metrics

    # ================================================================== checkpoints

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "tokens_seen": self.tokens_seen,
            "world_size": self.dist.world_size,
            "batch_size": self.batch_size,
            "accumulation_steps": self.accum,
            "interval": [float(self._interval_loss), self._interval_n],
            "skipped": int(self._skipped.item()),
            "nan_skips": self.nan_skips,
            "best_loss": self.best_loss,
            "final_loss": self.final_loss,
            "wandb_id": self.wandb_id,
            "config": self.config,
        }

    def save(self, reason: str = "interval") -> None:
        """Checkpoint + inference weights, written by rank 0 with every rank's RNG state."""
        if self.global_step == self.last_saved_step:
            return
        self._check_finite()
        self._sync_tokens()
        rngs = self.dist.gather_objects(rng_state())
        if self.dist.is_main:
            state = self.state_dict()
            state["rng"] = rngs
            previous = self.ckpt.list()
            try:
                path = self.ckpt.save(state, self.global_step)
                self._save_weights()
            except OSError as e:  # disk full, quota, unwritable folder: keep what was saved
                kept = f"the previous checkpoint {previous[0]} is intact" if previous else \
                    "no earlier checkpoint exists"
                raise CheckpointError(
                    f"could not write the step {self.global_step} checkpoint in {self.ckpt.directory} "
                    f"or the weights in {self.save_dir} ({e.strerror or e}); {kept}. Free space or "
                    f"choose another hydra.run.dir / loop.save_dir, then run again to resume") from e
            self.tracker.event("checkpoint", step=self.global_step, epoch=self.epoch,
                               samples_in_epoch=self.samples_in_epoch, path=str(path), reason=reason)
        self.dist.barrier()
        self.last_saved_step = self.global_step

    def _save_weights(self) -> None:
        formats = ["pth", "safetensors"] if self.weights_format == "both" else [self.weights_format]
        for fmt in formats:
            ext = ".pth" if fmt == "pth" else ".safetensors"
            path = self.save_dir / weights_filename(self.save_weight, self.model_config, ext=ext)
            save_weights(self.raw_model, path, fmt=fmt)

    def restore(self) -> None:
        """Continue from a checkpoint, as ``loop.resume`` says (auto | never | PATH)."""
        spec = self.resume_spec
        if spec == "never":
            refuse_used_run_dir(self.ckpt.directory)
            return
        if spec == "auto":
            found = self.ckpt.load_latest()
            if found is None:
                if self.ckpt.list():
                    raise CheckpointError(f"no checkpoint in {self.ckpt.directory} could be loaded "
                                          "(see the warnings above); move them away to start over")
                return
            path, state = found
        else:
            path = Path(spec)
            state = load_file(path)
        if is_upstream_resume(state):
            self._restore_upstream(path, state)
        else:
            self._restore_state(path, state)
        self.resumed_from = str(path)

    def _load_model(self, path: Path, sd: Dict[str, torch.Tensor]) -> None:
        try:
            load_weights(self.raw_model, sd, strict=True)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {e}") from None

    def _restore_state(self, path: Path, s: Dict[str, Any]) -> None:
        self._load_model(path, s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if self.scaler.is_enabled() and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.global_step = int(s["global_step"])
        self.epoch = int(s["epoch"])
        self.samples_in_epoch = int(s["samples_in_epoch"])
        self.tokens_seen = int(s["tokens_seen"])
        self.wandb_id = s.get("wandb_id")
        self.nan_skips = int(s.get("nan_skips", 0))
        self.best_loss, self.final_loss = s.get("best_loss"), s.get("final_loss")
        self._skipped.fill_(int(s.get("skipped", 0)))
        self._interval_loss.fill_(float(s["interval"][0]))
        self._interval_n = int(s["interval"][1])
        saved_ws = int(s["world_size"])
        rngs = s.get("rng") or []
        same_layout = saved_ws == self.dist.world_size and s.get("batch_size") == self.batch_size
        if same_layout and len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        self.last_saved_step = self.global_step
        msg = (f"resumed from {path}: step {self.global_step}, epoch {self.epoch + 1}, "
               f"{self.samples_in_epoch} samples into the epoch")
        if not same_layout:
            msg += (f"; world size {saved_ws} -> {self.dist.world_size}, batch "
                    f"{s.get('batch_size')} -> {self.batch_size}: continuing at the same sample, "
                    f"not bit-exact")
        log.info(msg)
        self.tracker.event("resume", path=str(path), step=self.global_step, epoch=self.epoch,
                           samples_in_epoch=self.samples_in_epoch, world_size=self.dist.world_size,
                           saved_world_size=saved_ws)

    def _restore_upstream(self, path: Path, s: Dict[str, Any]) -> None:
        """Upstream MiniMind's ``*_resume.pth``: fp16 model, one-group AdamW, micro-step count."""
        self._load_model(path, s["model"])
        self._load_upstream_optimizer(s["optimizer"])
        if self.scaler.is_enabled() and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        saved_ws = int(s.get("world_size", 1) or 1)
        micro = int(s["step"])  # upstream: micro-batches of this epoch done, per rank
        self.epoch = int(s["epoch"])
        self.samples_in_epoch = micro * self.batch_size * saved_ws
        per_epoch = -(-len(self._sampler(self.epoch, 0)) // self.accum)
        self.global_step = self.epoch * per_epoch + micro * saved_ws // (self.dist.world_size * self.accum)
        self.wandb_id = s.get("wandb_id")
        log.info("resumed from upstream MiniMind checkpoint %s: epoch %d, micro-step %d (world size %d) "
                 "-> %d samples into the epoch, optimizer step %d. Upstream stored fp16 weights and "
                 "its own sample order: the continuation is not bit-exact", path, self.epoch + 1,
                 micro, saved_ws, self.samples_in_epoch, self.global_step)
        self.tracker.event("resume", path=str(path), step=self.global_step, epoch=self.epoch,
                           samples_in_epoch=self.samples_in_epoch, upstream=True)

    def _load_upstream_optimizer(self, sd: Dict[str, Any]) -> None:
        """Upstream has one param group in model.parameters() order; map it onto our groups."""
        upstream_order = list(self.raw_model.parameters())
        ours = [p for g in self.optimizer.param_groups for p in g["params"]]
        pos = {id(p): i for i, p in enumerate(ours)}
        state = {}
        for i, st in sd.get("state", {}).items():
            p = upstream_order[int(i)]
            if id(p) in pos:
                state[pos[id(p)]] = st
        groups = [dict({k: v for k, v in g.items() if k != "params"},
                       params=[pos[id(p)] for p in g["params"]]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    # ================================================================== the run

    def fit(self) -> float:
        self.restore()
        steps_left = self._steps_left()
        if self.max_steps is not None:
            steps_left = min(steps_left, max(0, self.max_steps - self.global_step))
        total_steps = self.global_step + steps_left
        self.schedule = self.schedule_factory(total_steps=max(total_steps, 1))
        self.tracker.start(total_steps, initial_step=self.global_step, wandb_id=self.wandb_id)
        self.wandb_id = self.tracker.wandb_id or self.wandb_id
        self.tracker.event("start", step=self.global_step, total_steps=total_steps,
                           world_size=self.dist.world_size, resumed_from=self.resumed_from)
        log.info("training %d optimizer steps (%d done): %d samples/step = batch %d x accumulation "
                 "%d x %d rank(s)", total_steps, self.global_step,
                 self.batch_size * self.accum * self.dist.world_size, self.batch_size, self.accum,
                 self.dist.world_size)
        self.raw_model.train()
        self.stop.install()
        t_start = time.time()
        self._tokens_at_start = self.tokens_seen
        status = "completed"
        try:
            status = self._run_epochs(t_start, total_steps)
        finally:
            self.stop.uninstall()
        return self._finish(status, t_start)

    def _run_epochs(self, t_start: float, total_steps: int) -> str:
        steps_this_run = 0
        interval_t0 = time.time()
        while self.epoch < self.epochs:
            sampler = self._sampler(self.epoch, self.samples_in_epoch)
            batches = iter(self._loader(sampler))
            done_batches = 0
            while self.global_step < total_steps:
                window = list(itertools.islice(batches, self.accum))
                if not window:
                    break
                self.train_step(window)
                done_batches += len(window)
                self.samples_in_epoch = sampler.consumed_after(done_batches)
                self.global_step += 1
                steps_this_run += 1
                self.tracker.advance()
                last = self.global_step >= total_steps
                if self.global_step % self.log_interval == 0 or last:
                    self._log(t_start, interval_t0, steps_this_run, total_steps)
                    interval_t0 = time.time()
                if self.global_step % self.save_interval == 0:
                    self.save("interval")
                if self.dist.any_flag(self.stop.signum is not None):
                    self.save("signal")
                    return "interrupted"
            else:
                return "completed"  # max_steps reached inside the epoch
            self.epoch += 1
            self.samples_in_epoch = 0
        return "completed"

    def _finish(self, status: str, t_start: float) -> float:
        if status == "completed":
            self.save("final")
        wall = time.time() - t_start
        summary = {
            "status": status,
            "final_loss": self.final_loss,
            "best_loss": self.best_loss,
            "optimizer_steps": self.global_step,
            "epochs": self.epochs,
            "tokens": self.tokens_seen,
            "wall_time_s": wall,
            "tokens_per_s": (self.tokens_seen - self._tokens_at_start) / max(wall, 1e-9),
            "skipped_steps": (self.history[-1]["skipped"] if self.history else 0),
            "resumed_from": self.resumed_from,
            "world_size": self.dist.world_size,
        }
        stats = self.dataset.stats() if hasattr(self.dataset, "stats") else {}
        summary.update({f"data_{k}": v for k, v in stats.items()})
        self.summary = summary
        self.tracker.event(status, step=self.global_step, final_loss=self.final_loss)
        self.tracker.close()
        if status == "interrupted":
            log.info("stopped at step %d after a signal; the checkpoint is saved, run the same "
                     "command again to continue", self.global_step)
            if os.environ.get("SUBMITIT_EXECUTOR"):
                # submitit: hand the signal to its handler (it requeues the job and exits);
                # for SIGTERM (requeue or cancel by SLURM) leave without a result, SLURM decides
                self.stop.forward_to_previous()
                sys.exit(0)
        return float(self.final_loss) if self.final_loss is not None else math.nan
