"""The stages as compositions: weight names, no self-overwrite, the presets end to end, bit-exact
resume after SIGKILL for LoRA / DPO / distillation, a DPO sweep and its report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_launch
from test_resume import final_state, kill_and_resume, losses

from minimind.data import asset_path
from minimind.errors import ConfigError
from minimind.model import build_model
from minimind.stages import weights_stem
from minimind.weights import read_state_dict, save_weights

DEMO = {name: asset_path(f"demo/{name}.jsonl") for name in ("sft", "pretrain", "lora_identity", "dpo")}
TINY64 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=768,
              max_position_embeddings=2048)


@pytest.mark.parametrize("overrides,stem", [
    ([], "full_sft"),                                             # the demo is SFT data
    (["data=pretrain", f"data.path={DEMO['pretrain']}"], "pretrain"),
    (["adapter=lora", f"data.path={DEMO['lora_identity']}"], "lora_identity"),
    (["adapter=lora"], "lora_sft"),                               # lora_<data file stem>
    (["objective=dpo", "data=dpo", f"data.path={DEMO['dpo']}"], "dpo"),
    (["objective=distill", "objective.teacher.from_weight=t.pth"], "full_dist"),
    (["loop.save_weight=mine"], "mine"),
])
def test_the_weights_name_follows_the_stage(cfg_factory, overrides, stem):
    assert weights_stem(cfg_factory(overrides)) == stem


@pytest.mark.parametrize("experiment,stem", [
    ("minimind2/pretrain", "pretrain"), ("minimind3/full_sft", "full_sft"), ("minimind2/lora", "lora_identity"),
    ("minimind3/lora", "lora_medical"), ("minimind3/dpo", "dpo"), ("minimind2/distillation", "full_dist"),
])
def test_presets_name_their_weights_as_upstream(cfg_factory, experiment, stem):
    name = {"minimind2/lora": "lora_identity.jsonl", "minimind3/lora": "lora_medical.jsonl"}.get(experiment, "x.jsonl")
    cfg = cfg_factory([f"experiment={experiment}", f"data.path=/data/{name}"], fast=False)
    assert weights_stem(cfg) == stem and cfg.loop.save_dir == "out"


def test_presets_carry_upstreams_defaults(cfg_factory):
    c = {e: cfg_factory([f"experiment={e}"], fast=False) for e in (
        "minimind3/full_sft", "minimind2/full_sft", "minimind3/lora", "minimind2/lora", "minimind3/dpo",
        "minimind2/dpo", "minimind3/distillation", "minimind2/distillation", "minimind3/pretrain")}
    assert c["minimind3/full_sft"].optim.lr == 1e-5 and c["minimind2/full_sft"].optim.lr == 1e-6
    assert c["minimind3/full_sft"].data.max_length == 768 and c["minimind3/full_sft"].loop.epochs == 2
    assert c["minimind3/full_sft"].model.from_weight == "out/pretrain_768.pth"
    assert c["minimind3/lora"].adapter.rank == 16 and c["minimind2/lora"].adapter.rank == 8
    assert c["minimind3/lora"].loop.epochs == 10 and c["minimind2/lora"].loop.epochs == 50
    assert c["minimind3/dpo"].objective.beta == 0.15 and c["minimind2/dpo"].objective.beta == 0.1
    assert c["minimind3/dpo"].optim.lr == 4e-8 and c["minimind3/dpo"].data.batch_size == 4
    t3, t2 = c["minimind3/distillation"].objective.teacher, c["minimind2/distillation"].objective.teacher
    assert t3.use_moe and t3.from_weight == "out/full_sft_768_moe.pth"
    assert (t2.hidden_size, t2.num_hidden_layers, t2.from_weight) == (768, 16, "out/full_sft_768.pth")
    assert c["minimind2/distillation"].model.hidden_size == 512
    assert c["minimind3/pretrain"].optim.accumulation_steps == 8
    assert all(cfg.precision.name == "bf16" for cfg in c.values())


def test_a_run_never_overwrites_the_weights_it_loads(tmp_path):
    """The SFT demo with the folder its starting weights are in: refused before torch, one line."""
    out = tmp_path / "out"
    out.mkdir()
    start = out / "full_sft_64.pth"
    start.write_bytes(b"weights")
    r = run_launch(FAST + [f"loop.save_dir={out}", f"model.from_weight={start}", f"hydra.run.dir={tmp_path}/r"],
                   cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"Error: loop.save_weight=full_sft would write {start}, the file model.from_weight loads: a "
                     f"run never overwrites the weights it starts from; choose another name or folder "
                     f"(loop.save_weight=full_sft_2, or loop.save_dir=<another folder>)"], r.stderr
    assert start.read_bytes() == b"weights"
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_the_reference_and_the_teacher_are_protected_too(cfg_factory, tmp_path):
    from minimind.train import preflight

    (tmp_path / "dpo_64.pth").write_bytes(b"x")
    (tmp_path / "full_dist_64.pth").write_bytes(b"x")
    cfg = cfg_factory(["objective=dpo", "data=dpo", f"data.path={DEMO['dpo']}", f"loop.save_dir={tmp_path}",
                       f"objective.reference_weight={tmp_path}/dpo_64.pth"])
    with pytest.raises(ConfigError, match="the file objective.reference_weight loads"):
        preflight(cfg, tmp_path / "run")
    cfg = cfg_factory(["objective=distill", f"loop.save_dir={tmp_path}",
                       f"objective.teacher.from_weight={tmp_path}/full_dist_64.pth"])
    with pytest.raises(ConfigError, match="the file objective.teacher.from_weight loads"):
        preflight(cfg, tmp_path / "run")


def test_a_preset_names_what_it_still_needs(tmp_path):
    r = run_launch(["experiment=minimind3/full_sft"], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("Error: data.path is not set (experiment=minimind3/full_sft leaves it to you): give "
                                "it on the command line, e.g. data.path=/data/sft_mini_512.jsonl (data.path: the "
                                "JSONL file (required))")


# --------------------------------------------------------------------------- the presets, end to end

# any preset on the demo: a 64-wide model, a few steps, fp32 on the CPU
ON_DEMO = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=4",
           "model.num_key_value_heads=2", "model.vocab_size=null", "data.tokenizer=null", "data.max_length=64",
           "data.batch_size=4", "data.num_workers=0", "optim.accumulation_steps=1", "precision=fp32", "device=cpu",
           "loop.max_steps=3", "loop.log_interval=1", "loop.progress=false"]
TEACHER_ON_DEMO = ["objective.teacher.hidden_size=96", "objective.teacher.num_hidden_layers=2",
                   "objective.teacher.num_attention_heads=4", "objective.teacher.num_key_value_heads=2",
                   "objective.teacher.vocab_size=null"]


def _stage(family, stage, out, cwd, *extra):
    data = {"pretrain": DEMO["pretrain"], "lora": DEMO["lora_identity"], "dpo": DEMO["dpo"]}.get(stage, DEMO["sft"])
    run = cwd / f"{family}-{stage}-{len(list(cwd.iterdir()))}"
    r = run_launch([f"experiment={family}/{stage}", f"data.path={data}", f"loop.save_dir={out}",
                    f"hydra.run.dir={run}"] + ON_DEMO + list(extra), cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("family", ["minimind2", "minimind3"])
def test_every_preset_runs_on_the_demo_as_a_chain(tmp_path, family):
    """pretrain -> full_sft -> lora / dpo / (a teacher) distillation, each stage reading the previous
    stage's file from the shared folder, under upstream's names."""
    out = tmp_path / "out"
    _stage(family, "pretrain", out, tmp_path)
    assert (out / "pretrain_64.pth").is_file()
    _stage(family, "full_sft", out, tmp_path)
    sft = read_state_dict(str(out / "full_sft_64.pth"))
    lora_run = _stage(family, "lora", out, tmp_path)
    lora = read_state_dict(str(out / "lora_identity_64.pth"))
    assert lora and all(".lora." in k for k in lora)
    log = (lora_run / "train.log").read_text()
    assert "LoRA: rank " + ("8" if family == "minimind2" else "16") in log
    _stage(family, "dpo", out, tmp_path)
    assert set(read_state_dict(str(out / "dpo_64.pth"))) == set(sft)
    # a teacher: the SFT preset at another size (MiniMind-3's teacher is an MoE model)
    moe = family == "minimind3"
    _stage(family, "full_sft", out, tmp_path, "model.hidden_size=96", f"model.use_moe={str(moe).lower()}",
           "model.from_weight=null")  # no pretrained 96-wide model: the teacher starts from scratch
    assert (out / f"full_sft_96{'_moe' if moe else ''}.pth").is_file()
    dist = _stage(family, "distillation", out, tmp_path, *TEACHER_ON_DEMO)
    metrics = [json.loads(x) for x in (dist / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "kl"} <= set(metrics[-1]) and metrics[-1]["kl"] > 0
    assert (out / "full_dist_64.pth").is_file()


@pytest.mark.slow
def test_the_demo_chain_presets_run(tmp_path):
    """demo/sft -> demo/lora, demo/dpo, demo/teacher -> demo/distill, a few steps each (the real chain,
    its numbers and its commands: README, scripts/demo_chain.py)."""
    short = ["loop.max_steps=2", "loop.log_interval=1", "loop.progress=false", "device=cpu"]
    for preset in ("sft", "lora", "dpo", "teacher", "distill"):
        r = run_launch([f"experiment=demo/{preset}", f"hydra.run.dir={tmp_path}/{preset}"] + short, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["dpo_128.pth", "full_dist_128.pth", "full_sft_128.pth", "full_sft_192.pth",
                     "lora_identity_128.pth"]
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["weights"] == [str(tmp_path / "out" / "full_sft_128.pth")]
    # generate finds a stage's weights in the shared folder, and a LoRA's base through model.from_weight
    g = run_launch(["--model", str(tmp_path / "lora"), "--prompt", "Who made you?", "--chat", "--greedy",
                    "--max-new-tokens", "3"], cwd=tmp_path, module=["-m", "minimind.generate"])
    assert g.returncode == 0, g.stderr
    assert f"weights: out/full_sft_128.pth + LoRA {tmp_path}/out/lora_identity_128.pth" in g.stderr


# --------------------------------------------------------------------------- exact resume per stage


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    """Starting weights (a base for LoRA / DPO, a teacher of another size), written once."""
    d = tmp_path_factory.mktemp("start")
    torch.manual_seed(5)
    base = save_weights(build_model(**TINY64), str(d / "full_sft_64.pth"))
    torch.manual_seed(6)
    teacher = save_weights(build_model(**dict(TINY64, hidden_size=96)), str(d / "teacher_96.pth"))
    return base, teacher


RESUME = FAST + ["optim.accumulation_steps=2", "loop.log_interval=1", "loop.save_interval=3", "loop.max_steps=18",
                 "optim.lr=2e-3", "optim.warmup_steps=2", "data.num_workers=0"]


def _stage_args(stage, base, teacher):
    if stage == "lora":
        return ["adapter=lora", "adapter.dropout=0.1", f"model.from_weight={base}"]  # dropout: RNG state too
    if stage == "dpo":
        return ["objective=dpo", "data=dpo", f"data.path={DEMO['dpo']}", "objective.beta=0.5",
                f"model.from_weight={base}"]
    return ["objective=distill", f"objective.teacher.from_weight={teacher}", f"model.from_weight={base}",
            "model.dropout=0.1", "objective.teacher.hidden_size=96", "objective.teacher.num_attention_heads=4",
            "objective.teacher.num_key_value_heads=2"]


@pytest.mark.slow
@pytest.mark.parametrize("stage,weights", [("lora", "lora_sft_64.pth"), ("dpo", "dpo_64.pth"),
                                           ("distill", "full_dist_64.pth")])
def test_sigkill_then_the_same_command_is_bit_exact(tmp_path, start_weights, stage, weights):
    args = RESUME + _stage_args(stage, *start_weights)
    ref = tmp_path / "ref"
    r = run_launch(args + [f"hydra.run.dir={ref}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "run"
    kills = kill_and_resume(run, args + [f"hydra.run.dir={run}"], tmp_path, kills=2, rng=random.Random(11), span=6)
    assert kills >= 1 and "resumed from" in (run / "train.log").read_text()
    a, b = final_state(ref), final_state(run)
    assert a["global_step"] == b["global_step"] == 18
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(t, b["optimizer"]["state"][i][n]) for n, t in st.items())
    ref_losses = {s: v[0] for s, v in losses(ref).items()}
    assert all(v == ref_losses[s] for s, vs in losses(run).items() for v in vs)
    w_ref, w_run = torch.load(ref / weights, weights_only=True), torch.load(run / weights, weights_only=True)
    assert w_ref.keys() == w_run.keys() and all(torch.equal(w_ref[k], w_run[k]) for k in w_ref)
    if stage == "lora":  # the frozen base came back from model.from_weight, bit for bit
        start = read_state_dict(start_weights[0])
        assert all(torch.equal(b["model"][k], start[k].float()) for k in start)


# --------------------------------------------------------------------------- sweeps and the report


@pytest.mark.slow
def test_a_dpo_sweep_and_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_launch(["-m", "objective=dpo", "data=dpo", f"data.path={DEMO['dpo']}", "objective.beta=0.1,0.5",
                    "loop.max_steps=3", "loop.log_interval=1", "data.num_workers=0", f"hydra.sweep.dir={sweep}"]
                   + FAST, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "completed"
        assert "reward_acc" in (sweep / job / "metrics.jsonl").read_text()
    rep = run_launch([str(sweep)], cwd=tmp_path, module=["-m", "minimind.report"])
    assert rep.returncode == 0, rep.stderr
    assert "beta=0.1" in rep.stdout and "beta=0.5" in rep.stdout and "2 jobs: 2 completed" in rep.stdout
    assert Path(sweep / "report.csv").is_file()


def test_dpo_refuses_packing(cfg_factory, tmp_path):
    from minimind.train import preflight

    cfg = cfg_factory(["objective=dpo", "data=dpo", f"data.path={DEMO['dpo']}", "data.packing=true"])
    with pytest.raises(ConfigError, match="data.packing=true with objective=dpo"):
        preflight(cfg, tmp_path / "run")
