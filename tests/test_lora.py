"""adapter=lora: upstream's LoRA, trained through the same update step, saved in upstream's format."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, run_launch
from torch import nn
from torch.utils.data import default_collate

from minimind.adapters import (
    LoRALayer,
    inject_lora,
    is_lora_file,
    load_lora,
    lora_modules,
    lora_state_dict,
    merge_lora,
)
from minimind.errors import ConfigError
from minimind.model import build_model
from minimind.train import build_trainer
from minimind.weights import WeightsError, read_state_dict, save_weights


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  vocab_size=50, max_position_embeddings=64)
    fields.update(kw)
    return build_model(**fields)


def upstream_load_lora(model, state):
    """Upstream's load_lora (d65ef2c model/model_lora.py), re-stated: strip 'module.', then for
    every module with .lora, load the keys '<name>.lora.*' into it."""
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    for name, module in model.named_modules():
        if hasattr(module, "lora"):
            sub = {k.replace(f"{name}.lora.", ""): v for k, v in state.items() if f"{name}.lora." in k}
            module.lora.load_state_dict(sub)


def make(cfg_factory, tmp_path, *overrides):
    tr = build_trainer(cfg_factory(["adapter=lora", "optim.lr=1e-2", "data.shuffle=false", *overrides]), tmp_path)
    tr.prepare(100)
    return tr


def window(tr, k, start=0):
    ds, b = tr.batches.dataset, tr.batches.batch_size
    return [default_collate([ds[start + j * b + i] for i in range(b)]) for j in range(k)]


def test_upstream_defaults_square_linears_b_zero_a_gaussian():
    model = tiny()
    names = inject_lora(model, rank=16)
    assert sorted({n.rsplit(".", 1)[-1] for n in names}) == ["o_proj", "q_proj"]  # the square ones
    assert len(names) == 4
    for module in lora_modules(model).values():
        assert torch.equal(module.lora.B.weight, torch.zeros_like(module.lora.B.weight))
        assert module.lora.A.weight.shape == (16, 32)
        assert 0.01 < module.lora.A.weight.std().item() < 0.03  # N(0, 0.02)
    x = torch.randint(0, 50, (2, 10))
    base = tiny()
    torch.testing.assert_close(model(x).logits, base(x).logits, rtol=0, atol=0)  # B = 0: the base model


def test_training_leaves_every_base_weight_bit_identical_and_only_trains_the_adapter(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path)
    base = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters() if ".lora." not in n}
    adapter_names = {n for n, p in tr.raw_model.named_parameters() if ".lora." in n}
    trainable = {n for n, p in tr.raw_model.named_parameters() if p.requires_grad}
    assert trainable == adapter_names and len(adapter_names) == 8
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in tr.raw_model.named_parameters() if n in adapter_names}

    grads = []
    real_step = tr.scaler.step

    def capture(optimizer, *a, **k):
        grads.append({n: p.grad for n, p in tr.raw_model.named_parameters()})
        return real_step(optimizer, *a, **k)

    tr.scaler.step = capture
    for s in range(3):
        tr.step(window(tr, 1, start=s * 4))
    for n, g in grads[1].items():  # the second step: B moved away from 0, so A has a gradient too
        if n in adapter_names:
            assert g is not None and g.abs().sum() > 0, n
        else:
            assert g is None, f"{n} got a gradient"
    for n, p in tr.raw_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"base weight {n} changed"
    assert any(lora_state_dict(tr.raw_model)[k].abs().sum() > 0 for k in lora_state_dict(tr.raw_model)
               if k.endswith("B.weight"))


def test_the_weights_file_is_upstreams_lora_format_and_round_trips(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path, "loop.max_steps=3")
    tr.fit()
    path = tmp_path / "lora_sft_64.pth"  # lora_<data file stem> of the demo's sft.jsonl
    assert path.is_file() and is_lora_file(str(path))
    saved = torch.load(path, weights_only=True)
    modules = sorted(lora_modules(tr.raw_model))
    assert sorted(saved) == sorted(f"{m}.lora.{ab}.weight" for m in modules for ab in "AB")
    assert all(v.dtype == torch.float16 for v in saved.values())
    assert all(not k.startswith("module.") for k in saved)

    # upstream's load_lora reads our file (into upstream-shaped layers) ...
    theirs = tiny(seed=1, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=768,
                  max_position_embeddings=2048)
    inject_lora(theirs, rank=16)
    upstream_load_lora(theirs, saved)
    for m, module in lora_modules(theirs).items():
        assert torch.equal(module.lora.B.weight, saved[f"{m}.lora.B.weight"].float())
    # ... and ours reads a file written the way upstream's DDP runs write it ('module.' prefix)
    prefixed = tmp_path / "upstream_lora.pth"
    torch.save({f"module.{k}": v for k, v in saved.items()}, prefixed)
    ours = tiny(seed=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=768,
                max_position_embeddings=2048)
    inject_lora(ours, rank=16)
    assert load_lora(ours, str(prefixed)) == modules
    for m, module in lora_modules(ours).items():
        assert torch.equal(module.lora.A.weight, saved[f"{m}.lora.A.weight"].float())


def test_merge_equals_base_plus_b_at_a():
    model = tiny()
    inject_lora(model, rank=4)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora.B.weight.normal_(0, 0.1)
    base = {k: v for k, v in model.state_dict().items() if ".lora." not in k}
    lora = {k: v for k, v in model.state_dict().items() if ".lora." in k}
    merged = merge_lora(base, lora)
    for name, module in lora_modules(model).items():
        want = module.weight + module.lora.B.weight @ module.lora.A.weight
        torch.testing.assert_close(merged[f"{name}.weight"], want, rtol=0, atol=1e-6)
    untouched = [k for k in base if not any(k == f"{m}.weight" for m in lora_modules(model))]
    assert untouched and all(torch.equal(merged[k], base[k]) for k in untouched)
    # the merged plain model computes what the adapted one does
    plain = tiny(seed=3)
    plain.load_state_dict(merged)
    x = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(plain(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


def test_alpha_scales_the_update_and_the_file_folds_it_in(tmp_path):
    model = tiny()
    inject_lora(model, rank=4, alpha=8)  # scale 2
    layer = next(iter(lora_modules(model).values())).lora
    assert layer.scale == 2.0
    with torch.no_grad():
        layer.B.weight.fill_(0.01)
    state = lora_state_dict(model)
    key = next(k for k in state if k.endswith("B.weight"))
    torch.testing.assert_close(state[key].float(), torch.full_like(layer.B.weight, 0.02), rtol=1e-3, atol=1e-5)
    fresh = tiny()
    load_lora(fresh, state, attach=True)  # scale 1 from the file: the same function
    x = torch.randint(0, 50, (1, 8))
    torch.testing.assert_close(fresh(x).logits, model(x).logits, rtol=1e-3, atol=1e-4)


def test_the_merge_command_writes_full_weights(tmp_path):
    model = tiny()
    base_path = save_weights(model, str(tmp_path / "full_sft_32.pth"))
    inject_lora(model, rank=4)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora.B.weight.normal_(0, 0.1)
    lora_path = save_weights(lora_state_dict(model), str(tmp_path / "lora_x_32.pth"))
    out = tmp_path / "merged_32.pth"
    r = run_launch(["merge", "--base", base_path, "--lora", lora_path, "--out", str(out)], cwd=tmp_path,
                   module=["-m", "minimind.adapters"])
    assert r.returncode == 0, r.stderr
    assert "merged 4 LoRA modules" in r.stdout
    merged = read_state_dict(str(out))
    base = read_state_dict(base_path)
    assert set(merged) == set(base) and all(v.dtype == torch.float16 for v in merged.values())
    lora = read_state_dict(lora_path)
    for m in lora_modules(model):
        want = base[f"{m}.weight"].float() + lora[f"{m}.lora.B.weight"].float() @ lora[f"{m}.lora.A.weight"].float()
        torch.testing.assert_close(merged[f"{m}.weight"].float(), want, rtol=0, atol=2e-3)  # fp16 file
    r = run_launch(["merge", "--base", lora_path, "--lora", base_path, "--out", str(out)], cwd=tmp_path,
                   module=["-m", "minimind.adapters"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not a LoRA file" in r.stderr


def test_a_model_without_a_square_linear_is_refused_in_one_line():
    model = tiny(head_dim=8)  # q_proj 32 -> 16, o_proj 16 -> 32: nothing square
    with pytest.raises(ConfigError) as e:
        inject_lora(model, rank=4)
    msg = str(e.value)
    assert "\n" not in msg and "no module to adapt" in msg and "adapter.targets=[" in msg
    assert "q_proj (32->16)" in msg
    names = inject_lora(model, rank=4, targets=["q_proj", "v_proj"])  # the way out it names
    assert len(names) == 4


def test_unknown_or_tied_targets_are_refused(cfg_factory):
    with pytest.raises(ConfigError, match=r"no nn.Linear named qproj; valid: .*q_proj"):
        inject_lora(tiny(), rank=4, targets=["qproj"])
    from minimind.config import validate

    with pytest.raises(ConfigError, match="lm_head shares its weight with the token embeddings"):
        validate(cfg_factory(["adapter=lora", "adapter.targets=[lm_head]"]))
    with pytest.raises(ConfigError, match="adapter.rank=0 is invalid"):
        validate(cfg_factory(["adapter=lora", "adapter.rank=0"]))


def test_lora_on_a_model_with_no_target_module_through_the_cli(tmp_path):
    r = run_launch(FAST + ["adapter=lora", "model.head_dim=8", "loop.max_steps=1", f"hydra.run.dir={tmp_path}/r"],
                   cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: adapter=lora: no module to adapt"), r.stderr


def test_a_lora_layer_is_upstreams_module():
    layer = LoRALayer(8, 8, rank=2)
    assert [n for n, _ in layer.named_parameters()] == ["A.weight", "B.weight"]
    assert isinstance(layer.A, nn.Linear) and layer.A.bias is None and layer.B.bias is None


def test_generate_runs_a_lora_run_dir(cfg_factory, tmp_path):
    """A LoRA run's folder holds only the adapter: generate finds the base through model.from_weight."""
    base = tiny(seed=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=768,
                max_position_embeddings=2048)
    base_path = save_weights(base, str(tmp_path / "full_sft_64.pth"))
    run = tmp_path / "run"
    r = run_launch(FAST + ["adapter=lora", f"model.from_weight={base_path}", "loop.max_steps=2",
                           f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = run_launch(["--model", str(run), "--prompt", "What is your name?", "--chat", "--greedy",
                    "--max-new-tokens", "4"], cwd=tmp_path, module=["-m", "minimind.generate"])
    assert g.returncode == 0, g.stderr
    assert f"weights: {base_path} + LoRA {run}/lora_sft_64.pth" in g.stderr


def test_a_lora_file_that_does_not_fit_is_named(tmp_path):
    model = tiny()
    inject_lora(model, rank=4)
    other = tiny()
    inject_lora(other, rank=8)
    with pytest.raises(WeightsError, match="another rank or model size"):
        load_lora(other, lora_state_dict(model))


def test_clipping_and_the_scaler_cover_only_the_adapter(cfg_factory, tmp_path):
    tr = make(cfg_factory, tmp_path / "a", "optim.grad_clip=0.001")
    assert {id(p) for p in tr.update.params} == {id(p) for n, p in tr.raw_model.named_parameters() if ".lora." in n}
    seen = []
    real_step = tr.scaler.step
    tr.scaler.step = lambda opt, *a, **k: (seen.append([p.grad.clone() for p in tr.update.params]),
                                           real_step(opt, *a, **k))[1]
    tr.step(window(tr, 1))
    tr.step(window(tr, 1, start=4))  # B is non-zero now: every adapter parameter has a gradient
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in seen[1]]))
    assert norm.item() == pytest.approx(0.001, rel=1e-4)
    fp16 = make(cfg_factory, tmp_path / "b", "precision=fp16")
    before = {n: p.detach().clone() for n, p in fp16.raw_model.named_parameters()}
    victim = next(p for n, p in fp16.raw_model.named_parameters() if n.endswith("lora.B.weight"))
    handle = victim.register_hook(lambda g: torch.full_like(g, float("inf")))
    fp16.step(window(fp16, 1))
    handle.remove()
    assert all(torch.equal(p, before[n]) for n, p in fp16.raw_model.named_parameters())
    assert fp16.scaler.get_scale() == 32768.0 and int(fp16.metrics.skipped) == 1


def test_the_lora_step_never_reads_the_device(cfg_factory, tmp_path, monkeypatch):
    from test_perf import real_windows, watch_train_steps

    tr = make(cfg_factory, tmp_path, "loop.log_interval=1000", "loop.save_interval=1000")
    assert watch_train_steps(monkeypatch, tr, real_windows(tr, 2)) == []
