"""The ablation grid: which variants of Adv-DPNP exist, and every variant x seed as a Ray Tune grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..registry import Registry
from .factorial import FACTORIAL_PREFIX, FACTORS, cell_overrides, factorial_cells
from . import preflight
from .cluster import plan_concurrency, prepare, resolve
from .settings import StudySettings
from .tuner import build_tuner, finish


@dataclass(frozen=True)
class AblationVariant:
    """One arm of the ablation: overrides of the study's base config."""

    overrides: dict[str, Any] = field(default_factory=dict)
    in_default_grid: bool = True  # run when no --variants are given
    listed: bool = True  # named in --help and errors (a factorial cell is not: FACTORIAL_PREFIX says how to ask)


ABLATION_VARIANTS: Registry[AblationVariant] = Registry("ablation variant")
ABLATION_VARIANTS.register("full")(AblationVariant())  # the paper's Adv-DPNP
ABLATION_VARIANTS.register("no_npr")(AblationVariant({"use_npr": False}))
ABLATION_VARIANTS.register("no_consistency")(AblationVariant({"use_consistency": False}))
ABLATION_VARIANTS.register("no_ppa")(AblationVariant({"use_ppa": False}))
ABLATION_VARIANTS.register("proto_adversarial")(AblationVariant({"prototype_update": "adversarial"}))
ABLATION_VARIANTS.register("proto_both")(AblationVariant({"prototype_update": "both"}))
ABLATION_VARIANTS.register("pgd_at")(AblationVariant({"method": "pgd_at"}))
ABLATION_VARIANTS.register("trades")(AblationVariant({"method": "trades"}))
ABLATION_VARIANTS.register("mart")(AblationVariant({"method": "mart"}))
# Mechanism controls (docs/method.md#mechanism-controls). hybrid_linear has no prototypes, so PPA and NPR
# cannot apply; its overrides say so, so that its rows do not claim terms it never computed.
ABLATION_VARIANTS.register("fixed_simplex")(AblationVariant({"prototype_mode": "fixed_simplex"}, in_default_grid=False))
ABLATION_VARIANTS.register("hybrid_linear")(
    AblationVariant({"method": "hybrid_linear", "use_ppa": False, "use_npr": False}, in_default_grid=False))
ABLATION_VARIANTS.register("proto_ce")(AblationVariant({"method": "proto_ce"}, in_default_grid=False))
ABLATION_VARIANTS.register("dpnp_clean")(AblationVariant({"method": "dpnp"}, in_default_grid=False))
# The feature head (docs/feature_head.md); the default is `linear`, so `head_linear` equals `full` today.
ABLATION_VARIANTS.register("head_none")(AblationVariant({"feature_head": "none"}, in_default_grid=False))
ABLATION_VARIANTS.register("head_linear")(AblationVariant({"feature_head": "linear"}, in_default_grid=False))
ABLATION_VARIANTS.register("head_no_final_relu")(
    AblationVariant({"feature_head": "no_final_relu"}, in_default_grid=False))


for _cell in factorial_cells(list(FACTORS))[1:]:  # the first, every factor on, is `full`
    ABLATION_VARIANTS.register(_cell)(AblationVariant(cell_overrides(_cell), in_default_grid=False, listed=False))

LISTED_VARIANTS: tuple[str, ...] = tuple(n for n in ABLATION_VARIANTS.names() if ABLATION_VARIANTS.get(n).listed)

DEFAULT_VARIANTS: tuple[str, ...] = tuple(name for name in ABLATION_VARIANTS.in_registration_order()
                                          if ABLATION_VARIANTS.get(name).in_default_grid)


def variant_overrides() -> dict[str, dict[str, Any]]:
    """Every registered variant's config overrides, by name."""
    return {name: ABLATION_VARIANTS.get(name).overrides for name in ABLATION_VARIANTS}


def run_ablation(base: dict[str, Any], variants: list[str], seeds: list[int], settings: StudySettings, *,
                 before_training: Callable[[], Any] | None = None,
                 extra_variants: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """The ablation grid: every variant x seed, as a Ray Tune grid. Returns the Parquet locations.

    `before_training` runs once the inputs passed the preflight, before any trial (e.g. writing study.yaml).
    `extra_variants`: variants beyond the registry, name -> overrides (`--tuned`: each method at its chosen point)."""
    from ray import tune

    # all of them: a resumed study may hold variants not asked for this time
    overrides = {**variant_overrides(), **(extra_variants or {})}
    unknown = [v for v in variants if v not in overrides]
    problems = [f"unknown variant(s) {unknown}; known: {', '.join([*LISTED_VARIANTS, *(extra_variants or {})])}, "
                f"or the cells of {FACTORIAL_PREFIX}<factors> ({', '.join(FACTORS)})"] if unknown else []
    if not variants or not seeds:
        problems.append(f"--variants {list(variants)} --seeds {list(seeds)}: need at least one of each")
    config_problems, configs = preflight.config_problems(
        base, [{**overrides[v], "seed": s} for v in variants if v in overrides for s in seeds])
    settings = resolve(settings)
    preflight.check(settings, configs, problems + config_problems)
    settings = prepare(settings)
    if settings.cluster or settings.address:
        preflight.check_data_on_nodes(configs)
    if before_training is not None:
        before_training()
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent)
    grid = {"variant": tune.grid_search(list(variants)), "seed": tune.grid_search(list(seeds))}
    tuner = build_tuner(settings, base, "ablation", variant_overrides=overrides, param_space=grid,
                        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, num_samples=1))
    return finish(tuner.fit(), settings, base, "ablation", overrides)
