"""One training job from a composed config: check, build the parts, hand them to the loop.

    cfg  -> validate (cheap checks, no torch work)
    dist       = instantiate(cfg.dist)                     rank, world size, device
    precision  = build_precision(cfg.precision)            autocast dtype + GradScaler
    dataset    = instantiate(cfg.data.dataset, data.*)     JSONL -> (input_ids, labels)
    model      = instantiate(cfg.model)                    MiniMindForCausalLM (+ from_weight)
    adapter    = cfg.adapter -> adapter.apply(model)       none | lora: which parameters train
    objective  = cfg.objective                             lm | dpo (reference) | distill (teacher)
    optim      = instantiate(cfg.optim, model)             AdamW over the trainable params, schedule
    tracker    = instantiate(cfg.logger)                   console, metrics.jsonl, wandb
    trainer    = instantiate(cfg.loop, parts...)           owns the step; resumes if it can
    return trainer.fit()                                   final loss, for sweepers

The tracker is closed and the process group destroyed on every exit path.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from minimind import env
from minimind.config import to_plain, validate
from minimind.errors import ConfigError, UserError
from minimind.files import refuse_used_run_dir

log = logging.getLogger("minimind")


def run_dir_of() -> Path:
    """Hydra's output folder for this job (the current directory outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(os.getcwd())


def sweep_name() -> Optional[str]:
    """``multirun/<date>/<time>`` for a job of a -m sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return None


def overrides_of() -> list:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# --------------------------------------------------------------------------- pre-flight


def preflight(cfg: DictConfig, run_dir: Path) -> None:
    """Everything that can be refused without building anything: values, paths, resume."""
    validate(cfg)
    from minimind.stages import preflight_stage

    preflight_stage(cfg, run_dir)  # required keys, the reference / teacher files, no self-overwrite
    d = cfg.data
    path = Path(d.path)
    line = {"pretrain": '{"text": ...}', "dpo": '{"chosen": [...], "rejected": [...]}'}.get(
        str(d.kind), '{"conversations": [...]}')
    if not path.is_file():
        raise ConfigError(f"data.path={d.path!r}: no such file (expected a JSONL file with one "
                          f"{line} object per line)")
    if path.stat().st_size == 0:
        raise ConfigError(f"data.path={d.path!r} is empty: expected one JSON object per line")
    if d.tokenizer is not None:
        tok = Path(d.tokenizer)
        if not (tok.is_dir() and (tok / "tokenizer.json").is_file()) and not (
                tok.is_file() and tok.name.endswith(".json")):
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: not a tokenizer directory (expected a "
                              "folder with tokenizer.json and optionally tokenizer_config.json)")
    fw = cfg.model.from_weight
    if fw is not None and not Path(fw).is_file():
        raise ConfigError(f"model.from_weight={fw!r}: no such file (expected a .pth or .safetensors "
                          "state dict in upstream MiniMind's format)")
    for what, folder in (("hydra.run.dir", run_dir), ("loop.save_dir", cfg.loop.save_dir)):
        if folder is None:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ConfigError(f"{what}={str(folder)!r} is not writable ({e.strerror or e}): "
                              "checkpoints and weights could not be saved there") from None
    resume = str(cfg.loop.resume)
    if resume == "never":
        refuse_used_run_dir(run_dir / "checkpoints")
    if resume not in ("auto", "never") and not Path(resume).is_file():
        raise ConfigError(f"loop.resume={resume!r}: no such checkpoint file (valid: auto, never, or "
                          "the path of a checkpoint: <run dir>/checkpoints/step_N.pt or upstream's "
                          "*_resume.pth)")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the job


def build_trainer(cfg: DictConfig, run_dir: os.PathLike):
    """Build every part from ``cfg``; the returned Trainer owns the process group (``dist``)."""
    run_dir = Path(run_dir)
    preflight(cfg, run_dir)  # before importing torch: a bad value is refused in a second
    from minimind.stages import build_part, weights_stem

    with open_dict(cfg):  # null: the stage's name, recorded in the checkpoint's config
        cfg.loop.save_weight = weights_stem(cfg)

    import torch
    from hydra.utils import instantiate

    from minimind.data.loader import Batches, dataset_kwargs
    from minimind.model import model_summary
    from minimind.precision import build_precision

    if env.rank() != 0:
        _silence_file_logs()
    cpus = env.slurm_cpus_per_task()
    if cpus:  # torch would start a thread per core of the node and spin against other jobs
        torch.set_num_threads(cpus)
    dist = instantiate(cfg.dist, device=cfg.device)
    try:
        device = dist.device
        if device.type == "cuda" and cfg.precision.dtype == "float32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        precision = build_precision(cfg.precision, device)

        target = hydra_target(cfg.data.dataset)
        data_values = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
        dataset = instantiate(cfg.data.dataset, **dataset_kwargs(target, data_values, cfg.seed))
        tokenizer = dataset.tokenizer
        if cfg.model.vocab_size is None:
            with open_dict(cfg):
                cfg.model.vocab_size = tokenizer.vocab_size
        elif cfg.model.vocab_size < tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
                f"({tokenizer.vocab_size} tokens in {tokenizer.path}); use model.vocab_size="
                f"{tokenizer.vocab_size} or null (take the tokenizer's)")
        log.info("data: %s (%s, %d samples, max_length %d)", cfg.data.path, cfg.data.kind,
                 len(dataset), cfg.data.max_length)
        batches = Batches(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                          shuffle=cfg.data.shuffle, seed=cfg.seed, trim_padding=cfg.data.trim_padding,
                          rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda")

        seed_everything(cfg.seed)  # identical initial weights on every rank
        model = instantiate(cfg.model).to(device)
        log.info("%s", model_summary(model))
        adapter = build_part(cfg.adapter)  # before the optimizer: it decides what trains
        adapter.apply(model)  # still under the shared seed: the same adapter init on every rank
        seed_everything(cfg.seed + dist.rank)

        objective = build_part(cfg.objective)
        optimization = instantiate(cfg.optim, model=model, device=device)
        config = to_plain(cfg)
        tracker = instantiate(cfg.logger, _partial_=True, _convert_="all")(
            run_dir=str(run_dir), is_main=dist.is_main, config=config, group=sweep_name())
        # _partial_: the YAML's keys now, the built parts (which are not configs) in the call
        return instantiate(cfg.loop, _partial_=True, _convert_="all")(
            model=model, objective=objective, optimization=optimization, precision=precision,
            batches=batches, dist=dist, tracker=tracker, run_dir=str(run_dir), config=config, adapter=adapter)
    except BaseException:
        dist.destroy()
        raise


def hydra_target(node: DictConfig):
    """The class or function a ``_target_`` node names."""
    from hydra.utils import get_object

    return get_object(node._target_)


def build_and_fit(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """Build every part from ``cfg`` and train. Returns the trainer's summary."""
    trainer = build_trainer(cfg, run_dir)
    failed = True
    try:
        final = trainer.fit()
        summary = dict(trainer.summary, final_loss=final)
        if trainer.dist.is_main:
            _write_summary(run_dir, cfg, summary, trainer.tracker, trainer.raw_model)
        failed = False
        return summary
    finally:
        trainer.tracker.close(failed=failed)
        trainer.dist.destroy()


