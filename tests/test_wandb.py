"""wandb (offline only): runs named after name / the overrides, notes passed, charts without counters,
the resolved config and the summary in the run's files, elapsed time that survives a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST, run_launch

from minimind.tracking import Tracker
from minimind.wandb_run import overrides_label, run_name

SETTINGS = {"project": "minimind", "entity": None, "name": None, "group": None, "tags": [], "mode": "offline"}
METRICS = {"step": 10, "total_steps": 40, "epoch": 1, "epochs": 1, "loss": 2.5, "loss_avg": 2.7, "lr": 1e-3,
           "grad_norm": 1.2, "scale": None, "skipped": 0, "tokens": 1000, "tokens_per_s": 500.0,
           "elapsed_s": 2.0, "eta_s": 6.0, "samples_in_epoch": 160, "aux_loss": 0.01}


class FakeRun:
    def __init__(self, directory, **kwargs):
        self.kwargs, self.id, self.dir = kwargs, kwargs.get("id") or "abc123", str(directory)
        self.logged, self.summary, self.exit_code = [], {}, None

    def log(self, values, step=None):
        self.logged.append((step, values))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    import wandb

    runs = []

    def init(**kwargs):
        files = tmp_path / "wandb-files" / str(len(runs))
        files.mkdir(parents=True)
        runs.append(FakeRun(files, **kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def tracker(tmp_path, config=None, overrides=(), settings=None, group=None):
    run_dir = tmp_path / "outputs" / "2026-11-28" / "06-22-21"
    return Tracker(wandb=dict(SETTINGS, **(settings or {})), run_dir=str(run_dir),
                   config=config or {"name": None, "notes": None}, overrides=list(overrides), group=group)


def test_runs_are_named_for_what_they_try(tmp_path, fake_wandb):
    t = tracker(tmp_path, config={"name": "myexp", "notes": "why this run", "optim": {"lr": 1e-3}})
    t.start(40)
    kw = fake_wandb[-1].kwargs
    assert kw["name"] == "myexp" and kw["notes"] == "why this run" and kw["config"]["optim"] == {"lr": 1e-3}
    assert kw["mode"] == "offline"
    t.close()
    # a sweep job: its overrides, grouped by the sweep folder
    t = tracker(tmp_path, overrides=["optim.grad_clip=0.5", "optim.accumulation_steps=4", "hydra.job.num=3"],
                group="multirun/2026-11-28/12-00-00")
    t.start(40)
    assert fake_wandb[-1].kwargs["name"] == "grad_clip=0.5 accumulation_steps=4"
    assert fake_wandb[-1].kwargs["group"] == "multirun/2026-11-28/12-00-00"
    t.close()
    # logger.wandb.name wins; nothing at all: the run folder
    t = tracker(tmp_path, config={"name": "myexp"}, settings={"name": "explicit"})
    t.start(40)
    assert fake_wandb[-1].kwargs["name"] == "explicit"
    t.close()
    assert run_name(None, None, [], Path("outputs/2026-11-28/06-22-21")) == "2026-11-28/06-22-21"
    assert overrides_label(["data.path=/data/pretrain_hq.jsonl", "model=minimind2_26m", "name=x"]) == \
        "path=pretrain_hq.jsonl model=minimind2_26m"


def test_charts_get_metrics_not_counters_and_the_summary_lands_in_the_files(tmp_path, fake_wandb):
    t = tracker(tmp_path, config={"name": None, "notes": None, "seed": 42})
    t.start(40)
    run = fake_wandb[-1]
    t.log(METRICS)
    step, values = run.logged[0]
    assert step == 10
    assert set(values) == {"loss", "loss_avg", "lr", "grad_norm", "skipped", "tokens", "tokens_per_s",
                           "elapsed_s", "aux_loss"}
    # metrics.jsonl keeps every field
    assert json.loads((Path(t.run_dir) / "metrics.jsonl").read_text()) == METRICS
    t.summary({"status": "completed", "final_loss": 2.5, "overrides": ["a=1"], "traceback": "x", "weights": []})
    assert run.summary == {"status": "completed", "final_loss": 2.5}
    files = Path(run.dir)
    assert json.loads((files / "wandb-summary.json").read_text()) == {"status": "completed", "final_loss": 2.5}
    assert yaml.safe_load((files / "config.yaml").read_text()) == {"name": {"value": None}, "notes": {"value": None},
                                                                  "seed": {"value": 42}}
    t.close(failed=True)
    assert run.exit_code == 1


@pytest.mark.slow
def test_an_offline_run_holds_its_config_and_summary_and_resumes_its_clock(tmp_path):
    run = tmp_path / "run"
    common = FAST + ["logger=wandb", "name=myexp", "notes=for the test", "loop.log_interval=5",
                     "loop.save_interval=5", f"hydra.run.dir={run}"]
    r = run_launch(common + ["loop.max_steps=10"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    first = list((run / "wandb").glob("offline-run-*"))
    assert len(first) == 1
    files = first[0] / "files"
    config = yaml.safe_load((files / "config.yaml").read_text())
    assert config["name"] == {"value": "myexp"} and config["notes"] == {"value": "for the test"}
    assert config["optim"]["value"]["grad_clip"] == 1.0 and config["loop"]["value"]["max_steps"] == 10
    summary = json.loads((files / "wandb-summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 10
    assert summary["final_loss"] == json.loads((run / "summary.json").read_text())["final_loss"]

    # continues the same run to step 20 (a longer run: a change the resume must be allowed)
    r = run_launch(common + ["loop.max_steps=20", "loop.resume_changes=allow"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # the same wandb id
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    elapsed = [m["elapsed_s"] for m in metrics]
    assert elapsed == sorted(elapsed) and elapsed[2] > elapsed[1] > 0  # no restart at 0 after the resume
