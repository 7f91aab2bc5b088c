"""``python benchmarks/step.py``: the CLI writes every number, and the MFU arithmetic is right."""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import BENCHMARKS, import_benchmark

bench = import_benchmark("step")
startup = import_benchmark("startup")

KEYS = {"framework_tokens_per_s", "bare_tokens_per_s", "ratio", "peak_mem_mb", "bare_peak_mem_mb",
        "mfu", "framework_ms_per_step", "bare_ms_per_step", "device", "model", "params", "precision",
        "batch_size", "seq_len", "accum", "compile", "torch"}


def test_flops_per_token_palm_convention():
    # 6 N + 12 L H Q T
    assert bench.flops_per_token(1000, 2, 4, 8, 16) == 6 * 1000 + 12 * 2 * 4 * 8 * 16 == 18288
    # MiniMind2-26M at seq 340 (the GPU benchmark's shape)
    assert bench.flops_per_token(25_829_888, 8, 8, 64, 340) == 154_979_328 + 16_711_680


def test_mfu_on_a_known_example():
    # 1e6 tokens/s x 18288 FLOPs/token on a 1e12 FLOP/s device = 1.8288 %
    assert math.isclose(bench.mfu(1e6, 18288, 1e12), 0.018288)
    # 26M, batch 16 x 340 in 10 ms on an H100 SXM: 544k tokens/s -> 9.4 % MFU
    fpt = bench.flops_per_token(25_829_888, 8, 8, 64, 340)
    value = bench.mfu(16 * 340 / 0.010, fpt, bench.peak_flops("NVIDIA H100 80GB HBM3"))
    assert math.isclose(value, 544_000 * 171_691_008 / 989e12)
    assert 0.094 < value < 0.095
    assert bench.mfu(1e6, 18288, None) is None  # unknown device (and every CPU)


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12), ("NVIDIA H200", 989e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA GeForce RTX 4090", 165e12), ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA GeForce GTX 1080", None), ("Tesla T4", None), (None, None),
])
def test_peak_flops_table(name, flops):
    assert bench.peak_flops(name) == flops


def test_importtime_parser():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |   _io\n"
              "import time:      5000 |     900000 | torch\n"
              "import time:        80 |         80 |     wandb.sdk\n")
    assert startup._imported_modules(stderr) == ["_io", "torch", "wandb.sdk"]


def test_proc_probes_read_this_process():
    probes = import_benchmark("probes")
    mem = probes.status_kb()
    if not mem:
        pytest.skip("no /proc")
    assert mem["VmHWM"] >= mem["VmRSS"] > 0
    assert probes.process_tree(os.getpid())[0] == os.getpid()
    assert probes.current_rss_mb() > 0 and probes.meminfo_kb("MemTotal") > 0
    assert probes.other_cpu(probes.cpu_snapshot(), probes.cpu_snapshot()) >= 0


def test_overrides_follow_the_options():
    args = bench.parse_args(["--model", "minimind2_26m", "--precision", "fp16", "--accum", "4",
                             "--batch-size", "8", "--seq-len", "64", "--grad-clip", "none",
                             "--compile", "--device", "cpu"])
    o = bench.framework_overrides(args)
    for expected in ("model=minimind2_26m", "precision=fp16", "optim.accumulation_steps=4",
                     "data.batch_size=8", "data.max_length=64", "optim.grad_clip=null", "device=cpu",
                     "loop.compile=true", "model.vocab_size=6400"):
        assert expected in o


@pytest.mark.slow
def test_bench_cli_writes_every_key(tmp_path, launch):
    out = tmp_path / "out.json"
    p = launch(["--model", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "1", "--batch-size", "2",
                "--seq-len", "32", "--json", str(out), "--vocab-size", "768", "--device", "cpu"],
               cwd=tmp_path, module=[str(BENCHMARKS / "step.py")], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ratio framework/bare" in p.stdout
    r = json.loads(out.read_text())
    assert KEYS <= set(r), KEYS - set(r)
    assert isinstance(r["ratio"], float) and r["ratio"] > 0 and math.isfinite(r["ratio"])
    for key in ("framework_tokens_per_s", "bare_tokens_per_s", "framework_ms_per_step",
                "bare_ms_per_step", "peak_mem_mb", "bare_peak_mem_mb"):
        assert r[key] > 0, key
    assert r["mfu"] is None  # CPU
    assert (r["model"], r["precision"], r["batch_size"], r["seq_len"], r["accum"], r["compile"]) == \
        ("tiny", "fp32", 2, 32, 1, False)
    assert r["vocab_size"] == 768 and r["device"] == "cpu" and r["fused_adamw"] is True
    assert r["params"] > 0 and r["torch"]
