"""The Optuna study of a search, for optuna.visualization: read from the search's journal, or rebuilt.

A search keeps its Optuna study in <study dir>/optuna.journal (or --optuna-storage): `journal_study`
reads it as the sampler saw it (pruned and failed trials, the exact distributions, conditional
parameters only where sampled). Without one, `rebuild_study` rebuilds a study from trials.parquet:
the searched parameters are the param_* columns (absent where a parameter was not sampled), or, in
results without them, the cfg_* columns that vary among completed trials.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import scipy.stats
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .figures import SEARCH_OBJECTIVES, NoData, completed, label, varying_config_columns

#: varied across trials but not sampled: repeating a config over seeds is not a search dimension
NOT_PARAMETERS = ("cfg_seed",)
#: only a positive range spanning at least a decade can be judged log-scaled
LOG_RANGE_RATIO = 10.0


def _python(value):
    return value.item() if hasattr(value, "item") else value


def infer_distribution(values: pd.Series) -> BaseDistribution:
    """Categorical for strings and booleans, Int/Float ranges for numbers.

    The results do not record the sampled space, so log scale is a guess: a positive range of a decade or
    more whose values are closer to uniform in log space than in linear space (smaller Kolmogorov-Smirnov
    distance to the uniform distribution on [lo, hi]).
    """
    values = values.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return CategoricalDistribution(sorted({_python(v) for v in values}, key=str))
    lo, hi = _python(values.min()), _python(values.max())
    log = bool(lo > 0 and hi / lo >= LOG_RANGE_RATIO and _looks_log_uniform(values.to_numpy(float), lo, hi))
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(float(lo), float(hi), log=log)


def _looks_log_uniform(x: np.ndarray, lo: float, hi: float) -> bool:
    linear = scipy.stats.kstest((x - lo) / (hi - lo), "uniform").statistic
    logarithmic = scipy.stats.kstest(np.log(x / lo) / np.log(hi / lo), "uniform").statistic
    return logarithmic < linear


def _param_value(distribution: BaseDistribution, value):
    """The value as the distribution holds it (a row of a mixed frame may carry an int as 3.0)."""
    value = _python(value)
    if isinstance(distribution, IntDistribution):
        return int(value)
    if isinstance(distribution, FloatDistribution):
        return float(value)
    return value


def parameter_columns(trials: pd.DataFrame) -> list[str]:
    """What the searcher sampled: the param_* columns, or (results without them) the cfg_* columns that vary."""
    sampled = [c for c in trials.columns if c.startswith("param_") and trials[c].notna().any()]
    return sampled or [c for c in varying_config_columns(trials) if c not in NOT_PARAMETERS]


def _parameter_name(column: str) -> str:
    return column.removeprefix("param_").removeprefix("cfg_")


def search_space(trials: pd.DataFrame) -> dict[str, BaseDistribution]:
    """Parameter name (the config field) -> distribution, for every searched column (parameter_columns)."""
    return {_parameter_name(c): infer_distribution(trials[c]) for c in parameter_columns(trials)}


def rebuild_study(trials: pd.DataFrame, objectives: Sequence[str] = SEARCH_OBJECTIVES) -> optuna.Study:
    """An in-memory study holding every completed trial with finite objectives, all maximized.

    A trial whose value of a parameter is missing (a conditional parameter) simply lacks that parameter.
    """
    missing = [c for c in ["trial_id", *objectives] if c not in trials.columns]
    if missing:
        raise NoData(f"trials.parquet has no {', '.join(missing)} column; not a search study's results")
    frame = completed(trials).dropna(subset=list(objectives))
    if "started_at" in frame.columns:  # the history's x axis is the order trials ran in, not the order they finished
        frame = frame.sort_values("started_at", kind="stable", na_position="last")
    if frame.empty:
        raise NoData(f"no completed trial has all of {', '.join(objectives)}")
    columns = {_parameter_name(c): c for c in parameter_columns(frame)}
    space = {name: infer_distribution(frame[column]) for name, column in columns.items()}
    if not space:
        raise NoData("no param_* column, and no cfg_* column varies across the completed trials: nothing was searched")
    study = optuna.create_study(directions=["maximize"] * len(objectives),
                                study_name=str(frame["study"].iloc[0]) if "study" in frame else None)
    with warnings.catch_warnings():  # experimental since optuna 3.2 and still so; names label the importances
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([label(o) for o in objectives])
    for _, row in frame.iterrows():
        params = {name: _param_value(space[name], row[column]) for name, column in columns.items()
                  if pd.notna(row[column])}  # a conditional parameter not sampled for this trial is absent
        study.add_trial(optuna.trial.create_trial(
            values=[float(row[o]) for o in objectives], params=params,
            distributions={name: space[name] for name in params},
            user_attrs={"trial_id": str(row["trial_id"]), "variant": str(row.get("variant", ""))},
        ))
    return study


def journal_path(directory: str | Path) -> Path:
    """Where a search keeps its Optuna journal by default."""
    return Path(directory) / "optuna.journal"


def open_storage(location: str | Path):
    """A journal file path or an RDB URL (sqlite:///..., postgresql://...) as an Optuna storage, read as is."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return optuna.storages.RDBStorage(text, skip_compatibility_check=True)
    from optuna.storages.journal import JournalFileBackend

    path = Path(text.removeprefix("file://"))
    if not path.is_file():
        raise NoData(f"no Optuna journal at {path}")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def journal_study(location: str | Path, study_name: str | None = None) -> optuna.Study:
    """The search's own Optuna study: `study_name` (the study's name in trials.parquet) from the
    storage at `location`, or the storage's only study."""
    storage = open_storage(location)
    names = optuna.get_all_study_names(storage)
    if study_name not in names:
        if len(names) != 1:
            raise NoData(f"{location} holds Optuna studies {', '.join(names) or '(none)'}, none named {study_name!r}")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


def objective_keys(study: optuna.Study) -> list[str]:
    """The trials.parquet column of each objective: the study's metric names (a searcher's keys or
    their labels); a study without names is read as SEARCH_OBJECTIVES in order when it has that many."""
    names = study.metric_names
    if names is None:
        if len(study.directions) != len(SEARCH_OBJECTIVES):
            return [f"objective {i}" for i in range(len(study.directions))]
        return list(SEARCH_OBJECTIVES)
    by_label = {label(key): key for key in SEARCH_OBJECTIVES}
    return [by_label.get(name, name) for name in names]


def _objective(study: optuna.Study, objective: int | str) -> tuple[int, str]:
    """(index, label) of an objective given by index or by its trials.parquet column."""
    keys = objective_keys(study)
    if isinstance(objective, str):
        if objective not in keys:
            raise NoData(f"{label(objective)} is not an objective of this search (objectives: "
                         f"{', '.join(label(k) for k in keys)})")
        objective = keys.index(objective)
    return objective, label(keys[objective])


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _target(index: int) -> Callable[[optuna.trial.FrozenTrial], float]:
    return lambda trial: trial.values[index]


def optimization_history(study: optuna.Study, objective: int | str) -> go.Figure:
    """Objective value per completed trial in order, with the best so far."""
    index, name = _objective(study, objective)
    return optuna.visualization.plot_optimization_history(study, target=_target(index), target_name=name)


def parameter_importances(study: optuna.Study) -> go.Figure:
    """fANOVA importance of each parameter for every objective (fixed seed: the same bars on every run).
    Optuna weighs the parameters every completed trial has: a conditional one sampled in only some is left out."""
    trials = _complete(study)
    if len(trials) < 2:
        raise NoData(f"parameter importances need at least 2 completed trials (have {len(trials)})")
    values = pd.DataFrame([t.values for t in trials])
    if (values.nunique() < 2).all():
        raise NoData("every trial has the same objective values: no variance to attribute")
    names = [label(k) for k in objective_keys(study)]
    try:
        if len(names) == 1:
            return optuna.visualization.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=names[0])
        return optuna.visualization.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:  # e.g. no parameter sampled in every completed trial
        raise NoData(f"parameter importances: {exc}") from None


def parallel_coordinates(study: optuna.Study, objective: int | str) -> go.Figure:
    index, name = _objective(study, objective)
    return optuna.visualization.plot_parallel_coordinate(study, target=_target(index), target_name=name)


def slices(study: optuna.Study, objective: int | str) -> go.Figure:
    index, name = _objective(study, objective)
    return optuna.visualization.plot_slice(study, target=_target(index), target_name=name)


def pareto_front(study: optuna.Study) -> go.Figure:
    """The completed trials in objective space, the Pareto-optimal ones highlighted (multi-objective searches)."""
    if len(study.directions) < 2:
        raise NoData("a single-objective search has no Pareto front")
    if not _complete(study):
        raise NoData("no completed trial")
    return optuna.visualization.plot_pareto_front(study, target_names=[label(k) for k in objective_keys(study)])
