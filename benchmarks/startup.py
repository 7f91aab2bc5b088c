"""How fast ``launch.py`` answers without training: ``python benchmarks/step.py --startup``.

``launch.py --help`` and ``launch.py --cfg job`` are timed (wall clock of a fresh interpreter,
median of 3, in a temporary working directory) and run once more under ``python -X importtime``
to list what they import: both should answer in under a second, without torch or wandb.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from common import LAUNCH


def _imported_modules(stderr: str) -> List[str]:
    """Module names from ``python -X importtime`` output."""
    names = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+\d+\s+\|\s*(\S+)", line)
        if m:
            names.append(m.group(1))
    return names


def run_startup(repeats: int = 3) -> Dict[str, Any]:
    """Wall time of ``launch.py --help`` / ``--cfg job`` (median of ``repeats``) and heavy imports."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    out: Dict[str, Any] = {"launch": str(LAUNCH), "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="minimind-startup-") as cwd:
        for label, extra in (("help", ["--help"]), ("cfg_job", ["--cfg", "job"])):
            cmd = [sys.executable, str(LAUNCH)] + extra
            walls = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
                walls.append(time.perf_counter() - t0)
                if p.returncode != 0:
                    raise SystemExit(f"benchmarks/step.py --startup: {' '.join(cmd)} failed "
                                     f"(exit {p.returncode}):\n{p.stderr[-2000:]}")
            p = subprocess.run([sys.executable, "-X", "importtime"] + cmd[1:], cwd=cwd, env=env,
                               capture_output=True, text=True)
            mods = _imported_modules(p.stderr)
            tops = {m.split(".")[0] for m in mods}
            out[label] = {
                "command": " ".join(["python", "launch.py"] + extra),
                "wall_s_median": float(statistics.median(walls)),
                "wall_s": walls,
                "imports_torch": "torch" in tops,
                "imports_wandb": "wandb" in tops,
                "modules_imported": len(mods),
            }
    return out


def format_startup(s: Dict[str, Any]) -> str:
    lines = [f"{'command':<28} {'median s':>9} {'runs (s)':>24} {'torch':>6} {'wandb':>6}"]
    for key in ("help", "cfg_job"):
        e = s[key]
        runs = ", ".join(f"{w:.2f}" for w in e["wall_s"])
        lines.append(f"{e['command']:<28} {e['wall_s_median']:>9.2f} {runs:>24} "
                     f"{'yes' if e['imports_torch'] else 'no':>6} {'yes' if e['imports_wandb'] else 'no':>6}")
    lines.append("targets: < 1 s, no torch / wandb import")
    return "\n".join(lines)
