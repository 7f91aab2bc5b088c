"""MoE dispatch without host syncs: the same outputs and gradients as the per-expert loop.

The reference is the loop the model used before (benchmarks/moe.py ``loop_dispatch``, kept
verbatim there so the benchmark's "before" and this test's reference are one copy). Both of
:mod:`minimind.moe`'s strategies must match it to 1e-6, forward and backward, for MiniMind2
(top-2 + a shared expert) and MiniMind-3 (top-1) routers, and give every expert a gradient.
That the training step issues no device read with MoE is tests/test_perf.py's job.
"""

from __future__ import annotations

import pytest
import torch
from conftest import import_benchmark

from minimind import moe
from minimind.model import MiniMindForCausalLM, MoEFeedForward
from minimind.model_config import MiniMindConfig

loop_dispatch = import_benchmark("moe").loop_dispatch

BASE = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            use_moe=True)
ROUTERS = {
    "minimind2-top2": {},
    "minimind3-top1": {"family": "minimind3", "qk_norm": True, "num_experts_per_tok": 1, "n_shared_experts": 0,
                       "seq_aux": False, "aux_loss_alpha": 5e-4},
    "top3-of-6": {"n_routed_experts": 6, "num_experts_per_tok": 3, "n_shared_experts": 0},
}


def layer_and_routing(router: str, n_tokens: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    layer = MoEFeedForward(MiniMindConfig(**BASE, **ROUTERS[router])).train()
    x = torch.randn(n_tokens, BASE["hidden_size"])
    scores = torch.softmax(layer.gate(x), dim=-1)
    weight, idx = torch.topk(scores, k=layer.top_k, dim=-1)
    return layer, x, idx, weight.detach()


def run(fn, layer, x, idx, weight):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    y = fn(x, idx, w, layer.experts)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))  # not a sum: every output matters
    return y.detach(), x.grad, w.grad, {n: p.grad for n, p in layer.experts.named_parameters()}


@pytest.mark.parametrize("how", ["grouped", "dense"])
@pytest.mark.parametrize("router", list(ROUTERS))
def test_dispatch_equals_the_per_expert_loop(router, how):
    layer, x, idx, weight = layer_and_routing(router)
    ref = run(loop_dispatch, layer, x, idx, weight)
    got = run(lambda *a: moe.dispatch(*a, how=how), layer, x, idx, weight)
    for a, b in zip(ref[:3], got[:3]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert ref[3].keys() == got[3].keys()
    for name, g in ref[3].items():
        torch.testing.assert_close(got[3][name], g, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("how", ["grouped", "dense"])
def test_every_expert_gets_a_gradient_even_without_tokens(how):
    layer, x, idx, weight = layer_and_routing("minimind3-top1", n_tokens=3)
    idx = torch.zeros_like(idx)  # every token to expert 0: experts 1..3 idle
    _, _, _, grads = run(lambda *a: moe.dispatch(*a, how=how), layer, x, idx, weight)
    assert all(g is not None for g in grads.values()) and len(grads) == 4 * 3
    assert all(not g.any() for n, g in grads.items() if not n.startswith("0."))
    assert all(g.any() for n, g in grads.items() if n.startswith("0."))


@pytest.mark.parametrize("router", list(ROUTERS))
def test_the_model_forward_is_unchanged(router, monkeypatch):
    """The whole model (router, aux loss, shared experts) against the loop, logits and grads."""
    torch.manual_seed(1)
    model = MiniMindForCausalLM(MiniMindConfig(**BASE, **ROUTERS[router])).train()
    ids = torch.randint(0, 96, (3, 12))

    def grads_of():
        model.zero_grad(set_to_none=True)
        out = model(ids)
        (out.logits.float().square().mean() + out.aux_loss).backward()
        return out.logits.detach(), out.aux_loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    new = grads_of()
    import minimind.model as mm

    monkeypatch.setattr(mm, "dispatch", loop_dispatch)
    old = grads_of()
    torch.testing.assert_close(new[0], old[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new[1], old[1], atol=1e-7, rtol=1e-6)
    for name, g in old[2].items():
        torch.testing.assert_close(new[2][name], g, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_the_strategy_per_device(monkeypatch):
    layer, x, _, _ = layer_and_routing("minimind2-top2")
    assert moe.strategy(x, layer.experts) == "grouped"  # CPU eager: torch's grouped-mm fallback
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert moe.strategy(x, layer.experts) == "dense"    # its compile-time shape check wants bf16
    with pytest.raises(ValueError, match="grouped or dense"):
        moe.dispatch(x, torch.zeros(40, 2, dtype=torch.long), torch.ones(40, 2), layer.experts, how="loop")


def test_bf16_autocast_computes_in_bf16_like_nn_linear():
    layer, x, idx, weight = layer_and_routing("minimind2-top2")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loop_dispatch(x, idx, weight, layer.experts)
        got = moe.dispatch(x, idx, weight, layer.experts, how="grouped")
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)  # bf16 rounding, not a different function
