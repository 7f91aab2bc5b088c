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
``objective=lm`` is next-token cross-entropy (pretraining, SFT, LoRA); ``objective=dpo``
(:class:`DPO`) prefers the chosen reply of a pair over the rejected one against a frozen
reference; ``objective=distill`` (:class:`Distillation`) adds a frozen teacher's distribution
to the cross-entropy. A frozen model (reference, teacher) lives in the objective: it is not in
the optimizer, not in checkpoints (rebuilt from its weights at setup, which runs before a
resume restores anything) and never wrapped in DDP; it runs in eval mode under ``no_grad``
and the run's autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Optional

import torch
import torch.nn.functional as F

from minimind.errors import ConfigError
from minimind.model import IGNORE_INDEX, MiniMindForCausalLM, causal_lm_loss, count_loss_tokens


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



# --------------------------------------------------------------------------- frozen models


def frozen_model(config, state: Dict[str, torch.Tensor], device: torch.device,
                 what: str = "the frozen model") -> MiniMindForCausalLM:
    """A MiniMind model with ``state`` loaded, in eval mode, without gradients, on ``device``.

    Built under a forked RNG: the random initialisation it overwrites must not move the run's
    RNG stream (what follows, e.g. dropout, stays the same with or without a frozen model)."""
    from minimind.weights import WeightsError, load_weights

    with torch.random.fork_rng(devices=[]):
        model = MiniMindForCausalLM(config)
    try:
        load_weights(model, state)
    except WeightsError as e:
        raise WeightsError(f"{what}: {e}") from None
    model.eval().requires_grad_(False)
    return model.to(device)


