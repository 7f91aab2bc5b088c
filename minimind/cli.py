"""The training command outside the checkout: ``minimind-train`` and ``python -m minimind``.

Both do what ``python launch.py`` does in the checkout, from any folder (outputs go to the
current folder, as with launch.py), with the shipped ``conf/``. The package carries it as
``minimind/conf`` (a link to the checkout's ``conf/`` that a wheel turns into files), so an
editable install and a regular one find the same configs.

Importing this module stays cheap (no torch): ``--help`` answers at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def locate_conf() -> Path:
    """The shipped ``conf/``: inside the package (installed), else beside it (a source tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/config.yaml in {here} or {here.parent}: reinstall minimind-hydra "
                            "(pip install -e . in the checkout)")


def before_hydra(conf: Path, prog: str) -> None:
    """What every entry point does before Hydra starts: ``--help`` (fast, no torch), the
    override check (misspelt keys, wrong types, unknown group options, values ``--cfg`` would
    show but a run refuses, a run folder a live run holds: one line), and quiet ranks > 0."""
    if len(sys.argv) > 1 and sys.argv[1] in ("--help", "-h"):
        from minimind.cli_help import render

        print(render(conf, prog=prog))
        sys.exit(0)
    from minimind.env import rank

    if os.environ.get("HYDRA_FULL_ERROR") != "1":  # else Hydra's own, complete report
        from minimind.overrides import check_composed, check_overrides
        from minimind.runlock import busy_message_from_argv

        args = sys.argv[1:]
        problem = (check_overrides(args, conf) or check_composed(args, conf)
                   or (busy_message_from_argv(args) if rank() == 0 else None))
        if problem:
            print(f"Error: {problem}", file=sys.stderr)
            sys.exit(2)

    if rank() == 0:  # a -m command: the sweep folder said once, the local launcher sized to the cores
        from minimind.sweep_launch import before_hydra as sweep_before_hydra

        sweep_before_hydra(sys.argv)

    # under torchrun or SLURM tasks every rank composes the config; only rank 0 writes .hydra/
    if rank() > 0 and not any(a.startswith("hydra.output_subdir=") for a in sys.argv):
        sys.argv.append("hydra.output_subdir=null")


def task(cfg):
    """The task function (module level: submitit pickles it by reference)."""
    import minimind.config as mm_config
    from minimind.train import run_cli

    mm_config.register_configs()
    return run_cli(cfg)


def main() -> None:
    """``minimind-train`` / ``python -m minimind``."""
    import hydra

    import minimind.config as mm_config  # registers the schema and the ${mm.*} resolvers

    mm_config.find_sweepers()  # before Hydra's plugin scan

    conf = locate_conf()
    script = Path(sys.argv[0]).name
    prog = "python -m minimind" if script == "__main__.py" else "minimind-train"
    before_hydra(conf, prog)
    from minimind.sweep_launch import finish

    try:
        hydra.main(version_base="1.3", config_path=str(conf), config_name="config")(task)()
    finally:
        finish()  # a -m command's last line: the sweep folder and the report command