def _silence_file_logs() -> None:
    """Ranks other than 0 keep warnings on the console but write no log file."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    logging.getLogger("minimind").setLevel(logging.WARNING)


def _write_summary(run_dir: Path, cfg: DictConfig, summary: Dict[str, Any], tracker, model) -> None:
    from minimind.model import active_parameters, num_parameters

    data = dict(summary)
    data.update({
        "overrides": overrides_of(),
        "run_dir": str(run_dir),
        "model_parameters": num_parameters(model),
        "model_active_parameters": active_parameters(model),
        "precision": cfg.precision.name,
        "grad_clip": cfg.optim.grad_clip,
        "accumulation_steps": cfg.optim.accumulation_steps,
        "name": cfg.name,
        "notes": cfg.notes,
    })
    from minimind.stages import weights_paths

    # where the inference weights went (loop.save_dir may be a folder shared by stages): generate finds them
    data["weights_files"] = [os.path.abspath(p) for p in weights_paths(cfg, run_dir)]
    tracker.summary(data)


def _record_failure(run_dir: Path, error: BaseException) -> None:
    """The report shows a failed job with the last line of its error: keep it in the run dir."""
    if env.rank() != 0:
        return
    try:
        from minimind.files import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        last = f"{type(error).__name__}: {error}".strip().splitlines()[-1]
        with open(run_dir / "events.jsonl", "a") as f:
            import time

            f.write(json.dumps({"event": "failed", "time": time.time(), "error": last}) + "\n")
        summary_path = run_dir / "summary.json"
        data = {}
        if summary_path.is_file():
            try:
                data = json.loads(summary_path.read_text())
            except ValueError:
                data = {}
        data.update({"status": "failed", "error": last, "overrides": overrides_of(),
                     "traceback": traceback.format_exc()})
        atomic_write_text(summary_path, json.dumps(data, indent=2) + "\n")
    except Exception as e:  # noqa: BLE001 - never hide the original error
        log.debug("could not record the failure: %s", e)


def run(cfg: DictConfig) -> float:
    """The task function's body (tests call this): train and return the final loss."""
    run_dir = run_dir_of()
    try:
        summary = build_and_fit(cfg, run_dir)
    except BaseException as e:
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            _record_failure(run_dir, find_user_error(e) or e)
        raise
    return summary["final_loss"]


def run_cli(cfg: DictConfig) -> Optional[float]:
    """``launch.py``'s task: user errors become one line and exit code 2 (no traceback).

    In a sweep (``-m``) the error is raised instead, so the launcher marks that job as failed
    and the other jobs go on; ``HYDRA_FULL_ERROR=1`` always shows the traceback.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return run(cfg)
    except Exception as e:
        user_error = find_user_error(e)
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print(f"Error: {user_error}", file=sys.stderr)
        sys.exit(2)


def find_user_error(error: BaseException) -> Optional[BaseException]:
    """The user error behind ``error``: Hydra wraps what a ``_target_`` raises in an
    InstantiationException, so follow ``__cause__`` down the chain."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, UserError):  # DataError and WeightsError are UserErrors too
            return error
        error, seen = error.__cause__, seen + 1
    return None
