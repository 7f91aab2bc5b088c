"""Structured configs: the typed schema behind ``conf/``, and the one place settings are documented.

Every YAML group in ``conf/`` is merged into one of these dataclasses, so a misspelt key
(``optim.gradclip=1``), a wrong type (``optim.lr=abc``) or a value outside a choice
(``loop.on_nan=maybe``) fails while Hydra composes the config, before anything is built. Each
field carries its documentation (``knob(default, help)``); ``launch.py --help`` prints it, and
the YAML files hold values, not a second copy of the text. Range checks that a type cannot
express (``grad_clip > 0``) live in :func:`validate`, which runs before any expensive work.

No key exists twice: the learning rate and weight decay are ``optim.lr`` / ``optim.weight_decay``
only (the optimizer and schedule nodes get them at build time and refuse their own copies), and
the dataset node receives the ``data.*`` values it declares parameters for.

Tests and notebooks that compose with Hydra's API import this module first (it registers the
schema as ``base_config``, which ``conf/config.yaml`` starts from, and the ``${mm.*}``
resolvers). It must not import torch or wandb: ``--help`` and ``--cfg job`` answer instantly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from minimind import env
from minimind.errors import ConfigError
from minimind.knobs import Choice, knob
from minimind.model_config import Family, MiniMindConfig

# --------------------------------------------------------------------------- choices


class LossNormalization(Choice):
    window_tokens = "window_tokens"
    micro_batch = "micro_batch"


class DataKind(Choice):
    pretrain = "pretrain"
    sft = "sft"
    dpo = "dpo"


class OnBadLine(Choice):
    error = "error"
    skip = "skip"


class Backend(Choice):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class WeightsFormat(Choice):
    pth = "pth"
    safetensors = "safetensors"
    both = "both"


class OnNan(Choice):
    stop = "stop"
    skip = "skip"


class ResumeChanges(Choice):
    refuse = "refuse"
    allow = "allow"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# --------------------------------------------------------------------------- resolvers


def _asset(name: str) -> str:
    """``${mm.asset:demo/sft.jsonl}``: absolute path of a file shipped inside the package."""
    from minimind.data.assets import asset_path

    return asset_path(name)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("mm.asset", _asset, replace=True)
    OmegaConf.register_new_resolver("mm.run_stamp", lambda: env.run_stamp(), use_cache=True, replace=True)


# --------------------------------------------------------------------------- groups


@dataclass
class ModelConfig(MiniMindConfig):
    """``conf/model/*.yaml``: the MiniMind architecture (fields in model_config.py)."""

    _target_: str = "minimind.model.build_model"
    family: Family = knob(Family.minimind2, "minimind2 | minimind3: intermediate-size formula and "
                                            "MoE router details")
    from_weight: Optional[str] = knob(None, "start from these weights (upstream .pth / .safetensors, or a "
                                            "Hugging Face folder: python -m minimind.export): "
                                            "weights only, a new run (loop.resume continues a run)")


@dataclass
class OptimConfig:
    """``conf/optim/*.yaml``: optimizer, learning-rate schedule and the update-step knobs."""

    _target_: str = "minimind.optim.Optimization"
    lr: float = knob(5e-4, "peak learning rate (MiniMind pretrain 5e-4; use a stage preset for SFT, "
                           "LoRA, DPO)")
    weight_decay: float = knob(0.01, "AdamW decoupled weight decay, on weight matrices only")
    decay_all_params: bool = knob(False, "true: decay norms too, as upstream's AdamW(model.parameters())")
    grad_clip: Optional[float] = knob(1.0, "max global L2 norm of the gradient; null disables clipping "
                                           "(the norm is still logged)")
    accumulation_steps: int = knob(1, "micro-batches per optimizer step; global batch = batch x this x ranks")
    warmup_steps: int = knob(0, "linear warmup (optimizer steps) before the cosine")
    min_lr_ratio: float = knob(0.1, "the cosine decays lr to lr * this (MiniMind: 0.1)")
    loss_normalization: LossNormalization = knob(
        LossNormalization.window_tokens, "window_tokens: exact token mean over the window and all ranks; "
                                         "micro_batch: upstream's mean / accumulation_steps")
    optimizer: Any = knob(MISSING, "the optimizer node (_partial_; lr and weight decay come from optim.*)")
    schedule: Any = knob(MISSING, "the learning-rate schedule node (_partial_; gets lr, min_lr_ratio, "
                                  "warmup_steps and the run length)")


@dataclass
class PrecisionConfig:
    """``conf/precision/*.yaml``: autocast dtype and the GradScaler."""

    name: str = knob("fp32", "fp32 | bf16 | fp16: the option's name (choose with precision=...)")
    dtype: str = knob("float32", "autocast dtype, fixed by the option: float32 (no autocast), bfloat16, "
                                 "float16")
    scaler: Any = knob(MISSING, "torch.amp.GradScaler node; enabled only for fp16")


@dataclass
class DataConfig:
    """``conf/data/*.yaml``: where samples come from and how they are batched."""

    kind: DataKind = knob(DataKind.sft, "pretrain | sft | dpo: what one line of the file is")
    path: str = knob(MISSING, "the JSONL file (required)")
    tokenizer: Optional[str] = knob(None, "tokenizer directory (tokenizer.json [+ tokenizer_config.json]); "
                                          "null = the embedded demo tokenizer")
    max_length: int = knob(512, "tokens per sample (longer samples are truncated and counted)")
    batch_size: int = knob(16, "samples per micro-batch per rank")
    num_workers: int = knob(0, "DataLoader worker processes (0 = load in the training process)")
    shuffle: bool = knob(True, "new order each epoch, a pure function of (seed, epoch, rank, world size)")
    add_bos_eos: bool = knob(True, "pretrain: bos/eos around each text (false for MiniMind2 files that "
                                   "carry them)")
    on_bad_line: OnBadLine = knob(OnBadLine.error, "error | skip: a line that is not valid JSON or lacks "
                                                   "the expected keys")
    trim_padding: bool = knob(True, "drop each micro-batch's all-padding tail before the forward (same "
                                    "loss and gradients, less compute)")
    packing: bool = knob(False, "pack each micro-batch's samples into as few rows of max_length as they "
                                "need, attention kept within each sample (same loss and gradients, "
                                "less padding); raise batch_size with it")
    pretokenize: bool = knob(False, "tokenize once into a uint16 memmap cache; then 0 workers feed a GPU")
    cache_dir: Optional[str] = knob(None, "index / token caches; null: next to the file, else "
                                          "~/.cache/minimind")
    system_prompt_prob: float = knob(0.0, "SFT augmentation: random system prompt (upstream: 0.2)")
    drop_empty_think_prob: float = knob(0.0, "SFT augmentation: drop empty think blocks (upstream: 0.8)")
    val_path: Optional[str] = knob(None, "held-out JSONL in the format of data.path, evaluated and never "
                                         "trained on (loop.eval_interval)")
    val_size: Optional[float] = knob(None, "hold out part of data.path instead: a count (>= 1) or a fraction "
                                           "(< 1), picked from the seed; null/0 = none")
    dataset: Any = knob(MISSING, "the dataset node; it receives the data.* values it has parameters for")


@dataclass
class DistConfig:
    """``conf/dist/*.yaml``: single process or DDP (torchrun or SLURM tasks)."""

    _target_: str = "minimind.dist.setup"
    ddp: bool = knob(False, "false: one process; true: DDP over the launcher's processes")
    backend: Backend = knob(Backend.auto, "auto (nccl on CUDA, gloo on CPU) | nccl | gloo")
    timeout_s: int = knob(600, "a collective waiting longer than this (a dead rank) becomes an error")
    bucket_cap_mb: int = knob(25, "DDP gradient bucket size (MB)")
    find_unused_parameters: bool = knob(False, "only if some parameters get no gradient (MoE here does not "
                                               "need it)")


@dataclass
class LoopConfig:
    """``conf/loop/*.yaml``: the training loop (minimind.loop.Trainer)."""

    _target_: str = "minimind.loop.Trainer"
    epochs: int = knob(1, "passes over the data")
    max_steps: Optional[int] = knob(None, "stop after this many optimizer steps (the lr schedule spans it); "
                                          "null: all epochs")
    log_interval: int = knob(10, "console / metrics.jsonl / wandb every N optimizer steps")
    save_interval: int = knob(500, "training checkpoint + inference weights every N optimizer steps, and at "
                                   "the end")
    save_dir: Optional[str] = knob(None, "where inference weights go; null = the run directory")
    save_weight: Optional[str] = knob(None, "weights file stem: {save_weight}_{hidden_size}[_moe].pth; null = "
                                            "the stage's (pretrain, full_sft, lora_<data file>, dpo, full_dist)")
    weights_format: WeightsFormat = knob(WeightsFormat.pth, "pth (upstream's format) | safetensors | both")
    keep_last: int = knob(2, "training checkpoints kept in <run dir>/checkpoints")
    resume: str = knob("auto", "auto: continue from the newest good checkpoint in the run dir | never: "
                               "refuse a used run dir | the path of a checkpoint (ours or upstream's "
                               "*_resume.pth)")
    resume_changes: ResumeChanges = knob(
        ResumeChanges.refuse, "refuse: a checkpoint of another run (lr, seed, data file, model, run length "
                              "... differ) is not continued | allow: continue anyway, the changes logged")
    compile: bool = knob(False, "torch.compile the model (the first compile takes a while)")
    compile_backend: str = knob("inductor", "torch.compile backend; aot_eager / eager to debug compile issues")
    empty_cache: bool = knob(False, "torch.cuda.empty_cache() after every step (upstream does; it is slow)")
    on_nan: OnNan = knob(OnNan.stop, "NaN/inf loss: stop (keep the last good checkpoint) | skip the update")
    max_nan_skips: int = knob(10, "on_nan=skip: give up after this many skipped updates in a row")
    progress: Optional[bool] = knob(None, "progress bar: null = only on a terminal, true = always, "
                                          "false = never")
    eval_interval: Optional[int] = knob(100, "held-out loss every N optimizer steps and at the end (when "
                                             "data.val_path/val_size gives held-out data); null: at the end only")
    eval_batches: Optional[int] = knob(None, "evaluate the first N x data.batch_size held-out samples; null: "
                                             "all of them")
    save_best: bool = knob(False, "also keep the weights of the best evaluation: "
                                  "{save_weight}_{hidden_size}[_moe]_best.pth")
    eval_prompts: list = knob([], "prompts decoded greedily at each evaluation (chat template unless "
                                  "data.kind=pretrain) -> samples.jsonl, wandb, the console")


@dataclass
class WandbConfig:
    project: str = knob("minimind", "wandb project")
    entity: Optional[str] = knob(None, "wandb entity (team)")
    name: Optional[str] = knob(None, "run name; null: the run directory's name")
    group: Optional[str] = knob(None, "run group; null: the sweep directory for -m runs")
    tags: list = knob([], "wandb tags")
    mode: WandbMode = knob(WandbMode.offline, "offline (no network; wandb sync later) | online | disabled")


@dataclass
class LoggerConfig:
    """``conf/logger/*.yaml``: console line, progress bar, metrics.jsonl, wandb."""

    _target_: str = "minimind.tracking.Tracker"
    console: bool = knob(True, "the MiniMind-style console line at each log interval")
    metrics_file: str = knob("metrics.jsonl", "one JSON object per log event, in the run dir")
    wandb: Optional[WandbConfig] = knob(None, "null: no wandb (logger=wandb sets it)")


@dataclass
class ObjectiveConfig:
    """``conf/objective/*.yaml``: what one micro-batch's loss is (minimind.objectives).

    One schema for every objective, as ``data.*`` is one for every dataset: the objective class
    receives the keys it has parameters for (``lm`` none of these).
    """

    _target_: str = knob("minimind.objectives.LanguageModeling", "the objective class")
    beta: float = knob(0.15, "dpo: how far the policy may move from the reference (MiniMind2: 0.1)")
    reference_weight: Optional[str] = knob(None, "dpo: the frozen reference's weights; null = the starting "
                                                 "weights (model.from_weight)")
    alpha: float = knob(0.5, "distill: loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)")
    temperature: float = knob(1.5, "distill: softmax temperature T of both models' distributions")
    teacher: Optional[ModelConfig] = knob(None, "distill: the teacher, a model node with its own from_weight "
                                                "(choose one with model@objective.teacher=<model option>)")


@dataclass
class AdapterConfig:
    """``conf/adapter/*.yaml``: which parameters train (minimind.adapters); the adapter class
    receives the keys it has parameters for (``none`` none of them)."""

    _target_: str = knob("minimind.adapters.NoAdapter", "none: every parameter trains | "
                                                        "minimind.adapters.LoRA (adapter=lora)")
    rank: int = knob(16, "lora: rank r of B @ A (upstream: MiniMind-3 16, MiniMind2 8)")
    alpha: Optional[float] = knob(None, "lora: output scaled by alpha / rank; null = no scaling (upstream)")
    dropout: float = knob(0.0, "lora: dropout on the adapter's input (upstream: none)")
    targets: Optional[List[str]] = knob(None, "lora: module names to adapt (e.g. [q_proj,v_proj]); null = every "
                                         "square nn.Linear, upstream's rule (q_proj, o_proj)")


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
    objective: ObjectiveConfig = MISSING
    adapter: AdapterConfig = MISSING
    seed: int = knob(42, "data order uses seed; rank r seeds its own RNGs with seed + r")
    device: str = knob("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    name: Optional[str] = knob(None, "a short label for reports and wandb")
    notes: Optional[str] = knob(None, "what this run is for (kept in summary.json)")


GROUP_SCHEMAS = {"model": ModelConfig, "optim": OptimConfig, "precision": PrecisionConfig,
                 "data": DataConfig, "dist": DistConfig, "loop": LoopConfig, "logger": LoggerConfig,
                 "objective": ObjectiveConfig, "adapter": AdapterConfig}


def find_sweepers() -> None:
    """Make Hydra's plugin scan find ``hydra_plugins/minimind_sweepers`` from any folder.

    A wheel installs it into site-packages, where the ``hydra_plugins`` namespace finds it. An
    editable install (``pip install -e .``) maps it through setuptools' import hook, which the
    scan (``pkgutil.walk_packages`` over the namespace's path) does not see, so outside the
    checkout the sweepers would silently be Hydra's own; the checkout is added at the end of
    ``sys.path`` for the namespace to include it (``launch.py`` has it first already)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "hydra_plugins" / "minimind_sweepers").is_dir() and str(root) not in sys.path:
        sys.path.append(str(root))


def register_configs() -> None:
    """What Hydra's compose API needs before composing (tests, notebooks): the schema, the
    ``${mm.*}`` resolvers, and this project's sweepers findable (:func:`find_sweepers`)."""
    find_sweepers()
    register_resolvers()
    ConfigStore.instance().store(name="base_config", node=Config)


# --------------------------------------------------------------------------- validation

# keys of the optimizer / schedule / dataset nodes that another key already sets
SET_ELSEWHERE = {
    "optim.optimizer": {"lr": "optim.lr", "weight_decay": "optim.weight_decay", "params": "the model"},
    "optim.schedule": {"lr": "optim.lr", "min_ratio": "optim.min_lr_ratio",
                       "warmup_steps": "optim.warmup_steps", "total_steps": "the run length"},
    "data.dataset": {f: f"data.{f}" for f in DataConfig.__dataclass_fields__ if f != "dataset"},
}


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {valid}")


def _refuse_second_copies(cfg: DictConfig) -> None:
    for node_key, owners in SET_ELSEWHERE.items():
        node = OmegaConf.select(cfg, node_key)
        if not isinstance(node, DictConfig):
            continue
        for key in node:
            if key in owners:
                raise ConfigError(f"{node_key}.{key} is set, but {owners[key]} sets it: use "
                                  f"{owners[key]} (one place for each setting)")


def _validate_eval(d: DictConfig, lp: DictConfig) -> None:
    """data.val_* and loop.eval_*: what can be judged without reading the data."""
    v = d.val_size
    _check(v is None or (v >= 0 and (v < 1 or float(v).is_integer())), "data.val_size", v,
           "a count of samples (a whole number >= 1), a fraction in (0, 1), or null/0 for none")
    _check(not (d.val_path and v), "data.val_size", v,
           f"data.val_path={d.val_path!r} is set too: hold out part of data.path or use a val file, not both")
    _check(lp.eval_interval is None or lp.eval_interval >= 1, "loop.eval_interval", lp.eval_interval,
           "must be >= 1, or null to evaluate only at the end")
    _check(lp.eval_batches is None or lp.eval_batches >= 1, "loop.eval_batches", lp.eval_batches,
           "must be >= 1, or null for the whole held-out set")
    _check(not lp.save_best or bool(d.val_path or v), "loop.save_best", lp.save_best,
           "needs held-out data: set data.val_path or data.val_size")
    _check(all(isinstance(x, str) and x.strip() for x in lp.eval_prompts), "loop.eval_prompts",
           list(lp.eval_prompts), "a list of non-empty strings")


def validate(cfg: DictConfig) -> None:
    """Range checks a type cannot express. Cheap: no torch, no files read."""
    o, d, lp, p = cfg.optim, cfg.data, cfg.loop, cfg.precision
    _check(o.lr >= 0, "optim.lr", o.lr, "must be >= 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", o.grad_clip,
           "must be > 0, or null to disable clipping")
    _check(o.accumulation_steps >= 1, "optim.accumulation_steps", o.accumulation_steps,
           "must be an integer >= 1")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _check(p.name in PRECISIONS, "precision.name", p.name, f"valid: {', '.join(PRECISIONS)}")
    _check(p.dtype == PRECISIONS[p.name], "precision.dtype", p.dtype,
           f"precision={p.name} means {PRECISIONS[p.name]} (choose the dtype with precision=fp32|bf16|fp16)")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be an integer >= 1")
    _check(d.max_length >= 8, "data.max_length", d.max_length, "must be an integer >= 8")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    for key in ("system_prompt_prob", "drop_empty_think_prob"):
        _check(0 <= d[key] <= 1, f"data.{key}", d[key], "must be a probability in [0, 1]")
    _check(lp.epochs >= 1, "loop.epochs", lp.epochs, "must be an integer >= 1")
    _check(lp.max_steps is None or lp.max_steps >= 1, "loop.max_steps", lp.max_steps,
           "must be >= 1, or null to run all epochs")
    _check(lp.log_interval >= 1, "loop.log_interval", lp.log_interval, "must be >= 1")
    _check(lp.save_interval >= 1, "loop.save_interval", lp.save_interval, "must be >= 1")
    _check(lp.keep_last >= 1, "loop.keep_last", lp.keep_last, "must be >= 1")
    _check(lp.max_nan_skips >= 1, "loop.max_nan_skips", lp.max_nan_skips, "must be >= 1")
    _validate_eval(d, lp)
    _check(bool(str(lp.resume).strip()), "loop.resume", lp.resume,
           "valid: auto, never, or the path of a checkpoint")
    dev = str(cfg.device)
    _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device", dev,
           "valid: auto, cpu, cuda, cuda:N")
    _refuse_second_copies(cfg)
    m = cfg.model
    _check(d.max_length <= m.max_position_embeddings, "data.max_length", d.max_length,
           f"longer than model.max_position_embeddings={m.max_position_embeddings} (the RoPE table); use "
           f"at most {m.max_position_embeddings}, or raise model.max_position_embeddings")
    fields = {k: m[k] for k in m if k not in ("_target_", "from_weight")}
    try:
        MiniMindConfig(**fields).validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    from minimind.stages import validate_stage

    validate_stage(cfg)


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python data (choices as their strings): for checkpoints,
    summaries and wandb."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# Importing this module registers the schema and the ``mm.*`` resolvers. A submitit job
# unpickles the task function (which references this module) before Hydra composes its
# config, so the job process has them too.
register_configs()
