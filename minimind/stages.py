"""What makes a run a stage (pretrain, full SFT, LoRA, DPO, distillation), checked before torch.

A stage is a composition, not a script: ``data`` (what a line is), ``objective`` (what a
micro-batch's loss is), ``adapter`` (which parameters train). This module holds what depends on
the combination and can be decided from the config alone, in a second, before anything is built:

* :func:`validate_stage` (called by :func:`minimind.config.validate`): the stage-specific ranges
  and the combinations that cannot work (DPO without pairs, pairs without DPO, a distillation
  without a teacher);
* :func:`weights_stem`: the inference weights' name when ``loop.save_weight`` is null, following
  upstream's stage names (``pretrain``, ``full_sft``, ``lora_<data>``, ``dpo``, ``full_dist``), so
  a stage never writes under the name of the stage before it;
* :func:`preflight_stage` (called by :func:`minimind.train.preflight`): required values left
  ``???`` by a preset, weights files that must exist, and the rule that a run never writes over
  a weights file it loads (model.from_weight, the DPO reference, the teacher);
* :func:`build_part`: builds an objective or adapter from its node with only the keys its class
  has parameters for (the schema is one per group, as ``data.*`` is).

No torch here (``--help``, ``--cfg job`` and the refusals stay instant).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from minimind.errors import ConfigError
from minimind.model_config import MiniMindConfig

LM = "minimind.objectives.LanguageModeling"
DPO = "minimind.objectives.DPO"
DISTILL = "minimind.objectives.Distillation"
LORA = "minimind.adapters.LoRA"
# tied to the token embeddings: an adapter there would change the embeddings on merge
UNADAPTABLE = ("lm_head", "embed_tokens")


def _target(cfg: DictConfig, group: str) -> Optional[str]:
    node = OmegaConf.select(cfg, group)
    return None if node is None else str(node.get("_target_"))


def is_dpo(cfg: DictConfig) -> bool:
    return _target(cfg, "objective") == DPO


def is_distill(cfg: DictConfig) -> bool:
    return _target(cfg, "objective") == DISTILL


def is_lora(cfg: DictConfig) -> bool:
    return _target(cfg, "adapter") == LORA


def _check(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {valid}")


def _model_fields(node: DictConfig) -> Dict[str, Any]:
    return {k: node[k] for k in node if k not in ("_target_", "from_weight")}


def validate_stage(cfg: DictConfig) -> None:
    """Stage ranges and combinations (cheap: no torch, no files)."""
    d = cfg.data
    if OmegaConf.select(cfg, "adapter") is not None and is_lora(cfg):
        a = cfg.adapter
        _check(isinstance(a.rank, int) and a.rank >= 1, "adapter.rank", a.rank, "must be an integer >= 1")
        _check(a.alpha is None or a.alpha > 0, "adapter.alpha", a.alpha, "must be > 0, or null for no scaling")
        _check(0 <= a.dropout < 1, "adapter.dropout", a.dropout, "must be in [0, 1)")
        targets = list(a.targets) if a.targets is not None else None
        _check(targets is None or len(targets) > 0, "adapter.targets", targets,
               "must name at least one module (e.g. [q_proj,o_proj]), or be null for every square nn.Linear")
        for name in targets or []:
            _check(name not in UNADAPTABLE, "adapter.targets", targets,
                   f"{name} shares its weight with the token embeddings (tied), so a merged adapter would "
                   "change the embeddings too; adapt attention / MLP projections instead")
    o = cfg.objective
    if is_dpo(cfg):
        _check(o.beta > 0, "objective.beta", o.beta, "must be > 0 (upstream: 0.1 - 0.15)")
        if d.kind != "dpo":
            raise ConfigError(f"objective=dpo needs preference pairs, but data.kind={d.kind}: use data=dpo "
                              '(one {"chosen": [...], "rejected": [...]} per line)')
        _check(not d.pretokenize, "data.pretokenize", d.pretokenize,
               "pairs are tokenized lazily (pretokenize is for pretrain / SFT files); use false")
    elif d.kind == "dpo":
        raise ConfigError(f"data.kind=dpo holds preference pairs, which only objective=dpo trains on "
                          f"(objective is {_target(cfg, 'objective')}); add objective=dpo")
    if is_distill(cfg):
        _check(0 <= o.alpha <= 1, "objective.alpha", o.alpha, "must be in [0, 1] (the weight of CE)")
        _check(o.temperature > 0, "objective.temperature", o.temperature, "must be > 0 (upstream: 1.0 - 2.0)")
        if o.teacher is None:
            raise ConfigError("objective=distill needs a teacher: objective.teacher is null (choose its "
                              "architecture with model@objective.teacher=<model option>)")
        if not OmegaConf.is_missing(o.teacher, "from_weight") and not o.teacher.from_weight:
            raise ConfigError("objective=distill needs the teacher's weights: objective.teacher.from_weight is "
                              "null; give objective.teacher.from_weight=PATH")
        try:
            MiniMindConfig(**_model_fields(o.teacher)).validate()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"objective.teacher: {str(e).replace('model.', 'objective.teacher.')}") from None


# --------------------------------------------------------------------------- weight names


def weights_stem(cfg: DictConfig) -> str:
    """``loop.save_weight``, or when it is null the stage's own name, as upstream's scripts call
    their output: pretrain, full_sft, lora_<data file> (upstream: lora_identity, lora_medical),
    dpo, full_dist."""
    if cfg.loop.save_weight:
        return str(cfg.loop.save_weight)
    if is_lora(cfg):
        stem = "data" if OmegaConf.is_missing(cfg.data, "path") else Path(str(cfg.data.path)).stem
        return stem if stem.startswith("lora_") else f"lora_{stem}"
    if is_dpo(cfg):
        return "dpo"
    if is_distill(cfg):
        return "full_dist"
    return "pretrain" if cfg.data.kind == "pretrain" else "full_sft"


def weights_paths(cfg: DictConfig, run_dir: Path) -> List[Path]:
    """The inference weights files the run writes: {save_dir}/{stem}_{hidden}[_moe].pth (and/or
    .safetensors)."""
    save_dir = Path(cfg.loop.save_dir) if cfg.loop.save_dir else Path(run_dir)
    suffix = MiniMindConfig(**_model_fields(cfg.model)).param_suffix
    fmt = str(cfg.loop.weights_format)
    exts = [".pth", ".safetensors"] if fmt == "both" else [f".{fmt}"]
    return [save_dir / f"{weights_stem(cfg)}_{suffix}{ext}" for ext in exts]


def loaded_weights(cfg: DictConfig) -> List[Tuple[str, str]]:
    """(key, path) of every weights file the run reads."""
    out = []
    if cfg.model.from_weight:
        out.append(("model.from_weight", str(cfg.model.from_weight)))
    if is_dpo(cfg) and cfg.objective.reference_weight:
        out.append(("objective.reference_weight", str(cfg.objective.reference_weight)))
    if is_distill(cfg) and cfg.objective.teacher is not None:
        out.append(("objective.teacher.from_weight", str(cfg.objective.teacher.from_weight)))
    return out


# --------------------------------------------------------------------------- pre-flight

def preflight_stage(cfg: DictConfig, run_dir: Path) -> None:
    """Stage checks that read the file system (no torch): weights files, overwrites (the ``???``
    keys a preset leaves: :func:`minimind.required.refuse_missing`, before this)."""
    if is_dpo(cfg) and cfg.data.get("packing"):
        raise ConfigError("data.packing=true with objective=dpo: a DPO batch is chosen/rejected pairs whose "
                          "log-probs are summed per row, so its rows cannot be packed; use data.packing=false")
    for key, path in loaded_weights(cfg):
        if key != "model.from_weight" and not Path(path).is_file():  # that one: train.preflight
            raise ConfigError(f"{key}={path!r}: no such file (expected a .pth or .safetensors state dict "
                              "in upstream MiniMind's format)")
    written = weights_paths(cfg, run_dir)
    for key, path in loaded_weights(cfg):
        for out in written:
            if os.path.realpath(out) == os.path.realpath(path):
                stem = weights_stem(cfg)
                raise ConfigError(
                    f"loop.save_weight={stem} would write {out}, the file {key} loads: a run never "
                    f"overwrites the weights it starts from; choose another name or folder "
                    f"(loop.save_weight={stem}_2, or loop.save_dir=<another folder>)")


# --------------------------------------------------------------------------- building


def build_part(node: DictConfig, **extra: Any) -> Any:
    """``node._target_(**values)`` with only the node's keys the target has parameters for (plain
    values, interpolations resolved), plus ``extra``."""
    from hydra.utils import get_object

    target = get_object(str(node._target_))
    values = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    params = inspect.signature(target).parameters
    kwargs = {k: v for k, v in values.items() if k != "_target_" and k in params}
    return target(**kwargs, **extra)
