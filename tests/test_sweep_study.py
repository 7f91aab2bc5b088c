"""hydra/sweeper=optuna: a study stored in the sweep folder that the same command continues.

The end-to-end test kills the launching process of a 4-trial study after its second trial
ended and runs the same command again: the study ends with exactly 4 trials, trial n in job
folder n, no trial trained twice. The SLURM version is in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import FAST, run_launch
from test_sweep_resume import start_sweep, starts_from_zero, wait_for

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

from minimind.report import study as report_study  # noqa: E402
from minimind.sweep_study import continue_rng, space_differences, trial_overrides  # noqa: E402


def _draws(sampler, study, n):
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(t.suggest_float("x", 0.0, 1.0))
        study.tell(t, 0.0)
    return out


def test_a_relaunched_seeded_sampler_does_not_replay_its_draws():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42))
    stored = _draws(first.sampler, first, 2)
    # what a relaunch does: a new sampler with the same seed, on the stored study
    again = [optuna.samplers.TPESampler(seed=42) for _ in range(2)]
    draws = []
    for sampler in again:
        continue_rng(sampler, 42, 2)
        study = optuna.create_study(sampler=sampler)
        for value in stored:  # the stored trials
            study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions={
                "x": optuna.distributions.UniformDistribution(0.0, 1.0)}, value=0.0))
        draws.append(_draws(sampler, study, 2))
    assert draws[0] == draws[1]  # deterministic from the seed and the count
    assert not set(draws[0]) & set(stored)  # not the first launch's draws again
    # without the reseed the relaunch repeats them (what the plugin alone does)
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=42))
    assert _draws(plain.sampler, plain, 2) == stored


def test_space_differences_and_trial_overrides():
    dist = optuna.distributions.LogUniformDistribution(0.05, 5.0)
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={"optim.grad_clip": 0.5}, distributions={"optim.grad_clip": dist},
                                              value=1.0, user_attrs={"loop.max_steps": "40"}))
    t = study.trials[0]
    assert trial_overrides(t, {"loop.max_steps": "40"}) == ["optim.grad_clip=0.5", "loop.max_steps=40"]
    assert space_differences(study, {"optim.grad_clip": dist}, {"loop.max_steps": "40"}) == []
    wider = optuna.distributions.LogUniformDistribution(0.01, 5.0)
    assert space_differences(study, {"optim.grad_clip": wider}, {"loop.max_steps": "80"}) == [
        "loop.max_steps=40 in the stored trials, now 80",
        f"optim.grad_clip was searched over {dist}, now over {wider}",
    ]


def test_report_ranks_the_trials_and_computes_importances(tmp_path):
    sweep = tmp_path / "sw"
    sweep.mkdir()
    study = optuna.create_study(study_name="minimind", storage=f"sqlite:///{sweep / 'optuna.db'}")
    clip = optuna.distributions.UniformDistribution(0.1, 2.0)
    accum = optuna.distributions.CategoricalDistribution([1, 2, 4])
    for clip_v, accum_v, value in ((0.2, 1, 3.0), (1.5, 4, 2.0), (0.9, 2, 2.5), (1.9, 4, 1.9)):
        params = {"optim.grad_clip": clip_v, "optim.accumulation_steps": accum_v}
        study.add_trial(optuna.trial.create_trial(params=params, value=value, distributions={
            "optim.grad_clip": clip, "optim.accumulation_steps": accum}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={}))
    got = report_study.read_study(sweep)
    assert got["name"] == "minimind" and got["direction"] == "minimize"
    assert [t["number"] for t in got["trials"]] == [3, 1, 2, 0, 4]
    assert got["trials"][-1]["state"] == "fail" and got["best"]["value"] == 1.9
    assert set(got["importances"]) == {"optim.grad_clip", "optim.accumulation_steps"}
    assert abs(sum(got["importances"].values()) - 1.0) < 1e-6
    text = report_study.format_study(got)
    assert text.splitlines()[0] == "Optuna study 'minimind' (minimize, 5 trials: 4 complete, 1 fail)"
    assert text.splitlines()[1].split() == ["1.", "trial", "3", "1.9000", "optim.accumulation_steps=4",
                                            "optim.grad_clip=1.9"]
    assert text.splitlines()[-1].startswith("parameter importances (optuna, mean decrease impurity): ")
    md = report_study.markdown(got)
    assert md[0] == "## Optuna study"
    assert "| 1 | 3 | complete | 1.9000 | 4 | 1.9 |" in md
    assert report_study.read_study(tmp_path) is None  # no study there


@pytest.mark.slow
def test_study_killed_after_two_trials_ends_with_exactly_four(tmp_path):
    sweep = tmp_path / "sw"
    args = FAST + ["hparams_search=clip_accum", "hydra.sweeper.n_trials=4", "loop.max_steps=300",
                   "loop.save_interval=50", "loop.log_interval=50", "data.val_size=64", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(args, tmp_path, tmp_path / "first.log")

    def two_ended():
        return all(json.loads((sweep / n / "summary.json").read_text()).get("status") == "completed"
                   if (sweep / n / "summary.json").is_file() else False for n in ("0", "1"))
    try:
        wait_for(two_ended, timeout=400)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    before = optuna.load_study(study_name="minimind", storage=storage).trials
    # a job ends (summary.json) a moment before its trial is told: the kill may fall in between
    assert {t.state.name for t in before[:2]} <= {"COMPLETE", "RUNNING"}
    assert len(before) <= 3  # the third trial may have been asked, and cut off
    r = run_launch(["-m"] + args, cwd=tmp_path, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for t in before[:2]:
        if t.state.name == "RUNNING":
            assert f"trial {t.number} was cut off after its job completed" in out
    assert f"Optuna study 'minimind' in {storage}: {len(before)} of 4 trials stored" in out
    trials = optuna.load_study(study_name="minimind", storage=storage).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no draw repeated
    for t in trials:  # trial n ran in job folder n, with its parameters, from step 0 once
        folder = sweep / str(t.number)
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        for name, value in t.params.items():
            assert f"{name}={value}" in overrides
        assert json.loads((folder / "summary.json").read_text())["result"] == pytest.approx(t.value)
        assert starts_from_zero(folder) == 1
    assert (sweep / "optimization_results.yaml").is_file()
    # the report ranks them
    r = run_launch([str(sweep), "--no-plot"], cwd=tmp_path, module=["-m", "minimind.report"])
    assert r.returncode == 0 and "Optuna study 'minimind' (minimize, 4 trials: 4 complete)" in r.stdout
    assert "## Optuna study" in (sweep / "report.md").read_text()
    # the same command again: nothing runs
    r = run_launch(["-m"] + args, cwd=tmp_path)
    assert r.returncode == 0 and "4 of 4 trials stored" in r.stdout + r.stderr
    assert "Launching" not in r.stdout + r.stderr
    # another search space into this study: refused, the study unchanged
    r = run_launch(["-m"] + [a if a != "hparams_search=clip_accum" else "hparams_search=update_step" for a in args],
                   cwd=tmp_path)
    assert r.returncode == 2
    assert "holds the Optuna study 'minimind' that this command would change:" in r.stdout + r.stderr
    assert len(optuna.load_study(study_name="minimind", storage=storage).trials) == 4


def test_hparams_search_configs_compose_the_resumable_sweeper():
    from conftest import compose

    for name in ("update_step", "clip_accum"):
        cfg = compose([f"hparams_search={name}", "hydra.sweep.dir=/s/w"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_ == "hydra_plugins.minimind_sweepers.OptunaSweeper"
        assert sweeper.storage == "sqlite:////s/w/optuna.db"
        assert sweeper.study_name == "minimind" and sweeper.direction == "minimize"
        assert "optim.grad_clip" in sweeper.params and "optim.accumulation_steps" in sweeper.params
    assert set(compose(["hparams_search=update_step"], return_hydra_config=True).hydra.sweeper.params) == {
        "optim.lr", "optim.grad_clip", "optim.accumulation_steps", "optim.warmup_steps"}
    assert Path(compose([], return_hydra_config=True).hydra.sweeper._target_).suffix == ".GridSweeper"


def test_a_trial_cut_off_before_its_draws_is_told_fail(tmp_path):
    from minimind.sweep_study import ResumableStudy

    study = optuna.create_study()
    study.ask()  # the launcher died right after ask(): no parameters
    space = {"optim.grad_clip": optuna.distributions.UniformDistribution(0.1, 2.0)}
    ResumableStudy._settle_cut_off(None, study, tmp_path, {}, ["minimize"], space)
    assert [t.state.name for t in study.trials] == ["FAIL"]
