"""Hugging Face export and import (python -m minimind.export, model.from_weight=DIR).

The proof that a folder is the same model: plain transformers (no remote code where a standard
class fits) gives fp32 logits equal to ours to 1e-4 on the same ids, for each family, with
weights large enough (std 0.3, norms away from 1) that a wrong RoPE layout, norm placement,
routing rule or expert order moves the logits by far more than that; and greedy generation
through AutoTokenizer's apply_chat_template gives our generate()'s tokens. Everything is read
from local folders (HF_HUB_OFFLINE=1).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from conftest import FAST, ROOT, compose  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from minimind.data.tokenizer import load_tokenizer  # noqa: E402
from minimind.errors import ConfigError  # noqa: E402
from minimind.export import Source, main, write_folder  # noqa: E402
from minimind.hf import spec  # noqa: E402
from minimind.model import MiniMindForCausalLM, MoEFeedForward, build_model  # noqa: E402
from minimind.model_config import MiniMindConfig  # noqa: E402
from minimind.weights import export_state_dict, save_weights  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

TOK = load_tokenizer(None)  # the embedded demo tokenizer: 768 tokens
SHAPE = dict(vocab_size=768, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)
MOE = dict(use_moe=True, n_routed_experts=4)
CASES = {  # name: (fields, the class the folder must declare)
    "minimind2": (dict(family="minimind2"), spec.LLAMA),
    "minimind3": (dict(family="minimind3", qk_norm=True, rms_norm_eps=1e-6), spec.QWEN3),
    "minimind3_moe_top1": (dict(family="minimind3", qk_norm=True, **MOE, num_experts_per_tok=1,
                                n_shared_experts=0), spec.QWEN3_MOE),
    "minimind3_moe_top2": (dict(family="minimind3", qk_norm=True, **MOE, num_experts_per_tok=2,
                                n_shared_experts=0, moe_intermediate_size=96), spec.QWEN3_MOE),
    "minimind2_moe": (dict(family="minimind2", **MOE, num_experts_per_tok=2, n_shared_experts=1), spec.GRANITE_MOE),
    "minimind2_moe_2shared": (dict(family="minimind2", **MOE, num_experts_per_tok=2, n_shared_experts=2,
                                   moe_intermediate_size=64), spec.GRANITE_MOE),
    "minimind3_yarn": (dict(family="minimind3", qk_norm=True, inference_rope_scaling=True,
                            max_position_embeddings=32768), spec.QWEN3),
    "minimind2_moe_top1": (dict(family="minimind2", **MOE, num_experts_per_tok=1, n_shared_experts=1), spec.MINIMIND),
    "minimind3_moe_shared": (dict(family="minimind3", qk_norm=True, **MOE, num_experts_per_tok=1,
                                  n_shared_experts=1), spec.MINIMIND),
}
IDS = torch.randint(0, 768, (2, 41), generator=torch.Generator().manual_seed(1))


def make_model(fields: dict, seed: int = 0) -> MiniMindForCausalLM:
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(MiniMindConfig(**{**SHAPE, **fields}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("norm.weight") else 0.3 * torch.randn_like(p))
    return model.eval()


def export(model, out, **kw):
    src = Source(model.config.to_dict(), export_state_dict(model, dtype=None), "in-memory weights", None)
    return write_folder(src, out, **{"dtype": "fp32", **kw})


def load_hf(out, standard=True):
    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                trust_remote_code=not standard).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each case exported once (fp32): {name: (our model, folder)}."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, (fields, _) in CASES.items():
        model = make_model(fields)
        export(model, root / name)
        out[name] = (model, root / name)
    return out


# --------------------------------------------------------------------------- which class


@pytest.mark.parametrize("yaml_name, arch", [
    ("tiny", spec.LLAMA), ("minimind2_26m", spec.LLAMA), ("minimind2_104m", spec.LLAMA),
    ("minimind2_moe_145m", spec.GRANITE_MOE), ("minimind3_64m", spec.QWEN3), ("minimind3_moe_198m", spec.QWEN3_MOE)])
def test_every_shipped_model_has_a_standard_class(yaml_name, arch):
    fields = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{yaml_name}.yaml"))
    fields = {k: v for k, v in fields.items() if k not in ("_target_", "from_weight")}
    target = spec.choose(MiniMindConfig(**fields))
    assert target.architecture == arch and target.standard


@pytest.mark.parametrize("fields, why", [
    (dict(family="minimind2", **MOE, num_experts_per_tok=1), "not renormalised"),
    (dict(family="minimind2", **MOE, norm_topk_prob=False), "not renormalised"),
    (dict(family="minimind3", qk_norm=True, **MOE, n_shared_experts=1), "shared experts"),
    (dict(qk_norm=True, inference_rope_scaling=True, max_position_embeddings=4096, rope_theta=10.0), "YaRN"),
])
def test_variants_without_a_standard_class_say_why(fields, why):
    target = spec.choose(MiniMindConfig(**{**SHAPE, **fields}))
    assert target.architecture == spec.MINIMIND and not target.standard and why in target.reason


@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("norm", [True, False])
def test_renormalisation_rule_is_the_models(family, top_k, norm):
    cfg = MiniMindConfig(**{**SHAPE, "family": family, **MOE, "num_experts_per_tok": top_k, "norm_topk_prob": norm})
    assert spec.topk_renormalized(cfg) == MoEFeedForward(cfg).renormalize


# --------------------------------------------------------------------------- same function


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_logits_equal_ours(folders, name):
    model, out = folders[name]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [CASES[name][1]]
    assert ("auto_map" in config) == (CASES[name][1] == spec.MINIMIND)  # remote code only without a standard class
    hf = load_hf(out, standard=CASES[name][1] != spec.MINIMIND)
    if CASES[name][1] != spec.MINIMIND:
        assert type(hf).__module__.startswith("transformers.models.")
    with torch.no_grad():
        ours, theirs = model(IDS).logits, hf(IDS).logits
    assert ours.std() > 1.0  # large logits: a 1e-4 agreement is not the agreement of near-zero numbers
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), float((ours - theirs).abs().max())


def test_the_checks_fail_when_the_function_differs(folders, tmp_path, monkeypatch):
    # MiniMind2 top-1 keeps the raw router probability; Granite would renormalise it to 1
    model, _ = folders["minimind2_moe_top1"]
    with monkeypatch.context() as m:
        m.setattr(spec, "choose", lambda cfg, force_minimind=False: spec.Target(spec.GRANITE_MOE, "forced"))
        export(model, tmp_path / "forced")
    with torch.no_grad():
        gap = (model(IDS).logits - load_hf(tmp_path / "forced")(IDS).logits).abs().max()
    assert gap > 0.1
    # YaRN changes every position of the slowed pairs: a folder without it is another model
    model, out = folders["minimind3_yarn"]
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "yarn"
    plain = tmp_path / "no_yarn"
    export(model, plain)
    config["rope_scaling"] = None
    (plain / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        assert (model(IDS).logits - load_hf(plain)(IDS).logits).abs().max() > 0.1


@pytest.mark.parametrize("name", ["minimind2", "minimind3", "minimind3_moe_top1", "minimind2_moe",
                                  "minimind2_moe_top1"])
def test_greedy_generation_through_the_chat_template_equals_ours(folders, name):
    model, out = folders[name]
    standard = CASES[name][1] != spec.MINIMIND
    hf_tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=not standard)
    messages = [{"role": "user", "content": "What is 7 + 5?"}]
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    prompt = prompt if torch.is_tensor(prompt) else prompt["input_ids"]
    ours_ids = TOK.encode(TOK.apply_chat_template(messages, add_generation_prompt=True))
    assert prompt[0].tolist() == ours_ids  # the folder's tokenizer and template are ours
    ours = model.generate(torch.tensor([ours_ids]), max_new_tokens=24, do_sample=False,
                          eos_token_id=TOK.eos_token_id)[0, len(ours_ids):].tolist()
    theirs = load_hf(out, standard).generate(prompt, max_new_tokens=24, do_sample=False,
                                             eos_token_id=TOK.eos_token_id,
                                             pad_token_id=TOK.pad_token_id)[0, len(ours_ids):].tolist()
    assert len(ours) >= 2 and theirs == ours


# --------------------------------------------------------------------------- the folder


def test_folder_holds_what_runtimes_read(folders):
    from safetensors import safe_open

    model, out = folders["minimind3"]
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "README.md"}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # the tied head is the embedding, stored once (upstream #681)
    assert keys == set(model.state_dict()) - {"lm_head.weight"}
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["head_dim"] == 16 and config["rope_theta"] == 1e6
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert config["minimind"] == model.config.to_dict()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True,
                   "temperature": 0.85, "top_p": 0.85}
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == TOK.chat_template == (out / "chat_template.jinja").read_text()
    assert (out / "tokenizer.json").read_bytes() == (Path(TOK.path) / "tokenizer.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "`Qwen3ForCausalLM`" in card and "per-head q/k RMSNorm" in card and "record | none" in card


def test_remote_code_folder_says_so(folders):
    _, out = folders["minimind2_moe_top1"]
    assert {"modeling_minimind.py", "configuration_minimind.py"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "not renormalised" in card


@pytest.mark.parametrize("dtype, expect", [(None, torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_dtype_is_the_weights_own_unless_asked(tmp_path, dtype, expect):
    from safetensors.torch import load_file

    path = save_weights(make_model(CASES["minimind2"][0]), str(tmp_path / "w.pth"))  # fp16, as runs save
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({**SHAPE, **CASES["minimind2"][0]}))
    args = [path, "--model", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out")]
    assert main(args + (["--dtype", dtype] if dtype else [])) == 0
    state = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {expect}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == str(expect)[6:]


# --------------------------------------------------------------------------- import


@pytest.mark.parametrize("name", list(CASES))
def test_from_weight_reads_the_folder_back(folders, name):
    model, out = folders[name]
    back = build_model(from_weight=str(out), **model.config.to_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["minimind3_moe_top2", "minimind2_moe_2shared", "minimind2"])
def test_from_weight_reads_what_transformers_saves(folders, tmp_path, name):
    model, out = folders[name]
    load_hf(out).save_pretrained(str(tmp_path / "saved"))  # transformers 5 may stack the experts
    back = build_model(from_weight=str(tmp_path / "saved"), **model.config.to_dict()).eval()
    with torch.no_grad():
        assert torch.allclose(back(IDS).logits, model(IDS).logits, atol=1e-5)


def _upstream_folder(tmp_path, model, config, bin_name="pytorch_model.bin"):
    """A folder as upstream's convert_torch2transformers_minimind writes it (save_pretrained of
    its MiniMindForCausalLM, safe_serialization=False: both tied names in the file)."""
    out = tmp_path / "upstream"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, out / bin_name)
    return out


def test_from_weight_reads_upstreams_minimind3_layout(tmp_path):
    model = make_model(dict(family="minimind3", qk_norm=True, **MOE, num_experts_per_tok=1, n_shared_experts=0,
                            rms_norm_eps=1e-6))
    config = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "auto_map": {},
              "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "vocab_size": 768, "intermediate_size": 256, "max_position_embeddings": 256,
              "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_scaling": None, "inference_rope_scaling": False,
              "use_moe": True, "num_experts": 4, "num_experts_per_tok": 1, "moe_intermediate_size": 256,
              "norm_topk_prob": True, "router_aux_loss_coef": 5e-4, "hidden_act": "silu", "dropout": 0.0,
              "flash_attn": True, "tie_word_embeddings": True}
    out = _upstream_folder(tmp_path, model, config)
    fields = spec.implied_fields(config, "config.json")
    assert fields["family"] == "minimind3" and fields["qk_norm"] and fields["n_shared_experts"] == 0
    back = build_model(from_weight=str(out), **model.config.to_dict()).eval()
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, model(IDS).logits)


def test_from_weight_reads_upstreams_minimind2_layout(tmp_path):
    model = make_model(dict(family="minimind2"))
    config = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 768,
              "intermediate_size": None, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
              "use_moe": False, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
              "aux_loss_alpha": 0.01, "seq_aux": True, "norm_topk_prob": True, "hidden_act": "silu"}
    out = _upstream_folder(tmp_path, model, config)
    assert spec.mismatches(model.config.to_dict(), spec.implied_fields(config, "x")) == []
    back = build_model(from_weight=str(out), **model.config.to_dict())
    assert torch.equal(back.state_dict()["model.layers.1.mlp.down_proj.weight"],
                       model.state_dict()["model.layers.1.mlp.down_proj.weight"])


def test_a_mismatch_lists_each_field_with_its_override(folders):
    _, out = folders["minimind2_moe"]
    wrong = {**SHAPE, **CASES["minimind2_moe"][0], "hidden_size": 128, "num_experts_per_tok": 1,
             "n_shared_experts": 0}
    with pytest.raises(ConfigError) as err:
        spec.check_against(str(out), wrong)
    msg = str(err.value)
    assert "\n" not in msg and "GraniteMoeSharedForCausalLM" in msg
    assert "hidden_size: model 128, config.json 64" in msg and "num_experts_per_tok: model 1, config.json 2" in msg
    assert msg.endswith("Override: model.hidden_size=64 model.num_experts_per_tok=2 model.n_shared_experts=1")
    fixed = {**wrong, "hidden_size": 64, "num_experts_per_tok": 2, "n_shared_experts": 1}
    assert spec.check_against(str(out), fixed)["n_shared_experts"] == 1  # the override is all it takes


def test_preflight_refuses_a_mismatched_folder_before_building(folders):
    from minimind.train import preflight

    _, out = folders["minimind2"]
    ok = compose([f"model.from_weight={out}", "model.vocab_size=768", "model.max_position_embeddings=256"])
    preflight(ok, Path(out).parent / "run_ok")
    bad = compose([f"model.from_weight={out}", "model.qk_norm=true"])
    with pytest.raises(ConfigError, match=r"qk_norm: model true, config.json false\. Override: model\.qk_norm=false"):
        preflight(bad, Path(out).parent / "run_bad")


# --------------------------------------------------------------------------- run directories, LoRA, CLI


def fake_run(tmp_path, model, overrides=(), weights_name=None, summary=None, state=None):
    """A run directory as launch.py leaves it (config, overrides, choices, summary, weights)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    fields = model.config.to_dict()
    model_args = [f"model.{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in fields.items()]
    cfg = compose(model_args + list(overrides))
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(FAST + list(overrides)))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"model": "tiny", "objective": "lm", "experiment": None}}}}))
    (run / "summary.json").write_text(json.dumps(summary or {}))
    from minimind.stages import weights_stem

    name = weights_name or f"{weights_stem(cfg)}_{fields['hidden_size']}{'_moe' if fields['use_moe'] else ''}.pth"
    save_weights(state if state is not None else model, str(run / name))
    return run


