"""Check command-line overrides against the schema before Hydra composes anything.

Hydra refuses a misspelt key or a wrong type too, but with several lines of internals and
without saying what would have been valid. This check turns the common mistakes into one
line that names the key, the value and the valid choices:

    Error: unknown config key 'optim.gradclip' (did you mean optim.grad_clip?); valid keys in optim: ...
    Error: optim.lr='abc' is invalid: expected a float
    Error: precision=fp8 is not an option of group precision; valid: bf16, fp16, fp32

Anything it cannot judge (``+key``, ``~key``, ``hydra.*``, interpolations, free-form nodes
such as ``optim.optimizer.*``) is left to Hydra. No torch import.
"""

from __future__ import annotations

import difflib
from enum import Enum
from pathlib import Path
from typing import Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from minimind.config import (
    SET_ELSEWHERE,
    AdapterConfig,
    Config,
    DataConfig,
    DistConfig,
    LoggerConfig,
    LoopConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    PrecisionConfig,
    WandbConfig,
)

GROUPS = ("model", "optim", "precision", "data", "dist", "loop", "logger", "objective", "adapter", "experiment")
_TYPE_NAMES = {"float": "a float", "int": "an integer", "bool": "true or false", "str": "a string"}


def _schema() -> DictConfig:
    """Every typed key with its type; free-form nodes (optimizer, dataset, ...) stay open."""
    return OmegaConf.structured(Config(
        model=ModelConfig(), optim=OptimConfig(), precision=PrecisionConfig(), data=DataConfig(),
        dist=DistConfig(), loop=LoopConfig(), logger=LoggerConfig(wandb=WandbConfig()),
        objective=ObjectiveConfig(teacher=ModelConfig()), adapter=AdapterConfig()))


def _group_options(conf_dir: Path, group: str) -> List[str]:
    folder = conf_dir / group  # nested options too: experiment=minimind3/full_sft
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))


def _values(override) -> Iterable:
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def _expected(cfg: DictConfig, key: str) -> str:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    try:
        ref = parent._get_node(leaf)._metadata.ref_type  # noqa: SLF001 - the declared type
        name = getattr(ref, "__name__", str(ref))
    except Exception:  # noqa: BLE001
        return "another type"
    if isinstance(ref, type) and issubclass(ref, Enum):
        return "one of " + ", ".join(m.value if isinstance(m.value, str) else m.name for m in ref)
    return _TYPE_NAMES.get(name, name)


def _unknown_key(schema: DictConfig, key: str) -> str:
    """Name the first segment of ``key`` that does not exist, with the keys that do."""
    parts = key.split(".")
    node, known = schema, []
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, known = node[part], known + [part]
    where = ".".join(known)
    if not isinstance(node, DictConfig):
        return f"unknown config key {key!r}: {where} has no sub-keys"
    missing = parts[len(known)]
    valid = sorted(node.keys())
    close = difflib.get_close_matches(missing, valid, n=1)
    hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys{' in ' + where if where else ''}: {', '.join(valid)}"


def check_overrides(args: List[str], conf_dir: Path) -> Optional[str]:
    """The first problem found in ``args`` (Hydra's command line), as one line; None if fine."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    if not candidates:
        return None
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except OmegaConfBaseException:
        return None  # a syntax error: Hydra's own message points at the character
    except Exception:  # noqa: BLE001 - hydra's OverrideParseException and friends
        return None
    schema = _schema()
    for o in overrides:
        key = o.key_or_group
        node_key, _, leaf = key.rpartition(".")
        owner = SET_ELSEWHERE.get(node_key, {}).get(leaf)
        if owner and o.type != OverrideType.DEL:
            return f"{key} is set, but {owner} sets it: use {owner} (one place for each setting)"
        if o.type != OverrideType.CHANGE or key.startswith("hydra") or o.package:
            continue
        if "/" not in key and key in GROUPS:
            valid = _group_options(conf_dir, key)
            for v in _values(o):
                if v is not None and str(v) not in valid:
                    return f"{key}={v} is not an option of group {key}; valid: {', '.join(valid)}"
            continue
        if any(isinstance(v, str) and "${" in v for v in _values(o)):
            continue
        for v in _values(o):
            try:
                OmegaConf.update(schema, key, v, merge=True)
            except (ConfigKeyError, ConfigAttributeError):
                return _unknown_key(schema, key)
            except ValidationError:
                parent_key = key.rpartition(".")[0]
                if parent_key and not isinstance(OmegaConf.select(schema, parent_key), DictConfig):
                    return _unknown_key(schema, key)
                return f"{key}={v!r} is invalid: expected {_expected(schema, key)}"
            except OmegaConfBaseException:
                continue  # let Hydra judge
    return None
