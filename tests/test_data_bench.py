"""``python benchmarks/data.py``: a tiny end-to-end run writes every number, and its helpers
(generation, page-cache drop, the GPU arithmetic) do what they say. The exactness of the datasets'
prefix tokenization is tested in ``test_data_prefix.py``."""

from __future__ import annotations

import json
import os

import pytest
from conftest import BENCHMARKS, import_benchmark, run_launch

bench = import_benchmark("data")
files = import_benchmark("data_files")
measure = import_benchmark("data_measure")


def _positive(d: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, (k, d[k])


def _check_common(res: dict, kind: str) -> None:
    assert res["kind"] == kind
    _positive(res["generate"], "bytes", "lines", "seconds")
    _positive(res["page_cache"], "raw_read_cold_s", "raw_read_warm_s")
    assert isinstance(res["page_cache"]["took_effect"], bool)
    _positive(res["index"], "cold_construct_s", "cold_index_build_s", "warm_construct_s", "samples")
    assert res["index"]["warm_cache_hit"] is True
    _positive(res["profile"], "getitem_ms", "encode_ms", "encode_prefix_ms", "chars_per_sample")
    assert [r["workers"] for r in res["loader"]] == [0]
    _positive(res["loader"][0], "samples_per_s", "batches_per_s", "samples_per_s_per_worker", "first_batch_s")
    assert "prototype_prefix" not in res  # the datasets themselves tokenize only what they keep
    _positive(res["pretokenize"], "build_s", "slice_samples")
    assert res["pretokenize"]["mismatches"] == 0 and res["pretokenize"]["checked"] > 0
    _positive(res["pretokenize"]["loader"][0], "samples_per_s")
    for key in ("target", "rtx3090", "target_pretokenized"):
        _positive(res["gpu"][key], "gpu_samples_per_s", "loader_samples_per_s", "ratio")
        assert isinstance(res["gpu"][key]["meets_5x"], bool)
    assert res["gpu"]["target"]["gpu_ms_per_step"] == 10.0 and res["gpu"]["rtx3090"]["gpu_ms_per_step"] == 45.0
    assert isinstance(res["targets"]["loader_ok"], bool)


@pytest.mark.slow
def test_cli_writes_every_number(tmp_path):
    """sft with the training runs (cold and warm), pretrain without: about 45 s on 2 cores."""
    common = ["--size-gb", "0.005", "--batches", "5", "--workers", "0", "--pretokenize-mb", "1"]
    out = tmp_path / "sft.json"
    proc = run_launch(["--kind", "sft", *common, "--train-steps", "2", "--json", str(out)], cwd=tmp_path,
                      timeout=240, module=[str(BENCHMARKS / "data.py")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target loader 5x" in proc.stdout
    res = json.loads(out.read_text())
    _check_common(res, "sft")
    for mode in ("cold", "warm"):
        r = res["train"][mode]
        _positive(r, "seconds_to_loop_start", "seconds_to_first_step", "wall_s", "peak_main_rss_mb",
                  "peak_main_hwm_mb", "peak_tree_rss_mb", "peak_tree_pss_mb", "wait4_maxrss_mb",
                  "rusage_children_maxrss_mb")
        assert r["steps_logged"] == 2
        assert r["seconds_to_loop_start"] <= r["seconds_to_first_step"] <= r["wall_s"]
    t = res["targets"]
    for k in ("rss_ok", "cold_ok", "warm_ok"):
        assert isinstance(t[k], bool)
    _positive(t, "peak_rss_main_mb", "first_step_cold_s", "first_step_warm_s")
    assert not os.path.exists(res["dir"])  # the temp dir is gone

    out = tmp_path / "pretrain.json"
    proc = run_launch(["--kind", "pretrain", *common, "--skip-train", "--json", str(out)], cwd=tmp_path,
                      timeout=120, module=[str(BENCHMARKS / "data.py")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    _check_common(res, "pretrain")
    assert "train" not in res and res["max_length"] == 340 and res["batch_size"] == 32


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_generated_lines_are_valid_and_sized(tmp_path, kind):
    from minimind.data.pretrain import validate_pretrain
    from minimind.data.sft import validate_sft

    path = str(tmp_path / "x.jsonl")
    g = files.generate(kind, path, 300_000, seed=3)
    data = open(path, "rb").read()
    assert g["bytes"] == len(data) and 250_000 < len(data) <= 300_000
    lines = data.splitlines()
    assert len(lines) == g["lines"]
    check = validate_pretrain if kind == "pretrain" else validate_sft
    assert all(check(line) is None for line in lines)
    objs = [json.loads(line) for line in lines]
    if kind == "pretrain":
        lengths = [len(o["text"]) for o in objs]
        assert min(lengths) >= 450 and max(lengths) <= 3200
        assert any("\u4e00" <= ch <= "\u9fff" for ch in objs[0]["text"])  # mixed Chinese / English
    else:
        pairs = {sum(m["role"] == "assistant" for m in o["conversations"]) for o in objs}
        assert pairs <= {1, 2, 3, 4} and len(pairs) > 1


def test_page_cache_drop(tmp_path):
    path = str(tmp_path / "x.jsonl")
    files.generate("pretrain", path, 2_000_000)
    assert files.drop_from_page_cache(path)
    frac = files.resident_fraction(path)
    if frac is None:
        pytest.skip("mincore unavailable")
    assert 0.0 <= frac <= 1.0
    files.raw_read_seconds(path)
    assert files.resident_fraction(path) > 0.5  # read back in


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_check_same_and_profile_on_generated_data(tmp_path, kind):
    """The bench's item comparison and per-sample profile (which asserts that the prefix the
    datasets tokenize gives the full encoding's first ids) on generated data."""
    path = str(tmp_path / "x.jsonl")
    files.generate(kind, path, 1_000_000, seed=5)
    for max_length in (16, 340):
        ds, _ = measure.construct(kind, path, None, max_length)
        pre, _ = measure.construct(kind, path, None, max_length, pretokenize=True)
        assert measure.check_same(ds, pre, n=100) == {"checked": 100, "mismatches": 0}
        assert ds.stats()["truncated"] == pre.stats()["truncated"] > 0
        prof = measure.profile_samples(ds, kind, n=20)
        assert prof["encode_prefix_ms"] > 0 and 0 < prof["text_fraction_needed"] <= 1


def test_gpu_compare_arithmetic():
    c = bench.gpu_compare(8000.0, 1000.0, 16, 340, 10.0)
    assert c["gpu_samples_per_s"] == 1600.0 and c["ratio"] == 5.0 and c["meets_5x"]
    assert c["workers_needed_for_5x"] == 8
    rows = [{"workers": 0, "samples_per_s": 500.0, "samples_per_s_per_worker": 500.0},
            {"workers": 2, "samples_per_s": 900.0, "samples_per_s_per_worker": 450.0}]
    assert bench.best_and_per_worker(rows) == (900.0, 450.0)
    rows[1]["samples_per_s"] = 400.0  # workers did not help: nothing to project
    assert bench.best_and_per_worker(rows) == (500.0, None)
