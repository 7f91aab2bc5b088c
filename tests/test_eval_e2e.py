"""Evaluation end to end: launch.py, torchrun and ``python -m minimind.eval`` in subprocesses."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, FAST, LAUNCH, ROOT, run_launch
from omegaconf import OmegaConf
from test_resume import RUN as RESUME_RUN
from test_resume import final_state, kill_and_resume

from minimind.data import asset_path

pytestmark = pytest.mark.slow

HELD_OUT = ["data.val_size=40", "loop.eval_interval=3", "loop.eval_prompts=[Hi,What is 3 + 4?]"]


def rows(run: Path, kind=None):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r.get("kind") == kind] if kind else [r for r in lines if "kind" not in r]


def mm_eval(args, cwd, nproc=1, timeout=300):
    """``python -m minimind.eval ARGS --json`` (under torchrun with ``nproc`` > 1): its JSON and the run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "minimind.eval"]
    else:
        cmd = [sys.executable, "-m", "minimind.eval"]
    r = subprocess.run(cmd + list(args) + ["--json"], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    found = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(found) == 1, r.stdout  # rank 0 answers, once
    return found[0]


def val_file(path: Path, n: int, start: int = 0) -> Path:
    lines = open(asset_path("demo/sft.jsonl")).readlines()[start:start + n]
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalrun")
    r = run_launch(FAST + HELD_OUT + ["loop.max_steps=6", "loop.save_best=true", "loop.log_interval=2",
                                      f"hydra.run.dir={d}/run"], cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d / "run"


def test_a_run_logs_its_evaluations_everywhere(held_out_run):
    run = held_out_run
    evals = rows(run, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["val_samples"] == 40 and r["val_units"] > 0 for r in evals)
    assert [r["step"] for r in rows(run)] == [2, 4, 6]  # the training rows as before
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(3, "Hi"), (3, "What is 3 + 4?"), (6, "Hi"),
                                                           (6, "What is 3 + 4?")]
    log = (run / "train.log").read_text()
    assert "Eval:(6/6) val_loss:" in log and "ppl:" in log and "sample: 'Hi' -> " in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["result_metric"] == "val_loss" and summary["result"] == evals[-1]["val_loss"]
    assert (run / "full_sft_64_best.pth").is_file() and (run / "full_sft_64.pth").is_file()


def test_the_run_val_loss_is_what_minimind_eval_says(held_out_run, tmp_path):
    run = held_out_run
    last = rows(run, "eval")[-1]
    out = mm_eval([str(run)], cwd=tmp_path)  # the run's held-out samples, its final checkpoint
    assert out["val_loss"] == pytest.approx(last["val_loss"], rel=1e-9, abs=0)
    assert (out["val_units"], out["val_samples"], out["data"]) == (last["val_units"], 40, "data.val_size=40")
    assert out["val_ppl"] == pytest.approx(last["val_ppl"], rel=1e-9)
    logged = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()][-2:]
    assert out["samples"] == [{"prompt": s["prompt"], "answer": s["answer"]} for s in logged]  # greedy
    # the best weights (fp16 on disk, so close rather than equal)
    best = min(rows(run, "eval"), key=lambda r: r["val_loss"])
    out = mm_eval([str(run / "full_sft_64_best.pth")], cwd=tmp_path)
    assert out["val_loss"] == pytest.approx(best["val_loss"], rel=5e-3)


