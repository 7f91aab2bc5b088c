"""The Optuna study of a sweep folder (``hydra/sweeper=optuna``): its trials ranked, the importances.

The study is the sqlite storage the sweeper keeps in the sweep folder (``optuna.db``, or the
``hydra.sweeper.storage`` of ``multirun.yaml`` when it names another sqlite file). The importances
are the ones Optuna computes, with its mean-decrease-impurity evaluator (a random forest over the
completed trials: ``optuna.importance.MeanDecreaseImpurityImportanceEvaluator``): Optuna's default
fANOVA evaluator of the pinned Optuna 2.10 fails on the tree layout of scikit-learn >= 1.3. Optuna
loads only when the folder holds a study; without the optuna extra the report says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from minimind.report.reading import last_line, load_yaml

DB_NAME = "optuna.db"


def storage_of(sweep: Path) -> Optional[str]:
    """The sqlite URL of the sweep's study, None when the folder holds none."""
    try:
        sweeper = ((load_yaml(sweep / "multirun.yaml") or {}).get("hydra") or {}).get("sweeper") or {}
    except Exception:  # noqa: BLE001 - no multirun.yaml: the default file name still counts
        sweeper = {}
    url = str(sweeper.get("storage") or "")
    if url.startswith("sqlite:///") and "${" not in url:
        path = Path(url[len("sqlite:///"):])
        if path.is_file():
            return url
    if (sweep / DB_NAME).is_file():
        return f"sqlite:///{(sweep / DB_NAME).resolve()}"
    return None


def read_study(sweep: Path) -> Optional[Dict[str, Any]]:
    """``{"name", "direction", "trials": [{"number", "state", "value", "params"}] ranked best first
    (completed ones by value, then the others by number), "best", "importances": {param: share},
    "importance_note"}``, or None when the folder holds no study."""
    url = storage_of(sweep)
    if url is None:
        return None
    try:
        import optuna
    except ImportError:
        return {"name": "?", "error": "the sweep holds an Optuna study; install the optuna extra to read it "
                                      "(pip install -e '.[optuna]')"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage=url)]
        study = optuna.load_study(study_name=names[0], storage=url)
    except Exception as e:  # noqa: BLE001 - a broken or empty storage: say it, keep the table
        return {"name": "?", "error": f"cannot read the study in {url}: {last_line(e)}"}
    directions = [d.name.lower() for d in study.directions]
    sign = -1.0 if directions[0] == "maximize" else 1.0
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value if len(directions) == 1 else None,
               "params": dict(t.params)} for t in study.get_trials(deepcopy=False)]
    done = [t for t in trials if t["state"] == "complete" and t["value"] is not None and math.isfinite(t["value"])]
    done.sort(key=lambda t: sign * t["value"])
    rest = sorted((t for t in trials if t not in done), key=lambda t: t["number"])
    out: Dict[str, Any] = {"name": study.study_name, "direction": "/".join(directions), "storage": url,
                           "trials": done + rest, "best": done[0] if done else None,
                           "importances": {}, "importance_note": None}
    if len(study.directions) > 1:
        out["importance_note"] = "several objectives: no importances"
    elif len(done) < 2:
        out["importance_note"] = "importances need 2 or more completed trials"
    else:
        try:
            evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
            out["importances"] = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except Exception as e:  # noqa: BLE001 - e.g. scikit-learn missing: the ranking still stands
            out["importance_note"] = f"no importances: {last_line(e)}"
    return out


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params(params: Dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in params.items()) or "-"


def format_study(study: Dict[str, Any]) -> str:
    """The study as text for stdout: the best trial, the ranking, the importances."""
    if study.get("error"):
        return f"Optuna study: {study['error']}"
    trials = study["trials"]
    states: Dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    lines = [f"Optuna study {study['name']!r} ({study['direction']}, {len(trials)} trials: "
             + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + ")"]
    for rank, t in enumerate(trials, 1):
        value = f"{t['value']:.4f}" if t["value"] is not None else t["state"]
        lines.append(f"  {rank:>3}. trial {t['number']:<3} {value:>10}  {_params(t['params'])}")
    lines.append(importance_line(study))
    return "\n".join(lines)


def importance_line(study: Dict[str, Any]) -> str:
    if study.get("importances"):
        return ("parameter importances (optuna, mean decrease impurity): "
                + ", ".join(f"{k} {v:.2f}" for k, v in study["importances"].items()))
    return f"parameter importances: {study.get('importance_note') or 'none'}"


def markdown(study: Dict[str, Any]) -> List[str]:
    """report.md's section on the study."""
    if study.get("error"):
        return ["## Optuna study", "", study["error"], ""]
    names: List[str] = []
    for t in study["trials"]:
        names += [k for k in t["params"] if k not in names]
    out = ["## Optuna study", "",
           f"Study `{study['name']}` ({study['direction']}), {len(study['trials'])} trials, stored in "
           f"`{study['storage']}`; ranked best first.", "",
           "| rank | trial | state | value | " + " | ".join(names) + " |",
           "|---:|---:|---|---:|" + "---:|" * len(names)]
    for rank, t in enumerate(study["trials"], 1):
        value = f"{t['value']:.4f}" if t["value"] is not None else ""
        out.append(f"| {rank} | {t['number']} | {t['state']} | {value} | "
                   + " | ".join(_value(t["params"].get(k, "")) for k in names) + " |")
    out += ["", importance_line(study), ""]
    return out
