"""An Optuna study that the same ``-m`` command continues: ``hydra/sweeper=optuna``.

hydra-optuna-sweeper (pinned 1.2.0) loads a stored study (``load_if_exists``) but numbers its
jobs from 0 again, overwriting the first trials' folders, schedules ``n_trials`` new trials on
top of the stored ones, leaves the trials a killed launcher had started RUNNING for ever, and
stops the whole study at the first failed trial. :class:`ResumableStudy` keeps its search-space
parsing and trial configuration (``_configure_trials``) and replaces the loop:

* the study is stored in the sweep folder (``sqlite:///<sweep dir>/optuna.db``, study
  ``minimind``: ``conf/hydra/sweeper``'s defaults, set in ``hydra_plugins/minimind_sweepers``);
* trial number = job number = job folder, so a trial's job is found again;
* a relaunch first settles the trials a killed launcher left RUNNING: a job that completed is
  told to the study (finished), a job still running is waited for, the others run again with
  the same parameters in their own folder, continuing from their checkpoints (retried);
* then new trials are asked until the study holds ``n_trials`` trials in all (completed, failed
  or pruned), ``n_jobs`` at a time; a failed trial is told FAIL and the study goes on;
* a relaunch with another search space or other fixed overrides than the stored trials is
  refused with the differences (:class:`minimind.sweep_resume.SweepMismatch`).

The objective is what the task returns: the final val loss of a run that evaluates held-out data
(``conf/hparams_search/`` minimise it), else the final training loss.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf

from minimind import sweep_resume as sr

log = logging.getLogger("minimind.sweep")


def trial_overrides(trial: Any, fixed: Dict[str, Any]) -> List[str]:
    """The overrides ``_configure_trials`` gave a stored trial: its parameters, then the fixed ones."""
    params = dict(trial.params)
    params.update(fixed)
    return [f"{name}={val}" for name, val in params.items()]


def space_differences(study: Any, space: Dict[str, Any], fixed: Dict[str, Any]) -> List[str]:
    """What this command's search space and fixed overrides change against the stored trials."""
    diffs: List[str] = []
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if name not in space:
                now = f"fixed at {fixed[name]}" if name in fixed else "not set"
                diffs.append(f"{name} was searched over {dist}, now {now}")
            elif space[name] != dist:
                diffs.append(f"{name} was searched over {dist}, now over {space[name]}")
        for name in space:
            if t.distributions and name not in t.distributions:
                diffs.append(f"{name} is searched now, the stored trials did not search it")
        stored_fixed = {k: v for k, v in t.user_attrs.items()}
        for name in sorted(set(stored_fixed) | set(fixed)):
            if str(stored_fixed.get(name)) != str(fixed.get(name)):
                diffs.append(f"{name}={stored_fixed.get(name, '(not set)')} in the stored trials, now "
                             f"{fixed.get(name, '(not set)')}")
        if diffs:
            return sorted(set(diffs))
    return diffs


def continue_rng(sampler: Any, seed: Any, stored: int) -> None:
    """A relaunched study must not replay the first launch's draws: a seeded sampler restarts its
    random sequence, so the new trials would repeat the stored ones (seen here: trial 2 = trial 0).
    Its generators are reseeded from the seed and the number of stored trials (deterministic),
    or at random when the sampler has no seed."""
    if not stored or not hasattr(sampler, "reseed_rng"):
        return
    import numpy as np

    sampler.reseed_rng()  # every generator the sampler has, at random
    if seed is None:
        return
    for owner in (sampler, getattr(sampler, "_random_sampler", None)):
        if owner is not None and isinstance(getattr(owner, "_rng", None), np.random.RandomState):
            owner._rng = np.random.RandomState((int(seed) + 7919 * stored) % 2**32)


