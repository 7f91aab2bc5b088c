"""The speed benchmarks run and write their numbers: the GPU matrix (its CPU dry run, and its
refusal without CUDA), the packing benchmark, the MoE benchmark and the SFT length generator.
They assert what the numbers are made of (same samples, counts, files), never how fast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import BENCHMARKS, import_benchmark

matrix = import_benchmark("gpu_matrix")
packing_bench = import_benchmark("packing")
moe_bench = import_benchmark("moe")
make_sft = import_benchmark("make_sft")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run")
def test_the_gpu_matrix_refuses_cleanly_without_cuda(tmp_path):
    r = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_matrix.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no CUDA device here" in r.stderr and "--dry-run" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "gpu_matrix.json").exists()


def test_the_default_gpu_matrix_is_the_issue_s_matrix():
    cells = matrix.cells(matrix.MODELS, matrix.PRECISIONS, matrix.MODES, matrix.BATCHES, matrix.LAYOUTS)
    assert {c["model"] for c in cells} == {"minimind2_26m", "minimind3_64m", "minimind3_moe_198m"}
    assert {(c["precision"], c["mode"], c["batch"], c["layout"]) for c in cells} >= {
        (p, m, b, lay) for p in ("bf16", "fp16") for m in ("eager", "compiled") for b in (16, 32)
        for lay in ("padded", "packed")}
    assert len(cells) == 3 * 2 * 2 * (2 * 2 + 1)  # + the full-row (pretraining) cell at batch 16
    modes = [c["mode"] for c in cells]
    assert modes == sorted(modes, key=["eager", "compiled"].index)  # compile time comes last
    assert cells[len(cells) // 2] == {"model": "minimind2_26m", "precision": "bf16", "mode": "compiled",
                                      "batch": 16, "layout": "full"}  # the < 10 ms target, compiled first


def test_the_gpu_matrix_dry_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gm"
    report = matrix.main(["--dry-run", "--out", str(out), "--models", "tiny", "tiny_moe", "--batches", "4"])
    cells = json.loads((out / "gpu_matrix.json").read_text())["cells"]
    assert cells == json.loads(json.dumps(report["cells"]))
    assert [c["status"] for c in cells] == ["ok"] * 6, cells
    for c in cells:
        for key in ("ms_per_step", "tokens_per_s", "loss_tokens_per_s", "peak_mem_mb", "warmup_s"):
            assert c[key] > 0, (key, c)
        assert c["mfu"] is None  # no peak FLOP/s for a CPU
    by = {(c["model"], c["layout"]): c for c in cells}
    for model in ("tiny", "tiny_moe"):
        padded, packed = by[(model, "padded")], by[(model, "packed")]
        assert packed["loss_tokens_per_step"] == padded["loss_tokens_per_step"]  # the same samples
        assert packed["inputs_per_step"] <= padded["inputs_per_step"] and packed["rows"] < 4
        full = by[(model, "full")]
        assert full["inputs_per_step"] == 4 * 32 and full["loss_tokens_per_step"] == 4 * 31
    assert by[("tiny_moe", "full")]["active_params"] < by[("tiny_moe", "full")]["params"]
    md = (out / "gpu_matrix.md").read_text()
    assert md.startswith("GPU matrix: cpu (dry run)") and md.count("| tiny") == 6
    assert "| ms/step | tokens/s | loss tokens/s | MFU | peak MB |" in md


def test_a_cell_out_of_budget_is_written_as_not_run(tmp_path):
    report = matrix.main(["--dry-run", "--out", str(tmp_path), "--models", "tiny", "--batches", "2",
                          "--layouts", "padded", "--budget-s", "0"])
    assert [c["status"] for c in report["cells"]] == ["not run (budget)"]
    assert "not run (budget)" in (tmp_path / "gpu_matrix.md").read_text()


def test_the_sft_generator_spreads_lengths_deterministically(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    stats = make_sft.main(["--out", str(a), "--samples", "300", "--seed", "3"])
    make_sft.generate(b, 300, 3, 160.0, 0.7, 640, None)
    assert a.read_bytes() == b.read_bytes()
    assert stats["samples"] == 300
    assert stats["p10"] < 0.5 * stats["p50"] < stats["p90"] / 1.5  # a spread, not one length
    assert 0.2 < stats["fill_at_max_length"] < 0.7 and 0.0 < stats["over_max_length"] < 0.2
    assert 0.3 < stats["supervised_share"] < 0.9


def test_the_packing_benchmark_reports_each_variant(tmp_path):
    r = packing_bench.main(["--rounds", "1", "--steps", "1", "--windows", "1", "--warmup", "0",
                            "--max-length", "128", "--batch-size", "8", "--packed-batch-size", "16",
                            "--override", "model.hidden_size=64", "--override", "model.num_attention_heads=4",
                            "--json", str(tmp_path / "p.json")])
    v = r["variants"]
    assert list(v) == ["unpacked", "packed", "packed-b16"]
    assert v["packed"]["loss_tokens_per_step"] == v["unpacked"]["loss_tokens_per_step"]  # same samples
    assert v["packed"]["inputs_per_step"] < v["unpacked"]["inputs_per_step"]
    assert v["packed-b16"]["batch_size"] == 16 and v["packed-b16"]["packing"] and not v["unpacked"]["packing"]
    assert v["unpacked"]["loss_tok_s_vs_unpacked"] == 1.0
    assert json.loads((tmp_path / "p.json").read_text())["variants"].keys() == v.keys()


def test_the_moe_benchmark_times_before_and_after(tmp_path):
    r = moe_bench.main(["--rounds", "1", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--seq-len", "16",
                        "--override", "model.hidden_size=64", "--override", "model.num_attention_heads=4"])
    assert set(r["ms_per_step"]) == {"before", "grouped", "dense"} and r["time_vs_before"]["before"] == 1.0
    assert r["auto_strategy"] == "grouped"