def test_run_directory_export_writes_the_training_record(tmp_path, capsys):
    model = make_model(CASES["minimind2_moe"][0])
    summary = {"status": "completed", "final_loss": 2.3456, "best_loss": 2.1, "optimizer_steps": 120,
               "tokens": 61440, "val_loss": 2.5678, "best_val_loss": 2.4, "precision": "fp32"}
    run = fake_run(tmp_path, model, overrides=["loop.max_steps=120"], summary=summary)
    assert main([str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "GraniteMoeSharedForCausalLM" in capsys.readouterr().out
    card = (tmp_path / "hf" / "README.md").read_text()
    for text in ("120 optimizer steps, 61440 tokens", "| final loss | 2.3456 |", "val_loss 2.5678",
                 "best_val_loss 2.4000", "objective=lm, data.kind=sft", "python launch.py", "loop.max_steps=120",
                 "demo/sft.jsonl", "full_sft_64_moe.pth"):
        assert text in card, text
    with torch.no_grad():  # fp16 as saved, compared in fp32
        ours = build_model(from_weight=str(run / "full_sft_64_moe.pth"), **model.config.to_dict()).eval()
        assert torch.allclose(load_hf(tmp_path / "hf")(IDS).logits, ours(IDS).logits, atol=1e-4)


def test_lora_run_is_exported_merged(tmp_path):
    model = make_model(CASES["minimind3"][0])
    base = save_weights(model, str(tmp_path / "full_sft_64.pth"), dtype=None)
    g = torch.Generator().manual_seed(3)
    lora = {}
    for layer in range(2):
        for proj in ("q_proj", "o_proj"):
            lora[f"model.layers.{layer}.self_attn.{proj}.lora.A.weight"] = 0.3 * torch.randn(8, 64, generator=g)
            lora[f"model.layers.{layer}.self_attn.{proj}.lora.B.weight"] = 0.3 * torch.randn(64, 8, generator=g)
    run = fake_run(tmp_path, model, overrides=[f"model.from_weight={base}", "loop.save_weight=lora_identity"],
                   state=lora)
    assert main([str(run), "--out", str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    merged = make_model(CASES["minimind3"][0])
    with torch.no_grad():
        for key in [k for k in lora if ".A." in k]:
            w = merged.get_parameter(key.replace(".lora.A.weight", ".weight"))
            w += lora[key.replace(".A.", ".B.")].half().float() @ lora[key].half().float()  # the file is fp16
        theirs = load_hf(tmp_path / "hf")
        assert torch.allclose(theirs.model.layers[0].self_attn.q_proj.weight,
                              merged.model.layers[0].self_attn.q_proj.weight, atol=1e-6)
        assert torch.allclose(theirs(IDS).logits, merged(IDS).logits, atol=1e-4)
    assert "LoRA | merged" in (tmp_path / "hf" / "README.md").read_text()


def test_lora_merge_is_base_plus_b_a():
    from minimind.hf.lora import merge

    g = torch.Generator().manual_seed(0)
    base = {"m.weight": torch.randn(6, 5, generator=g), "other": torch.randn(3, generator=g)}
    lora = {"m.lora.A.weight": torch.randn(2, 5, generator=g), "m.lora.B.weight": torch.randn(6, 2, generator=g)}
    merged = merge(base, lora)
    assert torch.allclose(merged["m.weight"], base["m.weight"] + lora["m.lora.B.weight"] @ lora["m.lora.A.weight"],
                          atol=1e-6)
    assert torch.equal(merged["other"], base["other"]) and set(merged) == set(base)


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("Error: ") and "\n" not in err, err
    return err


def test_bad_input_gets_one_line(tmp_path, capsys):
    model = make_model(CASES["minimind2"][0])
    run = fake_run(tmp_path, model)
    (run / "full_sft_64.pth").unlink()
    assert "has no weights" in _one_line_error(capsys, [str(run), "--out", str(tmp_path / "a")])
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert "unknown format '.gguf'" in _one_line_error(capsys, [str(gguf), "--out", str(tmp_path / "a")])
    weights = save_weights(model, str(tmp_path / "w.pth"))
    assert "give --model" in _one_line_error(capsys, [weights, "--out", str(tmp_path / "a")])
    assert "does not exist" in _one_line_error(capsys, [str(tmp_path / "nope"), "--out", str(tmp_path / "a")])
    assert "neither .hydra" in _one_line_error(capsys, [str(tmp_path), "--out", str(tmp_path / "a")])
    assert "invalid choice: 'int8'" in _one_line_error(capsys, [weights, "--out", "x", "--dtype", "int8"])
    # a tokenizer with more tokens than the embedding has rows
    small = make_model({**CASES["minimind2"][0], "vocab_size": 500})
    run2 = fake_run(tmp_path / "small", small)
    err = _one_line_error(capsys, [str(run2), "--out", str(tmp_path / "b")])
    assert "has 768 tokens but the model's embedding has 500 rows" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_existing_out_is_kept_unless_forced(tmp_path, capsys):
    model = make_model(CASES["minimind2"][0])
    run = fake_run(tmp_path, model)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert "not empty" in _one_line_error(capsys, [str(run), "--out", str(out)])
    # --force, but the export fails (wrong --model): the old folder is untouched
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump({**SHAPE, "hidden_size": 128}))
    main([str(run), "--out", str(out), "--force", "--model", str(tmp_path / "wide.yaml")])
    assert (out / "mine.txt").read_text() == "keep me"
    assert main([str(run), "--out", str(out), "--force"]) == 0
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.")] == []  # no temporary left


def test_arch_minimind_writes_upstreams_layout_on_request(tmp_path):
    model = make_model(CASES["minimind3"][0])
    assert export(model, tmp_path / "mm", force_minimind=True).architecture == spec.MINIMIND
    config = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert config["model_type"] == "minimind" and config["auto_map"] == spec.AUTO_MAP
    with torch.no_grad():
        assert torch.allclose(load_hf(tmp_path / "mm", standard=False)(IDS).logits, model(IDS).logits, atol=1e-4)


def test_run_without_final_weights_exports_its_newest_checkpoint(tmp_path):
    model = make_model(CASES["minimind2"][0])
    run = fake_run(tmp_path, model)
    (run / "full_sft_64.pth").unlink()
    (run / "checkpoints").mkdir()
    torch.save({"model": model.state_dict(), "global_step": 7}, run / "checkpoints" / "step_00000007.pt")
    assert main([str(run), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "float32"  # a checkpoint holds the fp32 model, kept as it is
    assert "step_00000007.pt" in (tmp_path / "hf" / "README.md").read_text()
    with torch.no_grad():
        assert torch.allclose(load_hf(tmp_path / "hf")(IDS).logits, model(IDS).logits, atol=1e-4)


def test_export_of_an_upstream_folder_to_a_standard_class(tmp_path):
    model = make_model(CASES["minimind3"][0])
    config = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 768,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "use_moe": False,
              "num_experts": 4, "router_aux_loss_coef": 5e-4, "intermediate_size": 256}
    up = _upstream_folder(tmp_path, model, config, bin_name="pytorch_model.bin")
    assert main([str(up), "--out", str(tmp_path / "qwen3"), "--dtype", "fp32"]) == 0
    with torch.no_grad():
        assert torch.allclose(load_hf(tmp_path / "qwen3")(IDS).logits, model(IDS).logits, atol=1e-4)


# --------------------------------------------------------------------------- end to end


def _generate_cli(run, prompt, tokens):
    r = subprocess.run([sys.executable, "-m", "minimind.generate", "--model", str(run), "--prompt", prompt,
                        "--chat", "--greedy", "--max-new-tokens", str(tokens), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, cwd=run.parent)
    assert r.returncode == 0, r.stderr
    return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("family, arch", [
    (["model.family=minimind3", "model.qk_norm=true"], spec.QWEN3),
    (["model.use_moe=true", "model.num_experts_per_tok=2", "model.n_shared_experts=1"], spec.GRANITE_MOE)])
def test_trained_run_exports_and_generates_the_same_text(launch, tmp_path, family, arch):
    run = tmp_path / "run"
    r = launch(FAST + family + ["loop.max_steps=40", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "minimind.export", str(run), "--out", str(tmp_path / "hf")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert arch in r.stdout
    summary = json.loads((run / "summary.json").read_text())
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"| final loss | {summary['final_loss']:.4f} |" in card and "40 optimizer steps" in card

    prompt = "What is 3 + 4?"
    cli_text = _generate_cli(run, prompt, 24)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    # the folder holds fp16 weights (as the run saved them); generate runs ours in fp32 on the CPU
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    out = hf.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == cli_text
    assert len(cli_text) > 0

    # and back in: the folder is a starting point for another run; a wrong model= is one line
    r = launch(FAST + family + ["loop.max_steps=2", f"model.from_weight={tmp_path / 'hf'}",
                                f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = launch(FAST + family + ["loop.max_steps=2", "model.hidden_size=128", f"model.from_weight={tmp_path / 'hf'}",
                                f"hydra.run.dir={tmp_path / 'run3'}"], cwd=tmp_path)
    assert r.returncode == 2 and "Override: model.hidden_size=64" in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