class ResumableStudy(OptunaSweeperImpl):
    """hydra-optuna-sweeper's implementation with a study that continues (see the module doc)."""

    def sweep(self, arguments: List[str]) -> None:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        is_grid = isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler
        space, fixed = create_params_from_overrides(params_conf)
        for name in fixed:
            space.pop(name, None)
        if is_grid:  # as the plugin does: the grid's choices, at most its size of trials
            choices = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(choices)
            size = 1
            for v in choices.values():
                size *= len(v)
            self.n_trials = min(self.n_trials, size)
        directions = self._get_directions()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    directions=directions, load_if_exists=True)
        diffs = space_differences(study, space, fixed)
        if diffs:
            log.error("%s", sr.mismatch(sweep_dir, f"the Optuna study {study.study_name!r}", diffs))
            raise SystemExit(2)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        stored = study.get_trials(deepcopy=False)
        log.info("Optuna study %r in %s: %d of %d trials stored, %s, %d at a time", study.study_name, self.storage,
                 len(stored), self.n_trials, "/".join(directions), self.n_jobs)

        continue_rng(self.sampler, self.config.hydra.sweeper.get("sampler", {}).get("seed"), len(stored))
        self._settle_cut_off(study, sweep_dir, fixed, directions, space)
        while len(study.trials) < self.n_trials:
            batch = min(self.n_trials - len(study.trials), self.n_jobs)
            trials = [study.ask() for _ in range(batch)]
            overrides = self._configure_trials(trials, space, fixed)
            jobs = [sr.Job(t.number, list(o)) for t, o in zip(trials, overrides)]
            self._run(study, sweep_dir, {t.number: t for t in trials}, jobs, directions)
        self._finish(study, sweep_dir, directions)

    def _settle_cut_off(self, study: Any, sweep_dir: Path, fixed: Dict[str, Any], directions: List[str],
                        space: Dict[str, Any]) -> None:
        """Trials a killed launcher left RUNNING: finished from their job, or run again."""
        cut = []
        for t in study.get_trials(deepcopy=False):
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            if set(space) - set(t.params):  # killed between ask() and the draws: nothing to rerun
                log.info("trial %d was cut off before its parameters were drawn: told FAIL", t.number)
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            else:
                cut.append(t)
        if not cut:
            return
        overrides = {t.number: trial_overrides(t, fixed) for t in cut}
        jobs = sr.read_jobs(sweep_dir, overrides, nums=sorted(overrides))
        sr.say_states(sweep_dir, jobs)
        jobs = sr.wait_for_running(sweep_dir, jobs)
        by_num = {t.number: t for t in cut}
        retry = []
        for job in jobs:
            if job.state == "completed":
                self._tell(study, by_num[job.num], sr.job_return(job), directions)
                log.info("trial %d was cut off after its job completed: %s told to the study", job.num, job.detail)
            else:
                retry.append(job)
        if retry:
            self._run(study, sweep_dir, by_num, retry, directions)

    def _run(self, study: Any, sweep_dir: Path, trials: Dict[int, Any], jobs: Sequence[sr.Job],
             directions: List[str]) -> None:
        """Launch the trials' jobs under their trial numbers; tell the study each result."""
        todo = {j.num: j for j in jobs}
        every = [todo[n].overrides if n in todo else [] for n in range(max(todo) + 1)]
        for chunk in sr.consecutive_chunks(sorted(todo), self.n_jobs):
            returns = sr.launch_jobs(self.launcher, self.config, sweep_dir, [todo[n] for n in chunk], every)
            sr.report_failures(sweep_dir, returns)
            for num in chunk:
                self._tell(study, trials[num], returns[num], directions)

    @staticmethod
    def _tell(study: Any, trial: Any, ret: Any, directions: List[str]) -> None:
        from hydra.core.utils import JobStatus

        number = trial if isinstance(trial, int) else trial.number
        if ret.status != JobStatus.COMPLETED:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        value = ret._return_value
        try:
            values = [float(v) for v in value] if len(directions) > 1 else [float(value)]
        except (TypeError, ValueError):
            log.error("trial %d returned %r, not a number: told FAIL", number, value)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        study.tell(number, values=values)

    def _finish(self, study: Any, sweep_dir: Path, directions: List[str]) -> None:
        states: Dict[str, int] = {}
        for t in study.trials:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        log.info("study %r: %d trials (%s)", study.study_name, len(study.trials),
                 ", ".join(f"{v} {k}" for k, v in sorted(states.items())))
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            log.error("no trial of the study completed; see the trials' folders in %s", sweep_dir)
            raise SystemExit(1)
        if len(directions) < 2:
            best = study.best_trial
            results = {"name": "optuna", "best_trial": best.number, "best_params": best.params,
                       "best_value": best.value}
            log.info("best: trial %d, value %.6g, %s", best.number, best.value,
                     " ".join(f"{k}={v}" for k, v in best.params.items()))
        else:
            results = {"name": "optuna", "solutions": [{"trial": t.number, "params": t.params, "values": t.values}
                                                       for t in study.best_trials]}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
