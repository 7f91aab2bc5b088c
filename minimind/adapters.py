"""Which parameters train: ``adapter=none`` (all of them) or ``adapter=lora`` (upstream's LoRA).

The adapter group's part is built after the model has its starting weights and before the
optimizer, which is built over the parameters that still require grad
(:func:`minimind.optim.param_groups`): :meth:`apply` decides what trains. It also decides what
the run's inference weights file holds (:meth:`inference_state`, called by the Trainer at every
save): the whole model for ``none``, only the adapter for ``lora``. The training checkpoint
always keeps the whole state (the frozen base and the adapter), so a resume is exact.

LoRA as upstream MiniMind (``model/model_lora.py``, d65ef2c): beside a target ``nn.Linear`` W,
``A`` (in -> rank, N(0, 0.02)) and ``B`` (rank -> out, zeros) ``nn.Linear`` layers attached as
``<module>.lora``; the layer computes ``W x + B(A(x))``, so training starts exactly at the base
model. Targets default to every square ``nn.Linear`` (in_features == out_features: q_proj and
o_proj in MiniMind). Here the output is added by a forward hook instead of upstream's
replaced ``forward`` (which torch.compile and deepcopy do not follow); the state-dict keys are
upstream's. Configurable beyond upstream: rank, ``alpha`` (output x alpha/rank; null = 1, as
upstream), dropout on the adapter's input, target module names.

The LoRA file is upstream's ``save_lora`` format: ``{module}.lora.A.weight`` /
``{module}.lora.B.weight`` in fp16, without a ``module.`` prefix, so upstream's ``load_lora``
reads ours and :func:`load_lora` reads theirs. The alpha/rank scale is folded into the saved B,
so a file always means "add B @ A" (upstream has no scale to store).

    python -m minimind.adapters merge --base out/full_sft_512.pth --lora out/lora_identity_512.pth \\
        --out out/full_sft_identity_512.pth

writes full weights W + B @ A in the usual inference format (upstream: ``merge_lora`` in
``scripts/convert_model.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from minimind.errors import ConfigError
from minimind.model import unwrap
from minimind.weights import WeightsError, export_state_dict, read_state_dict

log = logging.getLogger("minimind")

LORA_KEY = ".lora."


class LoRALayer(nn.Module):
    """``B(A(x)) * scale``: upstream's ``LoRA`` module (A Gaussian, B zero: the update starts at 0)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.A.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.B.weight)
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # no state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.B(self.A(self.dropout(x)))
        return out if self.scale == 1.0 else out * self.scale


def _add_lora(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an adapted nn.Linear: W x + lora(x)."""
    return output + module.lora(args[0])


def _attach(module: nn.Linear, layer: LoRALayer) -> None:
    w = module.weight
    module.lora = layer.to(device=w.device, dtype=w.dtype)
    module.register_forward_hook(_add_lora)


def _linears(model: nn.Module) -> List[tuple]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and LORA_KEY not in f".{name}." and not name.endswith(".lora")]


def find_targets(model: nn.Module, targets: Optional[Sequence[str]]) -> List[tuple]:
    """(name, nn.Linear) to adapt: module names whose last part is in ``targets``, or with
    ``targets=None`` every square nn.Linear (upstream's rule). Refuses what cannot be adapted."""
    linears = _linears(unwrap(model))
    if targets is None:
        found = [(n, m) for n, m in linears if m.in_features == m.out_features]
    else:
        found = [(n, m) for n, m in linears if n.rsplit(".", 1)[-1] in set(targets)]
        missing = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n, _ in found})
        if missing:
            valid = sorted({n.rsplit(".", 1)[-1] for n, _ in linears} - {"lm_head"})
            raise ConfigError(f"adapter.targets={list(targets)}: this model has no nn.Linear named "
                              f"{', '.join(missing)}; valid: {', '.join(valid)}")
    found = [(n, m) for n, m in found if n.rsplit(".", 1)[-1] != "lm_head"]  # tied to the embeddings
    if not found:
        shapes = sorted({f"{n.rsplit('.', 1)[-1]} ({m.in_features}->{m.out_features})" for n, m in linears})
        raise ConfigError(
            "adapter=lora: no module to adapt: adapter.targets=null adapts every square nn.Linear "
            f"(in_features == out_features), and this model has none ({', '.join(shapes)}); name "
            "the modules instead, e.g. adapter.targets=[q_proj,v_proj]")
    return found


