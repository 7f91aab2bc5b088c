"""What one micro-batch's loss is: the part of a training stage that the update step does not know.

The update step (:class:`minimind.loop.UpdateStep`) is the same for every stage: it asks the
objective, for each micro-batch of a window,

1. on the host, before anything moves to the device: :meth:`Objective.count` -- how many units
   (supervised tokens for language modelling, pairs for DPO) the micro-batch holds. The window
   is normalised by the units of all its micro-batches over all ranks, so it needs the counts
   first; reading them from the host copy of the batch costs no device sync;
2. on the device: ``objective(model, batch)`` -> :class:`MicroBatchLoss`: the loss summed over
   those units, an optional term added once per micro-batch (the MoE balance loss, divided by
   the window's micro-batches as upstream does), and metrics summed over the units (logged as
   their mean over the log interval).

A batch is what the DataLoader yields: ``(input_ids, labels)`` or a dict of tensors.
``objective=lm`` is next-token cross-entropy (pretraining, SFT, LoRA); the stages issue adds
DPO and distillation beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

from minimind.model import causal_lm_loss, count_loss_tokens


@dataclass
class MicroBatchLoss:
    """One micro-batch's contribution to a window (device tensors, nothing read on the host)."""

    loss: torch.Tensor                      # summed over the micro-batch's units
    aux: Optional[torch.Tensor] = None      # added as aux / micro-batches (MoE balance loss)
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)  # summed over the units


def fields(batch: Any) -> Dict[str, torch.Tensor]:
    """A batch as named tensors: ``(input_ids, labels)`` pairs are named; dicts pass through."""
    if isinstance(batch, Mapping):
        return dict(batch)
    input_ids, labels = batch
    return {"input_ids": input_ids, "labels": labels}


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor on ``device`` (non-blocking from pinned memory on CUDA)."""
    nb = device.type == "cuda"
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}
    return type(batch)(t.to(device, non_blocking=nb) if torch.is_tensor(t) else t for t in batch)


class Objective:
    """The interface every stage's objective implements (see the module docstring)."""

    #: what :meth:`count` counts, for logs and docs ("token", "pair")
    unit = "token"

    def setup(self, *, model: torch.nn.Module, autocast: Callable[[], ContextManager],
              device: torch.device) -> None:
        """Called once before training with the bare model, the run's autocast and device
        (an objective with a frozen reference or teacher builds it here)."""
        self.autocast = autocast

    def count(self, batch: Any) -> int:
        raise NotImplementedError

    def tokens(self, batch: Any) -> int:
        """Input positions the micro-batch feeds the model (for tokens/s)."""
        return int(fields(batch)["input_ids"].numel())

    def __call__(self, model: torch.nn.Module, batch: Any) -> MicroBatchLoss:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs besides the model (nothing for a frozen reference: it is
        rebuilt from its weights file)."""
        return {}


class LanguageModeling(Objective):
    """``objective=lm``: next-token cross-entropy under the loss mask, plus the MoE aux loss.

    Upstream's per micro-batch loss is ``(CE mean + aux) / accumulation_steps``; here the CE is
    summed and the step divides by the window's supervised tokens, which is the exact token
    mean of the window (``optim.loss_normalization=micro_batch`` restores upstream's).
    """

    unit = "token"

    def __init__(self) -> None:
        self.autocast: Callable[[], ContextManager] = contextlib.nullcontext
        self.moe = False

    def setup(self, *, model: torch.nn.Module, autocast: Callable[[], ContextManager],
              device: torch.device) -> None:
        super().setup(model=model, autocast=autocast, device=device)
        self.moe = bool(getattr(getattr(model, "config", None), "use_moe", False))

    def count(self, batch: Any) -> int:
        # the host copy of the labels: counting here costs no device sync
        return int(count_loss_tokens(fields(batch)["labels"]))

    def __call__(self, model: torch.nn.Module, batch: Any) -> MicroBatchLoss:
        f = fields(batch)
        # a packed micro-batch (data.packing) says where its samples are; see minimind.attention
        packed = {k: f[k] for k in ("position_ids", "cu_seqlens") if k in f}
        with self.autocast():
            out = model(f["input_ids"], **packed)
        return MicroBatchLoss(loss=causal_lm_loss(out.logits, f["labels"], reduction="sum"),
                              aux=out.aux_loss if self.moe else None)

