"""A -m command's launching process: the sweep folder said once, the local launcher sized to the cores."""

from __future__ import annotations

import pytest
import yaml
from conftest import FAST, run_launch

from minimind import sweep_launch
from minimind.plan import PlanError

GRID = ["optim.grad_clip=0.5,1.0", "optim.accumulation_steps=1,2"]


@pytest.mark.parametrize("jobs, cores, cpus, tasks, at_once, expected", [
    (4, 2, None, 1, None, (2, 1)),     # the machine: 2 at a time, 1 thread each
    (4, 16, None, 1, None, (4, 4)),    # room for all four, the cores split between them
    (1, 8, None, 1, None, (1, 8)),     # one job gets every core
    (4, 2, 2, 1, None, (1, 2)),        # 2 threads asked: one job at a time
    (4, 4, None, 2, None, (2, 1)),     # 2 tasks per job (ddp)
    (4, 8, None, 1, 2, (2, 4)),        # 2 at a time asked: 4 threads each
])
def test_size_local(jobs, cores, cpus, tasks, at_once, expected):
    assert sweep_launch.size_local(jobs, cores, cpus, tasks, at_once) == expected


def test_size_local_refuses_oversubscription_with_the_numbers():
    with pytest.raises(PlanError) as e:
        sweep_launch.size_local(4, 2, cpus=2, at_once=4)
    assert str(e.value) == ("hydra/launcher=local would run 4 jobs at once x 1 task(s) x 2 CPUs = 8 CPUs on 2 cores "
                            "(os.sched_getaffinity); set hydra.sweeper.max_batch_size=1 or lower "
                            "hydra.launcher.cpus_per_task")
    with pytest.raises(PlanError, match=r"one job needs 1 task\(s\) x 3 CPUs = 3 CPUs, this machine has 2 cores"):
        sweep_launch.size_local(4, 2, cpus=3)


def test_prepare_local(monkeypatch, capsys):
    monkeypatch.setattr(sweep_launch, "cores", lambda: 2)
    env = {}
    extra = sweep_launch.prepare(["-m"] + GRID + ["hydra/launcher=local", "hydra.sweep.dir=/s/w"], env=env)
    assert extra == ["hydra.sweeper.max_batch_size=2", "hydra.launcher.cpus_per_task=1"]
    assert env == {"OMP_NUM_THREADS": "1"}
    assert capsys.readouterr().out == ("sweep: 4 jobs in /s/w (local: 2 at a time x 1 thread(s) on 2 cores "
                                       "(os.sched_getaffinity))\n")
    # OMP_NUM_THREADS is what each job will use: counted, kept
    env = {"OMP_NUM_THREADS": "2"}
    extra = sweep_launch.prepare(GRID + ["hydra/launcher=local", "hydra.sweep.dir=/s/w"], env=env)
    assert extra == ["hydra.sweeper.max_batch_size=1", "hydra.launcher.cpus_per_task=2"]
    assert env == {"OMP_NUM_THREADS": "2"}


def test_prepare_without_launcher_fixes_the_sweep_dir(capsys):
    extra = sweep_launch.prepare(GRID)
    assert len(extra) == 1 and extra[0].startswith("hydra.sweep.dir=multirun/")
    sweep_dir = extra[0].split("=", 1)[1]
    assert capsys.readouterr().out == f"sweep: 4 jobs in {sweep_dir} (one after another in this process)\n"
    sweep_launch.finish()  # no such folder: still the folder and the command
    assert capsys.readouterr().out == (f"sweep done; folder {sweep_dir}; compare the jobs: "
                                       f"python -m minimind.report {sweep_dir}\n")
    sweep_launch.finish()
    assert capsys.readouterr().out == ""  # once


@pytest.mark.parametrize("value", ["multirun/2026-12-02/03-00-00", "my sweeps/a,b", "it's=${x}",
                                   "c:\\tmp\\x", "a\\'b\\"])
def test_the_fixed_sweep_dir_parses_back(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(sweep_launch.override("hydra.sweep.dir", value))
    assert parsed.key_or_group == "hydra.sweep.dir" and parsed.value() == value


@pytest.mark.slow
def test_local_sweep_end_to_end(tmp_path):
    sweep = tmp_path / "sw"
    args = ["-m"] + FAST + ["optim.grad_clip=0.5,1.0", "loop.max_steps=2", "hydra/launcher=local",
                            f"hydra.sweep.dir={sweep}"]
    bad = run_launch(args + ["hydra.launcher.cpus_per_task=64"], cwd=tmp_path)
    assert bad.returncode == 2 and not sweep.exists()
    assert bad.stderr.startswith("Error: hydra/launcher=local: one job needs 1 task(s) x 64 CPUs = 64 CPUs")
    assert bad.stderr.count("\n") == 1

    r = run_launch(args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"sweep: 2 jobs in {sweep} (local: ")
    assert lines[-1] == (f"sweep done: 2 completed; folder {sweep}; compare the jobs: "
                         f"python -m minimind.report {sweep}")
    hydra_overrides = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["hydra"]
    assert any(o.startswith("hydra.sweeper.max_batch_size=") for o in hydra_overrides)
    assert sorted(d.name for d in sweep.iterdir() if d.name.isdigit()) == ["0", "1"]
