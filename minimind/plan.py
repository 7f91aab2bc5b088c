"""``python -m minimind.plan OVERRIDES``: the jobs a ``launch.py -m OVERRIDES`` would launch, launched not.

    python -m minimind.plan optim.grad_clip=0.5,1.0 optim.accumulation_steps=1,2
    python -m minimind.plan -m experiment=clip_accum_sweep hydra/launcher=slurm hydra.launcher.partition=gpu

One row per job: its number, its overrides and its folder, numbered as Hydra's BasicSweeper
numbers them (``hydra.sweeper.params`` first, then the command line, the cartesian product in
that order: the expansion lives in :mod:`minimind.report.hydra_sweep`, the one module that knows
Hydra's internals), then what a job gets from the launcher (SLURM: partition, nodes, GPUs, CPUs,
memory, time limit, array parallelism). Each job's config is composed with Hydra's compose API
and checked like a run checks it (:func:`minimind.config.validate`), so a job that would be
refused at its start is refused here, in one line. Without ``hydra.sweep.dir=`` the folder holds
the time of this command; the real sweep gets the time it is launched at. No torch import.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence

# what a submitit launcher config says about one job's resources, in this order
RESOURCE_KEYS = ("partition", "qos", "account", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                 "mem_gb", "timeout_min", "max_num_timeout", "array_parallelism", "additional_parameters")

USAGE = "usage: python -m minimind.plan [-m] OVERRIDE... (the overrides of a launch.py -m command)"


class PlanError(ValueError):
    """The command line does not make a sweep (one line)."""


def _compose(overrides: List[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from minimind.cli import locate_conf
    from minimind.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(locate_conf()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def compose_command(args: Sequence[str]):
    """``(base config, hydra overrides, task overrides)`` of ``launch.py -m args``: the config
    composed with the overrides that are not sweeps (Hydra's own tree and the sweeper's params
    included). Raises :class:`PlanError`."""
    from minimind.report.hydra_sweep import split_command_line
    from minimind.report.reading import last_line

    args = [a for a in args if a not in ("-m", "--multirun")]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise PlanError(f"{flags[0]} is not an override; {USAGE}")
    try:
        hydra_side, task, fixed = split_command_line(args)
        base = _compose(hydra_side + fixed)
    except ValueError as e:
        raise PlanError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors: their last line
        raise PlanError(last_line(e) or repr(e)) from None
    return base, hydra_side, task


def expand(args: Sequence[str], composed=None):
    """``(base config, job override lists, hydra overrides, swept keys)`` of ``launch.py -m args``
    (``composed``: what :func:`compose_command` returned for them), the jobs in the
    BasicSweeper's order. Raises :class:`PlanError`."""
    from omegaconf import OmegaConf

    from minimind.report.hydra_sweep import expand_sweep

    base, hydra_side, task = composed or compose_command(args)
    sweeper = OmegaConf.to_container(base.hydra.sweeper, resolve=False)
    try:
        jobs, swept, _ = expand_sweep({"hydra": {"sweeper": sweeper, "overrides": {"task": task}}})
    except ValueError as e:
        raise PlanError(str(e)) from None
    return base, jobs, hydra_side, swept


def plan(args: Sequence[str]) -> Dict[str, Any]:
    """The sweep ``launch.py -m args`` would launch: ``{"sweep_dir", "launcher", "resources",
    "jobs": [{"num", "overrides", "folder"}]}``. Raises :class:`PlanError`."""
    from omegaconf import OmegaConf

    from minimind.config import validate
    from minimind.report.reading import last_line

    composed = compose_command(args)
    if str(composed[0].hydra.sweeper.get("_target_", "")).endswith(".OptunaSweeper"):
        return study_plan(composed)
    base, jobs, hydra_side, swept = expand(args, composed)
    sweep_dir = str(base.hydra.sweep.dir)  # resolved once, as Hydra does at launch
    launcher = OmegaConf.to_container(base.hydra.launcher, resolve=False)
    out = []
    for num, overrides in enumerate(jobs):
        try:
            cfg = _compose(hydra_side + list(overrides))
        except Exception as e:  # noqa: BLE001
            raise PlanError(f"job {num} ({' '.join(overrides)}): {last_line(e)}") from None
        try:
            validate(cfg)
        except Exception as e:  # noqa: BLE001 - ConfigError: the one line a run would print
            raise PlanError(f"job {num} ({' '.join(overrides)}): {last_line(e)}") from None
        cfg.hydra.job.num = num
        out.append({"num": num, "overrides": list(overrides), "folder": f"{sweep_dir}/{cfg.hydra.sweep.subdir}"})
    target = str(launcher.get("_target_") or "")
    resources = {k: launcher[k] for k in RESOURCE_KEYS if k in launcher} if "submitit" in target else {}
    if target.endswith(".LocalLauncher"):  # what the launching process will decide (sweep_launch)
        from minimind.sweep_launch import local_sizing

        resources["sized"] = local_sizing(base, len(jobs))
    return {"sweep_dir": sweep_dir, "launcher": target.rsplit(".", 1)[-1] or "BasicLauncher",
            "resources": resources, "jobs": out, "swept": swept}


