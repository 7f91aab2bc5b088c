"""This project's Hydra sweepers: sweeps that a relaunch continues.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package, so the two
classes live here and stay thin; what they do is in :mod:`minimind.sweep_resume` (the grid)
and :mod:`minimind.sweep_study` (Optuna).

* ``hydra/sweeper=basic`` (Hydra's default, here :class:`GridSweeper`): Hydra's BasicSweeper
  (the same jobs, the same numbers, the same ``max_batch_size`` batches) that, run again with
  ``hydra.sweep.dir=<that sweep>``, reads back the jobs that completed, waits for the ones still
  running (SLURM, or an orphaned local job), continues unfinished ones from their checkpoints,
  reruns failed ones, and refuses a job list that differs from the sweep's.
* ``hydra/sweeper=optuna``: hydra-optuna-sweeper's OptunaSweeper whose study, stored in the sweep
  folder (sqlite), continues when the same command runs again: ``n_trials`` counts every trial,
  a cut-off trial is finished (its job completed) or retried in its own folder.

Importing this module imports neither torch nor optuna (Hydra imports every plugin module at
start-up); without hydra-optuna-sweeper installed only the grid sweeper exists.
"""


from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin


class GridSweeper(BasicSweeper):
    """Hydra's BasicSweeper, resumable (:func:`minimind.sweep_resume.sweep_grid`)."""

    def sweep(self, arguments: List[str]) -> Any:
        from minimind.sweep_resume import sweep_grid

        return sweep_grid(self, arguments)


try:  # the optuna extra: pip install -e ".[optuna]"
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
except ImportError:  # pragma: no cover - without the plugin there is no hydra/sweeper=optuna
    _OptunaSweeper = None

if _OptunaSweeper is not None:

    class OptunaSweeper(_OptunaSweeper):
        """hydra-optuna-sweeper's sweeper with a study that continues (:mod:`minimind.sweep_study`)."""

        def __init__(self, **kwargs: Any) -> None:
            from minimind.sweep_study import ResumableStudy

            super().__init__(**kwargs)
            self.sweeper = ResumableStudy(**kwargs)

    def _register() -> None:
        """``hydra/sweeper=optuna`` is this class, with the study in the sweep folder."""
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

        @dataclass
        class ResumableOptunaConf(OptunaSweeperConf):
            _target_: str = "hydra_plugins.minimind_sweepers.OptunaSweeper"
            storage: Optional[Any] = "sqlite:///${hydra.sweep.dir}/optuna.db"
            study_name: Optional[str] = "minimind"

        ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=ResumableOptunaConf,
                                     provider="minimind")



@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.minimind_sweepers.GridSweeper"
    max_batch_size: Optional[int] = None  # jobs launched at a time (null: all)
    params: Optional[Dict[str, str]] = None  # sweep parameters in the config: {optim.grad_clip: "0.3,1.0"}


class MinimindSweeperConfigs(SearchPathPlugin):
    """Stores this project's sweeper configs in the ConfigStore after the plugin scan:
    ``hydra/sweeper/basic`` (Hydra's default, so that an ``override /hydra/sweeper: optuna`` in
    ``conf/hparams_search/`` still wins over it: the primary config's own override would not let
    it) and ``hydra/sweeper/optuna``. The scan re-runs every plugin module, Hydra's core ones and
    hydra-optuna-sweeper's config included, in path order, so a registration at import would be
    overwritten; search-path plugins are called after the scan and before any config is composed
    (launch.py and the compose API alike)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ConfigStore.instance().store(group="hydra/sweeper", name="basic", node=GridSweeperConf, provider="minimind")
        if _OptunaSweeper is not None:
            _register()
