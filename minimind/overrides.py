"""Check command-line overrides against the schema before Hydra composes anything.

Hydra refuses a misspelt key or a wrong type too, but with several lines of internals and
without saying what would have been valid. This check turns the common mistakes into one
line that names the key, the value and the valid choices:

    Error: unknown config key 'optim.gradclip' (did you mean optim.grad_clip?); valid keys in optim: ...
    Error: optim.lr='abc' is invalid: expected a float
    Error: precision=fp8 is not an option of group precision; valid: bf16, fp16, fp32

A ``+key=`` / ``++key=`` under a node the schema types (``+optim.gradclip=0.01``) would add a
key that nothing reads, so it is refused like any unknown key; ``+`` stays open where it is
legitimate: under free-form nodes (``optim.optimizer.*``, ``optim.schedule.*``,
``data.dataset.*``, ``precision.scaler.*``), Hydra's own tree (``hydra.*``), and groups
appended to the defaults (``+experiment=...``).

Anything it cannot judge (``~key``, ``hydra.*``, interpolations, free-form nodes) is left to
Hydra. No torch import.
"""

from __future__ import annotations

import difflib
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, List, Optional

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

GROUPS = ("model", "optim", "precision", "data", "dist", "loop", "logger", "objective", "adapter", "experiment",
          "hparams_search")
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


def _key_status(schema: DictConfig, key: str) -> str:
    """``known`` (the schema has it), ``free`` (under a node the schema leaves open, type
    ``Any``: any key is the user's to add) or ``unknown``."""
    node = schema
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            meta = getattr(node, "_metadata", None)
            return "free" if meta is not None and meta.ref_type is Any else "unknown"
        try:
            child = node._get_node(part)  # noqa: SLF001 - the node itself, even if its value is missing
        except (ConfigKeyError, ConfigAttributeError):
            child = None
        if child is None:
            return "unknown"
        node = child
    return "known"


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
        adding = o.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
        if adding and not (key.startswith("hydra") or o.package or "/" in key or (conf_dir / key).is_dir()):
            status = _key_status(schema, key)
            if status == "unknown":  # a key nothing reads: the run would silently ignore it
                return _unknown_key(schema, key)
            if status == "free":
                continue
        elif o.type != OverrideType.CHANGE or key.startswith("hydra") or o.package:
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


def check_composed(args: List[str], conf_dir: Path) -> Optional[str]:
    """``launch.py --cfg job|hydra|all ...``: the value checks a run makes
    (:func:`minimind.config.validate`) on the composed config, so that what ``--cfg`` shows is
    a config that would run. None when fine, when it is not a ``--cfg`` call, or when the
    config does not compose (Hydra's own ``--cfg`` output then says why)."""
    if not any(a in ("--cfg", "-c") for a in args) or any(a in ("-m", "--multirun") for a in args):
        return None
    from hydra import compose, initialize_config_dir

    from minimind.config import validate
    from minimind.errors import ConfigError

    name = "config"
    for flag in ("--config-name", "-cn"):
        if flag in args[:-1]:
            name = args[args.index(flag) + 1]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    except Exception:  # noqa: BLE001 - Hydra reports it itself
        return None
    try:
        validate(cfg)
    except ConfigError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - e.g. an interpolation only a job can resolve
        return None
    return None
