"""Tolerant readers for what a sweep leaves on disk, and the small parsers every part uses.

A sweep is read while its jobs run, get killed and are requeued: a file may be missing, half
written or cut mid-line. Each reader answers what it can (an empty list, None) instead of raising.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple


def load_yaml(path: Path) -> Any:
    """A YAML file written by OmegaConf/Hydra, as plain Python data (no interpolation resolved)."""
    import yaml  # PyYAML: an omegaconf dependency

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return yaml.load(f, Loader=loader)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(obj, dict):
                    out.append(obj)
    except OSError:
        pass
    return out


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def split_override(text: str) -> Tuple[str, str]:
    """``+optim.grad_clip=0.3`` -> (``optim.grad_clip``, ``0.3``); ``~key`` -> (``key``, ``""``)."""
    key, _, value = str(text).partition("=")
    return key.strip().lstrip("+~"), value.strip()


def number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def finite_numbers(values: Iterable[Any]) -> List[float]:
    out = []
    for v in values:
        f = number(v)
        if f is not None and math.isfinite(f):
            out.append(f)
    return out


def last_line(text: Any) -> Optional[str]:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else None
