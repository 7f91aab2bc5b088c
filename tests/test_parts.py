"""The loop as parts: every experiment composes, the demo's math is pinned, each setting has one
home, the objective drives the step, progress round-trips, the tracker closes on failure."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from conftest import CONF, run_launch

from minimind.errors import ConfigError

EXPERIMENTS = sorted(p.relative_to(CONF / "experiment").with_suffix("").as_posix()
                     for p in (CONF / "experiment").rglob("*.yaml"))

# The demo's first losses on CPU fp32 (python launch.py loop.max_steps=40 loop.log_interval=5),
# recorded before the loop was split into parts (identical with 1 and 2 threads). A change of
# the update step's math, the data or the initialisation moves them far more than `TOL`.
DEMO_LOSSES = [5.9676301989252165, 5.678345420143821, 5.304519740513393, 4.975166722347862,
               5.078569047906425, 4.722404711174242, 4.746463107079575, 4.693446978400735]
# The same with a tiny MoE model and accumulation 2 (covers the aux loss and the window).
MOE_LOSSES = [5.93482539500175, 5.430566945787293, 5.079880151993189, 4.905025652985074,
              4.742264836471273, 4.585408782958984, 4.547305836397059, 4.5632154247428796]
MOE_LAST_AUX = 0.020256776362657547
TOL = 5e-4


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(cfg_factory, experiment):
    from minimind.config import validate

    cfg = cfg_factory([f"experiment={experiment}"], fast=False)
    validate(cfg)


def test_there_are_experiments_to_compose():
    assert "clip_accum_sweep" in EXPERIMENTS
    stages = ("pretrain", "full_sft", "lora", "dpo", "distillation")
    assert {f"{family}/{s}" for family in ("minimind2", "minimind3") for s in stages} <= set(EXPERIMENTS)
    assert {f"demo/{s}" for s in ("sft", "lora", "dpo", "teacher", "distill")} <= set(EXPERIMENTS)


def _losses(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], rows


@pytest.mark.slow
@pytest.mark.parametrize("extra,expected,aux", [
    ([], DEMO_LOSSES, None),
    (["model.use_moe=true", "optim.accumulation_steps=2"], MOE_LOSSES, MOE_LAST_AUX),
], ids=["demo", "demo-moe-accum2"])
def test_the_demo_trains_to_the_pinned_losses(tmp_path, extra, expected, aux):
    run = tmp_path / "run"
    # data.val_size=null: the demo's order without its held-out dialogues, as when this was pinned
    r = run_launch(["loop.max_steps=40", "loop.log_interval=5", "loop.progress=false", "device=cpu",
                    "data.val_size=null", f"hydra.run.dir={run}"] + extra, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    losses, rows = _losses(run)
    assert [row["step"] for row in rows] == list(range(5, 41, 5))
    assert losses == pytest.approx(expected, abs=TOL)
    if aux is not None:
        assert rows[-1]["aux_loss"] == pytest.approx(aux, abs=1e-4)


@pytest.mark.parametrize("override,owner", [
    ("optim.optimizer.lr=0.1", "optim.lr"),
    ("+optim.optimizer.weight_decay=0.9", "optim.weight_decay"),
    ("optim.schedule.warmup_steps=5", "optim.warmup_steps"),
    ("data.dataset.path=/tmp/x.jsonl", "data.path"),
])
def test_a_setting_has_one_home(override, owner):
    """A second copy of the learning rate (or any key another key sets) is refused in one line."""
    from minimind.overrides import check_overrides

    problem = check_overrides([override], CONF)
    assert problem == f"{override.lstrip('+').split('=')[0]} is set, but {owner} sets it: use {owner} " \
                      "(one place for each setting)"


def test_a_second_copy_in_a_yaml_is_refused_too(cfg_factory):
    from omegaconf import open_dict

    from minimind.config import validate

    cfg = cfg_factory()
    with open_dict(cfg):
        cfg.optim.optimizer.lr = 0.1
    with pytest.raises(ConfigError, match="optim.optimizer.lr is set, but optim.lr sets it"):
        validate(cfg)


def test_the_optimizer_gets_lr_and_weight_decay_from_optim(cfg_factory, tmp_path):
    from minimind.train import build_trainer

    tr = build_trainer(cfg_factory(["optim.lr=3e-3", "optim.weight_decay=0.2"]), tmp_path)
    try:
        assert [g["lr"] for g in tr.optimizer.param_groups] == [3e-3, 3e-3]
        assert [g["weight_decay"] for g in tr.optimizer.param_groups] == [0.2, 0.0]
        tr.prepare(10)
        assert tr.schedule(0) == pytest.approx(3e-3) and tr.schedule(10) == pytest.approx(3e-4)
    finally:
        tr.dist.destroy()


@pytest.mark.parametrize("override,valid", [
    ("loop.on_nan=maybe", "stop, skip"),
    ("data.on_bad_line=ignore", "error, skip"),
    ("loop.weights_format=onnx", "pth, safetensors, both"),
    ("dist.backend=mpi", "auto, nccl, gloo"),
    ("model.family=minimind4", "minimind2, minimind3"),
    ("data.kind=rlaif", "pretrain, sft, dpo"),
])
def test_choices_fail_at_composition_with_the_valid_values(cfg_factory, override, valid):
    from hydra.errors import ConfigCompositionException

    from minimind.overrides import check_overrides

    with pytest.raises(ConfigCompositionException) as e:
        cfg_factory([override])
    assert f"expected one of [{valid}]" in str(e.value.__cause__)
    key, value = override.split("=")
    assert check_overrides([override], CONF) == f"{key}={value!r} is invalid: expected one of {valid}"


def test_every_knob_in_help_is_documented():
    from minimind.cli_help import render

    knobs = [line for line in render(CONF).splitlines() if line.startswith("  ") and "=" in line.split()[0]]
    assert len(knobs) > 60
    undocumented = [line.split()[0] for line in knobs if len(line.split()) < 2]
    assert undocumented == []
    assert any(line.split()[0] == "model.from_weight=null" for line in knobs)


def test_progress_round_trips_through_a_checkpoint_dict():
    from minimind.progress import Progress

    p = Progress(epoch=2, samples_in_epoch=96, step=40, tokens=12345, nan_skips=1, best_loss=0.5,
                 final_loss=0.7, wandb_id="abc")
    state = p.state_dict()
    assert state["global_step"] == 40 and state["tokens_seen"] == 12345  # the checkpoint's keys
    q = Progress()
    q.load_state_dict(state)
    assert q == p


def test_the_lm_objective_counts_and_sums_tokens():
    from minimind.model import build_model, causal_lm_loss
    from minimind.objectives import LanguageModeling

    torch.manual_seed(0)
    model = build_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        vocab_size=50, max_position_embeddings=64)
    x = torch.randint(0, 50, (3, 12))
    y = x.clone()
    y[0, 7:] = -100
    y[2, :4] = -100
    obj = LanguageModeling()
    obj.setup(model=model, autocast=contextlib.nullcontext, device=torch.device("cpu"))
    assert obj.count((x, y)) == int((y[:, 1:] != -100).sum()) == obj.count({"input_ids": x, "labels": y})
    out = obj(model, (x, y))
    assert out.aux is None and out.metrics == {}  # dense: no balance loss
    expected = causal_lm_loss(model(x).logits, y, reduction="sum")
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_trainer_gets_parts_not_loose_values():
    """The loop's constructor takes its own keys (conf/loop) plus the built parts."""
    import inspect

    from minimind.config import LoopConfig
    from minimind.loop import Trainer

    params = set(inspect.signature(Trainer).parameters)
    own = set(LoopConfig.__dataclass_fields__) - {"_target_"}
    parts = {"model", "objective", "optimization", "precision", "batches", "dist", "tracker", "run_dir", "config",
             "evaluator", "adapter"}
    assert params == own | parts


def test_the_tracker_is_closed_on_every_exit_path(cfg_factory, tmp_path, monkeypatch):
    """A run that dies mid-training still closes its tracker (progress bar, wandb run), marked
    failed; a run that completes closes it too."""
    from minimind import train
    from minimind.errors import TrainingError
    from minimind.tracking import Tracker

    closed = []
    real_close = Tracker.close
    monkeypatch.setattr(Tracker, "close", lambda self, failed=False: (closed.append(failed),
                                                                       real_close(self, failed))[1])
    real_build = train.build_trainer

    def poisoned(cfg, run_dir):
        tr = real_build(cfg, run_dir)
        inner = tr.update.model
        tr.update.model = lambda x: type(inner(x))(logits=inner(x).logits * float("nan"))
        return tr

    monkeypatch.setattr(train, "build_trainer", poisoned)
    with pytest.raises(TrainingError):
        train.build_and_fit(cfg_factory(["loop.max_steps=3", "loop.log_interval=1"]), tmp_path / "a")
    assert closed == [True]
    monkeypatch.setattr(train, "build_trainer", real_build)
    train.build_and_fit(cfg_factory(["loop.max_steps=2"]), tmp_path / "b")
    assert closed == [True, False]
