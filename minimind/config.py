"""Structured configs: the typed schema behind ``conf/``.

Every YAML group in ``conf/`` is merged into one of these dataclasses, so a misspelt key
(``optim.gradclip=1``) or a wrong type (``optim.lr=abc``) fails while Hydra composes the
config, before anything is built. Range checks that a type cannot express (``grad_clip > 0``)
live in :func:`validate`, which the entry point calls before any expensive work.

This module must not import torch or wandb: ``launch.py --help`` and ``--cfg job`` only
compose configs, and they should answer instantly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from minimind.errors import ConfigError
from minimind.model_config import MiniMindConfig

# --------------------------------------------------------------------------- resolvers


def _asset(name: str) -> str:
    """``${mm.asset:demo/sft.jsonl}``: absolute path of a file shipped inside the package."""
    from minimind.data.assets import asset_path

    return asset_path(name)


def run_stamp() -> str:
    """The name of a single run's output folder, identical on every rank of a job.

    Hydra's ``${now:...}`` is evaluated separately by each rank that torchrun or SLURM
    starts, and two ranks can straddle a second. Launchers give all ranks one id, so the run
    folder is derived from it; a plain ``python launch.py`` gets the usual date/time.
    """
    if os.environ.get("MINIMIND_RUN_STAMP"):
        return os.environ["MINIMIND_RUN_STAMP"]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun/{run_id}"
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        step = os.environ.get("SLURM_STEP_ID", "0")
        return f"slurm/{job_id}.{step}"
    return time.strftime("%Y-%m-%d/%H-%M-%S")


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("mm.asset", _asset, replace=True)
    OmegaConf.register_new_resolver("mm.run_stamp", run_stamp, use_cache=True, replace=True)


# --------------------------------------------------------------------------- groups


@dataclass
class ModelConfig(MiniMindConfig):
    """``conf/model/*.yaml``: the MiniMind architecture (fields in model_config.py)."""

    _target_: str = "minimind.model.build_model"
    # path to an upstream-format .pth / .safetensors: weights only, a new run (not a resume)
    from_weight: Optional[str] = None


@dataclass
class OptimConfig:
    """``conf/optim/*.yaml``: optimizer, learning-rate schedule and the update-step knobs."""

    # peak learning rate; the cosine schedule decays it to lr * min_lr_ratio
    lr: float = 5e-4
    # AdamW decoupled weight decay, applied to weight matrices only (not norms or biases)
    weight_decay: float = 0.01
    # true: decay every parameter, as upstream MiniMind's plain AdamW(model.parameters()) does
    decay_all_params: bool = False
    # max global L2 norm of the gradient; null disables clipping (the norm is still logged)
    grad_clip: Optional[float] = 1.0
    # micro-batches per optimizer step (gradient accumulation)
    accumulation_steps: int = 1
    # linear warmup from 0 to lr over this many optimizer steps, then cosine
    warmup_steps: int = 0
    # final lr as a fraction of lr (MiniMind: 0.1, i.e. lr*(0.1 + 0.45*(1+cos(pi*t/T))))
    min_lr_ratio: float = 0.1
    # window_tokens: token-weighted mean over the whole accumulation window and all ranks;
    # micro_batch: upstream MiniMind (mean per micro-batch, divided by accumulation_steps)
    loss_normalization: str = "window_tokens"
    # the optimizer node (_partial_: the parameters are passed at run time)
    optimizer: Any = MISSING
    # the learning-rate schedule node
    schedule: Any = MISSING


@dataclass
class PrecisionConfig:
    """``conf/precision/*.yaml``: autocast dtype and the GradScaler."""

    # fp32 | bf16 | fp16 (the option's own name, for logs and reports)
    name: str = "fp32"
    # autocast dtype: float32 (no autocast), bfloat16, float16
    dtype: str = "float32"
    # torch.amp.GradScaler node; enabled only for fp16
    scaler: Any = MISSING


@dataclass
class DataConfig:
    """``conf/data/*.yaml``: where samples come from and how they are batched."""

    # pretrain | sft (which dataset class `dataset` builds)
    kind: str = "sft"
    # JSONL file
    path: str = MISSING
    # tokenizer directory (tokenizer.json [+ tokenizer_config.json]); null = embedded demo
    tokenizer: Optional[str] = None
    # tokens per sample (longer samples are truncated and counted)
    max_length: int = 512
    # samples per micro-batch per rank
    batch_size: int = 16
    # DataLoader worker processes (0 = load in the training process)
    num_workers: int = 0
    # shuffle the sample order each epoch (a pure function of seed, epoch, rank, world size)
    shuffle: bool = True
    # pretrain only: add bos/eos around each text (false for MiniMind2 files that carry them)
    add_bos_eos: bool = True
    # error | skip: what to do with a line that is not valid JSON or lacks the expected keys
    on_bad_line: str = "error"
    # drop each micro-batch's all-padding tail before the forward (same loss, less compute)
    trim_padding: bool = True
    # tokenize the whole file once into a uint16 memory-mapped cache
    pretokenize: bool = False
    # where index / token caches go (null: next to the file, else ~/.cache/minimind)
    cache_dir: Optional[str] = None
    # SFT augmentations from upstream (off by default): random system prompt, drop empty think
    system_prompt_prob: float = 0.0
    drop_empty_think_prob: float = 0.0
    # the dataset node
    dataset: Any = MISSING


@dataclass
class DistConfig:
    """``conf/dist/*.yaml``: single process or DDP (torchrun or SLURM tasks)."""

    _target_: str = "minimind.dist.setup"
    # false: one process; true: DistributedDataParallel over the launcher's processes
    ddp: bool = False
    # auto: nccl on CUDA, gloo on CPU
    backend: str = "auto"
    # seconds a collective may wait before a dead rank turns into an error
    timeout_s: int = 600
    # DDP bucket size; larger buckets, fewer all-reduce calls
    bucket_cap_mb: int = 25
    # only if some parameters receive no gradient (MoE here does not need it)
    find_unused_parameters: bool = False


@dataclass
class LoopConfig:
    """``conf/loop/*.yaml``: the training loop (minimind.loop.Trainer)."""

    _target_: str = "minimind.loop.Trainer"
    # passes over the data
    epochs: int = 1
    # stop after this many optimizer steps (null: run all epochs); the lr schedule spans it
    max_steps: Optional[int] = None
    # console / metrics.jsonl / wandb line every N optimizer steps
    log_interval: int = 10
    # training checkpoint + inference weights every N optimizer steps (and at the end)
    save_interval: int = 500
    # where inference weights go; null = the run directory
    save_dir: Optional[str] = None
    # inference weights file stem: {save_weight}_{hidden_size}[_moe].pth
    save_weight: str = "pretrain"
    # pth | safetensors | both
    weights_format: str = "pth"
    # how many training checkpoints to keep in checkpoints/
    keep_last: int = 2
    # auto: continue from the newest good checkpoint in the run dir; never: refuse a used
    # run dir; or a path to a checkpoint (ours or upstream's *_resume.pth)
    resume: str = "auto"
    # torch.compile the model
    compile: bool = False
    # torch.compile backend: inductor (fast kernels); aot_eager / eager to debug compile issues
    compile_backend: str = "inductor"
    # torch.cuda.empty_cache() after every optimizer step (upstream does; it costs time)
    empty_cache: bool = False
    # NaN/inf loss: stop (keep the last good checkpoint) or skip the update
    on_nan: str = "stop"
    # with on_nan=skip: stop after this many skipped updates in a row
    max_nan_skips: int = 10
    # progress bar: auto (only on a terminal), true, false
    progress: str = "auto"


@dataclass
class WandbConfig:
    # wandb project and (optional) entity/team
    project: str = "minimind"
    entity: Optional[str] = None
    # run name (null: the run directory's name) and group (sweeps: the sweep directory)
    name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # offline (default: no network needed, `wandb sync` later), online, disabled
    mode: str = "offline"


@dataclass
class LoggerConfig:
    """``conf/logger/*.yaml``: console line, progress bar, metrics.jsonl, wandb."""

    _target_: str = "minimind.tracking.Tracker"
    # the MiniMind-style console line at each log interval
    console: bool = True
    # one JSON object per log event in the run dir
    metrics_file: str = "metrics.jsonl"
    # null: no wandb
    wandb: Optional[WandbConfig] = None


@dataclass
class Config:
    """The composed config (``conf/config.yaml``)."""

    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    precision: PrecisionConfig = MISSING
    data: DataConfig = MISSING
    dist: DistConfig = MISSING
    loop: LoopConfig = MISSING
    logger: LoggerConfig = MISSING
    # base seed; rank r uses seed + r for its own RNG (the data order uses seed only)
    seed: int = 42
    # auto (cuda if available) | cpu | cuda | cuda:N
    device: str = "auto"
    # a short free-form name for reports and wandb
    name: Optional[str] = None
    # a note of what this run is for (kept in summary.json)
    notes: Optional[str] = None
    extras: Dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


# --------------------------------------------------------------------------- validation

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LOSS_NORMALIZATIONS = ("window_tokens", "micro_batch")


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {valid}")


def validate(cfg: DictConfig) -> None:
    """Range and choice checks a type cannot express. Cheap: no torch, no files read."""
    o, d, lp, p = cfg.optim, cfg.data, cfg.loop, cfg.precision
    _check(o.lr >= 0, "optim.lr", o.lr, "must be >= 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", o.grad_clip,
           "must be > 0, or null to disable clipping")
    _check(o.accumulation_steps >= 1, "optim.accumulation_steps", o.accumulation_steps,
           "must be an integer >= 1")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _check(o.loss_normalization in LOSS_NORMALIZATIONS, "optim.loss_normalization",
           o.loss_normalization, f"valid: {', '.join(LOSS_NORMALIZATIONS)}")
    _check(p.dtype in PRECISIONS.values(), "precision.dtype", p.dtype,
           f"valid: {', '.join(PRECISIONS.values())} (choose with precision=fp32|bf16|fp16)")
    _check(d.kind in ("pretrain", "sft"), "data.kind", d.kind, "valid: pretrain, sft")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be an integer >= 1")
    _check(d.max_length >= 8, "data.max_length", d.max_length, "must be an integer >= 8")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(d.on_bad_line in ("error", "skip"), "data.on_bad_line", d.on_bad_line,
           "valid: error, skip")
    for key in ("system_prompt_prob", "drop_empty_think_prob"):
        _check(0 <= d[key] <= 1, f"data.{key}", d[key], "must be a probability in [0, 1]")
    _check(lp.epochs >= 1, "loop.epochs", lp.epochs, "must be an integer >= 1")
    _check(lp.max_steps is None or lp.max_steps >= 1, "loop.max_steps", lp.max_steps,
           "must be >= 1, or null to run all epochs")
    _check(lp.log_interval >= 1, "loop.log_interval", lp.log_interval, "must be >= 1")
    _check(lp.save_interval >= 1, "loop.save_interval", lp.save_interval, "must be >= 1")
    _check(lp.keep_last >= 1, "loop.keep_last", lp.keep_last, "must be >= 1")
    _check(lp.weights_format in ("pth", "safetensors", "both"), "loop.weights_format",
           lp.weights_format, "valid: pth, safetensors, both")
    _check(lp.on_nan in ("stop", "skip"), "loop.on_nan", lp.on_nan, "valid: stop, skip")
    _check(lp.max_nan_skips >= 1, "loop.max_nan_skips", lp.max_nan_skips, "must be >= 1")
    _check(str(lp.progress).lower() in ("auto", "true", "false"), "loop.progress",
           lp.progress, "valid: auto, true, false")
    _check(bool(str(lp.resume).strip()), "loop.resume", lp.resume,
           "valid: auto, never, or the path of a checkpoint")
    dev = str(cfg.device)
    _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device", dev,
           "valid: auto, cpu, cuda, cuda:N")
    if cfg.logger.wandb is not None:
        _check(cfg.logger.wandb.mode in ("offline", "online", "disabled"),
               "logger.wandb.mode", cfg.logger.wandb.mode, "valid: offline, online, disabled")
    m = cfg.model
    fields = {k: m[k] for k in m if k not in ("_target_", "from_weight")}
    try:
        MiniMindConfig(**fields).validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


# Importing this module registers the schema and the ``mm.*`` resolvers. A submitit job
# unpickles the task function (which references this module) before Hydra composes its
# config, so the job process has them too.
register_configs()
