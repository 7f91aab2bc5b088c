"""Held-out loss (and SFT samples) of any weights on any JSONL: ``python -m minimind.eval``.

    python -m minimind.eval outputs/<run>                    # the run's held-out set, its final weights
    python -m minimind.eval outputs/<run> --data other.jsonl # the run's model on another file
    python -m minimind.eval outputs/<run>/pretrain_512_best.pth --data val.jsonl --prompt "Hi"
    python -m minimind.eval full_sft_768.pth --model conf/model/minimind3_64m.yaml \
        --tokenizer /path/to/minimind/model --data sft_val.jsonl --kind sft
    torchrun --nproc_per_node 4 -m minimind.eval outputs/<run> --data big_val.jsonl

The source is a run directory (its newest training checkpoint: the exact fp32 weights the run
evaluated at its last step, with the run's config), a training checkpoint ``step_N.pt``, or a
weights file (.pth / .safetensors; the model and data settings come from the ``.hydra/config.yaml``
of the run folder it sits in, or from ``--model`` and the flags). Without ``--data`` a run is
evaluated on its own held-out data (``data.val_path``, or the ``data.val_size`` samples its seed
held out), so the number printed is the run's last ``val_loss``. It is computed by the loop's own
:class:`minimind.evaluate.Evaluator`: the same objective, batches, autocast and exact unit mean;
under torchrun the set is sharded over the ranks and reduced once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minimind.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a run directory, a checkpoint (checkpoints/step_N.pt) or a weights file")
    p.add_argument("--data", default=None, help="the JSONL to evaluate (default: the run's held-out data)")
    p.add_argument("--weights", default=None, help="with a run directory: these weights instead of its checkpoint")
    p.add_argument("--model", default=None, help="a model YAML (conf/model/*.yaml) for a weights file outside a run")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the run's, else the demo's)")
    p.add_argument("--kind", choices=["pretrain", "sft"], default=None, help="what a line is (default: the run's, "
                                                                               "else sft)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per batch per rank (default: the run's)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: the run's, else 512)")
    p.add_argument("--batches", type=int, default=None, help="only the first N x batch-size samples (default: all)")
    p.add_argument("--prompt", action="append", default=None,
                   help="decode this prompt greedily (repeatable; default: the run's loop.eval_prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer (default: 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    for name in ("batch_size", "max_length", "batches", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}={value} is invalid: must be >= 1")
    return args


# --------------------------------------------------------------------------- what to evaluate


def _run_config(folder: Path) -> Optional[Path]:
    """The ``.hydra/config.yaml`` of the run that ``folder`` is (or is inside of)."""
    for d in (folder, folder.parent):
        if (d / ".hydra" / "config.yaml").is_file():
            return d / ".hydra" / "config.yaml"
    return None


def resolve_source(args: argparse.Namespace) -> Tuple[Optional[dict], Any, str]:
    """(the run's config as plain data or None, the weights (a state dict or a file), a description)."""
    from omegaconf import OmegaConf

    from minimind import checkpoint as ckpt
    from minimind.errors import ConfigError
    from minimind.files import list_checkpoints

    src = Path(args.source)
    if src.is_dir():
        found = list_checkpoints(src / "checkpoints")
        if found and args.weights is None:
            state = ckpt.load_file(found[0])
            return state.get("config"), state["model"], str(found[0])
        cfg_path = _run_config(src)
        if cfg_path is None:
            raise ConfigError(f"{src} is not a run directory: no checkpoints/ and no .hydra/config.yaml "
                              "(give a run directory, a checkpoint or a weights file)")
        weights = args.weights or _final_weights(src)
        return OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False), weights, str(weights)
    if not src.is_file():
        raise ConfigError(f"{src}: no such file or directory (expected a run directory, a checkpoint "
                          "step_N.pt or a weights file .pth / .safetensors)")
    if src.suffix == ".pt":
        state = ckpt.load_file(src)
        if state.get("config"):
            return state["config"], state["model"], str(src)
    if args.model is not None:
        return None, str(src), str(src)
    cfg_path = _run_config(src.parent)
    if cfg_path is None:
        raise ConfigError(f"{src} is not inside a run directory (no .hydra/config.yaml beside it): give "
                          "--model conf/model/<name>.yaml (and --tokenizer, --kind) to say what it is")
    return OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False), str(src), str(src)


def _final_weights(run: Path) -> str:
    from minimind.errors import ConfigError

    found = sorted(p for p in run.glob("*.pth") if not p.stem.endswith(("_best", "_resume")))
    found += sorted(p for p in run.glob("*.safetensors") if not p.stem.endswith("_best"))
    if not found:
        raise ConfigError(f"{run} holds no checkpoint and no weights file; give --weights FILE")
    return str(found[0])


