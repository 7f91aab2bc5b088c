"""Sending each token to its top-k experts without reading the device on the host.

The obvious loop (upstream's, and this project's until the speed issue) asks, for each expert,
``torch.where(topk_idx == e)``: which tokens chose it. The answer's size depends on the data,
so on a GPU each call waits for every queued kernel: one host sync per expert per layer per
forward, 32 per forward for an 8-layer, 4-expert model. :func:`dispatch` computes the same sum

    y[t] = sum over the k slots s of token t:  w[t, s] * expert_{idx[t, s]}(x[t])

with shapes that depend only on the batch shape, in one of two ways:

- ``grouped``: the (token, slot) assignments are sorted by expert, and one grouped matmul per
  projection runs every expert on its contiguous segment (``F.grouped_mm``, whose segment ends
  are a device tensor); the outputs are put back in (token, slot) order (a permutation: no
  atomics, deterministic) and summed over the k slots. The same FLOPs as the loop. Used on CUDA
  (bf16, sm80+, the kernel's requirements) and on CPU in eager mode (torch's CPU fallback, any
  dtype; it reads the offsets in C++ on the CPU, which is no sync).
- ``dense``: every expert runs on every token, and a (tokens, experts) mask keeps each token's
  chosen experts. E/k times the routed experts' FLOPs, but no data-dependent op at all, and any
  dtype, device and torch.compile. Used where ``grouped`` is not available: fp32/fp16 on CUDA,
  a GPU before sm80, and CPU under torch.compile (the grouped op's compile-time shape function
  only accepts bf16).

Both give today's results to float rounding (tests/test_moe.py compares them with the loop, to
1e-6, forward and gradients). Every expert's parameters are part of the graph whatever the
routing, so each gets a gradient (zeros for an idle one) and DDP never waits for a missing one.
The experts stay ``nn.ModuleList`` of :class:`~minimind.model.FeedForward`, so the state-dict keys
(``mlp.experts.{e}.gate_proj.weight``) are upstream's; ``grouped`` stacks their weights per
forward (a copy of the routed weights, small next to the matmuls).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype nn.Linear would compute in here: the autocast dtype if autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def strategy(x: torch.Tensor, experts: Sequence[nn.Module]) -> str:
    """``grouped`` or ``dense`` for this input (see the module docstring)."""
    if not hasattr(F, "grouped_mm"):
        return "dense"
    if x.device.type == "cpu":
        return "dense" if torch.compiler.is_compiling() else "grouped"
    if x.is_cuda and _compute_dtype(x) == torch.bfloat16:
        e = experts[0]
        aligned = e.gate_proj.in_features % 8 == 0 and e.gate_proj.out_features % 8 == 0
        if aligned and torch.cuda.get_device_capability(x.device) >= (8, 0):
            return "grouped"
    return "dense"


def dispatch(flat: torch.Tensor, topk_idx: torch.Tensor, topk_weight: torch.Tensor,
             experts: Sequence[nn.Module], how: str | None = None) -> torch.Tensor:
    """(N, H) tokens, (N, k) expert ids and router weights -> (N, H) in ``flat``'s dtype."""
    how = how or strategy(flat, experts)
    if how == "grouped":
        return _grouped(flat, topk_idx, topk_weight, experts)
    if how == "dense":
        return _dense(flat, topk_idx, topk_weight, experts)
    raise ValueError(f"MoE dispatch {how!r} is invalid: grouped or dense")


def _dense(flat, topk_idx, topk_weight, experts) -> torch.Tensor:
    n_tokens, n_exp = flat.shape[0], len(experts)
    chosen = torch.zeros(n_tokens, n_exp, dtype=torch.bool, device=flat.device).scatter_(1, topk_idx, True)
    weight = torch.zeros(n_tokens, n_exp, dtype=topk_weight.dtype, device=flat.device)
    weight = weight.scatter(1, topk_idx, topk_weight)
    y = torch.zeros_like(flat)
    for e, expert in enumerate(experts):
        # where, not a multiply by 0: an fp16 expert output that overflowed for a token that did
        # not choose the expert must not become 0 * inf = NaN
        out = torch.where(chosen[:, e:e + 1], expert(flat) * weight[:, e:e + 1], 0.0)
        y = y + out.to(y.dtype)
    return y


def _grouped(flat, topk_idx, topk_weight, experts) -> torch.Tensor:
    n_tokens, k = topk_idx.shape
    dt = _compute_dtype(flat)
    expert_of = topk_idx.reshape(-1)                       # assignment a = token * k + slot
    order = torch.argsort(expert_of, stable=True)          # assignments grouped by expert
    counts = torch.zeros(len(experts), dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, expert_of, torch.ones_like(expert_of))
    offs = counts.cumsum(0).to(torch.int32)                # end of each expert's segment

    def stacked(name: str) -> torch.Tensor:                # (E, in, out), as grouped_mm wants b
        return torch.stack([getattr(e, name).weight for e in experts]).to(dt).transpose(1, 2)

    x = flat[order // k].to(dt)
    h = F.silu(F.grouped_mm(x, stacked("gate_proj"), offs=offs)) * F.grouped_mm(x, stacked("up_proj"), offs=offs)
    out = experts[0].dropout(F.grouped_mm(h, stacked("down_proj"), offs=offs))
    out = out * topk_weight.reshape(-1)[order].unsqueeze(-1)
    # back to (token, slot) order: `order` is a permutation, so this is a plain copy
    per_slot = torch.index_copy(torch.empty_like(out), 0, order, out)
    return per_slot.view(n_tokens, k, -1).sum(dim=1).to(flat.dtype)
