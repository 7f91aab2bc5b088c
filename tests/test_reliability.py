"""Bad input is refused with one clear line; NaN and full disks never cost saved work."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from conftest import FAST, run_launch

from minimind.errors import CheckpointError, ConfigError, TrainingError
from minimind.train import build_trainer


def make_checkpoint_of_another_shape(tmp_path):
    r = run_launch(FAST + ["model.hidden_size=32", "model.num_attention_heads=2", "model.num_key_value_heads=1",
                           "loop.max_steps=1", f"hydra.run.dir={tmp_path}/other"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "other" / "checkpoints" / "step_00000001.pt"


def cases(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"conversations": [{"role": "user", "content": "hi"}, '
                         '{"role": "assistant", "content": "yo"}]}\n{"text": 1\n')
    no_assistant = tmp_path / "noassistant.jsonl"
    no_assistant.write_text('{"conversations": [{"role": "user", "content": "hi"}]}\n')
    return [
        # (overrides, what the one line must say, fast: refused before torch is even imported)
        (["precision=fp8"], "precision=fp8 is not an option of group precision; valid: bf16, fp16, fp32", True),
        (["optim.gradclip=1"], "unknown config key 'optim.gradclip' (did you mean optim.grad_clip?)", True),
        (["optim.lr=abc"], "optim.lr='abc' is invalid: expected a float", True),
        (["optim.grad_clip=0"], "optim.grad_clip=0.0 is invalid: must be > 0, or null to disable clipping", False),
        (["optim.grad_clip=-1"], "optim.grad_clip=-1.0 is invalid", False),
        (["optim.accumulation_steps=0"], "optim.accumulation_steps=0 is invalid: must be an integer >= 1", False),
        (["data.batch_size=0"], "data.batch_size=0 is invalid: must be an integer >= 1", False),
        (["optim.lr=-0.001"], "optim.lr=-0.001 is invalid: must be >= 0", False),
        (["data.max_length=4"], "data.max_length=4 is invalid: must be an integer >= 8", False),
        (["optim.warmup_steps=100000"], "optim.warmup_steps=100000 is invalid: the run has only", False),
        (["device=cuda"], "device=cuda is invalid: no CUDA device is visible here", False),
        ([f"data.path={tmp_path}/missing.jsonl"], "missing.jsonl': no such file", False),
        ([f"data.tokenizer={tmp_path}/nope"], "not a tokenizer directory", False),
        ([f"data.path={bad_jsonl}"], f"{bad_jsonl}, line 2", False),
        ([f"data.path={no_assistant}"], f"{no_assistant}, line 1", False),
        ([f"model.from_weight={text}"], "notes.txt", False),
        ([f"model.from_weight={listing}"], "list.pth", False),
        ([f"loop.resume={tmp_path}/nothing.pt"], "loop.resume=", False),
    ]


@pytest.mark.slow
def test_every_bad_input_gets_one_clear_line(tmp_path):
    other_shape = make_checkpoint_of_another_shape(tmp_path)
    catalogue = cases(tmp_path) + [
        ([f"loop.resume={other_shape}"], "does not fit this model", False)]
    for overrides, needle, fast in catalogue:
        run = tmp_path / "run"
        r = run_launch(FAST + ["loop.max_steps=2"] + overrides + [f"hydra.run.dir={run}"], cwd=tmp_path)
        assert r.returncode != 0, overrides
        assert "Traceback" not in r.stderr + r.stdout, (overrides, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and needle in errors[0], (overrides, r.stderr)
        assert not (run / "metrics.jsonl").exists(), overrides  # refused before training
        if fast:  # refused by the override check, before Hydra made the run folder
            assert not run.exists(), overrides
    r = run_launch(FAST + [f"loop.resume={other_shape}", f"hydra.run.dir={tmp_path}/run2"], cwd=tmp_path)
    assert "model.layers.0.self_attn.q_proj.weight" in r.stderr  # names the keys that differ


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    r = run_launch(FAST + ["optim.grad_clip=-1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_unsupported_precision_on_the_device_is_refused(monkeypatch):
    from minimind import precision

    class NoFp16:
        def __init__(self, device_type, dtype):
            raise RuntimeError("autocast on cpu does not support float16")

    monkeypatch.setattr(precision.torch, "autocast", NoFp16)
    with pytest.raises(ConfigError, match=r"precision=fp16 is not supported on device cpu.*valid here: fp32"):
        precision._check_supported("fp16", torch.float16, torch.device("cpu"))


def poison(trainer, at_steps):
    """Make the loss NaN for the optimizer steps in ``at_steps`` (1-based)."""
    model = trainer.update.model

    class Poisoned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            out = self.inner(x)
            if trainer.progress.step + 1 in at_steps:
                out.logits = out.logits * float("nan")
            return out

    trainer.update.model = Poisoned()


def test_nan_stops_the_run_names_the_step_and_keeps_the_last_good_checkpoint(cfg_factory, tmp_path):
    tr = build_trainer(cfg_factory(["loop.max_steps=12", "loop.save_interval=4", "loop.log_interval=3"]), tmp_path)
    poison(tr, {6})
    with pytest.raises(TrainingError) as e:
        tr.fit()
    msg = str(e.value)
    assert "loss became NaN/inf at step 6" in msg and "step_00000004.pt" in msg
    assert "optim.lr" in msg and "precision=bf16" in msg  # what to try
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == ["step_00000004.pt"]  # nothing after the NaN reached the disk
    state = torch.load(tmp_path / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_skip_skips_the_update_and_counts_it(cfg_factory, tmp_path):
    tr = build_trainer(cfg_factory(["loop.max_steps=8", "loop.save_interval=100", "loop.log_interval=4",
                                    "loop.on_nan=skip"]), tmp_path)
    poison(tr, {3, 5})
    tr.fit()
    assert tr.progress.step == 8 and tr.progress.nan_skips == 2
    assert tr.history[-1]["skipped"] == 2
    assert all(torch.isfinite(p).all() for p in tr.raw_model.parameters())
    summary = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert summary["event"] == "completed"


def test_nan_skip_gives_up_after_max_nan_skips_in_a_row(cfg_factory, tmp_path):
    tr = build_trainer(cfg_factory(["loop.max_steps=20", "loop.save_interval=2", "loop.on_nan=skip",
                                    "loop.max_nan_skips=3"]), tmp_path)
    poison(tr, set(range(5, 100)))
    with pytest.raises(TrainingError, match=r"NaN/inf for 3 steps in a row \(loop.max_nan_skips=3\) at step 7"):
        tr.fit()
    # the skipped steps 5 and 6 left the weights as they were: the step 6 checkpoint is good too
    saved = sorted((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in saved] == ["step_00000004.pt", "step_00000006.pt"]
    for path in saved:
        assert all(torch.isfinite(t).all() for t in torch.load(path, weights_only=True)["model"].values())


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(cfg_factory, tmp_path, monkeypatch):
    import minimind.checkpoint as ckpt

    tr = build_trainer(cfg_factory(["loop.max_steps=8", "loop.save_interval=2"]), tmp_path)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            f.write(b"PK\x03\x04" + b"x" * 1000)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)
    with pytest.raises(CheckpointError) as e:
        tr.fit()
    msg = str(e.value)
    assert "No space left on device" in msg and "step_00000002.pt is intact" in msg
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["step_00000002.pt"]  # no half-written file, the previous one untouched
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert ckpt.load_file(tmp_path / "checkpoints" / "step_00000002.pt")["global_step"] == 2
