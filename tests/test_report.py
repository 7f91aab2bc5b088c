"""``python -m minimind.report``: fake sweep dirs written by hand (no training, no SLURM)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from minimind import report

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
TASK = ["optim.grad_clip=0.3,1.0", "optim.accumulation_steps=1,4"]
# BasicSweeper order: the first key varies slowest
JOBS = [
    ["optim.grad_clip=0.3", "optim.accumulation_steps=1"],
    ["optim.grad_clip=0.3", "optim.accumulation_steps=4"],
    ["optim.grad_clip=1.0", "optim.accumulation_steps=1"],
    ["optim.grad_clip=1.0", "optim.accumulation_steps=4"],
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- fixture writers


def write_multirun(sweep: Path, task: List[str], params: Optional[Dict[str, str]] = None,
                   max_batch_size: Optional[int] = None) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    cfg = {
        "hydra": {
            "mode": "MULTIRUN",
            "sweep": {"dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}", "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": BASIC, "max_batch_size": max_batch_size, "params": params},
            "overrides": {"hydra": ["hydra/launcher=slurm", "hydra.mode=MULTIRUN"], "task": list(task)},
            "job": {"name": "train", "num": "???"},
        },
        "optim": {"grad_clip": 1.0, "accumulation_steps": 1, "lr": 5e-4},
        "seed": 42,
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def write_job(sweep: Path, num: int, overrides: List[str], *, events: Optional[List[Dict]] = None,
              metrics: Optional[List[Dict]] = None, summary: Optional[Dict] = None,
              job_id: Optional[str] = None, grad_clip: float = 1.0, accum: int = 1) -> Path:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True, exist_ok=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + ["hydra/launcher=slurm"]))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"optim": {"grad_clip": grad_clip, "accumulation_steps": accum, "lr": 5e-4}, "seed": 42}))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"name": "train", "num": num, "id": job_id or f"job_id_for_{num}"}}}))
    (d / "train.log").write_text("[2026-11-28 12:00:00,000][minimind][INFO] - training\n")
    if events is not None:
        (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if metrics is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return d


def metric(step: int, loss: float, grad_norm: float, *, skipped: int = 0, elapsed: float = 0.0,
           tps: float = 1000.0) -> Dict[str, Any]:
    return {"step": step, "total_steps": 40, "epoch": 1, "epochs": 1, "loss": loss, "loss_avg": loss,
            "lr": 5e-4, "grad_norm": grad_norm, "scale": None, "skipped": skipped, "tokens": step * 512,
            "tokens_per_s": tps, "elapsed_s": elapsed, "eta_s": 0.0, "samples_in_epoch": step * 8}


def ev(name: str, t: float, **fields: Any) -> Dict[str, Any]:
    return {"event": name, "time": t, **fields}


def summary_of(status: str, **fields: Any) -> Dict[str, Any]:
    data = {"status": status, "final_loss": None, "best_loss": None, "optimizer_steps": 0, "tokens": 0,
            "wall_time_s": 0.0, "tokens_per_s": 0.0, "skipped_steps": 0, "resumed_from": None,
            "world_size": 1, "overrides": [], "model_parameters": 1000, "precision": "fp32",
            "grad_clip": 1.0, "accumulation_steps": 1}
    data.update(fields)
    return data


def make_sweep(sweep: Path, failed_job_dir: bool = True) -> Path:
    """The 2x2 grad_clip x accumulation sweep: jobs 0 and 3 completed, job 1 completed after one
    requeue, job 2 failed (error in summary.json; or, with ``failed_job_dir=False``, no job dir at
    all and only submitit's result pickle)."""
    write_multirun(sweep, TASK)
    # job 0: completed
    write_job(sweep, 0, JOBS[0], grad_clip=0.3, accum=1,
              events=[ev("start", 1.0, step=0, total_steps=40, world_size=1, resumed_from=None),
                      ev("checkpoint", 5.0, step=20), ev("completed", 9.0, step=40, final_loss=2.2)],
              metrics=[metric(10, 3.0, 1.0, elapsed=2.0), metric(20, 2.5, 2.0, elapsed=4.0),
                       metric(30, 2.0, 4.0, skipped=1, elapsed=6.0),
                       metric(40, 2.2, 3.0, skipped=1, elapsed=8.0)],
              summary=summary_of("completed", final_loss=2.2, best_loss=2.0, optimizer_steps=40,
                                 tokens_per_s=1234.5, wall_time_s=61.0, skipped_steps=1))
    # job 1: interrupted at step 25 (last checkpoint at 20), requeued, resumed, completed
    write_job(sweep, 1, JOBS[1], grad_clip=0.3, accum=4,
              events=[ev("start", 1.0, step=0, total_steps=40, world_size=1, resumed_from=None),
                      ev("checkpoint", 3.0, step=20), ev("interrupted", 4.0, step=25, final_loss=2.6),
                      ev("resume", 10.0, path="checkpoints/step_20.pt", step=20, epoch=0),
                      ev("start", 10.5, step=20, total_steps=40, world_size=1,
                         resumed_from="checkpoints/step_20.pt"),
                      ev("completed", 20.0, step=40, final_loss=1.9)],
              metrics=[metric(10, 3.1, 0.5), metric(20, 2.8, 0.7), metric(25, 2.6, 0.9),
                       metric(30, 2.4, 0.6), metric(40, 1.9, 0.8)],
              summary=summary_of("completed", final_loss=1.9, best_loss=1.9, optimizer_steps=40,
                                 tokens_per_s=900.0, wall_time_s=30.0, skipped_steps=0,
                                 resumed_from="checkpoints/step_20.pt"))
    # job 2: failed
    if failed_job_dir:
        write_job(sweep, 2, JOBS[2], grad_clip=1.0, accum=1,
                  events=[ev("start", 1.0, step=0, total_steps=40, world_size=1, resumed_from=None)],
                  metrics=[metric(10, 5.0, 10.0), metric(20, 7.5, 50.0)],
                  summary={"status": "failed", "error": "FloatingPointError: loss is nan at step 21",
                           "traceback": "Traceback (most recent call last):\n  ...\n"
                                        "FloatingPointError: loss is nan at step 21\n",
                           "overrides": JOBS[2]})
    else:
        write_result_pickle(sweep, "4242_2", 0,
                            ("error", "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                      "ValueError: boom\n"))
    # job 3: completed
    write_job(sweep, 3, JOBS[3], grad_clip=1.0, accum=4,
              events=[ev("start", 1.0, step=0, total_steps=40, world_size=1, resumed_from=None),
                      ev("completed", 9.0, step=40, final_loss=1.5)],
              metrics=[metric(20, 2.0, 1.5), metric(40, 1.5, 2.5)],
              summary=summary_of("completed", final_loss=1.5, best_loss=1.5, optimizer_steps=40,
                                 tokens_per_s=2000.0, wall_time_s=12.0, skipped_steps=0))
    return sweep


def write_result_pickle(sweep: Path, job_id: str, task: int, obj: Any = None, raw: bytes = b"") -> Path:
    folder = sweep / ".submitit" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}_{task}_result.pkl"
    path.write_bytes(raw or pickle.dumps(obj))
    (folder / f"{job_id}_{task}_log.out").write_text("submitit INFO - Starting with JobEnvironment\n")
    (folder / f"{job_id}_{task}_log.err").write_text("")
    return path


def by_job(rows: List[Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
    return {r["job"]: r for r in rows}


# ---------------------------------------------------------------------- expansion


def test_expand_task_overrides_in_basic_sweeper_order():
    jobs, swept, mbs = report.expand_sweep({"hydra": {"sweeper": {"_target_": BASIC},
                                                      "overrides": {"task": TASK + ["seed=7"]}}})
    assert jobs == [j + ["seed=7"] for j in JOBS]
    assert swept == ["optim.grad_clip", "optim.accumulation_steps"]
    assert mbs is None


def test_expand_sweeper_params_come_first():
    multirun = {"hydra": {"sweeper": {"_target_": BASIC, "max_batch_size": 2,
                                      "params": {"optim.lr": "1e-3,1e-4", "seed": "range(1,3)"}},
                          "overrides": {"task": ["optim.grad_clip=0.3,0.5,1.0"]}}}
    jobs, swept, mbs = report.expand_sweep(multirun)
    assert len(jobs) == 2 * 2 * 3
    # Hydra's parser writes floats its own way (1e-3 -> 0.001): the job's overrides.yaml does too
    assert jobs[0] == ["optim.lr=0.001", "seed=1", "optim.grad_clip=0.3"]
    assert jobs[1] == ["optim.lr=0.001", "seed=1", "optim.grad_clip=0.5"]
    assert jobs[3] == ["optim.lr=0.001", "seed=2", "optim.grad_clip=0.3"]
    assert jobs[6] == ["optim.lr=0.0001", "seed=1", "optim.grad_clip=0.3"]
    assert jobs[-1] == ["optim.lr=0.0001", "seed=2", "optim.grad_clip=1.0"]
    assert swept == ["optim.lr", "seed", "optim.grad_clip"]
    assert mbs == 2


def test_expand_command_line_replaces_a_param_in_its_place():
    # the BasicSweeper keys an OrderedDict by override key: the command line wins, the params'
    # position stays
    multirun = {"hydra": {"sweeper": {"params": {"optim.grad_clip": "0.1,0.2", "seed": "1,2"}},
                          "overrides": {"task": ["optim.grad_clip=0.3,0.5,1.0"]}}}
    jobs, swept, _ = report.expand_sweep(multirun)
    assert jobs[:4] == [["optim.grad_clip=0.3", "seed=1"], ["optim.grad_clip=0.3", "seed=2"],
                        ["optim.grad_clip=0.5", "seed=1"], ["optim.grad_clip=0.5", "seed=2"]]
    assert len(jobs) == 6 and swept == ["optim.grad_clip", "seed"]


def test_expand_other_sweeper_is_refused():
    with pytest.raises(ValueError):
        report.expand_sweep({"hydra": {"sweeper": {"_target_": "hydra_plugins.optuna.OptunaSweeper"}}})


def test_sweeper_params_sweep_end_to_end(tmp_path):
    """Only two of six jobs ran: the others still get rows, with overrides from the definition."""
    sweep = tmp_path / "sw"
    write_multirun(sweep, ["optim.accumulation_steps=1,4"], params={"optim.grad_clip": "0.3,0.5,1.0"})
    write_job(sweep, 0, ["optim.grad_clip=0.3", "optim.accumulation_steps=1"],
              events=[ev("start", 1.0, step=0)], metrics=[metric(10, 3.0, 1.0)])
    write_job(sweep, 5, ["optim.grad_clip=1.0", "optim.accumulation_steps=4"],
              events=[ev("start", 1.0, step=0), ev("completed", 2.0, step=10)],
              metrics=[metric(10, 2.0, 1.0)])
    rows = report.collect(sweep)
    assert [r["job"] for r in rows] == list(range(6))
    assert [r["overrides"] for r in rows] == [
        "grad_clip=0.3 accum=1", "grad_clip=0.3 accum=4", "grad_clip=0.5 accum=1",
        "grad_clip=0.5 accum=4", "grad_clip=1.0 accum=1", "grad_clip=1.0 accum=4"]
    assert [r["status"] for r in rows] == ["running", "pending", "pending", "pending", "pending", "completed"]
    assert rows[3]["all_overrides"] == ["optim.grad_clip=0.5", "optim.accumulation_steps=4"]


# ---------------------------------------------------------------------- rows


def test_collect_the_2x2_sweep(tmp_path):
    rows = report.collect(make_sweep(tmp_path / "sw"))
    assert len(rows) == 4
    r = by_job(rows)
    statuses = [r[i]["status"] for i in range(4)]
    assert statuses == ["completed", "completed (requeued 1x)", "failed", "completed"]
    assert [r[i]["requeues"] for i in range(4)] == [0, 1, 0, 0]
    assert r[0]["overrides"] == "grad_clip=0.3 accum=1"
    assert r[0]["swept"] == {"optim.grad_clip": "0.3", "optim.accumulation_steps": "1"}
    assert r[0]["all_overrides"] == JOBS[0] + ["hydra/launcher=slurm"]

    assert r[0]["final_loss"] == pytest.approx(2.2)
    assert r[0]["best_loss"] == pytest.approx(2.0)
    assert r[0]["grad_norm_median"] == pytest.approx(2.5)
    assert r[0]["grad_norm_max"] == pytest.approx(4.0)
    assert r[0]["optimizer_steps"] == 40
    assert r[0]["tokens_per_s"] == pytest.approx(1234.5)  # the summary's, not the last interval's
    assert r[0]["skipped_steps"] == 1
    assert r[0]["wall_time_s"] == pytest.approx(61.0)
    assert r[0]["error"] is None

    # requeued: final is the last logged loss, best over every logged line
    assert r[1]["final_loss"] == pytest.approx(1.9)
    assert r[1]["best_loss"] == pytest.approx(1.9)
    assert r[1]["grad_norm_median"] == pytest.approx(0.7)
    assert r[1]["grad_norm_max"] == pytest.approx(0.9)

    # failed: the error's last line, numbers from metrics.jsonl
    assert r[2]["state"] == "failed"
    assert r[2]["error"] == "FloatingPointError: loss is nan at step 21"
    assert r[2]["final_loss"] == pytest.approx(7.5)
    assert r[2]["best_loss"] == pytest.approx(5.0)
    assert r[2]["optimizer_steps"] == 20
    assert r[2]["grad_norm_max"] == pytest.approx(50.0)
    assert r[2]["wall_time_s"] == pytest.approx(0.0)  # last elapsed_s

    assert r[3]["final_loss"] == pytest.approx(1.5)
    assert r[3]["curve"] == [(20.0, 2.0), (40.0, 1.5)]


def test_failed_job_without_job_dir_from_submitit_result(tmp_path):
    """Job 2 crashed before Hydra made its dir: the array job's result pickle has the error."""
    rows = report.collect(make_sweep(tmp_path / "sw", failed_job_dir=False))
    assert len(rows) == 4
    r = by_job(rows)[2]
    assert r["status"] == "failed"
    assert r["error"] == "ValueError: boom"
    assert r["job_dir"] is None
    assert r["submitit_job_id"] == "4242_2"
    assert r["overrides"] == "grad_clip=1.0 accum=1"
    assert r["final_loss"] is None and r["grad_norm_median"] is None


def test_submitit_error_from_log_err(tmp_path):
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    folder = sweep / ".submitit" / "99_1"
    folder.mkdir(parents=True)
    (folder / "99_1_0_log.out").write_text("submitit INFO - Starting\n")
    (folder / "99_1_0_log.err").write_text(
        "[2026-11-28 12:00:00][minimind][INFO] - building the model\n"
        "slurmstepd: error: *** JOB 99 ON node1 CANCELLED AT 2026-11-28T13:00:00 DUE TO TIME LIMIT ***\n\n")
    folder = sweep / ".submitit" / "99_3"
    folder.mkdir(parents=True)
    (folder / "99_3_0_log.err").write_text(
        "Traceback (most recent call last):\n  File \"launch.py\", line 3, in <module>\n"
        "ModuleNotFoundError: No module named 'tokenizers'\n")
    r = by_job(report.collect(sweep))
    assert r[1]["status"] == "failed" and "DUE TO TIME LIMIT" in r[1]["error"]
    assert r[3]["error"] == "ModuleNotFoundError: No module named 'tokenizers'"
    assert r[0]["status"] == "pending" and r[0]["error"] is None


def test_hydra_job_return_failure_and_job_id_from_hydra_yaml(tmp_path):
    """Hydra's run_job keeps the task's exception in a JobReturn with status FAILED: submitit
    then writes ("success", JobReturn). The folder is matched by .hydra/hydra.yaml's job id."""
    from hydra.core.utils import JobReturn, JobStatus

    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    write_job(sweep, 1, JOBS[1], job_id="5001_1", events=[ev("start", 1.0, step=0)])
    jr = JobReturn(overrides=JOBS[1], status=JobStatus.FAILED)
    jr.return_value = RuntimeError("CUDA error: an illegal memory access\nline two: details")
    write_result_pickle(sweep, "5001_1", 0, ("success", jr))
    ok = JobReturn(overrides=JOBS[0], status=JobStatus.COMPLETED)
    ok.return_value = 1.5
    write_result_pickle(sweep, "5001_0", 0, ("success", ok))
    r = by_job(report.collect(sweep))
    assert r[1]["status"] == "failed" and r[1]["error"] == "line two: details"
    assert r[1]["submitit_job_id"] == "5001_1"
    assert r[0]["status"] == "completed"


def test_array_index_with_batches(tmp_path):
    """No hydra.yaml, no submission pickle: SLURM array index + batch offset (max_batch_size)."""
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK, max_batch_size=2)
    for job_id in ("100_0", "100_1", "200_0", "200_1"):
        write_result_pickle(sweep, job_id, 0, ("error", f"Traceback ...\nRuntimeError: in {job_id}\n"))
    rows = report.collect(sweep)
    ids = ("100_0", "100_1", "200_0", "200_1")
    assert [r["error"] for r in rows] == [f"RuntimeError: in {i}" for i in ids]
    assert [r["overrides"] for r in rows][3] == "grad_clip=1.0 accum=4"


def test_job_num_from_submitted_pickle(tmp_path):
    """The local executor names folders by pid: the job number comes from the submission."""
    submitit = pytest.importorskip("submitit")
    cloudpickle = pytest.importorskip("cloudpickle")
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    folder = sweep / ".submitit" / "31337"
    folder.mkdir(parents=True)
    # the submitit launcher's call: launcher(overrides, job_dir_key, job_num, job_id, singleton_state)
    delayed = submitit.helpers.DelayedSubmission(_fake_task, JOBS[3], "hydra.sweep.dir", 3,
                                                 "job_id_for_3", {})
    with open(folder / "31337_submitted.pkl", "wb") as f:
        cloudpickle.dump(delayed, f)
    (folder / "31337_0_result.pkl").write_bytes(
        pickle.dumps(("error", "Traceback (most recent call last):\nImportError: cannot import name 'x'\n")))
    r = by_job(report.collect(sweep))
    assert r[3]["status"] == "failed" and r[3]["error"] == "ImportError: cannot import name 'x'"
    assert r[3]["submitit_job_id"] == "31337"
    assert [r[i]["status"] for i in range(3)] == ["pending"] * 3


def _fake_task(*args: Any) -> None:
    raise AssertionError("never called")


def test_reading_pickles_imports_nothing_they_name(tmp_path):
    """A result pickle naming torch classes is read in a process that never imports torch."""
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    # protocol 0 by hand: ("success", JobReturn with status FAILED and a torch exception)
    raw = (b"(Vsuccess\n"
           b"chydra.core.utils\nJobReturn\n)R}(Vstatus\nchydra.core.utils\nJobStatus\n(I2\ntR"
           b"V_return_value\nctorch.cuda\nOutOfMemoryError\n(VCUDA out of memory. Tried 2.00 GiB\ntR"
           b"ub"
           b"t.")
    write_result_pickle(sweep, "7_0", 0, raw=raw)
    code = textwrap.dedent(f"""
        import sys
        from minimind import report
        rows = report.collect({str(sweep)!r})
        assert rows[0]["status"] == "failed", rows[0]
        assert rows[0]["error"] == "OutOfMemoryError: CUDA out of memory. Tried 2.00 GiB", rows[0]["error"]
        assert "torch" not in sys.modules
        assert "matplotlib" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_running_interrupted_and_restart_that_failed_before_start(tmp_path):
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    # running after a requeue; the summary is the earlier attempt's (interrupted), older than
    # the last start
    d = write_job(sweep, 0, JOBS[0],
                  events=[ev("start", 1.0, step=0), ev("interrupted", 2.0, step=20),
                          ev("resume", 3.0, step=20), ev("start", 3.1, step=20)],
                  metrics=[metric(10, 3.0, 1.0, elapsed=5.0), metric(20, 2.0, 1.0, elapsed=9.0),
                           metric(30, 1.8, 1.0, elapsed=4.0, tps=777.0)],
                  summary=summary_of("interrupted", optimizer_steps=20, wall_time_s=9.0, tokens_per_s=1.0))
    os.utime(d / "summary.json", (2.5, 2.5))
    # interrupted, not restarted yet
    write_job(sweep, 1, JOBS[1], events=[ev("start", 1.0, step=0), ev("interrupted", 2.0, step=20)],
              metrics=[metric(20, 2.0, 1.0)], summary=summary_of("interrupted", optimizer_steps=20))
    # interrupted, restarted, failed while loading the checkpoint (no second "start")
    write_job(sweep, 2, JOBS[2], events=[ev("start", 1.0, step=0), ev("interrupted", 2.0, step=20),
                                         ev("failed", 3.0, error="CheckpointError: step_20.pt is truncated")])
    r = by_job(report.collect(sweep))
    assert r[0]["status"] == "running (requeued 1x)"
    assert r[0]["optimizer_steps"] == 30 and r[0]["tokens_per_s"] == pytest.approx(777.0)
    assert r[0]["wall_time_s"] == pytest.approx(4.0)
    assert r[1]["status"] == "interrupted"
    assert r[2]["status"] == "failed (requeued 1x)"
    assert r[2]["error"] == "CheckpointError: step_20.pt is truncated"
    assert r[3]["status"] == "pending"


def test_truncated_metrics_line_is_skipped(tmp_path):
    sweep = tmp_path / "sw"
    write_multirun(sweep, TASK)
    d = write_job(sweep, 0, JOBS[0], events=[ev("start", 1.0, step=0)], metrics=[metric(10, 3.0, 1.0)])
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "loss": 2.')
    r = by_job(report.collect(sweep))[0]
    assert r["final_loss"] == pytest.approx(3.0) and r["status"] == "running"


# ---------------------------------------------------------------------- outputs


def test_write_csv_round_trip(tmp_path):
    rows = report.collect(make_sweep(tmp_path / "sw"))
    path = report.write_csv(rows, tmp_path / "out" / "r.csv")
    with open(path, newline="") as f:
        data = list(csv.DictReader(f))
    assert len(data) == 4
    assert list(data[0])[:4] == ["job", "overrides", "optim.grad_clip", "optim.accumulation_steps"]
    assert [d["status"] for d in data] == ["completed", "completed (requeued 1x)", "failed", "completed"]
    assert [d["optim.grad_clip"] for d in data] == ["0.3", "0.3", "1.0", "1.0"]
    assert [d["optim.accumulation_steps"] for d in data] == ["1", "4", "1", "4"]
    assert data[1]["requeues"] == "1"
    assert float(data[0]["final_loss"]) == pytest.approx(2.2)
    assert float(data[0]["best_loss"]) == pytest.approx(2.0)
    assert float(data[0]["grad_norm_median"]) == pytest.approx(2.5)
    assert float(data[0]["grad_norm_max"]) == pytest.approx(4.0)
    assert float(data[0]["wall_time_s"]) == pytest.approx(61.0)
    assert data[2]["error"] == "FloatingPointError: loss is nan at step 21"
    assert data[0]["error"] == ""
    assert data[0]["all_overrides"] == "optim.grad_clip=0.3 optim.accumulation_steps=1 hydra/launcher=slurm"


def test_plot_png(tmp_path):
    rows = report.collect(make_sweep(tmp_path / "sw", failed_job_dir=False))
    path = report.plot(rows, tmp_path / "p.png", "optim.grad_clip", "optim.accumulation_steps")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    # keys that are not swept: one colour, one panel (the value comes from .hydra/config.yaml)
    path = report.plot(rows, tmp_path / "q.png", "optim.lr", "seed")
    assert path.read_bytes()[:8] == PNG_MAGIC
    # no metrics at all
    empty = [dict(r, curve=[]) for r in rows]
    assert report.plot(empty, tmp_path / "e.png").read_bytes()[:8] == PNG_MAGIC


def test_format_table_aligned(tmp_path):
    rows = report.collect(make_sweep(tmp_path / "sw"))
    lines = report.format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["job", "overrides", "status"]
    assert len(lines) == 2 + 4 + 1
    assert lines[-1] == "4 jobs: 3 completed, 1 failed"
    # the status column starts at the same offset in every row
    col = lines[0].index("status")
    allowed = {"completed", "completed (requeued 1x)", "failed"}
    assert all(line[col:].split("  ")[0].strip() in allowed for line in lines[2:6])
    assert "FloatingPointError: loss is nan at step 21" in lines[4]


# ---------------------------------------------------------------------- CLI


def test_main_writes_the_report(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sw", failed_job_dir=False)
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "completed (requeued 1x)" in out and "ValueError: boom" in out
    assert (sweep / "report.csv").is_file()
    png = (sweep / "report.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_main_options(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sw")
    csv_path, png_path = tmp_path / "x" / "a.csv", tmp_path / "x" / "a.png"
    assert report.main([str(sweep), "--csv", str(csv_path), "--png", str(png_path),
                        "--color-by", "optim.accumulation_steps", "--split-by", "optim.grad_clip"]) == 0
    assert csv_path.is_file() and png_path.read_bytes()[:8] == PNG_MAGIC
    assert not (sweep / "report.csv").exists() and not (sweep / "report.png").exists()
    assert report.main([str(sweep), "--no-plot"]) == 0
    assert (sweep / "report.csv").is_file() and not (sweep / "report.png").exists()


def test_main_errors(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such directory" in err

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    assert report.main([str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a sweep dir" in err

    # the parent of sweeps, or one job's dir: say where the sweep is
    make_sweep(tmp_path / "multirun" / "2026-11-28" / "12-00-00")
    assert report.main([str(tmp_path / "multirun")]) == 2
    assert "2026-11-28/12-00-00" in capsys.readouterr().err
    assert report.main([str(tmp_path / "multirun" / "2026-11-28" / "12-00-00" / "0")]) == 2
    assert "job dir of the sweep" in capsys.readouterr().err


def test_cli_module(tmp_path):
    sweep = make_sweep(tmp_path / "sw")
    out = subprocess.run([sys.executable, "-m", "minimind.report", str(sweep), "--no-plot"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "grad_clip=0.3 accum=4" in out.stdout
    out = subprocess.run([sys.executable, "-m", "minimind.report", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0