def test_a_val_file_run_and_minimind_eval_on_any_jsonl(tmp_path):
    val = val_file(tmp_path / "val.jsonl", 30, start=20)
    run = tmp_path / "run"
    r = run_launch(FAST + [f"data.val_path={val}", "loop.max_steps=4", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    last = rows(run, "eval")[-1]
    assert last["step"] == 4 and last["val_samples"] == 30
    out = mm_eval([str(run), "--data", str(val)], cwd=tmp_path)
    assert out["val_loss"] == pytest.approx(last["val_loss"], rel=1e-9) and out["data"] == f"--data {val}"
    # a bare weights file outside any run: the model from a YAML, the rest from the flags
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "w.pth").write_bytes((run / "full_sft_64.pth").read_bytes())
    model_yaml = tmp_path / "tiny64.yaml"
    tiny = OmegaConf.load(CONF / "model" / "tiny.yaml")
    OmegaConf.save(OmegaConf.merge(tiny, {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}),
                   model_yaml)
    out = mm_eval([str(bare / "w.pth"), "--model", str(model_yaml), "--data", str(val), "--max-length", "64",
                   "--batch-size", "7", "--prompt", "Hi"], cwd=tmp_path)
    assert out["val_loss"] == pytest.approx(last["val_loss"], rel=5e-3)  # fp16 weights, other batches
    assert out["val_samples"] == 30 and [s["prompt"] for s in out["samples"]] == ["Hi"]


def test_two_ranks_evaluate_what_one_process_does(tmp_path):
    common = FAST + ["data.val_size=37", "loop.max_steps=4", "loop.eval_interval=2", "dist.timeout_s=60",
                     "loop.eval_prompts=[Hi]"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(LAUNCH)] + common + ["dist=ddp", "data.batch_size=2", f"hydra.run.dir={tmp_path}/two"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_launch(common + ["data.batch_size=4", f"hydra.run.dir={tmp_path}/one"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    two, one = rows(tmp_path / "two", "eval"), rows(tmp_path / "one", "eval")
    assert [e["step"] for e in two] == [e["step"] for e in one] == [2, 4]  # once, not once per rank
    for a, b in zip(two, one):  # the 2-rank training equals the 1-process one to float rounding
        assert a["val_samples"] == b["val_samples"] == 37 and a["val_units"] == b["val_units"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # the same weights evaluated by 2 ranks (shards of 19 and 18) and by one process
    single = mm_eval([str(tmp_path / "one")], cwd=tmp_path)
    double = mm_eval([str(tmp_path / "one")], cwd=tmp_path, nproc=2)
    assert double["world_size"] == 2 and double["val_samples"] == single["val_samples"] == 37
    assert double["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)
    assert double["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=1e-6)


def test_sigkill_and_resume_stay_bit_exact_with_evaluation(tmp_path):
    args = RESUME_RUN + ["data.val_size=40", "loop.eval_interval=4", "loop.save_best=true", "data.num_workers=0",
                         "loop.eval_prompts=[Hi]", "model.dropout=0.1"]
    ref = tmp_path / "ref"
    r = run_launch(args + [f"hydra.run.dir={ref}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "run"
    kills = kill_and_resume(run, args + [f"hydra.run.dir={run}"], tmp_path, kills=3, rng=random.Random(11), span=8)
    assert kills >= 2 and "resumed from" in (run / "train.log").read_text()
    a, b = final_state(ref), final_state(run)
    assert a["global_step"] == b["global_step"] == 48
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(t, b["optimizer"]["state"][i][n]) for n, t in st.items())
    assert a["eval"] == b["eval"]  # last and best val loss, their steps
    ref_val = {e["step"]: e["val_loss"] for e in rows(ref, "eval")}
    for e in rows(run, "eval"):  # an evaluation repeated after a resume gives the very same loss
        assert e["val_loss"] == ref_val[e["step"]], e
    assert set(ref_val) == {e["step"] for e in rows(run, "eval")} == set(range(4, 49, 4))
    wa = torch.load(ref / "full_sft_64_best.pth", weights_only=True)
    wb = torch.load(run / "full_sft_64_best.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("make,needle", [
    (lambda tmp: ["data.val_size=20000"],
     "Error: data.val_size=20000 holds out 20000 samples, but data.path has only 16000"),
    (lambda tmp: [f"data.val_path={asset_path('demo/pretrain.jsonl')}"],
     f"Error: data.val_path='{asset_path('demo/pretrain.jsonl')}': {asset_path('demo/pretrain.jsonl')}, "
     "line 1: missing key \"conversations\""),
    (lambda tmp: [f"data.val_path={tmp}/missing.jsonl"], "Error: data.val_path="),
], ids=["val_size-too-big", "val_path-wrong-format", "val_path-missing"])
def test_held_out_data_that_cannot_work_is_refused_in_one_line(tmp_path, make, needle):
    r = run_launch(FAST + make(tmp_path) + [f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith(needle) and err.count("\n") == 0, err
    assert "Traceback" not in r.stdout + r.stderr and "Model params" not in r.stdout + r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_minimind_eval_refuses_what_it_cannot_evaluate(tmp_path):
    r = run_launch([str(tmp_path / "nowhere")], cwd=tmp_path, module=["-m", "minimind.eval"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "nowhere: no such file or directory" in r.stderr
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    r = run_launch([str(weights), "--data", "x.jsonl"], cwd=tmp_path, module=["-m", "minimind.eval"])
    assert r.returncode == 2 and "give --model conf/model/<name>.yaml" in r.stderr


def test_the_demo_shows_a_falling_val_loss_and_its_answers(tmp_path):
    """``python launch.py`` as it ships (held-out dialogues, prompts), shortened."""
    run = tmp_path / "run"
    r = run_launch(["loop.max_steps=150", "loop.eval_interval=50", "loop.progress=false", "device=cpu",
                    f"hydra.run.dir={run}"], cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    evals = rows(run, "eval")
    assert [e["step"] for e in evals] == [50, 100, 150] and all(e["val_samples"] == 256 for e in evals)
    losses = [e["val_loss"] for e in evals]
    assert losses[0] > losses[1] > losses[2], losses
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 9 and samples[0]["prompt"] == "What is the capital of Zorvia?"
    assert "sample: 'What is the capital of Zorvia?' -> " in (run / "train.log").read_text()


def test_a_local_sweep_reports_val_loss(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_launch(["-m", "optim.grad_clip=0.5,1.0", *FAST, "data.val_size=32", "loop.max_steps=4",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_launch([str(sweep), "--no-plot"], cwd=tmp_path, module=["-m", "minimind.report"])
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    assert "val loss" in header and "best val" in header
    with open(sweep / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for job in table:
        summary = json.loads((Path(job["job_dir"]) / "summary.json").read_text())
        assert summary["result_metric"] == "val_loss"
        assert float(job["val_loss"]) == pytest.approx(summary["val_loss"])
        assert f"{summary['val_loss']:.4f}" in r.stdout


def test_eval_help_runs_without_a_checkout(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimind.eval", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--data" in r.stdout and str(ROOT) not in r.stdout
