"""Shared fixtures: compose the real config (conf/) the way launch.py does, outputs in tmp_path."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
LAUNCH = ROOT / "launch.py"
BENCHMARKS = ROOT / "benchmarks"

# small and fast: a 64-wide 2-layer model on short demo samples, fp32, CPU
FAST = [
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "data.max_length=64",
    "data.batch_size=4",
    "device=cpu",
    "loop.progress=false",
    "data.val_size=null",  # the demo holds out 256 dialogues; tests of evaluation ask for it
]


def compose(overrides: Optional[List[str]] = None, fast: bool = True, return_hydra_config: bool = False):
    """The composed config for ``overrides`` (fast defaults first, so tests can override them)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from minimind.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=(FAST if fast else []) + list(overrides or []),
                             return_hydra_config=return_hydra_config)


@pytest.fixture
def cfg_factory():
    return compose


def run_launch(args: List[str], cwd: Path, timeout: float = 300, env: Optional[dict] = None,
               module: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    """Run the real ``launch.py`` (or ``python -m <module>``) in a subprocess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    cmd = [sys.executable] + (module if module else [str(LAUNCH)]) + list(args)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def import_benchmark(name: str):
    """A module of ``benchmarks/`` (scripts beside launch.py, not in the package), imported the
    way the scripts import each other: with their folder first on sys.path."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture
def launch():
    return run_launch
