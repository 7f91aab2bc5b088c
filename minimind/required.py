"""Keys a config leaves to the user (``???`` in a YAML): one line naming the key and an example.

``python launch.py data=pretrain`` composes fine, but ``data.path: ???`` has no value; OmegaConf
raises ``MissingMandatoryValue`` (a traceback) at the first read. The pre-flight asks first and
answers with the example that the option's own file shows in its header comment
(``# python launch.py data=pretrain data.path=/data/pretrain_hq.jsonl ...``). No torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from minimind.errors import ConfigError


def conf_dir() -> Path:
    """The ``conf/`` folder this run composes from: the checkout's, else the installed copy."""
    from minimind.cli import locate_conf

    return locate_conf()


def missing_keys(cfg: DictConfig) -> List[str]:
    """Dotted keys whose value is ``???`` (Hydra's own ``hydra`` node excluded)."""
    if "hydra" in cfg:  # composed with Hydra's node: its own ??? (hydra.job.num) are not the user's
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return sorted(OmegaConf.missing_keys(cfg))


def _choices(cfg: DictConfig) -> Dict[str, str]:
    """group -> chosen option, from Hydra's runtime (or a config composed with its hydra node)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None:
        try:
            from hydra.core.hydra_config import HydraConfig
        except ImportError:
            return {}
        if not HydraConfig.initialized():
            return {}
        choices = HydraConfig.get().runtime.choices
    return {str(k): str(v) for k, v in choices.items() if v is not None}


def example(key: str, conf: Path, option: Optional[str]) -> Optional[str]:
    """``key=value`` as a header comment of the chosen option (else of any option) shows it."""
    group = key.split(".")[0]
    pattern = re.compile(rf"(?<![\w.]){re.escape(key)}=(\S+)")
    files = [conf / group / f"{option}.yaml"] if option else []
    files += sorted((conf / group).glob("*.yaml")) + [conf / "config.yaml"]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#") and (m := pattern.search(line)):
                return f"{key}={m.group(1)}"
    return None


def refuse_missing(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError for the first key left at ``???``."""
    missing = missing_keys(cfg)
    if not missing:
        return
    from minimind.knobs import helps

    key = missing[0]
    group = key.split(".")[0]
    option = _choices(cfg).get(group)
    try:
        conf = conf_dir()
        shown = example(key, conf, option)
    except (ImportError, OSError):
        shown = None
    preset = _choices(cfg).get("experiment")
    if preset and preset != "null":  # a stage preset leaves what only the user knows
        where = f" (experiment={preset} leaves it to you)"
    else:
        where = f" ({group}={option} leaves it to you)" if option else ""
    doc = ""
    try:
        from minimind.config import GROUP_SCHEMAS

        if group in GROUP_SCHEMAS and key.count(".") == 1:
            doc = helps(GROUP_SCHEMAS[group]).get(key.split(".")[1], "")
    except ImportError:
        pass
    msg = f"{key} is not set{where}: give it on the command line, e.g. {shown or key + '=VALUE'}"
    if doc:
        msg += f" ({key}: {doc})"
    if len(missing) > 1:
        msg += f"; also not set: {', '.join(missing[1:])}"
    raise ConfigError(msg)
