"""The report explains the update step: clip share, loss-scale path, tokens, curves vs tokens, report.md.

Hand-written job folders for the edge cases (strictly above the threshold, requeued steps, clipping
off), and one real tiny ``launch.py -m`` sweep whose metrics.jsonl is counted directly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST, run_launch
from test_report import JOBS, TASK, ev, metric, summary_of, write_job, write_multirun

from minimind import report
from minimind.report.update_step import tokens_at, update_stats


def test_clip_share_counts_steps_strictly_above_the_threshold():
    rows = [metric(s, 3.0, g) for s, g in [(1, 0.5), (2, 1.0), (3, 1.5), (4, float("nan")), (5, 2.0)]]
    stats = update_stats(rows, 1.0)
    assert stats["logged_steps"] == 4  # nan is not a number the norm had: not a logged norm
    assert stats["clipped_steps"] == 2  # 1.0 equals the threshold: clip_grad_norm_ leaves it
    assert stats["clip_share"] == pytest.approx(0.5)
    assert update_stats(rows, None)["clip_share"] is None
    assert update_stats(rows, None)["clipped_steps"] is None


def test_requeued_steps_are_counted_once_and_scale_path():
    rows = [dict(metric(s, 3.0, g), scale=sc) for s, g, sc in
            [(10, 5.0, 65536.0), (20, 5.0, 32768.0), (20, 0.1, 16384.0), (30, 0.1, 32768.0)]]
    stats = update_stats(rows, 1.0)  # step 20 was logged twice (a requeue): the rerun counts
    assert (stats["logged_steps"], stats["clipped_steps"]) == (3, 1)
    assert (stats["scale_first"], stats["scale_last"], stats["scale_min"]) == (65536.0, 32768.0, 16384.0)
    assert stats["tokens"] == 30 * 512
    assert stats["token_curve"] == [(5120.0, 3.0), (10240.0, 3.0), (15360.0, 3.0)]
    assert stats["grad_curve"] == [(5120.0, 5.0), (10240.0, 0.1), (15360.0, 0.1)]


def test_val_points_get_tokens_by_interpolating_the_training_rows():
    rows = [dict(metric(10, 3.0, 1.0), tokens=1000), dict(metric(20, 3.0, 1.0), tokens=3000)]
    assert tokens_at(rows, [(10, 2.5), (15, 2.4), (20, 2.3), (25, 2.2)]) == [
        (1000, 2.5), (2000.0, 2.4), (3000, 2.3)]  # step 25 is past the last row: dropped


def test_collect_reads_grad_clip_from_the_job_config_and_off_means_none(tmp_path):
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    norms = [0.2, 0.4, 0.6, 0.8]
    for num, clip in [(0, 0.3), (1, 0.5), (2, None), (3, 0)]:
        write_job(sweep, num, JOBS[num], grad_clip=clip,
                  events=[ev("start", 1.0), ev("completed", 2.0)],
                  metrics=[metric(10 * (i + 1), 2.0, g) for i, g in enumerate(norms)]
                  + [{"kind": "eval", "step": 40, "val_loss": 2.5, "grad_norm": 99.0}],
                  summary=summary_of("completed", optimizer_steps=40, tokens=40 * 512, grad_clip=7.0))
    rows = report.collect(sweep)
    assert [r["grad_clip"] for r in rows] == [0.3, 0.5, None, None]  # config.yaml wins over summary
    assert [r["clip_share"] for r in rows] == [0.75, 0.5, None, None]  # the eval row is not a step
    assert [r["tokens"] for r in rows] == [40 * 512] * 4
    assert rows[0]["val_token_curve"] == [(40 * 512, 2.5)]

    # no config.yaml: the summary's grad_clip
    (sweep / "0" / ".hydra" / "config.yaml").unlink()
    assert report.collect(sweep)[0]["clip_share"] == 0.0  # 7.0 is above every norm


def test_report_md_and_csv(tmp_path, capsys):
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    write_job(sweep, 0, JOBS[0], grad_clip=0.3, events=[ev("start", 1.0), ev("completed", 2.0)],
              metrics=[dict(metric(10, 2.0, 0.2), scale=1024.0), dict(metric(20, 1.9, 0.4), scale=512.0)],
              summary=summary_of("completed", optimizer_steps=20, skipped_steps=1))
    write_job(sweep, 1, JOBS[1], grad_clip=None, events=[ev("start", 1.0)], metrics=[metric(10, 2.0, 0.2)])
    assert report.main([str(sweep), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "clipped" in out.splitlines()[0] and "50%" in out.splitlines()[2]
    md = (sweep / "report.md").read_text()
    assert "| job | overrides | status |" in md
    assert ("**job 0** (grad_clip=0.3 accum=1, completed): 20 optimizer steps saw 10,240 tokens "
            "(512 tokens per optimizer step, accumulation 1). The pre-clip gradient norm exceeded "
            "grad_clip=0.3 on 1 of 2 logged steps (50%") in md
    assert "fp16 loss scale went 1024 -> 512 (min 512). 1 steps were skipped" in md
    assert "**job 1** (grad_clip=0.3 accum=4, running): " in md and "Clipping was off" in md
    with open(sweep / "report.csv") as f:
        got = list(csv.DictReader(f))
    assert (got[0]["clip_share"], got[0]["clipped_steps"], got[0]["scale_min"]) == ("0.5", "1", "512.0")
    assert got[1]["clip_share"] == ""


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A real 2-job sweep (fp16 on CPU, one with clipping, one without), 6 steps, every step logged."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = tmp / "sw"
    r = run_launch(["-m"] + FAST + ["precision=fp16", "optim.grad_clip=2.3,null", "loop.max_steps=6",
                                    "loop.log_interval=1", f"hydra.sweep.dir={sweep}"], cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_clip_share_equals_a_count_from_a_real_metrics_jsonl(real_sweep, capsys):
    assert report.main([str(real_sweep)]) == 0
    rows = report.collect(real_sweep)
    lines = [json.loads(x) for x in (real_sweep / "0" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [m for m in lines if "kind" not in m]
    assert [m["step"] for m in steps] == list(range(1, 7))
    clipped = sum(1 for m in steps if m["grad_norm"] > 2.3)
    assert rows[0]["grad_clip"] == 2.3
    assert rows[0]["clipped_steps"] == clipped
    assert rows[0]["clip_share"] == pytest.approx(clipped / 6)
    assert rows[0]["tokens"] == steps[-1]["tokens"] > 0
    assert rows[0]["scale_first"] == steps[0]["scale"] and rows[0]["scale_min"] == min(m["scale"] for m in steps)
    assert rows[0]["token_curve"] == [(m["tokens"], m["loss"]) for m in steps]
    assert yaml.safe_load((real_sweep / "1" / ".hydra" / "config.yaml").read_text())["optim"]["grad_clip"] is None
    assert rows[1]["clip_share"] is None
    md = (real_sweep / "report.md").read_text()
    assert f"exceeded grad_clip=2.3 on {clipped} of 6 logged steps ({clipped / 6:.0%}" in md
    assert (real_sweep / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert Path(real_sweep / "report.csv").is_file()
