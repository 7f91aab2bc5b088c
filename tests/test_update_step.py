"""The invariants of the update step (DESIGN.md, "The update step"), pinned with numbers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import Subset, default_collate

from minimind.data.loader import trim_padding
from minimind.model import causal_lm_loss, count_loss_tokens
from minimind.optim import CosineSchedule, param_groups
from minimind.train import build_trainer


def make(cfg_factory, tmp_path, *overrides):
    cfg = cfg_factory(["optim.lr=1e-3", "data.shuffle=false", *overrides])
    trainer = build_trainer(cfg, tmp_path)
    trainer.prepare(100)  # the cosine from lr=1e-3 over 100 steps
    return trainer


def batches(dataset, start, batch_size, count):
    return [default_collate([dataset[i] for i in range(start + j * batch_size, start + (j + 1) * batch_size)])
            for j in range(count)]


def capture_step_grads(trainer):
    """Record the gradients the optimizer is handed (after unscale and clipping)."""
    seen = []
    original = trainer.scaler.step

    def step(optimizer, *args, **kwargs):
        seen.append({n: p.grad.detach().clone() for n, p in trainer.raw_model.named_parameters()
                     if p.grad is not None})
        return original(optimizer, *args, **kwargs)

    trainer.scaler.step = step
    return seen


def assert_grads_close(a, b, rtol=1e-4, atol=1e-7):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def test_accumulation_equals_one_big_batch_with_uneven_masks(cfg_factory, tmp_path):
    k, b = 4, 2
    acc = make(cfg_factory, tmp_path / "a", f"optim.accumulation_steps={k}", f"data.batch_size={b}",
               "optim.grad_clip=null")
    big = make(cfg_factory, tmp_path / "b", "optim.accumulation_steps=1", f"data.batch_size={k * b}",
               "optim.grad_clip=null")
    window = batches(acc.batches.dataset, 0, b, k)
    tokens = [int(count_loss_tokens(y)) for _, y in window]
    assert len(set(tokens)) > 1, f"the test needs micro-batches with different loss tokens: {tokens}"

    g_acc, g_big = capture_step_grads(acc), capture_step_grads(big)
    acc.step(window)
    big.step(batches(big.batches.dataset, 0, k * b, 1))
    assert_grads_close(g_acc[0], g_big[0])
    # and the parameters after the AdamW step agree too
    for (n, p), (_, q) in zip(acc.raw_model.named_parameters(), big.raw_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_clipping_sees_the_whole_window(cfg_factory, tmp_path):
    k, b = 4, 2
    acc = make(cfg_factory, tmp_path / "a", f"optim.accumulation_steps={k}", f"data.batch_size={b}",
               "optim.grad_clip=0.05")
    big = make(cfg_factory, tmp_path / "b", "optim.accumulation_steps=1", f"data.batch_size={k * b}",
               "optim.grad_clip=0.05")
    g_acc, g_big = capture_step_grads(acc), capture_step_grads(big)
    acc.step(batches(acc.batches.dataset, 0, b, k))
    big.step(batches(big.batches.dataset, 0, k * b, 1))
    assert_grads_close(g_acc[0], g_big[0])
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g_acc[0].values()]))
    assert norm.item() == pytest.approx(0.05, rel=1e-4)  # clipped to exactly grad_clip
    assert acc.metrics.last.grad_norm.item() > 0.05  # the logged norm is the one before clipping


def test_micro_batch_normalization_is_upstreams_formula(cfg_factory, tmp_path):
    k, b = 4, 2
    up = make(cfg_factory, tmp_path / "u", f"optim.accumulation_steps={k}", f"data.batch_size={b}",
              "optim.grad_clip=null", "optim.loss_normalization=micro_batch")
    window = batches(up.batches.dataset, 0, b, k)
    model = up.raw_model
    ref = {}
    for x, y in window:  # upstream: mean loss of each micro-batch / accumulation_steps
        model.zero_grad(set_to_none=True)
        (causal_lm_loss(model(x).logits, y) / k).backward()
        for n, p in model.named_parameters():
            ref[n] = ref.get(n, 0) + p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    grads = capture_step_grads(up)
    up.step(window)
    assert_grads_close(grads[0], ref)


def test_short_window_at_epoch_end_is_stepped_and_normalised(cfg_factory, tmp_path):
    k, b = 4, 2
    tr = make(cfg_factory, tmp_path / "a", f"optim.accumulation_steps={k}", f"data.batch_size={b}",
              "optim.grad_clip=null", "loop.log_interval=1", "loop.save_interval=1000")
    tr.batches.dataset = Subset(tr.batches.dataset, range(10))  # 5 micro-batches: windows of 4 and 1
    ref = make(cfg_factory, tmp_path / "b", "optim.accumulation_steps=1", f"data.batch_size={b}",
               "optim.grad_clip=null")
    grads = capture_step_grads(tr)
    states = []
    original_step = tr.step

    def recording_step(window):
        states.append({k_: v.clone() for k_, v in tr.raw_model.state_dict().items()})
        return original_step(window)

    tr.step = recording_step
    tr.fit()
    assert tr.progress.step == 2 and len(grads) == 2
    # the second (short) window: one micro-batch, normalised by its own loss tokens
    ref.raw_model.load_state_dict(states[1])
    ref_grads = capture_step_grads(ref)
    ref.step(batches(ref.batches.dataset, 8, b, 1))
    assert_grads_close(grads[1], ref_grads[0])


def test_fp16_overflow_skips_the_step_and_halves_the_scale(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path, "precision=fp16", "optim.accumulation_steps=2")
    assert tr.scaler.is_enabled() and tr.scaler.get_scale() == 65536.0
    window = batches(tr.batches.dataset, 0, 4, 2)
    before = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    victim = tr.raw_model.model.norm.weight
    handle = victim.register_hook(lambda g: torch.full_like(g, float("inf")))
    tr.step(window)
    handle.remove()
    for n, p in tr.raw_model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed although the step overflowed"
    assert tr.scaler.get_scale() == 32768.0
    assert int(tr.metrics.skipped) == 1
    assert all(p.grad is None for p in tr.raw_model.parameters())  # zero_grad(set_to_none=True)
    tr.step(batches(tr.batches.dataset, 8, 4, 2))  # a clean step updates and keeps the scale
    assert tr.scaler.get_scale() == 32768.0
    assert int(tr.metrics.skipped) == 1
    assert any(not torch.equal(p, before[n]) for n, p in tr.raw_model.named_parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_and_bf16_have_no_scaler(cfg_factory, tmp_path, precision):
    tr = make(cfg_factory, tmp_path, f"precision={precision}")
    assert not tr.scaler.is_enabled()
    tr.step(batches(tr.batches.dataset, 0, 4, 1))
    assert int(tr.metrics.skipped) == 0


def test_logged_loss_is_the_true_window_mean(cfg_factory, tmp_path):
    k, b = 4, 2
    tr = make(cfg_factory, tmp_path, f"optim.accumulation_steps={k}", f"data.batch_size={b}",
              "loop.log_interval=1", "loop.max_steps=1")
    window = batches(tr.batches.dataset, 0, b, k)
    with torch.no_grad():
        sums = [causal_lm_loss(tr.raw_model(x).logits, y, reduction="sum").item() for x, y in window]
        counts = [int(count_loss_tokens(y)) for _, y in window]
        last_times_k = causal_lm_loss(tr.raw_model(window[-1][0]).logits, window[-1][1]).item()
    tr.fit()
    logged = tr.history[0]["loss"]
    assert logged == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert logged != pytest.approx(last_times_k, rel=1e-3)


def test_cosine_schedule_matches_minimind():
    s = CosineSchedule(lr=1e-3, min_ratio=0.1, total_steps=100)
    for t in (0, 10, 50, 99, 100):
        assert s(t) == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * t / 100))))
    assert s(0) == pytest.approx(1e-3) and s(100) == pytest.approx(1e-4)
    w = CosineSchedule(lr=1e-3, warmup_steps=10, total_steps=110)
    assert [w(t) for t in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert w(10) == pytest.approx(1e-3) and w(110) == pytest.approx(1e-4)


def test_warmup_longer_than_the_run_is_refused():
    from minimind.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.warmup_steps=50 .* only 20 optimizer steps"):
        CosineSchedule(lr=1e-3, warmup_steps=50, total_steps=20)


def test_weight_decay_only_on_matrices(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path)
    decay, no_decay = tr.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in tr.raw_model.named_parameters()}
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    total = sum(p.numel() for g in tr.optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in tr.raw_model.parameters())
    everything = param_groups(tr.raw_model, 0.1, decay_all=True)
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.1


def test_fused_adamw_where_supported(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path)
    assert tr.optimizer.defaults.get("fused") is True  # CPU supports the fused kernel here


def test_trimming_the_padding_tail_changes_nothing(cfg_factory, tmp_path):
    full = make(cfg_factory, tmp_path / "a", "data.trim_padding=false", "data.max_length=128",
                "optim.accumulation_steps=2")
    trim = make(cfg_factory, tmp_path / "b", "data.trim_padding=true", "data.max_length=128",
                "optim.accumulation_steps=2")
    window = batches(full.batches.dataset, 0, 4, 2)
    x, y = trim_padding(window[0])
    assert x.shape[1] < 128 and x.shape[1] % 8 == 0  # the demo dialogues are short
    assert (window[0][1][:, x.shape[1]:] == -100).all()
    # what each run's DataLoader hands the step (trimming happens while collating)
    loaded = {name: list(itertools.islice(iter(tr.batches.loader(tr.batches.sampler(0))), 2))
              for name, tr in (("full", full), ("trim", trim))}
    assert loaded["full"][0][0].shape[1] == 128 and loaded["trim"][0][0].shape[1] < 128
    g_full, g_trim = capture_step_grads(full), capture_step_grads(trim)
    full.step(loaded["full"])
    trim.step(loaded["trim"])
    assert_grads_close(g_full[0], g_trim[0], rtol=1e-4, atol=1e-6)
