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
    return trainer.fit()                                   val loss (or final loss), for sweepers

The tracker is closed and the process group destroyed on every exit path. Rank 0 holds the
run folder's lock (:mod:`minimind.runlock`) for the whole job: one process per run folder.
"""

from __future__ import annotations

import errno
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
from minimind.errors import ConfigError, UserError, unwrap_worker_error
from minimind.files import refuse_used_run_dir
from minimind.required import refuse_missing
from minimind.runlock import RunLock

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
    refuse_missing(cfg)  # a ??? key: one line with an example, not MissingMandatoryValue
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
    if d.val_path is not None and not Path(d.val_path).is_file():
        raise ConfigError(f"data.val_path={d.val_path!r}: no such file (expected held-out data in the format "
                          f"of data.path: one {line} object per line)")
    if d.tokenizer is not None:
        tok = Path(d.tokenizer)
        if not (tok.is_dir() and (tok / "tokenizer.json").is_file()) and not (
                tok.is_file() and tok.name.endswith(".json")):
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: not a tokenizer directory (expected a "
                              "folder with tokenizer.json and optionally tokenizer_config.json)")
    fw = cfg.model.from_weight
    if fw is not None and Path(fw).is_dir():  # a Hugging Face folder: its config.json must fit model=
        from minimind.hf.spec import check_against

        model = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
        check_against(fw, {k: v for k, v in model.items() if k not in ("_target_", "from_weight")})
    elif fw is not None and not Path(fw).is_file():
        raise ConfigError(f"model.from_weight={fw!r}: no such file (expected a .pth or .safetensors "
                          "state dict in upstream MiniMind's format, or a Hugging Face folder)")
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

    from minimind.data import holdout
    from minimind.data.loader import Batches, dataset_kwargs
    from minimind.evaluate import Evaluator, held_out
    from minimind.model import model_summary
    from minimind.precision import build_precision

    if env.rank() != 0:
        _silence_file_logs()
    _respect_cpu_allocation(torch)
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
        # held-out data (data.val_size / data.val_path) is read now: a bad file fails before the model
        split = holdout.split(len(dataset), cfg.data.val_size, cfg.seed)
        heldout = held_out(cfg, data_values, split)
        if heldout is not None:
            log.info("held out: %d samples (%s)", len(heldout.indices if heldout.indices is not None
                                                      else heldout.dataset), heldout.source)
        batches = Batches(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                          shuffle=cfg.data.shuffle, seed=cfg.seed, trim_padding=cfg.data.trim_padding,
                          rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda",
                          indices=split.train, packing=cfg.data.packing)

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
            run_dir=str(run_dir), is_main=dist.is_main, config=config, group=sweep_name(),
            overrides=overrides_of())
        evaluator = heldout and Evaluator(
            heldout, objective=objective, dist=dist, batch_size=cfg.data.batch_size,
            num_workers=cfg.data.num_workers, trim_padding=cfg.data.trim_padding,
            autocast=precision.autocast, tracker=tracker, chat=str(cfg.data.kind) != "pretrain")
        # _partial_: the YAML's keys now, the built parts (which are not configs) in the call
        return instantiate(cfg.loop, _partial_=True, _convert_="all")(
            model=model, objective=objective, optimization=optimization, precision=precision,
            batches=batches, dist=dist, tracker=tracker, run_dir=str(run_dir), config=config, evaluator=evaluator,
            adapter=adapter)
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
        if trainer.dist.is_main:
            from minimind.runfolder import continue_command, display_path

            log.info("run folder: %s", display_path(run_dir))
            if not env.in_submitit_job():  # a kill (OOM, reboot) prints nothing: say it now
                log.info("if it stops, continue it with: %s", continue_command(run_dir))
        result = trainer.fit()  # the last val loss when evaluating, else the last training loss
        summary = dict(trainer.summary, result=result, weights=trainer.weights_paths)
        if trainer.dist.is_main:
            _write_summary(run_dir, cfg, summary, trainer.tracker, trainer.raw_model)
            _say_where(run_dir, summary)
        failed = False
        return summary
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, without a checkpoint
        if trainer.dist.is_main:
            _record_interrupt(trainer)
        raise
    finally:
        trainer.tracker.close(failed=failed)
        trainer.dist.destroy()


def _respect_cpu_allocation(torch) -> None:
    """Use the CPUs SLURM gave this task, not every core of the node.

    torch starts one thread per core it can see; four 1-CPU jobs on a shared node would each run
    a full-width OpenMP pool and spin against each other. OMP_NUM_THREADS, if set, still wins.
    """
    cpus = env.slurm_cpus_per_task()
    if cpus:
        torch.set_num_threads(cpus)


def _say_where(run_dir: Path, summary: Dict[str, Any]) -> None:
    """The last lines of a run: where its files are (and, stopped early, how to go on: the loop
    said it with the command)."""
    from minimind.runfolder import display_path

    log.info("run folder: %s (summary.json, metrics.jsonl, checkpoints/)", display_path(run_dir))
    for path in summary.get("weights") or []:
        log.info("weights: %s", display_path(path))


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
    tracker.summary(data)


def _record_interrupt(trainer) -> None:
    """events.jsonl and summary.json say ``interrupted`` (not still running), with the step and
    the checkpoint a rerun continues from."""
    try:
        p, saved = trainer.progress, trainer.checkpoints.list()
        last = str(saved[0]) if saved else None
        trainer.tracker.event("interrupted", step=p.step, checkpoint=None, last_checkpoint=last,
                              reason="a second Ctrl-C: stopped at once, no checkpoint of this step")
        trainer.tracker.summary({
            "status": "interrupted", "optimizer_steps": p.step, "final_loss": p.final_loss,
            "best_loss": p.best_loss, "tokens": p.tokens, "resumed_from": trainer.resumed_from,
            "last_checkpoint": last, "overrides": overrides_of(), "run_dir": str(trainer.run_dir)})
    except Exception as e:  # noqa: BLE001 - never hide the interrupt
        log.debug("could not record the interrupt: %s", e)


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
    """The task function's body (tests call this): train and return what sweeps optimise: the
    final val loss when the run evaluates held-out data, else the final training loss
    (summary.json's ``result_metric`` says which)."""
    run_dir = run_dir_of()
    lock = RunLock(run_dir) if env.rank() == 0 else None
    if lock is not None:
        lock.acquire()  # RunDirBusy: the live run's records are not this process's to write
    try:
        summary = build_and_fit(cfg, run_dir)
    except BaseException as e:
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            from minimind.runfolder import remove_if_refused

            # refused before training: a single run's folder that holds only Hydra's files goes
            if not (find_user_error(e) is not None and remove_if_refused(run_dir)):
                _record_failure(run_dir, find_user_error(e) or e)
        raise
    finally:
        if lock is not None:
            lock.release()
    from minimind.dist import release_retired

    release_retired()  # the trainer (and its DDP model) is gone: now the process groups may go
    return summary["result"]


def run_cli(cfg: DictConfig) -> Optional[float]:
    """``launch.py``'s task: user errors become one line and exit code 2 (no traceback).

    In a sweep (``-m``) the error is raised instead, so the launcher marks that job as failed
    and the other jobs go on; ``HYDRA_FULL_ERROR=1`` always shows the traceback.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except KeyboardInterrupt:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print("Interrupted: stopped at once (a second Ctrl-C); the last checkpoint is kept, run the same "
              "command again to continue from it", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        user_error = find_user_error(e)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            raise
        print(f"Error: {user_error}", file=sys.stderr)
        _say_how_to_continue(run_dir_of())
        sys.exit(2)


def _say_how_to_continue(run_dir: Path) -> None:
    """After an error in training, a run with a checkpoint can go on from it: say how."""
    from minimind.files import list_checkpoints
    from minimind.runfolder import continue_command, display_path

    found = list_checkpoints(run_dir / "checkpoints") if env.rank() == 0 else []
    if found:
        print(f"The run folder {display_path(run_dir)} keeps {display_path(found[0])}; after fixing the "
              f"cause, continue from it with: {continue_command(run_dir)}", file=sys.stderr)


def find_user_error(error: BaseException) -> Optional[BaseException]:
    """The user error behind ``error``: Hydra wraps what a ``_target_`` raises in an
    InstantiationException, so follow ``__cause__`` down the chain. One raised in a DataLoader
    worker comes back with the message it has in the main process; a full disk met outside a
    checkpoint write (a log line, the summary) becomes one too."""
    seen, first = 0, error
    while error is not None and seen < 10:
        if isinstance(error, UserError):  # DataError and WeightsError are UserErrors too
            return unwrap_worker_error(error)
        error, seen = error.__cause__, seen + 1
    if isinstance(first, OSError) and first.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"could not write {first.filename or 'a file'} ({first.strerror}); the checkpoints "
                         "already written are intact: free space, then run the same command again to resume")
    return None
