"""MiniMind training framework: Hydra-composed configs, one readable training loop.

Importing the package must stay cheap (no torch, no wandb): ``launch.py --help`` and
``--cfg job`` only need the config layer.
"""

__version__ = "0.1.0"