def build_config(run: Optional[dict], args: argparse.Namespace):
    """The run's config with the command line's settings over it (a bare weights file: defaults)."""
    from omegaconf import OmegaConf

    from minimind.config import DataConfig  # also registers the ${mm.*} resolvers

    if run is None:
        try:
            model = OmegaConf.to_container(OmegaConf.load(args.model), resolve=True)
        except Exception as e:  # noqa: BLE001 - missing file, bad YAML, an interpolation
            from minimind.errors import ConfigError

            raise ConfigError(f"--model {args.model}: cannot be read as a model YAML ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        model = model.get("model", model) if "_target_" not in model else model
        kind = args.kind or "sft"
        data = {f: getattr(DataConfig, f, None) for f in DataConfig.__dataclass_fields__
                if f not in ("dataset", "path")}
        data = {k: v.value if isinstance(v, Enum) else v for k, v in data.items()}
        data.update(kind=kind, num_workers=0, dataset={"_target_": "minimind.data.SFTDataset" if kind == "sft"
                                                       else "minimind.data.PretrainDataset"})
        run = {"model": dict(model, _target_="minimind.model.build_model"), "data": data, "seed": 42,
               "objective": {"_target_": "minimind.objectives.LanguageModeling"},
               "precision": {"name": "fp32", "dtype": "float32",
                             "scaler": {"_target_": "torch.amp.GradScaler", "enabled": False}},
               "loop": {"eval_prompts": []}}
    cfg = OmegaConf.create(run)
    d = cfg.data
    for key, value in (("tokenizer", args.tokenizer), ("kind", args.kind), ("batch_size", args.batch_size),
                       ("max_length", args.max_length)):
        if value is not None:
            d[key] = value
    if args.data is None and run is not None and not (d.get("val_path") or d.get("val_size")):
        from minimind.errors import ConfigError

        raise ConfigError(f"{args.source}: the run held out no data (data.val_path / data.val_size unset); "
                          "give --data FILE")
    return cfg


# --------------------------------------------------------------------------- the command


def evaluate(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Build the parts and evaluate; the result on rank 0 (None on the others)."""
    from omegaconf import OmegaConf

    run, weights, weights_name = resolve_source(args)
    cfg = build_config(run, args)

    from hydra.utils import get_object, instantiate

    from minimind.data import holdout
    from minimind.data.loader import dataset_kwargs
    from minimind.dist import setup
    from minimind.errors import ConfigError
    from minimind.evaluate import MAX_NEW_TOKENS, Evaluator, HeldOut, held_out, held_out_dataset, perplexity
    from minimind.precision import build_precision
    from minimind.weights import load_weights

    data_values = OmegaConf.to_container(cfg.data, resolve=True)
    if args.data is not None:
        if not os.path.isfile(args.data):
            raise ConfigError(f"--data {args.data}: no such file (expected a JSONL file in the run's format)")
        source = f"--data {args.data}"
        heldout = HeldOut(held_out_dataset(cfg.data.dataset, data_values, cfg.seed, args.data, source), None, source)
    else:  # the run's own held-out samples: the split is a function of the file and the seed
        train = instantiate(cfg.data.dataset, **dataset_kwargs(get_object(cfg.data.dataset._target_),
                                                               data_values, cfg.seed))
        heldout = held_out(cfg, data_values, holdout.split(len(train), cfg.data.get("val_size"), cfg.seed))

    dist = setup(ddp=True, device=args.device)
    try:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if model_cfg.get("vocab_size") is None:
            model_cfg["vocab_size"] = heldout.dataset.tokenizer.vocab_size
        model = instantiate(dict(model_cfg, from_weight=None))
        load_weights(model, weights)
        model.to(dist.device)
        precision = build_precision(cfg.precision, dist.device)
        from minimind.stages import build_part

        objective = build_part(cfg.objective)  # the objective node's keys its target takes (as train.py)
        objective.setup(model=model, autocast=precision.autocast, device=dist.device)
        prompts = args.prompt if args.prompt is not None else list(OmegaConf.select(cfg, "loop.eval_prompts") or [])
        evaluator = Evaluator(heldout, objective=objective, dist=dist, batch_size=cfg.data.batch_size,
                              num_workers=0, trim_padding=cfg.data.get("trim_padding", True),
                              autocast=precision.autocast, chat=str(cfg.data.kind) != "pretrain")
        evaluator.configure(max_batches=args.batches, prompts=prompts)
        result = evaluator.compute(model)
        samples = evaluator.samples(model, max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS)
    finally:
        dist.destroy()
    if not dist.is_main:
        return None
    out = {"val_loss": result.loss, "val_units": result.units, "val_samples": result.samples,
           "data": heldout.source, "weights": weights_name, "world_size": dist.world_size,
           "eval_s": result.seconds, **{f"val_{k}": v for k, v in result.metrics.items()}}
    if evaluator.perplexity:
        out["val_ppl"] = perplexity(result.loss)
    out["samples"] = [{"prompt": s["prompt"], "answer": s["answer"]} for s in samples]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from minimind.train import find_user_error

    try:
        out = evaluate(args)
    except Exception as e:  # noqa: BLE001 - user errors are one line; anything else is a bug: traceback
        err = find_user_error(e)
        if err is None:
            raise
        print(f"Error: {err}", file=sys.stderr)
        return 2
    finally:
        from minimind.dist import release_retired

        # the process groups go now, not at interpreter exit: freed then, gloo's worker threads
        # are destroyed unjoined and the process aborts ("terminate called without an active
        # exception", exit -6 under torchrun; seen 1 run in ~20 here)
        release_retired()
    if out is None:
        return 0
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    extra = "".join(f"  {k}:{v:.4f}" for k, v in out.items() if k.startswith("val_") and k not in
                    ("val_loss", "val_ppl", "val_units", "val_samples"))
    ppl = f"  ppl:{out['val_ppl']:.3f}" if "val_ppl" in out else ""
    print(f"val_loss:{out['val_loss']:.6f}{ppl}{extra}  ({out['val_samples']} samples, {out['val_units']} units, "
          f"{out['data']}; weights {out['weights']}; {out['world_size']} process(es), {out['eval_s']:.1f}s)")
    for s in out["samples"]:
        print(f"{s['prompt']!r} -> {s['answer']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