def inject_lora(model: nn.Module, rank: int, alpha: Optional[float] = None, dropout: float = 0.0,
                targets: Optional[Sequence[str]] = None) -> List[str]:
    """Attach a LoRA layer beside each target and freeze everything else; returns the names."""
    model = unwrap(model)
    found = find_targets(model, targets)
    scale = 1.0 if alpha is None else float(alpha) / rank
    for p in model.parameters():
        p.requires_grad_(False)
    for _, module in found:
        _attach(module, LoRALayer(module.in_features, module.out_features, rank, scale, dropout))
    return [n for n, _ in found]


def lora_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Module name -> the adapted module, for every module carrying ``.lora``."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(getattr(m, "lora", None), LoRALayer)}


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Upstream's LoRA file: ``{module}.lora.A.weight`` / ``.lora.B.weight``, fp16 on the CPU,
    with the alpha/rank scale folded into B (the file means W + B @ A)."""
    out = {}
    for name, module in lora_modules(model).items():
        layer = module.lora
        out[f"{name}.lora.A.weight"] = layer.A.weight.detach().to(torch.float16).cpu()
        out[f"{name}.lora.B.weight"] = (layer.B.weight.detach().float() * layer.scale).to(torch.float16).cpu()
    return out


def _pairs(state: Mapping[str, torch.Tensor], name: str) -> Dict[str, tuple]:
    """Module name -> (A, B) of a LoRA state dict; anything else in it is an error."""
    pairs: Dict[str, dict] = {}
    for key, tensor in state.items():
        module, sep, rest = key.partition(LORA_KEY)
        if not sep or rest not in ("A.weight", "B.weight"):
            raise WeightsError(f"{name} is not a LoRA file: key {key!r} is not "
                               "'<module>.lora.A.weight' / '<module>.lora.B.weight' (upstream's save_lora)")
        pairs.setdefault(module, {})[rest[0]] = tensor
    incomplete = sorted(m for m, ab in pairs.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise WeightsError(f"{name}: LoRA modules without both A and B: {', '.join(incomplete[:5])}")
    return {m: (ab["A"], ab["B"]) for m, ab in pairs.items()}


def is_lora_file(source) -> bool:
    """Whether a weights file (or state dict) holds only LoRA tensors."""
    state = read_state_dict(source)
    return bool(state) and all(LORA_KEY in k for k in state)


def load_lora(model: nn.Module, source, attach: bool = False) -> List[str]:
    """Read a LoRA file (ours or upstream's, ``module.`` prefix or not) into ``model``.

    ``attach=False``: the model already carries LoRA layers (:func:`inject_lora`) and the file
    must fit them. ``attach=True``: layers are created from the file (rank from its shapes,
    scale 1), as for inference with ``python -m minimind.generate --lora``.
    """
    name = str(source) if not isinstance(source, Mapping) else "the given LoRA state dict"
    pairs = _pairs(read_state_dict(source), name)
    base = unwrap(model)
    modules = dict(base.named_modules())
    unknown = sorted(m for m in pairs if not isinstance(modules.get(m), nn.Linear))
    if unknown:
        raise WeightsError(f"{name}: LoRA for modules this model does not have: {', '.join(unknown[:5])}")
    if attach:
        for m, (a, b) in pairs.items():
            module = modules[m]
            if not isinstance(getattr(module, "lora", None), LoRALayer):
                _attach(module, LoRALayer(module.in_features, module.out_features, a.shape[0]))
    adapted = lora_modules(base)
    if set(adapted) != set(pairs):
        only_model = sorted(set(adapted) - set(pairs))
        raise WeightsError(f"{name} does not fit this model's LoRA layers: missing in the file: "
                           f"{', '.join(only_model[:5]) or '-'}; not adapted in the model: "
                           f"{', '.join(sorted(set(pairs) - set(adapted))[:5]) or '-'}")
    with torch.no_grad():
        for m, (a, b) in pairs.items():
            layer = adapted[m].lora
            if a.shape != layer.A.weight.shape or b.shape != layer.B.weight.shape:
                raise WeightsError(f"{name}: {m}.lora has A {tuple(a.shape)} / B {tuple(b.shape)}, the model "
                                   f"{tuple(layer.A.weight.shape)} / {tuple(layer.B.weight.shape)} "
                                   "(another rank or model size)")
            layer.A.weight.copy_(a.to(layer.A.weight.dtype))
            layer.B.weight.copy_((b.float() / layer.scale).to(layer.B.weight.dtype))
    return sorted(pairs)


def merge_lora(base: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor],
               name: str = "the LoRA file") -> Dict[str, torch.Tensor]:
    """Full weights: ``W + B @ A`` (in fp32, then W's dtype) for every adapted module of ``base``."""
    merged = dict(base)
    for module, (a, b) in _pairs(lora, name).items():
        key = f"{module}.weight"
        if key not in base:
            raise WeightsError(f"{name} adapts {module}, which the base weights do not have ({key})")
        w = base[key]
        if w.shape != (b.shape[0], a.shape[1]):
            raise WeightsError(f"{name}: {module} has W {tuple(w.shape)} but B @ A is "
                               f"{(b.shape[0], a.shape[1])} (weights of another model size)")
        merged[key] = (w.float() + b.float() @ a.float()).to(w.dtype)
    return merged


# --------------------------------------------------------------------------- the group's parts


class NoAdapter:
    """``adapter=none``: every parameter trains; the inference weights are the whole model."""

    def apply(self, model: nn.Module) -> nn.Module:
        return model

    def inference_state(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return export_state_dict(model)


class LoRA:
    """``adapter=lora``: only the LoRA layers train; the inference weights are the LoRA file."""

    def __init__(self, rank: int = 16, alpha: Optional[float] = None, dropout: float = 0.0,
                 targets: Optional[Sequence[str]] = None):
        self.rank, self.alpha, self.dropout = int(rank), alpha, float(dropout)
        self.targets = list(targets) if targets is not None else None

    def apply(self, model: nn.Module) -> nn.Module:
        names = inject_lora(model, self.rank, self.alpha, self.dropout, self.targets)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        kinds = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names}))
        log.info("LoRA: rank %d on %d modules (%s): %s trainable of %s parameters (%.2f%%)", self.rank,
                 len(names), kinds, f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))
        return model

    def inference_state(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return lora_state_dict(model)


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimind.adapters",
                                description="LoRA files: merge one into full inference weights.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="write base + B @ A as full weights (upstream's inference format)")
    m.add_argument("--base", required=True, help="the base weights the LoRA was trained on (.pth/.safetensors)")
    m.add_argument("--lora", required=True, help="the LoRA file ({save_weight}_{hidden}[_moe].pth of a LoRA run)")
    m.add_argument("--out", required=True, help="the merged weights file (.pth, or .safetensors by extension)")
    args = p.parse_args(argv)

    from minimind.weights import save_weights

    try:
        base, lora = read_state_dict(args.base), read_state_dict(args.lora)
        merged = merge_lora(base, lora, name=args.lora)
    except WeightsError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    save_weights(merged, args.out)
    print(f"merged {len(_pairs(lora, args.lora))} LoRA modules of {args.lora} into {args.base} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
