"""An Optuna study rebuilt from trials.parquet, so optuna.visualization can draw a finished search.

The search's own storage may be gone (a Ray cluster's temp dir); the Parquet results are the record.
The search space is inferred from the cfg_* columns that vary among completed trials.
"""

from __future__ import annotations

import warnings
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


def search_space(trials: pd.DataFrame) -> dict[str, BaseDistribution]:
    """Parameter name (the config field) -> distribution, for every cfg_* column that varies."""
    return {c.removeprefix("cfg_"): infer_distribution(trials[c])
            for c in varying_config_columns(trials) if c not in NOT_PARAMETERS}


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
    space = search_space(frame)
    if not space:
        raise NoData("no cfg_* column varies across the completed trials: nothing was searched")
    study = optuna.create_study(directions=["maximize"] * len(objectives),
                                study_name=str(frame["study"].iloc[0]) if "study" in frame else None)
    with warnings.catch_warnings():  # experimental since optuna 3.2 and still so; names label the importances
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([label(o) for o in objectives])
    for _, row in frame.iterrows():
        params = {name: _param_value(space[name], row[f"cfg_{name}"]) for name in space
                  if pd.notna(row[f"cfg_{name}"])}
        study.add_trial(optuna.trial.create_trial(
            values=[float(row[o]) for o in objectives], params=params,
            distributions={name: space[name] for name in params},
            user_attrs={"trial_id": str(row["trial_id"]), "variant": str(row.get("variant", ""))},
        ))
    return study


def _target(study: optuna.Study, index: int) -> Callable[[optuna.trial.FrozenTrial], float]:
    return lambda trial: trial.values[index]


def optimization_history(study: optuna.Study, objective: int) -> go.Figure:
    """Objective value per trial in order, with the best so far."""
    name = study.metric_names[objective]
    return optuna.visualization.plot_optimization_history(study, target=_target(study, objective), target_name=name)


def parameter_importances(study: optuna.Study) -> go.Figure:
    """fANOVA importance of each parameter for every objective (fixed seed: the same bars on every run)."""
    if len(study.trials) < 2:
        raise NoData(f"parameter importances need at least 2 completed trials (have {len(study.trials)})")
    values = pd.DataFrame([t.values for t in study.trials])
    if (values.nunique() < 2).all():
        raise NoData("every trial has the same objective values: no variance to attribute")
    return optuna.visualization.plot_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def parallel_coordinates(study: optuna.Study, objective: int) -> go.Figure:
    name = study.metric_names[objective]
    return optuna.visualization.plot_parallel_coordinate(study, target=_target(study, objective), target_name=name)


def slices(study: optuna.Study, objective: int) -> go.Figure:
    name = study.metric_names[objective]
    return optuna.visualization.plot_slice(study, target=_target(study, objective), target_name=name)
