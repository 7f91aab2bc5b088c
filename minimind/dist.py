"""Process group from torchrun's or SLURM's environment, and the few collectives the loop uses.

One code path for both launchers: :func:`minimind.env.launcher_layout` turns torchrun's or a
SLURM step's variables into the same rank layout; this module starts the process group from
it (nccl on CUDA, gloo on CPU) and wraps the model in DDP.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.distributed as tdist

from minimind.env import launcher_layout
from minimind.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} is invalid: no CUDA device is visible here; "
                              "valid: cpu, auto")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


@dataclass
class DistContext:
    """Where this process sits in the job. With ``world_size == 1`` every collective is a no-op."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ddp: bool = False
    backend: Optional[str] = None
    launcher: str = "single"
    bucket_cap_mb: int = 25
    find_unused_parameters: bool = False
    timeout_s: int = 600
    _control: Any = None  # a gloo group for host-side flags (stop requests), even under nccl

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, bucket_cap_mb=self.bucket_cap_mb,
                   find_unused_parameters=self.find_unused_parameters)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def any_flag(self, flag: bool) -> bool:
        """True if any rank raised ``flag``: a CPU all-reduce on the gloo control group, so it
        never waits for the GPU queue."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj, group=self._control)
        return out

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier(group=self._control)

    def destroy(self) -> None:
        if tdist.is_available() and tdist.is_initialized():
            # keep the groups' Python objects past the DDP model: see _RETIRED
            _RETIRED.extend(g for g in (tdist.group.WORLD, self._control) if g is not None)
            try:
                tdist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - teardown must never mask the real error
                log.debug("destroy_process_group failed: %s", e)


# Process groups after destroy_process_group, until release_retired(). Without this the DDP
# model's Reducer can hold the last reference to the gloo group; freeing it then runs
# ~ProcessGroupGloo (which joins the group's worker threads) with the GIL held, while a worker
# waits for the GIL to free the tensors of its last collective: the process hangs at exit
# (about 1 run in 3 on 2 CPU cores; pytorch/pytorch#56297). The group's own Python object
# releases the GIL before its destructor runs, so the last reference must be ours.
_RETIRED: List[Any] = []


def release_retired() -> None:
    """Free the process groups :meth:`DistContext.destroy` kept, once the DDP model is gone."""
    import gc

    gc.collect()  # the trainer and its DDP model, if a reference cycle still holds them
    _RETIRED.clear()


def setup(ddp: bool = False, backend: str = "auto", timeout_s: int = 600, bucket_cap_mb: int = 25,
          find_unused_parameters: bool = False, device: str = "auto") -> DistContext:
    """The ``dist`` node's target: read the launcher's environment, start the process group."""
    env = launcher_layout()
    if env is None or env["world_size"] == 1:
        if ddp:
            log.info("dist=ddp but only one process was launched: training without DDP "
                     "(start with torchrun --nproc_per_node N or SLURM tasks for more)")
        return DistContext(device=resolve_device(device), timeout_s=timeout_s)
    if not ddp:
        raise ConfigError(
            f"dist=none but the {env['launcher']} launcher started {env['world_size']} processes "
            f"(WORLD_SIZE={env['world_size']}): add dist=ddp, or start one process")
    dev = resolve_device(device, env["local_rank"])
    backend = str(backend)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=timeout_s)
    tdist.init_process_group(
        backend=backend, init_method=f"tcp://{env['master_addr']}:{env['master_port']}",
        rank=env["rank"], world_size=env["world_size"], timeout=timeout,
        device_id=dev if backend == "nccl" else None)
    control = tdist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    ctx = DistContext(rank=env["rank"], local_rank=env["local_rank"], world_size=env["world_size"],
                      device=dev, ddp=True, backend=backend, launcher=env["launcher"],
                      bucket_cap_mb=bucket_cap_mb, find_unused_parameters=find_unused_parameters,
                      timeout_s=timeout_s, _control=control)
    log.info("DDP: rank %d/%d (local %d) on %s, backend %s, launcher %s", ctx.rank,
             ctx.world_size, ctx.local_rank, dev, backend, env["launcher"])
    return ctx
