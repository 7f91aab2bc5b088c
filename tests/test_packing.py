"""data.packing: packed rows compute exactly what the samples compute unpacked.

The collate packs a micro-batch's samples into fewer rows (minimind/data/packing.py) and the
model keeps them apart (minimind/attention.py). Pinned here: the packing itself (rows, position
ids, labels, offsets), per-sample losses and gradients equal to unpacked (fp32, 1e-5) for dense,
MiniMind-3 and MoE models and both attention paths, the varlen plumbing against the mask path,
the loader's determinism and resume, the update step end to end, and a SIGKILL-resumed packed
run ending bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import inspect
import itertools
import json
import random
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import run_launch
from torch.utils.data import default_collate

from minimind import attention
from minimind.data.packing import PackingCollate, first_fit_decreasing, pack, useful_lengths
from minimind.model import MiniMindForCausalLM, causal_lm_loss, count_loss_tokens
from minimind.model_config import MiniMindConfig

V = 96
TINY = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)
MODELS = {
    "dense": {},
    "minimind3": {"family": "minimind3", "qk_norm": True},
    "no-sdpa": {"flash_attn": False},
    "moe": {"use_moe": True, "aux_loss_alpha": 0.0},
    "moe3": {"family": "minimind3", "qk_norm": True, "use_moe": True, "num_experts_per_tok": 1,
             "n_shared_experts": 0, "seq_aux": False, "aux_loss_alpha": 0.0},
}


def model_of(name: str, seed: int = 0) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(**TINY, **MODELS[name])).train()


def padded_batch(lengths, width=32, prompt=3, seed=0):
    """(b, width) samples of the given real lengths, right-padded with id 0; labels -100 on the
    padding and on the first ``prompt`` tokens (an SFT-like mask; 0: pretrain-like, the first
    token labelled too; a list: one per sample)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    prompts = prompt if isinstance(prompt, list) else [prompt] * len(lengths)
    for i, (n, m) in enumerate(zip(lengths, prompts)):
        ids[i, :n] = torch.randint(1, V, (n,), generator=g)
        labels[i, m:n] = ids[i, m:n]
    return ids, labels


# ------------------------------------------------------------------------------ the packing


def test_first_fit_decreasing_is_deterministic_and_fills_rows():
    # longest first: 8 -> row 0, 6 -> row 1, 5 -> row 2, 3 -> row 1, 2 -> row 0
    assert first_fit_decreasing([5, 3, 8, 2, 0, 6], 10) == [[2, 3], [1, 5], [0]]
    assert first_fit_decreasing([0, 0], 10) == []
    assert first_fit_decreasing([10, 10], 10) == [[0], [1]]


def test_useful_length_runs_through_the_last_label():
    labels = torch.tensor([[-100, 5, 6, -100, -100], [-100] * 5, [1, 2, 3, 4, 5], [-100, -100, -100, -100, 9]])
    assert useful_lengths(labels) == [3, 0, 5, 5]


def test_pack_rows_positions_labels_and_offsets():
    ids, labels = padded_batch([10, 20, 6, 12], width=32, prompt=2)
    p = pack(ids, labels, pad_id=0)
    # 20+12 = 32 fill one row, 10+6 the next; the widest row rounds to 32
    assert p["input_ids"].shape == (2, 32)
    assert p["position_ids"][0].tolist() == list(range(20)) + list(range(12))
    assert p["position_ids"][1].tolist() == list(range(10)) + list(range(6)) + list(range(16))
    assert p["cu_seqlens"].tolist() == [0, 20, 32, 42, 48, 64] and p["cu_seqlens"].dtype == torch.int32
    # the samples' tokens, in their original order within a row
    assert torch.equal(p["input_ids"][0], torch.cat([ids[1, :20], ids[3, :12]]))
    assert torch.equal(p["input_ids"][1, :16], torch.cat([ids[0, :10], ids[2, :6]]))
    assert p["input_ids"][1, 16:].eq(0).all() and p["labels"][1, 16:].eq(-100).all()
    # labels unchanged except each sample's first token (never a target unpacked either)
    expect = torch.cat([labels[1, :20], labels[3, :12]])
    expect[[0, 20]] = -100
    assert torch.equal(p["labels"][0], expect)
    assert int(count_loss_tokens(p["labels"])) == int(count_loss_tokens(labels))


