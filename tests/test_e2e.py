"""End to end: the real ``launch.py`` in a subprocess, its files and its numbers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST

pytestmark = pytest.mark.slow


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_launch_trains_and_writes_its_files(launch, tmp_path):
    run = tmp_path / "run"
    r = launch(FAST + ["loop.max_steps=40", "loop.log_interval=5", "loop.save_interval=20",
                       "optim.lr=3e-3", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.jsonl",
                 "summary.json", "events.jsonl", "full_sft_64.pth"):  # the demo is SFT: upstream's name
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000020.pt", "step_00000040.pt"]

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(5, 45, 5))
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "scale", "tokens_per_s", "skipped"):
        assert key in metrics[0], key
    assert metrics[-1]["loss"] < 0.8 * metrics[0]["loss"]
    assert metrics[0]["scale"] is None  # fp32: no loss scale

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 40
    assert summary["final_loss"] == pytest.approx(metrics[-1]["loss"])
    # processed positions: at most batch x max_length per step (padding tails are skipped)
    assert 0 < summary["tokens"] <= 40 * 4 * 64 and summary["tokens_per_s"] > 0
    assert "loop.max_steps=40" in summary["overrides"]

    log = (run / "train.log").read_text()
    assert "Epoch:[1/1](40/40)" in log and "grad_norm:" in log and "tok/s:" in log
    assert "Model params" in log or "params" in log.lower()

    weights = torch.load(run / "full_sft_64.pth", weights_only=True)
    assert weights["model.embed_tokens.weight"].dtype == torch.float16
    assert "lm_head.weight" in weights


def test_fp16_run_logs_the_loss_scale(launch, tmp_path):
    run = tmp_path / "run"
    r = launch(FAST + ["precision=fp16", "optim.grad_clip=0.5", "loop.max_steps=6", "loop.log_interval=3",
                       f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = read_jsonl(run / "metrics.jsonl")
    assert metrics[0]["scale"] > 0
    cfg = (run / ".hydra" / "config.yaml").read_text()
    assert "dtype: float16" in cfg and "grad_clip: 0.5" in cfg


def test_compiled_run_resumes_and_matches_eager(launch, tmp_path):
    """loop.compile=true wires torch.compile around the model; with the eager backend the numbers
    must be the uncompiled run's bit for bit, through a resume, and checkpoints keep upstream keys."""
    common = FAST + ["loop.log_interval=1", "loop.save_interval=3"]
    r = launch(common + ["loop.max_steps=6", f"hydra.run.dir={tmp_path}/plain"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    compiled = common + ["loop.compile=true", "loop.compile_backend=eager", f"hydra.run.dir={tmp_path}/compiled"]
    resume = f"loop.resume={tmp_path}/plain/checkpoints/step_00000003.pt"  # steps 4-6 compiled
    r = launch(compiled + ["loop.max_steps=6", resume], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    a = torch.load(tmp_path / "plain" / "checkpoints" / "step_00000006.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "checkpoints" / "step_00000006.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and not any(k.startswith("_orig_mod") for k in b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed from" in (tmp_path / "compiled" / "train.log").read_text()
