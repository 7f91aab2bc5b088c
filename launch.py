"""Hydra entry point: compose the config, run one training job, return its val loss (or final loss).

    python launch.py                                  # the embedded demo (tiny model, CPU)
    python launch.py precision=fp16 optim.grad_clip=0.5
    python launch.py --cfg job                        # show the composed config
    torchrun --nproc_per_node 8 launch.py dist=ddp    # DDP
    python launch.py -m optim.grad_clip=0.3,1.0 hydra/launcher=slurm   # a SLURM sweep

The wiring lives in ``minimind/train.py`` so that submitit can pickle this task by
reference and tests call exactly what the CLI calls. Importing this file must stay cheap
(no torch, no wandb): ``--help`` and ``--cfg job`` never reach ``train.run``.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

import minimind.config as mm_config  # registers the config schema and the ${mm.*} resolvers


def _quiet_nonzero_ranks() -> None:
    """Under torchrun or SLURM tasks every rank composes the config; only rank 0 writes .hydra/."""
    from minimind.env import rank

    if rank() > 0 and not any(a.startswith("hydra.output_subdir=") for a in sys.argv):
        sys.argv.append("hydra.output_subdir=null")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from minimind.train import run_cli

    mm_config.register_configs()  # also makes submitit's pickle of main() import minimind.config

    return run_cli(cfg)


def _refuse_bad_overrides() -> None:
    """Misspelt keys, wrong types, unknown group options: one line, before Hydra starts."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return  # Hydra's own, complete report
    from pathlib import Path

    from minimind.overrides import check_overrides

    problem = check_overrides(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    if problem:
        print(f"Error: {problem}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--help", "-h"):
        from pathlib import Path

        from minimind.cli_help import render

        print(render(Path(__file__).resolve().parent / "conf"))
        sys.exit(0)
    _refuse_bad_overrides()
    _quiet_nonzero_ranks()
    main()
