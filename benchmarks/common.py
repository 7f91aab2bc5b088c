"""What the benchmark scripts share besides the /proc probes: where the repository is, the
argparse type of their counts, and how a result is shown and saved.

The benchmarks are scripts of a source checkout (``python benchmarks/step.py``), not part of the
installed package: they compose ``conf/`` and run ``launch.py``, found from this file's place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]   # the repository: conf/ and launch.py live here
CONF = ROOT / "conf"
LAUNCH = ROOT / "launch.py"


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be an integer >= 1")
    return v


def emit(result: Dict[str, Any], text: str, json_path: Optional[str]) -> Dict[str, Any]:
    """Print the formatted result; with ``--json PATH`` also write it there. Returns ``result``."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result
