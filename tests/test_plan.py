"""``python -m minimind.plan``: the jobs of a ``-m`` command, listed without launching them."""

from __future__ import annotations

import pytest
import yaml
from conftest import FAST, run_launch

from minimind import plan as mplan

GRID = ["optim.grad_clip=0.5,1.0", "optim.accumulation_steps=1,2"]
KEYS = ("optim.grad_clip", "optim.accumulation_steps")


def test_grid_numbering_and_folders(tmp_path):
    p = mplan.plan(["-m"] + GRID + [f"hydra.sweep.dir={tmp_path}/sw"])
    assert [j["num"] for j in p["jobs"]] == [0, 1, 2, 3]
    assert [j["overrides"] for j in p["jobs"]] == [  # the first key varies slowest
        ["optim.grad_clip=0.5", "optim.accumulation_steps=1"], ["optim.grad_clip=0.5", "optim.accumulation_steps=2"],
        ["optim.grad_clip=1.0", "optim.accumulation_steps=1"], ["optim.grad_clip=1.0", "optim.accumulation_steps=2"]]
    assert [j["folder"] for j in p["jobs"]] == [f"{tmp_path}/sw/{n}" for n in range(4)]
    assert p["launcher"] == "BasicLauncher" and p["resources"] == {}
    assert not (tmp_path / "sw").exists()  # nothing launched, nothing written


def test_sweeper_params_of_an_experiment_come_first():
    p = mplan.plan(["experiment=clip_accum_sweep", "seed=1,2"])
    assert len(p["jobs"]) == 18
    assert p["jobs"][1]["overrides"] == ["optim.grad_clip=0.3", "optim.accumulation_steps=1",
                                         "experiment=clip_accum_sweep", "seed=2"]


def test_slurm_resources_come_from_the_launcher_config(capsys):
    assert mplan.main(GRID[:1] + ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=3",
                                  "hydra.sweep.dir=/x/sw"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["0", "optim.grad_clip=0.5", "/x/sw/0"]
    assert out[-2] == "2 jobs in /x/sw, launcher SlurmLauncher"
    assert out[-1].startswith("per job: partition=None, qos=None, account=None, nodes=1, tasks_per_node=1, "
                              "gpus_per_node=1, cpus_per_task=3, mem_gb=64, timeout_min=240")


def test_local_launcher_shows_how_it_will_be_sized(monkeypatch, capsys):
    from minimind import sweep_launch

    monkeypatch.setattr(sweep_launch, "cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert mplan.main(GRID + ["device=cpu", "hydra/launcher=local", "hydra.sweep.dir=/x/sw"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["0", "optim.grad_clip=0.5", "optim.accumulation_steps=1", "/x/sw/0"]
    assert out[-3:-1] == ["every job: device=cpu", "4 jobs in /x/sw, launcher LocalLauncher"]
    assert out[-1].endswith("sized=2 at a time x 1 thread(s) on 2 cores")
    assert mplan.main(GRID + ["hydra/launcher=local", "hydra.launcher.cpus_per_task=3"]) == 2
    assert capsys.readouterr().err.startswith("Error: hydra/launcher=local: one job needs 1 task(s) x 3 CPUs")


@pytest.mark.parametrize("args, message", [
    (["optim.gradclip=0.5,1.0"], "Error: unknown config key 'optim.gradclip' (did you mean optim.grad_clip?)"),
    (["optim.grad_clip=-1,1.0"], "Error: job 0 (optim.grad_clip=-1): optim.grad_clip=-1.0 is invalid: must be > 0"),
    (["hydra.launcher.cpus_per_task=1,2"], "Error: sweeping over Hydra's configuration is not supported"),
    (["--cfg", "job"], "Error: --cfg is not an override; usage: python -m minimind.plan"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert mplan.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.slow
def test_plan_matches_what_launch_m_launches(tmp_path):
    sweep = tmp_path / "sw"
    args = FAST + GRID + ["loop.max_steps=2", "loop.log_interval=1", f"hydra.sweep.dir={sweep}"]
    listed = run_launch(args, cwd=tmp_path, module=["-m", "minimind.plan"])
    assert listed.returncode == 0, listed.stderr
    assert not sweep.exists()
    r = run_launch(["-m"] + args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the launching process says the folder first and the report command last (no launcher)
    assert r.stdout.splitlines()[0] == f"sweep: 4 jobs in {sweep} (one after another in this process)"
    assert r.stdout.splitlines()[-1] == (f"sweep done: 4 completed; folder {sweep}; compare the jobs: "
                                         f"python -m minimind.report {sweep}")
    p = mplan.plan(args)
    launched = sorted(int(d.name) for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert launched == [j["num"] for j in p["jobs"]] == [0, 1, 2, 3]
    for j in p["jobs"]:
        on_disk = yaml.safe_load((sweep / str(j["num"]) / ".hydra" / "overrides.yaml").read_text())
        assert on_disk == j["overrides"], j["num"]
        assert j["folder"] == str(sweep / str(j["num"]))
        hydra_job = yaml.safe_load((sweep / str(j["num"]) / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]
        assert hydra_job["num"] == j["num"]
        # the printed table: the swept overrides and the folder per job, the shared ones once
        swept = " ".join(o for o in j["overrides"] if o.split("=")[0] in KEYS)
        assert f"{j['num']}  {swept}  {j['folder']}" in listed.stdout
    shared = [o for o in p["jobs"][0]["overrides"] if o.split("=")[0] not in KEYS]
    assert len(shared) == len(FAST) + 2  # as the sweeper writes them (loop.progress=False)
    assert f"every job: {' '.join(shared)}\n" in listed.stdout
    multirun = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert multirun["hydra"]["overrides"]["task"] == FAST + GRID + ["loop.max_steps=2", "loop.log_interval=1"]


def test_an_optuna_study_lists_its_space_not_jobs(capsys):
    pytest.importorskip("optuna")
    assert mplan.main(["-m", "hparams_search=clip_accum", "hydra.sweeper.n_trials=6", "loop.max_steps=40",
                       "hydra.sweep.dir=/x/st"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("Optuna study 'minimind' (minimize): 6 trials in all, 1 at a time; trial n runs in /x/st/n; "
                      "stored in sqlite:////x/st/optuna.db")
    assert [line.split()[0] for line in out[2:5]] == ["optim.grad_clip", "optim.accumulation_steps", "hparams_search"]
    assert "  loop.max_steps" in "\n".join(out) and out[-1] == "launcher BasicLauncher"
