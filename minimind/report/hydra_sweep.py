"""The job list of a Hydra sweep, expanded by Hydra's own BasicSweeper code.

The one module of the report that imports Hydra internals (``hydra._internal``): the
BasicSweeper's ``split_arguments`` is what numbered the jobs, so a job that died before
writing anything still gets its row and its overrides. Should Hydra move it, only this file
changes. Hydra loads on the first call, not on import.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple


def expand_sweep(multirun: Dict[str, Any]) -> Tuple[List[List[str]], List[str], Optional[int]]:
    """The job list of a BasicSweeper sweep, from its ``multirun.yaml`` (as a dict).

    Returns ``(jobs, swept_keys, max_batch_size)``: ``jobs[n]`` is job n's override list, exactly
    as the BasicSweeper built it (``hydra.sweeper.params`` first, then the command line's task
    overrides, the cartesian product in that order). Raises ``ValueError`` for a sweep this
    cannot expand (another sweeper, a sweep that needs the config loader such as ``glob``).
    """
    hydra_node = (multirun or {}).get("hydra") or {}
    sweeper = hydra_node.get("sweeper") or {}
    target = str(sweeper.get("_target_") or "")
    # GridSweeper: the BasicSweeper that a relaunch continues (hydra_plugins/minimind_sweepers)
    if target and not target.endswith((".BasicSweeper", ".GridSweeper")):
        raise ValueError(f"sweeper {target} is not Hydra's BasicSweeper")
    params = sweeper.get("params") or {}
    task = list((hydra_node.get("overrides") or {}).get("task") or [])
    # the BasicSweeper's _parse_config: f"{k}={v}" for the params, then the task overrides
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = parser.parse_overrides(arguments)
    swept: List[str] = []
    for o in overrides:
        if o.is_sweep_override():
            key = o.get_key_element().lstrip("+~")
            if key not in swept:
                swept.append(key)
    batches = BasicSweeper.split_arguments(overrides, None)
    jobs = [list(job) for job in batches[0]]
    mbs = sweeper.get("max_batch_size")
    try:
        mbs = int(mbs) if mbs is not None and int(mbs) > 0 else None
    except (TypeError, ValueError):
        mbs = None
    return jobs, swept, mbs


def split_command_line(args: List[str]) -> Tuple[List[str], List[str], List[str]]:
    """A ``-m`` command line's overrides as Hydra's config loader splits them:
    ``(hydra_overrides, task_overrides, fixed_task_overrides)``. ``hydra.*`` / ``hydra/*`` keys
    configure Hydra (the launcher, the sweep dir; Hydra refuses to sweep them), the rest are the
    task overrides the BasicSweeper expands; ``fixed`` are the task overrides that are not
    sweeps (what composes the sweeper's own config, e.g. an ``experiment=`` with
    ``hydra.sweeper.params``). Raises ``ValueError`` (one line) for a line Hydra cannot parse
    or a sweep over Hydra's config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except Exception as e:  # noqa: BLE001 - hydra's OverrideParseException: say its first line
        raise ValueError(str(e).strip().splitlines()[0] if str(e).strip() else repr(e)) from None
    hydra_side, task, fixed = [], [], []
    for o in parsed:
        if o.is_hydra_override():
            if o.is_sweep_override():
                raise ValueError(f"sweeping over Hydra's configuration is not supported: '{o.input_line}'")
            hydra_side.append(o.input_line)
        else:
            task.append(o.input_line)
            if not o.is_sweep_override():
                fixed.append(o.input_line)
    return hydra_side, task, fixed
