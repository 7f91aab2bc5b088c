"""Where this process sits in a job, read from the launcher's environment (no torch).

One place reads torchrun's and SLURM's variables: the config layer (the run folder's name),
``launch.py`` (only rank 0 writes ``.hydra/``), the job wiring (only rank 0 logs to a file) and
:mod:`minimind.dist` (the process group) all ask here.

- torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT and
  TORCHELASTIC_RUN_ID;
- a SLURM step with several tasks (srun, or submitit's launcher) has SLURM_PROCID /
  SLURM_LOCALID / SLURM_NTASKS / SLURM_JOB_NODELIST, which submitit's SlurmJobEnvironment
  turns into the same numbers (master = first host of the node list, port derived from the
  job id as submitit's TorchDistributedEnvironment does). A one-task SLURM job is a single
  process: its SLURM_PROCID (always 0) says nothing about ranks.
"""

from __future__ import annotations

import os
import random
import time
from typing import Mapping, Optional, TypedDict


class Layout(TypedDict):
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm


def _slurm_tasks(env: Mapping[str, str]) -> int:
    try:
        return int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
        return 1


def launcher_layout(env: Optional[Mapping[str, str]] = None) -> Optional[Layout]:
    """Rank layout from torchrun or a multi-task SLURM step; None for a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return Layout(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                      local_rank=int(env.get("LOCAL_RANK", 0)),
                      master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                      master_port=int(env.get("MASTER_PORT", 29500)), launcher="torchrun")
    if _slurm_tasks(env) > 1 and "SLURM_PROCID" in env:
        from submitit.slurm.slurm import SlurmJobEnvironment

        job = SlurmJobEnvironment()
        port = env.get("MASTER_PORT")
        if port is None:  # the same rule as submitit.helpers.TorchDistributedEnvironment
            port = random.Random(job.job_id).randint(20000, 60000)
        return Layout(rank=job.global_rank, world_size=job.num_tasks, local_rank=job.local_rank,
                      master_addr=job.hostnames[0], master_port=int(port), launcher="slurm")
    return None


def rank(env: Optional[Mapping[str, str]] = None) -> int:
    """This process's global rank (0 for a single process), without touching submitit."""
    env = os.environ if env is None else env
    if "RANK" in env:
        return int(env["RANK"])
    if _slurm_tasks(env) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return 0


def run_stamp(env: Optional[Mapping[str, str]] = None) -> str:
    """The name of a single run's output folder, identical on every rank of a job.

    Hydra's ``${now:...}`` is evaluated separately by each rank that torchrun or SLURM
    starts, and two ranks can straddle a second. Launchers give all ranks one id, so the run
    folder is derived from it; a plain ``python launch.py`` gets the usual date/time.
    """
    env = os.environ if env is None else env
    if env.get("MINIMIND_RUN_STAMP"):
        return env["MINIMIND_RUN_STAMP"]
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun/{run_id}"
    job_id = env.get("SLURM_JOB_ID")
    if job_id and _slurm_tasks(env) > 1:
        return f"slurm/{job_id}.{env.get('SLURM_STEP_ID', '0')}"
    return time.strftime("%Y-%m-%d/%H-%M-%S")


def slurm_cpus_per_task(env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The CPUs SLURM gave this task, unless OMP_NUM_THREADS already says how many to use."""
    env = os.environ if env is None else env
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and "OMP_NUM_THREADS" not in env:
        return max(1, int(cpus))
    return None


def in_submitit_job(env: Optional[Mapping[str, str]] = None) -> bool:
    """True inside a job that submitit started (its signal handlers requeue the job)."""
    env = os.environ if env is None else env
    return bool(env.get("SUBMITIT_EXECUTOR"))
