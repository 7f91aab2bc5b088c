"""The model: upstream parameter counts and key names, attention paths, MoE, RoPE/YaRN, weight files."""

import math
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from minimind.model import (
    MiniMindForCausalLM,
    active_parameters,
    build_model,
    causal_lm_loss,
    count_loss_tokens,
    model_summary,
    num_parameters,
    precompute_rope,
    rope_frequencies,
)
from minimind.model_config import (
    YARN_SCALING,
    MiniMindConfig,
    default_intermediate_size,
)
from minimind.weights import (
    WeightsError,
    export_state_dict,
    load_weights,
    save_weights,
    weights_filename,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"

# upstream's numbers (README / UPSTREAM.md), tied embedding counted once, vocab 6400
EXPECTED_PARAMS = {
    "minimind2_26m": 25_829_888,
    "minimind2_104m": 104_030_976,
    "minimind2_moe_145m": 145_029_760,
    "minimind3_64m": 63_912_192,
    "minimind3_moe_198m": 198_416_640,
}


def yaml_fields(name, vocab_size=6400):
    fields = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert fields.pop("_target_") == "minimind.model.build_model"
    assert "from_weight" in fields and fields.pop("from_weight") is None
    if fields["vocab_size"] is None:
        fields["vocab_size"] = vocab_size
    return fields


def meta_model(fields):
    with torch.device("meta"):  # shapes only: no memory, no init time
        return MiniMindForCausalLM(MiniMindConfig(**fields))


def tiny_config(**overrides):
    fields = {"family": "minimind2", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
    fields.update(overrides)
    return MiniMindConfig(**fields)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(tiny_config(**overrides))


TINY_MOE = {"use_moe": True, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1}
TINY_MOE3 = {"family": "minimind3", "qk_norm": True, "use_moe": True, "n_routed_experts": 4,
             "num_experts_per_tok": 1, "n_shared_experts": 0, "aux_loss_alpha": 5e-4, "seq_aux": False}


def upstream_keys(cfg):
    """Upstream's state-dict keys and shapes, written out from its module tree (not from ours)."""
    h, hd = cfg["hidden_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    if cfg["intermediate_size"]:
        inter = cfg["intermediate_size"]
    elif cfg["family"] == "minimind2":
        inter = 64 * math.ceil(int(h * 8 / 3) / 64)
    else:
        inter = 64 * math.ceil(h * math.pi / 64)
    ffn = {"gate_proj.weight": (inter, h), "up_proj.weight": (inter, h), "down_proj.weight": (h, inter)}
    keys = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,),
            "lm_head.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        keys.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                     p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                     p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        if cfg["qk_norm"]:
            keys.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        if not cfg["use_moe"]:
            keys.update({p + "mlp." + k: s for k, s in ffn.items()})
            continue
        keys[p + "mlp.gate.weight"] = (cfg["n_routed_experts"], h)
        for e in range(cfg["n_routed_experts"]):
            keys.update({p + f"mlp.experts.{e}." + k: s for k, s in ffn.items()})
        for s in range(cfg["n_shared_experts"]):
            keys.update({p + f"mlp.shared_experts.{s}." + k: sh for k, sh in ffn.items()})
    return keys


# ---------------------------------------------------------------------------------------------
# configs, counts, keys
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_upstream(name):
    model = meta_model(yaml_fields(name))
    assert num_parameters(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS) + ["tiny"])
def test_state_dict_keys_are_upstreams(name):
    fields = yaml_fields(name, vocab_size=512)
    model = meta_model(fields)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = upstream_keys(fields)
    assert set(ours) == set(expected), (set(ours) ^ set(expected))
    assert ours == expected
    # rope tables are buffers but not part of the file, as upstream
    assert not any("freqs" in k for k in ours)
    # the tied pair is one tensor, counted once
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert num_parameters(model) == sum(math.prod(s) for k, s in expected.items() if k != "lm_head.weight")


def test_active_parameters_for_moe():
    dense = meta_model(yaml_fields("minimind2_26m"))
    assert active_parameters(dense) == num_parameters(dense)
    fields = yaml_fields("minimind2_moe_145m")
    moe = meta_model(fields)
    per_expert = 3 * 640 * 1728
    # 4 routed experts, top-2: two routed experts per layer are idle for any one token
    assert active_parameters(moe) == 145_029_760 - 8 * 2 * per_expert
    m3 = meta_model(yaml_fields("minimind3_moe_198m"))
    assert active_parameters(m3) == 198_416_640 - 8 * 3 * (3 * 768 * 2432)
    assert "Model params: 145.03M" in model_summary(moe) and "active" in model_summary(moe)
    assert model_summary(dense) == "Model params: 25.83M"


def test_intermediate_size_formulas():
    m2 = [default_intermediate_size("minimind2", h) for h in (512, 640, 768, 128)]
    assert m2 == [1408, 1728, 2048, 384]
    assert [default_intermediate_size("minimind3", h) for h in (768, 512)] == [2432, 1664]
    assert MiniMindConfig(hidden_size=512, intermediate_size=1000).resolved_intermediate_size == 1000
    m3 = MiniMindConfig(hidden_size=768, family="minimind3", use_moe=True)
    assert m3.resolved_moe_intermediate_size == 2432


def test_yaml_configs_cover_every_field():
    names = set(MiniMindConfig.__dataclass_fields__)
    for path in sorted(CONF.glob("*.yaml")):
        text = path.read_text()
        assert text.startswith(f"# python launch.py model={path.stem}"), path
        keys = set(OmegaConf.load(path)) - {"_target_", "from_weight"}
        assert keys == names, (path.name, keys ^ names)
        MiniMindConfig(**yaml_fields(path.stem)).validate()


def test_tiny_yaml_is_the_demo_model():
    f = OmegaConf.to_container(OmegaConf.load(CONF / "tiny.yaml"))
    keys = ("family", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings")
    assert tuple(f[k] for k in keys) == ("minimind2", 128, 2, 4, 2, None, None, 2048)


@pytest.mark.parametrize("overrides, field", [
    ({"hidden_size": 100, "num_attention_heads": 8}, "hidden_size"),
    ({"num_attention_heads": 8, "num_key_value_heads": 3}, "num_key_value_heads"),
    ({"use_moe": True, "n_routed_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"family": "minimind4"}, "family"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"dropout": 1.5}, "dropout"),
    ({"use_moe": True, "scoring_func": "sigmoid"}, "scoring_func"),
])
def test_validate_names_field_and_value(overrides, field):
    with pytest.raises(ValueError) as info:
        MiniMindConfig(**overrides).validate()
    msg = str(info.value)
    assert f"model.{field}=" in msg and repr(overrides.get(field, "")).strip("'") in msg


def test_build_model_errors_and_vocab_none():
    with pytest.raises(ValueError, match="hidden_sise"):
        build_model(hidden_sise=64)
    with pytest.raises(ValueError, match="vocab_size is null"):
        build_model(vocab_size=None, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2)


def test_param_suffix_and_filename():
    assert MiniMindConfig(hidden_size=512).param_suffix == "512"
    assert MiniMindConfig(hidden_size=640, use_moe=True).param_suffix == "640_moe"
    cfg = tiny_config(use_moe=True)
    assert weights_filename("pretrain", cfg) == "pretrain_64_moe.pth"
    assert weights_filename("full_sft", {"hidden_size": 512, "use_moe": False}) == "full_sft_512.pth"
    assert weights_filename("x", tiny_model(), ext=".safetensors") == "x_64.safetensors"


# ---------------------------------------------------------------------------------------------
# forward, attention paths, loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"flash_attn": False}, TINY_MOE, TINY_MOE3])
def test_forward_shapes_fp32_and_autocast_bf16(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 96, (2, 12))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 12, 96) and out.logits.dtype == torch.float32
    assert out.loss.dtype == torch.float32 and out.loss.ndim == 0
    assert out.aux_loss.ndim == 0 and out.past_key_values is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(ids, labels=ids)
    assert out16.logits.dtype == torch.bfloat16
    assert out16.loss.dtype == torch.float32 and torch.isfinite(out16.loss)
    (out16.loss + out16.aux_loss).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.allclose(out16.loss, out.loss, atol=0.05)
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, 96)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_sdpa_and_masked_fallback_agree(qk_norm):
    fast = tiny_model(qk_norm=qk_norm).eval()
    slow = tiny_model(qk_norm=qk_norm, flash_attn=False).eval()
    slow.load_state_dict(fast.state_dict())
    ids = torch.randint(0, 96, (3, 20))
    torch.testing.assert_close(fast(ids).logits, slow(ids).logits, atol=1e-5, rtol=1e-5)
    # an all-ones mask changes nothing
    torch.testing.assert_close(fast(ids, attention_mask=torch.ones_like(ids)).logits, fast(ids).logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = fast(ids).logits.float(), slow(ids).logits.float()
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_padding_mask_hides_padded_keys():
    model = tiny_model().eval()
    ids = torch.randint(3, 96, (1, 10))
    mask = torch.ones_like(ids)
    mask[:, :3] = 0  # left padding
    other = ids.clone()
    other[:, :3] = 0  # different tokens in the padded slots
    a = model(ids, attention_mask=mask).logits
    b = model(other, attention_mask=mask).logits
    torch.testing.assert_close(a[:, 3:], b[:, 3:])
    assert not torch.allclose(model(ids).logits[:, 3:], a[:, 3:])


@pytest.mark.parametrize("overrides", [{}, {"flash_attn": False}, {"qk_norm": True, "family": "minimind3"},
                                       TINY_MOE])
def test_kv_cache_matches_full_forward(overrides):
    model = tiny_model(**overrides).eval()
    ids = torch.randint(0, 96, (2, 16))
    full = model(ids).logits
    pre = model(ids[:, :9], use_cache=True)
    step = model(ids[:, 9:10], past_key_values=pre.past_key_values, use_cache=True)
    chunk = model(ids[:, 10:], past_key_values=step.past_key_values, use_cache=True)  # prefill on a cache
    pieces = torch.cat([pre.logits, step.logits, chunk.logits], 1)
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    k, v = chunk.past_key_values[0]
    assert k.shape == (2, 16, 2, 16) and v.shape == k.shape


@pytest.mark.parametrize("overrides", [{}, TINY_MOE3])
def test_greedy_generate_cached_equals_uncached(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 96, (2, 5))
    a = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    b = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert a.shape == (2, 17) and torch.equal(a, b) and torch.equal(a[:, :5], ids)
    c = model.generate(ids, max_new_tokens=12, temperature=0.0)  # temperature 0 = greedy too
    assert torch.equal(a, c)
    assert model.training  # mode restored


def test_generate_stops_at_eos_and_samples():
    model = tiny_model()
    ids = torch.randint(0, 96, (1, 4))
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    eos = int(greedy[0, 5])  # the 2nd generated token: stop right there
    stopped = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    assert stopped.shape[1] <= 6 and int(stopped[0, -1]) == eos
    torch.manual_seed(1)
    s1 = model.generate(ids, max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2)
    torch.manual_seed(1)
    s2 = model.generate(ids, max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2)
    assert torch.equal(s1, s2) and s1.shape == (1, 12)
    # max_position_embeddings caps the length
    capped = tiny_model(max_position_embeddings=8).generate(ids, max_new_tokens=20, do_sample=False)
    assert capped.shape == (1, 8)


def test_causal_lm_loss_sum_mean_and_token_count():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = -100
    labels[2, 5:] = -100
    n = count_loss_tokens(labels)
    assert int(n) == int((labels[:, 1:] != -100).sum()) == 18 - 3 - 2
    total = causal_lm_loss(logits, labels, reduction="sum")
    mean = causal_lm_loss(logits, labels)
    torch.testing.assert_close(mean, total / n)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    torch.testing.assert_close(mean, ref)
    # split into two micro-batches: sums add up, the window mean is sum / tokens
    s = causal_lm_loss(logits[:1], labels[:1], "sum") + causal_lm_loss(logits[1:], labels[1:], "sum")
    torch.testing.assert_close(s / (count_loss_tokens(labels[:1]) + count_loss_tokens(labels[1:])), mean)
    assert causal_lm_loss(logits, torch.full_like(labels, -100)) == 0  # not NaN
    model = tiny_model()
    ids = torch.randint(0, 96, (2, 9))
    masked = ids.masked_fill(torch.rand(ids.shape) < 0.3, -100)
    out = model(ids, labels=masked)
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, masked))


# ---------------------------------------------------------------------------------------------
# MoE
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [TINY_MOE, dict(TINY_MOE, seq_aux=False), TINY_MOE3])
def test_moe_aux_loss_train_vs_eval(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 96, (2, 10))
    train_out = model(ids)
    assert train_out.aux_loss > 0
    model.eval()
    eval_out = model(ids)
    assert eval_out.aux_loss.item() == 0.0
    # same routing math in both modes (dropout is 0)
    torch.testing.assert_close(train_out.logits, eval_out.logits)
    dense = tiny_model()
    assert dense(ids).aux_loss.item() == 0.0 and dense(ids).aux_loss.device == ids.device


