"""What the benchmark scripts share besides the /proc probes: where the repository is, and the
argparse type of their counts.

The benchmarks are scripts of a source checkout (``python benchmarks/step.py``), not part of the
installed package: they compose ``conf/`` and run ``launch.py``, found from this file's place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]   # the repository: conf/ and launch.py live here
CONF = ROOT / "conf"
LAUNCH = ROOT / "launch.py"


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be an integer >= 1")
    return v
