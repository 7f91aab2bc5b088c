"""The seam between export and LoRA: a LoRA run is exported as full, merged weights.

A LoRA run's weights file holds only ``<module>.lora.A.weight`` / ``<module>.lora.B.weight``
(upstream's ``save_lora`` format, any alpha/rank scale folded into B), and its base weights are
the run's ``model.from_weight``. The merge is ``W + B @ A`` for every adapted module.

``minimind.adapters.merge_lora(base, lora, name=...)`` (the adapter group, built in parallel) owns
that merge; this module calls it when it exists and otherwise does the same sum itself, so the
export works before and after that module lands and tests/test_export.py pins the result
(base + B @ A to 1e-6) either way.
"""

from __future__ import annotations

from typing import Mapping

import torch

from minimind.weights import WeightsError

LORA_KEY = ".lora."


def split_lora(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(base tensors, LoRA tensors) of a state dict."""
    lora = {k: v for k, v in state.items() if LORA_KEY in k}
    return {k: v for k, v in state.items() if LORA_KEY not in k}, lora


def _merge_here(base: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor], name: str) -> dict:
    merged = dict(base)
    modules = sorted({k.split(LORA_KEY)[0] for k in lora})
    for module in modules:
        a, b = lora.get(f"{module}.lora.A.weight"), lora.get(f"{module}.lora.B.weight")
        key = f"{module}.weight"
        if a is None or b is None:
            raise WeightsError(f"{name}: LoRA module {module} lacks its A or B matrix "
                               "(expected <module>.lora.A.weight and <module>.lora.B.weight)")
        if key not in base:
            raise WeightsError(f"{name} adapts {module}, which the base weights do not have ({key})")
        if base[key].shape != (b.shape[0], a.shape[1]):
            raise WeightsError(f"{name}: {module} has W {tuple(base[key].shape)} but B @ A is "
                               f"{(b.shape[0], a.shape[1])} (a LoRA of another model size)")
        merged[key] = (base[key].float() + b.float() @ a.float()).to(base[key].dtype)
    return merged


def merge(base: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor],
          name: str = "the LoRA weights") -> dict:
    """Full weights W + B @ A; through minimind.adapters.merge_lora when that module exists."""
    try:
        from minimind.adapters import merge_lora
    except ImportError:
        return _merge_here(base, lora, name)
    return merge_lora(base, lora, name=name)