def _resources(base) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    launcher = OmegaConf.to_container(base.hydra.launcher, resolve=False)
    target = str(launcher.get("_target_") or "")
    return {k: launcher[k] for k in RESOURCE_KEYS if k in launcher} if "submitit" in target else {}


def study_plan(composed) -> Dict[str, Any]:
    """An Optuna study's trials are drawn while it runs: its plan is the search space, the fixed
    overrides, how many trials, how many at a time, where the study and the trials' folders go."""
    from omegaconf import OmegaConf

    base, _, task = composed
    sweeper = base.hydra.sweeper
    sweep_dir = str(base.hydra.sweep.dir)
    params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper.get("params") else {}
    for o in task:  # the command line's sweeps join the space; the others are fixed
        key, _, value = o.partition("=")
        params.setdefault(key.lstrip("+"), value)
    launcher = str(base.hydra.launcher.get("_target_") or "")
    return {"study": True, "sweep_dir": sweep_dir, "launcher": launcher.rsplit(".", 1)[-1] or "BasicLauncher",
            "resources": _resources(base), "params": {str(k): str(v) for k, v in params.items()},
            "n_trials": int(sweeper.n_trials), "n_jobs": int(sweeper.n_jobs), "direction": str(sweeper.direction),
            "storage": str(sweeper.storage), "study_name": str(sweeper.study_name), "jobs": []}


def format_plan(p: Dict[str, Any]) -> str:
    """The table: job number, the swept overrides, the folder; the overrides every job shares,
    the launcher and its per-job resources under it. For a study: its space and its numbers."""
    from minimind.report.reading import split_override

    if p.get("study"):
        width = max((len(k) for k in p["params"]), default=0)
        lines = [f"Optuna study {p['study_name']!r} ({p['direction']}): {p['n_trials']} trials in all, "
                 f"{p['n_jobs']} at a time; trial n runs in {p['sweep_dir']}/n; stored in {p['storage']}",
                 "(the trials are drawn as the study runs; the same command with hydra.sweep.dir="
                 f"{p['sweep_dir']} continues it)"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in p["params"].items()]
        lines.append(f"launcher {p['launcher']}")
        if p["resources"]:
            lines.append("per trial: " + ", ".join(f"{k}={v}" for k, v in p["resources"].items()))
        return "\n".join(lines)

    swept = set(p.get("swept") or [])
    jobs = p["jobs"]
    common = [o for o in (jobs[0]["overrides"] if jobs else []) if split_override(o)[0] not in swept]
    rows = [("job", "overrides", "folder")]
    rows += [(str(j["num"]), " ".join(o for o in j["overrides"] if o not in common) or "-", j["folder"])
             for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0].rjust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    n = len(jobs)
    if common:
        lines.append("every job: " + " ".join(common))
    lines.append(f"{n} job{'s' if n != 1 else ''} in {p['sweep_dir']}, launcher {p['launcher']}")
    if p["resources"]:
        lines.append("per job: " + ", ".join(f"{k}={v}" for k, v in p["resources"].items()))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
        return 0
    from minimind.cli import locate_conf
    from minimind.overrides import check_overrides

    try:
        problem = check_overrides([a for a in args if a not in ("-m", "--multirun")], locate_conf())
        if problem:
            raise PlanError(problem)
        p = plan(args)
    except PlanError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(format_plan(p))
    return 0


if __name__ == "__main__":  # run as minimind.plan, so that its PlanError is the one sweep_launch raises
    from minimind import plan as _plan

    sys.exit(_plan.main())