def base_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's own weights, without adapter layers (``<module>.lora.*``)."""
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora." not in k}


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(rows,) fp32: sum over the loss mask of log p(labels[t+1] | ids[:t+1]) for each row
    (-cross_entropy is the token's log-prob; ignored labels contribute 0)."""
    shifted = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(shifted.device)
    nll = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.view(targets.shape).sum(dim=1)


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple:
    """Per pair: -logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r))), and the rewards
    beta * (pi - ref) of each side. 0 policy-vs-reference difference gives log(2)."""
    chosen_reward = beta * (pi_chosen - ref_chosen)
    rejected_reward = beta * (pi_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


class DPO(Objective):
    """``objective=dpo``: direct preference optimisation (upstream ``trainer/train_dpo.py``).

    A micro-batch of B pairs is 2B rows, the B chosen then the B rejected
    (:class:`minimind.data.dpo.DPODataset`), so the policy runs ONE forward of 2B rows (one
    backward, one DDP reduction per window as for every stage), and the reference the same rows
    under ``no_grad``. Log-probs are summed over each reply's loss mask (SFT's labelling rule).

    The unit is the pair: the loss is summed over pairs and the window divides by its pairs over
    all ranks, so accumulation k x b pairs equals one batch of k*b pairs (upstream: the mean over
    the micro-batch's pairs / accumulation_steps). Metrics, summed over pairs and logged as means:
    ``reward_acc`` (chosen reward > rejected reward), ``margin`` (their difference),
    ``chosen_reward`` and ``rejected_reward`` (beta * (pi - ref)). The MoE aux loss is added per
    micro-batch, as upstream.

    The reference is built at setup: from ``reference_weight`` if given, else from the model's
    weights at that moment, which are the starting weights (setup runs before a resume restores
    the checkpoint, and an adapter's layers are left out), so a resumed run has the same reference.
    """

    unit = "pair"

    def __init__(self, beta: float = 0.15, reference_weight: Optional[str] = None) -> None:
        self.beta, self.reference_weight = float(beta), reference_weight
        self.autocast: Callable[[], ContextManager] = contextlib.nullcontext
        self.moe = False
        self.reference: Optional[torch.nn.Module] = None

    def setup(self, *, model: torch.nn.Module, autocast: Callable[[], ContextManager],
              device: torch.device) -> None:
        super().setup(model=model, autocast=autocast, device=device)
        self.moe = bool(getattr(model.config, "use_moe", False))
        state = self.reference_weight if self.reference_weight else base_state(model)
        self.reference = frozen_model(model.config, state, device,
                                      f"objective.reference_weight={self.reference_weight}")

    def count(self, batch: Any) -> int:
        return int(fields(batch)["input_ids"].shape[0]) // 2  # a shape: no device read

    def __call__(self, model: torch.nn.Module, batch: Any) -> MicroBatchLoss:
        f = fields(batch)
        x, y = f["input_ids"], f["labels"]
        b = x.shape[0] // 2
        with self.autocast():
            out = model(x)
            with torch.no_grad():
                ref_logits = self.reference(x).logits
        pi, ref = sequence_logprobs(out.logits, y), sequence_logprobs(ref_logits, y)
        loss, chosen, rejected = dpo_loss(pi[:b], pi[b:], ref[:b], ref[b:], self.beta)
        margin = (chosen - rejected).detach()
        metrics = {"reward_acc": (margin > 0).float().sum(), "margin": margin.sum(),
                   "chosen_reward": chosen.detach().sum(), "rejected_reward": rejected.detach().sum()}
        return MicroBatchLoss(loss=loss.sum(), aux=out.aux_loss if self.moe else None, metrics=metrics)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of each position's softened distributions, fp32, shape logits[:-1]."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1)


class Distillation(Objective):
    """``objective=distill``: knowledge distillation (upstream ``trainer/train_distillation.py``).

    Per supervised token: ``alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)``, both
    distributions softened by the temperature T (the T^2 keeps the KL's gradient on the scale of
    the CE's as T grows). Summed over the loss-masked tokens; the unit is the token, as for
    ``lm``, so the window's mean is per supervised token (upstream: CE token mean + KL
    'batchmean' over the masked tokens). The masked positions are selected by multiplying, not
    indexing, so nothing waits for the device. Metrics: ``ce`` and ``kl`` per token. The
    student's MoE aux loss is weighted by alpha, as upstream (it adds it to the CE).

    ``teacher`` is a model node (``_target_`` + fields + ``from_weight``); its vocabulary must be
    the student's (upstream silently cuts the teacher's logits to the student's size; here a
    mismatch is refused at setup, before training).
    """

    unit = "token"

    def __init__(self, teacher: Optional[Dict[str, Any]] = None, alpha: float = 0.5,
                 temperature: float = 1.5) -> None:
        self.teacher_node = dict(teacher or {})
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.autocast: Callable[[], ContextManager] = contextlib.nullcontext
        self.moe = False
        self.teacher: Optional[torch.nn.Module] = None

    def setup(self, *, model: torch.nn.Module, autocast: Callable[[], ContextManager],
              device: torch.device) -> None:
        from minimind.model_config import MiniMindConfig
        from minimind.weights import read_state_dict

        super().setup(model=model, autocast=autocast, device=device)
        self.moe = bool(getattr(model.config, "use_moe", False))
        node = {k: v for k, v in self.teacher_node.items() if k not in ("_target_", "from_weight")}
        path = self.teacher_node.get("from_weight")
        if not path:
            raise ConfigError("objective.teacher.from_weight is null: a distillation needs the teacher's weights")
        state = read_state_dict(path)
        student_vocab = model.config.vocab_size
        emb = state.get("model.embed_tokens.weight", state.get("lm_head.weight"))
        file_vocab = int(emb.shape[0]) if emb is not None else None
        teacher_vocab = node.get("vocab_size") or file_vocab or student_vocab
        if teacher_vocab != student_vocab or (file_vocab is not None and file_vocab != student_vocab):
            found = file_vocab if file_vocab is not None and file_vocab != student_vocab else teacher_vocab
            raise ConfigError(
                f"objective.teacher has a vocabulary of {found} tokens ({path}), the student {student_vocab} "
                "(model.vocab_size / data.tokenizer): distillation compares the two next-token distributions "
                "id by id, so teacher and student need the same tokenizer")
        node["vocab_size"] = student_vocab
        self.teacher = frozen_model(MiniMindConfig(**node).validate(), state, device,
                                    f"objective.teacher.from_weight={path}")

    def count(self, batch: Any) -> int:
        return int(count_loss_tokens(fields(batch)["labels"]))

    def __call__(self, model: torch.nn.Module, batch: Any) -> MicroBatchLoss:
        f = fields(batch)
        x, y = f["input_ids"], f["labels"]
        with self.autocast():
            out = model(x)
            with torch.no_grad():
                teacher_logits = self.teacher(x).logits
        ce = causal_lm_loss(out.logits, y, reduction="sum")
        mask = (y[:, 1:] != IGNORE_INDEX).to(torch.float32)
        kl = (distill_kl(out.logits[:, :-1], teacher_logits[:, :-1], self.temperature) * mask).sum()
        t2 = self.temperature * self.temperature
        loss = self.alpha * ce + (1.0 - self.alpha) * t2 * kl
        aux = self.alpha * out.aux_loss if self.moe else None
        return MicroBatchLoss(loss=loss, aux=aux, metrics={"ce": ce.detach(), "kl": kl.detach()})

