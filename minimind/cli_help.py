"""``python launch.py --help``: the app's groups, options and knobs, with their documentation.

Values come from the default options' YAML files in ``conf/``, the documentation of every key
from the schema (:mod:`minimind.config`, where each setting is documented once); a YAML
line's own comment (an option-specific note such as "upstream SFT: 512") follows it.
Hydra's own ``--help`` renders every config group (its ~80 internal ones included) and
deep-copies the config repository for each, which takes one to two seconds here; this reads
the files directly and answers at once. ``--hydra-help`` still shows Hydra's flags.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import yaml

GROUP_ORDER = ("model", "optim", "precision", "data", "dist", "loop", "logger", "objective", "adapter",
               "experiment", "hparams_search")
_KNOB = re.compile(r"^([A-Za-z_][\w]*):\s*([^#\n]*?)\s*(?:#\s*(.*))?$")


def _defaults(conf_dir: Path) -> Dict[str, str]:
    data = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
    out = {}
    for entry in data.get("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                out[str(k)] = str(v)
    return out


def _knobs(path: Path) -> List[tuple]:
    """Top-level ``key: value  # comment`` lines of a group file (nested nodes skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        m = _KNOB.match(line)
        if m and m.group(1) not in ("defaults", "_target_") and m.group(2) not in ("",):
            rows.append((m.group(1), m.group(2), m.group(3) or ""))
    return rows


def _line(key: str, value: str, doc: str, note: str) -> str:
    text = doc + (f" ({note})" if note and doc else note)
    return f"  {f'{key}={value}':<38} {text}".rstrip()


def render(conf_dir: Path, prog: str = "launch.py") -> str:
    from minimind.config import GROUP_SCHEMAS, Config
    from minimind.knobs import helps

    defaults = _defaults(conf_dir)
    cmd = f"python {prog}" if prog.endswith(".py") else prog
    torchrun = prog if prog.endswith(".py") else "-m minimind"
    lines = [
        f"{prog}: train MiniMind language models from composed Hydra configs",
        "",
        "Usage:",
        f"  {cmd + ' [key=value ...]':<50}one run (the embedded demo without arguments)",
        f"  {cmd + ' -m optim.grad_clip=0.3,1.0 ...':<50}a sweep: one job per combination",
        f"  {cmd + ' --cfg job [key=value ...]':<50}print the composed config and exit",
        f"  {'torchrun --nproc_per_node N ' + torchrun + ' dist=ddp':<50}data-parallel training",
        "",
        "Config groups (group=option; * = default):",
    ]
    for group in GROUP_ORDER:
        folder = conf_dir / group
        if not folder.is_dir():
            continue
        # nested options too (experiment=minimind3/full_sft)
        options = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
        marked = [f"{o}*" if defaults.get(group) == o else o for o in options]
        lines.append(f"  {group + ':':<12} {', '.join(marked)}")
    launchers = sorted(p.stem for p in (conf_dir / "hydra" / "launcher").glob("*.yaml"))
    lines.append(f"  {'hydra/launcher:':<12} basic*, {', '.join(launchers)}  (for -m sweeps)")
    lines += ["", "Knobs of the default options (override with group.key=value):"]
    for group in GROUP_ORDER:
        option = defaults.get(group)
        path = conf_dir / group / f"{option}.yaml"
        if not option or option == "null" or not path.is_file():
            continue
        docs = helps(GROUP_SCHEMAS[group]) if group in GROUP_SCHEMAS else {}
        for key, value, comment in _knobs(path):
            lines.append(_line(f"{group}.{key}", value, docs.get(key, ""), comment))
    docs = helps(Config)
    for key, value, comment in _knobs(conf_dir / "config.yaml"):
        lines.append(_line(key, value, docs.get(key, ""), comment))
    lines += [
        "",
        "Outputs: outputs/<date>/<time>/ (multirun/<date>/<time>/<job>/ for sweeps): train.log,",
        "metrics.jsonl, events.jsonl, summary.json, checkpoints/, {save_weight}_{hidden}.pth",
        "(+ samples.jsonl and _best.pth when evaluating held-out data; python -m minimind.eval --help).",
        "A run prints its folder; to continue it, give the same command with hydra.run.dir=<run dir>",
        "(the exact command is printed at the start and when a run stops early).",
        "",
        f"More: {cmd} --hydra-help (Hydra's flags), python -m minimind.generate --help,",
        "python -m minimind.report --help, python benchmarks/step.py --help, README.md.",
    ]
    return "\n".join(lines)
