"""The optim group's part: parameter groups, AdamW, MiniMind's cosine schedule, the step's knobs.

``conf/optim/adamw.yaml`` builds :class:`Optimization` with ``_target_``; its ``optimizer`` and
``schedule`` nodes arrive as partials and get the learning rate and weight decay from
``optim.lr`` / ``optim.weight_decay`` here, so each is set in one place.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional

import torch

from minimind.errors import ConfigError


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool = False) -> List[dict]:
    """Two groups: weight matrices (and embeddings) decay, vectors (norm gains, biases) do not.

    Decaying an RMSNorm gain pulls it towards 0, i.e. shrinks the whole residual branch; that
    is why the usual recipe (nanoGPT, most LLM trainers) exempts 1-D parameters. Upstream
    MiniMind decays everything; ``decay_all=True`` reproduces it.
    Tied weights appear once: ``named_parameters`` de-duplicates shared tensors.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decay_all or p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def fused_supported(device: torch.device) -> bool:
    """Fused AdamW runs as one kernel per step on CUDA (and on CPU in recent torch)."""
    return device.type in ("cuda", "cpu", "mps", "xpu")


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    model: torch.nn.Module,
    weight_decay: float,
    device: torch.device,
    decay_all: bool = False,
    lr: Optional[float] = None,
) -> torch.optim.Optimizer:
    """Call the ``_partial_`` optimizer node with the parameter groups (and ``lr``).

    ``fused: null`` in the YAML means "fused wherever the device supports it".
    """
    groups = param_groups(model, weight_decay, decay_all)
    kwargs = {} if lr is None else {"lr": lr}
    if isinstance(factory, functools.partial) and factory.keywords.get("fused", "unset") is None:
        kwargs["fused"] = fused_supported(device)
    try:
        return factory(groups, **kwargs)
    except RuntimeError as e:  # a torch build without the fused kernel for this device
        if kwargs.get("fused"):
            return factory(groups, **dict(kwargs, fused=False))
        raise e


class Optimization:
    """The optimizer over the trainable parameters, its schedule, and how the update step
    treats the gradients: clipping, accumulation, loss normalisation.

    Built by ``instantiate(cfg.optim, model=..., device=...)``; the loop reads the step's knobs
    from here and calls :meth:`schedule` once the run's length is known.
    """

    def __init__(self, *, lr: float, weight_decay: float, decay_all_params: bool,
                 grad_clip: Optional[float], accumulation_steps: int, warmup_steps: int,
                 min_lr_ratio: float, loss_normalization: str, optimizer: Callable[..., torch.optim.Optimizer],
                 schedule: Callable[..., "CosineSchedule"], model: torch.nn.Module, device: torch.device):
        self.lr, self.min_lr_ratio, self.warmup_steps = lr, min_lr_ratio, warmup_steps
        self.grad_clip = grad_clip
        self.accumulation_steps = int(accumulation_steps)
        self.loss_normalization = str(loss_normalization)
        self.optimizer = build_optimizer(optimizer, model, weight_decay, device, decay_all=decay_all_params,
                                         lr=lr)
        self._schedule = schedule

    def schedule(self, total_steps: int) -> "CosineSchedule":
        """The learning-rate schedule of a run of ``total_steps`` optimizer steps."""
        return self._schedule(lr=self.lr, min_ratio=self.min_lr_ratio, warmup_steps=self.warmup_steps,
                              total_steps=max(int(total_steps), 1))


class CosineSchedule:
    """lr(t) = lr * (r + (1 - r)/2 * (1 + cos(pi * t / T))), t in optimizer steps.

    With r = 0.1 this is MiniMind's ``lr * (0.1 + 0.45 * (1 + cos(pi * t / T)))``: cosine from
    lr down to lr/10. Upstream counts t in micro-steps; here t counts optimizer steps, so
    the curve does not depend on accumulation_steps. An optional linear warmup
    (``warmup_steps``) ramps from lr/warmup to lr first; the cosine then spans the rest.
    """

    def __init__(self, lr: float, min_ratio: float = 0.1, warmup_steps: int = 0,
                 total_steps: int = 1):
        if total_steps < 1:
            raise ConfigError(f"schedule total_steps={total_steps} is invalid: the run has no "
                              "optimizer step (is the dataset smaller than one batch?)")
        if warmup_steps > total_steps:
            raise ConfigError(
                f"optim.warmup_steps={warmup_steps} is invalid: the run has only {total_steps} "
                f"optimizer steps; use at most {total_steps} (0 disables warmup)")
        self.lr, self.min_ratio = float(lr), float(min_ratio)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        r = self.min_ratio
        return self.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