def test_a_first_token_that_carries_a_label_is_no_target_packed():
    ids, labels = padded_batch([6, 6], width=16, prompt=0)  # pretrain-like: every real token labelled
    p = pack(ids, labels, pad_id=0)
    assert p["input_ids"].shape == (1, 16)
    assert p["labels"][0, 6] == -100 and labels[1, 0] != -100
    assert int(count_loss_tokens(p["labels"])) == int(count_loss_tokens(labels)) == 10


def test_samples_without_labels_are_left_out_and_an_empty_batch_still_collates():
    ids, labels = padded_batch([10, 8, 12], width=32, prompt=2)
    labels[1] = -100
    p = pack(ids, labels, pad_id=0)
    assert p["input_ids"].shape == (1, 24) and int(count_loss_tokens(p["labels"])) == 8 + 10
    p = pack(ids, torch.full_like(labels, -100), pad_id=0)
    assert p["input_ids"].shape == (1, 2) and p["labels"].eq(-100).all()  # as trim_padding keeps 2
    assert p["cu_seqlens"].tolist() == [0, 2]


def test_trim_off_keeps_rows_at_max_length():
    ids, labels = padded_batch([5, 6], width=32)
    assert pack(ids, labels, 0, trim=False)["input_ids"].shape == (1, 32)
    assert pack(ids, labels, 0, trim=True)["input_ids"].shape == (1, 16)


# ------------------------------------------------------------------------------ exactness


def per_token_ce(logits, labels):
    """(rows, width - 1) summed-CE terms: position t predicts labels[t + 1], 0 where ignored."""
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                           reduction="none")


def per_sample_losses_packed(ids, labels, p, logits):
    """Each sample's summed loss, read from the packed rows (the rows as pack() built them)."""
    lengths = useful_lengths(labels)
    ce = per_token_ce(logits, p["labels"])
    out = {}
    for r, row in enumerate(first_fit_decreasing(lengths, labels.shape[1])):
        at = 0
        for i in row:
            out[i] = ce[r, at:at + lengths[i] - 1].sum()  # targets at + 1 .. at + n - 1
            at += lengths[i]
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_losses_and_gradients_equal_unpacked(name):
    lengths = [30, 7, 19, 12, 3, 25, 9, 14]
    ids, labels = padded_batch(lengths, width=32, prompt=[0, 2, 0, 5, 1, 0, 3, 0], seed=1)
    model = model_of(name)

    ref_logits = model(ids).logits
    ref = per_token_ce(ref_logits, labels).sum(dim=1)
    ref.sum().backward()
    ref_grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    p = pack(ids, labels, pad_id=0)
    assert p["input_ids"].shape[0] < len(lengths)  # it did pack
    logits = model(p["input_ids"], position_ids=p["position_ids"], cu_seqlens=p["cu_seqlens"]).logits
    got = per_sample_losses_packed(ids, labels, p, logits)
    torch.testing.assert_close(torch.stack([got[i] for i in range(len(lengths))]), ref, atol=1e-5, rtol=1e-5)
    total = causal_lm_loss(logits, p["labels"], reduction="sum")
    torch.testing.assert_close(total, causal_lm_loss(ref_logits, labels, reduction="sum"), atol=1e-5, rtol=1e-6)
    total.backward()
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, ref_grads[n], atol=1e-5, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_the_mask_is_block_diagonal_causal():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    mask = attention.Documents(pos).mask()[0, 0].int()
    assert mask.tolist() == [[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]]


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size, enable_gqa):
    """A stand-in for torch's CUDA varlen_attn with its documented semantics: each
    [cu[i], cu[i+1]) span of the flattened tokens is its own (causal) sequence."""
    assert window_size == (-1, 0) and cu_q is cu_k and max_q == max_k
    assert cu_q.dtype == torch.int32 and q.dim() == 3 and int(cu_q[-1]) == q.shape[0]
    assert enable_gqa == (k.shape[1] != q.shape[1])
    out = torch.empty_like(q)
    bounds = cu_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert b - a <= max_q
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=enable_gqa)[0].transpose(0, 1)
    return out


