"""Compare the jobs of a sweep: ``python -m minimind.report <sweep dir>``.

    python launch.py -m optim.grad_clip=0.3,0.5,1.0 optim.accumulation_steps=1,4,8 hydra/launcher=slurm
    python -m minimind.report multirun/2026-11-28/12-00-00
    python -m minimind.report SWEEP --csv out.csv --png out.png --color-by optim.lr --split-by precision
    python -m minimind.report SWEEP --no-plot

One row per job (ordered by job number): the swept overrides, the status (completed, failed,
running, interrupted, pending; ``(requeued Nx)`` when SLURM restarted it), final and best loss,
the last and best held-out val loss (jobs that evaluate; also dots in the curves), optimizer
steps, tokens/s, skipped (overflow) steps, grad-norm median and max, wall time, what the update
step did (tokens seen; ``clip_share``: the share of logged steps whose pre-clip gradient norm
exceeded the job's grad_clip, None when clipping is off; the fp16 loss scale's first, last and
lowest value) and, for a failed job, the last line of its error. The table goes to stdout, the
same rows to ``<sweep dir>/report.csv``, a markdown table with one "what the update step did"
paragraph per job to ``<sweep dir>/report.md``, and the curves to ``<sweep dir>/report.png``:
loss, val loss and pre-clip grad norm (with each job's clip threshold) against tokens seen, one
colour per ``--color-by`` value, one panel per ``--split-by`` value.

The job list comes from the sweep definition in ``multirun.yaml`` (``hydra.sweeper.params`` and
``hydra.overrides.task``, expanded in the BasicSweeper's order with Hydra's own parser), so a job
that died before writing anything still has a row; what each job wrote (``events.jsonl``,
``metrics.jsonl``, ``summary.json``) and what submitit kept (``.submitit/<job id>/``) fill it in.

One module per concern:

- ``sweep``: the sweep dir -> the job list and each job's files (:func:`collect`)
- ``hydra_sweep``: the BasicSweeper's expansion of ``multirun.yaml``, the only use of Hydra internals
- ``submitit_files``: ``.submitit/<job id>/``, the only module that knows submitit's files and pickles
- ``jobs``: one job's events, metrics and summary -> its row
- ``update_step``: clipping, loss scale and tokens from a job's training rows; its paragraph
- ``study``: the Optuna study a ``hydra/sweeper=optuna`` sweep keeps in its folder: trials ranked,
  parameter importances (printed after the table, a section of report.md)
- ``table``: the text table, the CSV and report.md; ``plotting``: the curves; ``cli``: the command
- ``reading``: tolerant readers of half-written files, shared by the others

Python API: :func:`collect`, :func:`write_csv`, :func:`plot`, :func:`format_table`, :func:`main`.
Importing this package is cheap: Hydra's parser, omegaconf and matplotlib load on first use, and
submitit's pickles are read without importing anything they name (no torch).
"""

from __future__ import annotations

from minimind.report.cli import main
from minimind.report.hydra_sweep import expand_sweep
from minimind.report.plotting import plot
from minimind.report.sweep import SweepError, collect
from minimind.report.table import format_table, write_csv

__all__ = ["SweepError", "collect", "expand_sweep", "write_csv", "plot", "format_table", "main"]
