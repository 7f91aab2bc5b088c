"""Hydra entry point: compose the config, run one training job, return its val loss (or final loss).

    python launch.py                                  # the embedded demo (tiny model, CPU)
    python launch.py precision=fp16 optim.grad_clip=0.5
    python launch.py --cfg job                        # show the composed config
    torchrun --nproc_per_node 8 launch.py dist=ddp    # DDP
    python launch.py -m optim.grad_clip=0.3,1.0 hydra/launcher=slurm   # a SLURM sweep

The wiring lives in ``minimind/train.py`` so that submitit can pickle this task by
reference and tests call exactly what the CLI calls. Importing this file must stay cheap
(no torch, no wandb): ``--help`` and ``--cfg job`` never reach ``train.run``. Outside the
checkout, ``minimind-train`` and ``python -m minimind`` are the same command (minimind/cli.py).
"""

import hydra
from omegaconf import DictConfig

import minimind.config as mm_config  # registers the config schema and the ${mm.*} resolvers


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from minimind.train import run_cli

    mm_config.register_configs()  # also makes submitit's pickle of main() import minimind.config

    return run_cli(cfg)


if __name__ == "__main__":
    from pathlib import Path

    from minimind.cli import before_hydra
    from minimind.sweep_launch import finish

    before_hydra(Path(__file__).resolve().parent / "conf", prog="launch.py")  # --help, bad overrides
    try:
        main()
    finally:
        finish()  # a -m command's last line: the sweep folder and the report command
