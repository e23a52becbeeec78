"""The ablation grid: every variant x seed of an AblationSpec as a Ray Tune grid (the variants: variants.py)."""

from __future__ import annotations

from typing import Any, Callable

from . import preflight
from .cluster import plan_concurrency, prepare, resolve
from .settings import StudySettings
from .spec import AblationSpec
from .tuner import StudyContext, build_tuner, finish


def run_ablation(spec: AblationSpec, settings: StudySettings, *,
                 before_training: Callable[[], Any] | None = None) -> dict[str, str]:
    """The ablation grid: every variant x seed of `spec`, as a Ray Tune grid. Returns the Parquet locations.

    `before_training` runs once the inputs passed the preflight, before any trial (e.g. writing study.yaml)."""
    from ray import tune

    configs = [trial.cfg for trial in spec.trials()]
    settings = resolve(settings)
    preflight.check(settings, configs, spec.problems())
    settings = prepare(settings)
    if settings.cluster or settings.address:
        preflight.check_data_on_nodes(configs)
    if before_training is not None:
        before_training()
    context = StudyContext.of(settings, spec)
    tuner = build_tuner(settings, context, param_space=spec.param_space(), tune_config=tune.TuneConfig(
        max_concurrent_trials=plan_concurrency(settings.scaling, settings.max_concurrent), num_samples=1))
    return finish(tuner.fit(), settings, context)
