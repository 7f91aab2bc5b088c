"""The composed config: groups, types, refusals with a message that names key, value, valid."""

from __future__ import annotations

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from minimind.config import validate
from minimind.errors import ConfigError


def test_default_composition_has_every_group(cfg_factory):
    cfg = cfg_factory(fast=False)
    for group in ("model", "optim", "precision", "data", "dist", "loop", "logger"):
        assert group in cfg
    assert cfg.model._target_ == "minimind.model.build_model"
    assert cfg.optim.optimizer._target_ == "torch.optim.AdamW" and cfg.optim.optimizer._partial_
    assert cfg.precision.scaler._target_ == "torch.amp.GradScaler"
    assert cfg.loop._target_ == "minimind.loop.Trainer"
    assert cfg.data.path.endswith("demo/sft.jsonl")
    validate(cfg)


@pytest.mark.parametrize("name,dtype,enabled", [("fp32", "float32", False), ("bf16", "bfloat16", False),
                                                ("fp16", "float16", True)])
def test_precision_group(cfg_factory, name, dtype, enabled):
    cfg = cfg_factory([f"precision={name}"])
    assert cfg.precision.dtype == dtype and cfg.precision.scaler.enabled is enabled


def test_public_keys_are_typed(cfg_factory):
    cfg = cfg_factory(["optim.lr=1e-3", "optim.grad_clip=0.5", "optim.accumulation_steps=8",
                       "optim.warmup_steps=10", "optim.weight_decay=0.1", "data.max_length=256",
                       "data.num_workers=2", "loop.epochs=2", "loop.max_steps=5", "loop.log_interval=3",
                       "loop.save_interval=4", "loop.save_dir=/tmp/x", "loop.save_weight=full_sft",
                       "model.from_weight=/tmp/w.pth", "dist=ddp", "logger=wandb", "seed=1", "device=cpu"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.accumulation_steps, int)
    # one place for the learning rate: the optimizer node gets it when the optimizer is built
    assert "lr" not in cfg.optim.optimizer and "weight_decay" not in cfg.optim.optimizer
    assert cfg.dist.ddp is True and cfg.logger.wandb.mode == "offline"


@pytest.mark.parametrize("override,message", [
    ("optim.grad_clip=-1", "optim.grad_clip=-1.0 is invalid: must be > 0, or null to disable clipping"),
    ("optim.grad_clip=0", "optim.grad_clip=0.0 is invalid"),
    ("optim.accumulation_steps=0", "optim.accumulation_steps=0 is invalid: must be an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0 is invalid"),
    ("optim.lr=-0.1", "optim.lr=-0.1 is invalid: must be >= 0"),
    ("data.max_length=4", "data.max_length=4 is invalid: must be an integer >= 8"),
    ("device=tpu", "device='tpu' is invalid"),
    ("model.num_key_value_heads=3", "model:"),
])
def test_out_of_range_values_are_refused(cfg_factory, override, message):
    with pytest.raises(ConfigError) as e:
        validate(cfg_factory([override]))
    assert message in str(e.value)


def test_grad_clip_null_disables_clipping(cfg_factory):
    cfg = cfg_factory(["optim.grad_clip=null"])
    assert cfg.optim.grad_clip is None
    validate(cfg)


def test_unknown_key_and_wrong_type_fail_at_composition(cfg_factory):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="gradclip"):
        cfg_factory(["optim.gradclip=1"])
    with pytest.raises(ConfigCompositionException, match="optim.lr"):
        cfg_factory(["optim.lr=abc"])
    # a choice outside its set fails while composing, with the valid values listed
    with pytest.raises(ConfigCompositionException) as e:
        cfg_factory(["optim.loss_normalization=bogus"])
    assert "expected one of [window_tokens, micro_batch]" in str(e.value.__cause__)


@pytest.mark.slow
def test_cfg_job_shows_overrides_without_importing_torch(launch, tmp_path):
    probe = ("import sys, runpy; sys.argv=['launch.py','--cfg','job','precision=fp16','optim.grad_clip=0.5'];"
             "\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit: pass\n"
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH');"
             "print('WANDB_IMPORTED' if 'wandb' in sys.modules else 'NO_WANDB')")
    r = launch([], cwd=ROOT, module=["-c", probe])
    assert r.returncode == 0, r.stderr
    cfg = OmegaConf.create(r.stdout.split("NO_TORCH")[0].split("TORCH_IMPORTED")[0])
    assert cfg.precision.dtype == "float16" and cfg.optim.grad_clip == 0.5
    assert "NO_TORCH" in r.stdout and "NO_WANDB" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["precision=fp8"], "precision"),
    (["optim.grad_clip=-1"], "optim.grad_clip=-1.0 is invalid"),
    (["optim.accumulation_steps=0"], "optim.accumulation_steps=0 is invalid"),
    (["optim.lr=abc"], "optim.lr"),
])
def test_cli_refuses_bad_input_before_training(launch, tmp_path, args, needle):
    r = launch(args + [f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert needle in out, out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert "Traceback" not in out
    assert "Model params" not in out  # refused before any part was built
    if args == ["precision=fp8"]:
        assert "fp16" in out and "bf16" in out  # lists what is valid