def test_the_varlen_path_computes_what_the_mask_path_computes(monkeypatch):
    """The CUDA kernel cannot run here; its plumbing (flattening, offsets from the collate, GQA
    heads, the way back to (B, H, T, D)) runs against a stand-in with the kernel's semantics."""
    ids, labels = padded_batch([30, 7, 19, 12, 3, 25], width=32, seed=2)
    p = pack(ids, labels, pad_id=0)
    model = model_of("dense").eval()
    ref = model(p["input_ids"], position_ids=p["position_ids"], cu_seqlens=p["cu_seqlens"]).logits
    calls = []
    monkeypatch.setattr(attention, "VARLEN_ATTN", lambda *a, **k: calls.append((a, k)) or reference_varlen(*a, **k))
    monkeypatch.setattr(attention.Documents, "backend", lambda self, q, dropout_p: "varlen")
    got = model(p["input_ids"], position_ids=p["position_ids"], cu_seqlens=p["cu_seqlens"]).logits
    assert len(calls) == TINY["num_hidden_layers"]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    real = attention._find_varlen()
    if real is not None:  # the call also fits the real kernel's signature
        inspect.signature(real).bind(*calls[0][0], **calls[0][1])


def test_backend_choice_per_device():
    docs = attention.Documents(torch.zeros(1, 4, dtype=torch.long), torch.tensor([0, 4], dtype=torch.int32))
    q = torch.zeros(1, 4, 2, 8, dtype=torch.bfloat16)
    assert docs.backend(q, 0.0) == "sdpa"  # CPU: the mask path, whatever the dtype
    assert attention.Documents(torch.zeros(1, 4, dtype=torch.long)).backend(q, 0.0) == "sdpa"