def test_moe_aux_loss_formulas():
    """Balanced routing gives aux = alpha (MiniMind2) / alpha * k (MiniMind-3 counts tokens, not slots)."""
    from minimind.model import MoEFeedForward
    for family, k, seq_aux, expected in [("minimind2", 2, True, 0.01), ("minimind2", 2, False, 0.01),
                                         ("minimind3", 1, False, 0.01), ("minimind3", 2, False, 0.02)]:
        cfg = tiny_config(family=family, use_moe=True, n_routed_experts=4, num_experts_per_tok=k,
                          n_shared_experts=0, aux_loss_alpha=0.01, seq_aux=seq_aux)
        moe = MoEFeedForward(cfg).train()
        torch.nn.init.zeros_(moe.gate.weight)  # uniform scores: P_e = 1/4 ...
        # ... and each expert gets the same share of slots
        idx = torch.arange(4 * 8 * k).remainder(4).view(-1, k)
        scores = torch.full((idx.shape[0], 4), 0.25)
        aux = moe._aux_loss(scores, idx, 4, 8)
        assert aux.item() == pytest.approx(expected), (family, k, seq_aux)


@pytest.mark.parametrize("overrides", [TINY_MOE, TINY_MOE3])
def test_every_expert_gets_a_gradient(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(0, 96, (1, 1))  # one token: top-k < 4 experts, so some experts see nothing
    out = model(ids, labels=torch.randint(0, 96, (1, 1)))
    (out.logits.sum() + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    idle = [n for n, p in model.named_parameters() if "experts." in n and not p.grad.any()]
    assert idle  # some experts got only (zero) gradients: they were in the graph without a token


def test_minimind3_top1_renormalises_like_upstream():
    model = tiny_model(**TINY_MOE3)
    moe = model.model.layers[0].mlp
    assert moe.renormalize and moe.shared_experts is None
    m2 = tiny_model(**dict(TINY_MOE, num_experts_per_tok=1)).model.layers[0].mlp
    assert not m2.renormalize  # MiniMind2 only renormalises for top_k > 1


# ---------------------------------------------------------------------------------------------
# RoPE / YaRN
# ---------------------------------------------------------------------------------------------

def test_rope_tables_rotate_half_layout():
    cos, sin = precompute_rope(64, 100, 1e6)
    assert cos.shape == (100, 64)
    torch.testing.assert_close(cos[:, :32], cos[:, 32:])
    torch.testing.assert_close(cos[0], torch.ones(64))
    inv = 1.0 / (1e6 ** (torch.arange(0, 64, 2).float() / 64))
    torch.testing.assert_close(sin[7, :32], torch.sin(7 * inv))


def test_yarn_property():
    """Upstream's YaRN rescales frequencies, not positions: fast dims (below `low`) are untouched at
    every position, slow dims (from `high` on) turn `factor` times slower at every position (so
    position 16p then equals old position p), with a linear ramp in between. It is a no-op when the
    table is not longer than the original 2048 positions."""
    plain, _ = rope_frequencies(64, 32768, 1e6, None)
    yarn, attn = rope_frequencies(64, 32768, 1e6, YARN_SCALING)
    ratio = yarn / plain
    # head_dim 64, theta 1e6: low = floor(5.38) = 5, high = ceil(13.4) = 14
    torch.testing.assert_close(ratio[:6], torch.ones(6))
    torch.testing.assert_close(ratio[14:], torch.full((18,), 1 / 16))
    assert (ratio[5:15].diff() < 0).all()  # strictly decreasing ramp in between
    assert attn == 1.0
    cos_p, _ = precompute_rope(64, 32768, 1e6, None)
    cos_y, _sin_y = precompute_rope(64, 32768, 1e6, YARN_SCALING)
    torch.testing.assert_close(cos_y[:, :6], cos_p[:, :6])
    p = torch.arange(0, 2048, 37)
    torch.testing.assert_close(cos_y[16 * p][:, 14:32], cos_p[p][:, 14:32], atol=2e-3, rtol=0)
    assert not torch.allclose(cos_y[:2048], cos_p[:2048])  # also positions inside the original window
    # not longer than the original window: nothing changes
    short_plain = precompute_rope(64, 2048, 1e6, None)[0]
    torch.testing.assert_close(precompute_rope(64, 2048, 1e6, YARN_SCALING)[0], short_plain)
    # the config switch
    assert MiniMindConfig().rope_scaling is None
    assert MiniMindConfig(inference_rope_scaling=True).rope_scaling["factor"] == 16
    m = tiny_model(inference_rope_scaling=True, max_position_embeddings=4096, hidden_size=256,
                   num_attention_heads=4)
    torch.testing.assert_close(m.model.freqs_cos, precompute_rope(64, 4096, 1e6, YARN_SCALING)[0])


# ---------------------------------------------------------------------------------------------
# weight files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("overrides", [{}, TINY_MOE3])
def test_save_load_round_trip_strict(tmp_path, fmt, overrides):
    model = tiny_model(**overrides)
    path = tmp_path / weights_filename("pretrain", model.config, ext=f".{fmt}")
    save_weights(model, str(path), fmt=fmt)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    if fmt == "pth":
        raw = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file
        raw = load_file(path)
    # upstream format: fp16, both tied names, exactly the model's keys
    assert set(raw) == set(model.state_dict()) and {"lm_head.weight", "model.embed_tokens.weight"} <= set(raw)
    assert all(v.dtype == torch.float16 for v in raw.values())
    fresh = tiny_model(seed=1, **overrides)
    load_weights(fresh, str(path), strict=True)
    for k, v in export_state_dict(model).items():
        assert torch.equal(fresh.state_dict()[k].half(), v), k
        assert fresh.state_dict()[k].dtype == torch.float32  # cast to the model's dtype
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    # fp32 export round-trips exactly
    save_weights(model, str(path), fmt=fmt, dtype=None)
    load_weights(fresh, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_build_model_from_weight(tmp_path):
    model = tiny_model()
    path = save_weights(model, str(tmp_path / "w.pth"), dtype=None)
    built = build_model(from_weight=path, **tiny_config().to_dict())
    torch.testing.assert_close(built.state_dict(), model.state_dict())


def test_mismatched_shapes_name_the_keys(tmp_path):
    path = save_weights(tiny_model(hidden_size=32, num_attention_heads=2, num_key_value_heads=1),
                        str(tmp_path / "small.pth"))
    with pytest.raises(WeightsError) as info:
        load_weights(tiny_model(), path)
    msg = str(info.value)
    assert str(path) in msg and "model.embed_tokens.weight (file (96, 32), model (96, 64))" in msg
    assert "and " in msg and "more" in msg  # capped list


def test_missing_and_unexpected_keys(tmp_path):
    model = tiny_model()
    state = export_state_dict(model)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as info:
        load_weights(model, state)
    msg = str(info.value)
    assert "missing keys" in msg and "model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys" in msg and "model.layers.7.mlp.up_proj.weight" in msg
    result = load_weights(model, {k: v for k, v in state.items() if "layers.7" not in k}, strict=False)
    assert result.missing_keys == ["model.layers.1.mlp.up_proj.weight"]


def test_tied_key_may_be_missing():
    model = tiny_model()
    for drop in ("lm_head.weight", "model.embed_tokens.weight"):
        state = export_state_dict(model, dtype=None)
        del state[drop]
        fresh = tiny_model(seed=3)
        load_weights(fresh, state)
        torch.testing.assert_close(fresh.lm_head.weight, model.lm_head.weight)


def test_non_state_dict_files_give_clear_errors(tmp_path):
    model = tiny_model()
    bad = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "step": 10}, bad)
    with pytest.raises(WeightsError, match=r"notes\.pth is not a model state dict.*'epoch'"):
        load_weights(model, str(bad))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="found a list"):
        load_weights(model, str(tmp_path / "list.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_weights(model, str(tmp_path / "garbage.pth"))
    with pytest.raises(WeightsError, match="not found"):
        load_weights(model, str(tmp_path / "nope.pth"))
    # upstream's *_resume.pth: the model is under "model"
    resume = tmp_path / "pretrain_64_resume.pth"
    torch.save({"model": export_state_dict(model), "optimizer": {"state": {}}, "epoch": 0, "step": 5,
                "world_size": 1, "wandb_id": None}, resume)
    load_weights(tiny_model(seed=2), str(resume))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_weights(model, str(tmp_path / "w.pth"))
    before = Path(path).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_weights(tiny_model(seed=5), path)
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["w.pth"]


def test_ddp_moe_one_token_steps_without_unused_parameters(tmp_path):
    """DDP (find_unused_parameters=False) raises on the next step if a parameter got no gradient."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(tiny_model(**TINY_MOE))
        assert len(ddp.modules_buffers) == 0  # RoPE tables are not broadcast every step
        for _ in range(3):
            out = ddp(torch.randint(0, 96, (1, 1)))
            (out.logits.sum() + out.aux_loss).backward()
    finally:
        dist.destroy_process_group()
