"""The seam between export and LoRA: a LoRA run is exported as full, merged weights.

A LoRA run's weights file holds only ``<module>.lora.A.weight`` / ``<module>.lora.B.weight``
(upstream's ``save_lora`` format, any alpha/rank scale folded into B), and its base weights are
the run's ``model.from_weight``. The merge (``W + B @ A`` for every adapted module, its errors
included) is :func:`minimind.adapters.merge_lora`'s; this module only splits a state dict.
"""

from __future__ import annotations

from typing import Mapping

import torch

from minimind.adapters import LORA_KEY, merge_lora


def split_lora(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """(base tensors, LoRA tensors) of a state dict."""
    lora = {k: v for k, v in state.items() if LORA_KEY in k}
    return {k: v for k, v in state.items() if LORA_KEY not in k}, lora


def merge(base: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor],
          name: str = "the LoRA weights") -> dict:
    """Full weights W + B @ A."""
    return merge_lora(base, lora, name=name)