def test_the_unpacked_forward_is_untouched_by_position_ids_of_one_document():
    """One document per row with positions 0..T-1 is the plain causal forward."""
    ids, _ = padded_batch([32, 32], width=32)
    model = model_of("dense").eval()
    pos = torch.arange(32).expand(2, 32)
    torch.testing.assert_close(model(ids, position_ids=pos).logits, model(ids).logits, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------ loader and step


def trainer_of(cfg_factory, tmp_path, *overrides):
    from minimind.train import build_trainer

    cfg = cfg_factory(["loop.log_interval=1000", "loop.save_interval=1000", "data.max_length=128",
                       "data.batch_size=8", *overrides])
    trainer = build_trainer(cfg, tmp_path)
    trainer.prepare(100)
    return trainer


def test_the_loader_packs_the_same_samples_deterministically(cfg_factory, tmp_path):
    tr = trainer_of(cfg_factory, tmp_path, "data.packing=true")
    b = tr.batches
    assert isinstance(b.collate(), PackingCollate)
    first = list(itertools.islice(b.loader(b.sampler(0, 0)), 6))
    again = list(itertools.islice(b.loader(b.sampler(0, 0)), 6))
    for x, y in zip(first, again):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # resume 2 micro-batches in: the same packed batches as the uninterrupted epoch
    resumed = list(itertools.islice(b.loader(b.sampler(0, 2 * b.batch_size)), 4))
    for x, y in zip(first[2:], resumed):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # each packed micro-batch holds the loss tokens of the unpacked one, in fewer positions
    plain = list(itertools.islice(iter(torch.utils.data.DataLoader(
        b.dataset, batch_sampler=b.sampler(0, 0), collate_fn=default_collate)), 6))
    for packed, (x, y) in zip(first, plain):
        assert int(count_loss_tokens(packed["labels"])) == int(count_loss_tokens(y))
        assert packed["input_ids"].numel() < x.numel()


def test_the_update_step_is_the_same_packed(cfg_factory, tmp_path):
    """Two steps of accumulation 2: the packed run's weights equal the unpacked run's (fp32)."""
    runs = {}
    for packing in ("false", "true"):
        tr = trainer_of(cfg_factory, tmp_path / packing, f"data.packing={packing}", "optim.accumulation_steps=2")
        batches = iter(tr.batches.loader(tr.batches.sampler(0, 0)))
        results = [tr.step(list(itertools.islice(batches, 2))) for _ in range(2)]
        runs[packing] = (tr, results)
    (a, ra), (b, rb) = runs["false"], runs["true"]
    assert [r.count for r in ra] == [r.count for r in rb]
    assert sum(r.tokens for r in rb) < sum(r.tokens for r in ra)
    for x, y in zip(ra, rb):
        torch.testing.assert_close(y.loss_sum, x.loss_sum, atol=1e-4, rtol=1e-6)
    for (n, p), q in zip(a.raw_model.named_parameters(), b.raw_model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_loss_tokens_per_s_is_logged_and_summarised(cfg_factory, tmp_path):
    from minimind.tracking import console_line

    tr = trainer_of(cfg_factory, tmp_path, "data.packing=true", "loop.max_steps=4", "loop.log_interval=2")
    counted = []
    count = tr.update.objective.count
    tr.update.objective.count = lambda batch: counted.append(count(batch)) or counted[-1]
    tr.fit()
    assert [h["step"] for h in tr.history] == [2, 4]
    assert all(h["loss_tokens_per_s"] > 0 for h in tr.history)
    assert tr._run_units == sum(counted) > 0
    assert tr.summary["loss_tokens_per_s"] > 0
    last = tr.history[-1]
    assert f"tok/s:{last['tokens_per_s']:.0f}/{last['loss_tokens_per_s']:.0f} " in console_line(last)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss_tokens_per_s"] == tr.history[-1]["loss_tokens_per_s"]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_a_packed_run_resumes_bit_exactly_after_sigkills(tmp_path):
    from test_resume import RUN, assert_same_run, kill_and_resume

    args = RUN + ["data.packing=true", "data.num_workers=0"]
    ref = tmp_path / "ref"
    r = run_launch(args + [f"hydra.run.dir={ref}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"tok/s:\d+/\d+ ", (ref / "train.log").read_text())  # input / loss tokens per s
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["loss_tokens_per_s"] > 0
    run = tmp_path / "run"
    kills = kill_and_resume(run, args + [f"hydra.run.dir={run}"], tmp_path, kills=3, rng=random.Random(18),
                            span=8)
    assert kills >= 2 and "resumed from" in (run / "train.log").read_text()
    assert_same_run(ref, run)


def test_packing_is_off_by_default(cfg_factory):
    for data in ("demo", "pretrain", "sft"):
        assert cfg_factory([f"data={data}"], fast=False).data.packing is False


@pytest.mark.slow
def test_two_packed_ranks_equal_one_unpacked_rank_with_twice_the_batch(tmp_path):
    """DDP: each rank packs its own share; the run ends where an unpacked single process ends."""
    from test_ddp import RUN as DDP_RUN
    from test_ddp import final_model, torchrun

    r = torchrun(DDP_RUN + ["dist=ddp", "data.batch_size=2", "data.packing=true", f"hydra.run.dir={tmp_path}/two"],
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_launch(DDP_RUN + ["data.batch_size=4", f"hydra.run.dir={tmp_path}/one"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = final_model(tmp_path / "one")["model"], final_model(tmp_path / "two")["model"]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
