"""A study's spec: what it runs, typed and frozen, checked in one place before Ray starts.

`AblationSpec` (every variant x seed over a base config) and `SearchSpec` (an Optuna search from a base
config) each list their `problems()`. An ablation spec builds its trials' configs once, when first asked;
the spec then travels to every trial's driver as data (tuner.StudyContext), so a trial's config is built
once per study (an ablation) or once per trial, from what Optuna chose (a search). No Ray here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Mapping

from ..config import ConfigError, ExperimentConfig
from ..methods import METHODS
from . import preflight
from .factorial import FACTORIAL_PREFIX, FACTORS
from .records import trial_id_of
from .search_space import OBJECTIVES, SAMPLERS, SearchSpace
from .variants import LISTED_VARIANTS, variant_overrides


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its id (None if Tune's config does not name it), variant ("search" in a search), what Tune
    chose without the variant and the Optuna trial number, the config, and the Optuna trial number."""

    trial_id: str | None
    variant: str
    params: dict[str, Any]
    cfg: ExperimentConfig
    optuna_trial: int | None = None


def _config_problems(configs: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], dict[str, ExperimentConfig]]:
    """(problems, built): each named config validated; every distinct problem listed once."""
    problems: list[str] = []
    built: dict[str, ExperimentConfig] = {}
    for name, values in configs:
        try:
            built[name] = ExperimentConfig.from_dict(values)
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    return problems, built


@dataclass(frozen=True)
class AblationSpec:
    """Every variant x seed over `base` (a study's base config: dataset-dependent fields may be None).
    `extra_variants`: variants beyond the registry, name -> overrides (`--tuned-from`: each method at its
    chosen point)."""

    base: Mapping[str, Any]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    extra_variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kind: ClassVar[str] = "ablation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "seeds", tuple(self.seeds))

    @cached_property
    def overrides(self) -> dict[str, dict[str, Any]]:
        """Every variant's overrides, registered and extra: a resumed study may hold variants not asked now."""
        return {**variant_overrides(), **{k: dict(v) for k, v in self.extra_variants.items()}}

    @cached_property
    def _built(self) -> tuple[list[str], dict[str, TrialSpec]]:
        unknown = [v for v in self.variants if v not in self.overrides]
        problems = [f"unknown variant(s) {unknown}; known: {', '.join([*LISTED_VARIANTS, *self.extra_variants])}, "
                    f"or the cells of {FACTORIAL_PREFIX}<factors> ({', '.join(FACTORS)})"] if unknown else []
        if not self.variants or not self.seeds:
            problems.append(f"--variants {list(self.variants)} --seeds {list(self.seeds)}: need at least one of each")
        params = {trial_id_of({"variant": v, "seed": s}, self.kind): (v, s)  # Tune's grid order: seed fastest
                  for v in self.variants if v in self.overrides for s in self.seeds}
        config_problems, configs = _config_problems(
            [(name, {**self.base, **self.overrides[v], "seed": s}) for name, (v, s) in params.items()])
        trials = {name: TrialSpec(name, v, {"seed": s}, configs[name]) for name, (v, s) in params.items()
                  if name in configs}
        return problems + config_problems, trials

    def problems(self) -> list[str]:
        """Every problem of the spec (unknown variants, no seeds, each trial's config), one line each."""
        return list(self._built[0])

    def trials(self) -> list[TrialSpec]:
        """Every trial whose config is valid, in Tune's grid order (the seed varies fastest)."""
        return list(self._built[1].values())

    def trial(self, params: Mapping[str, Any]) -> TrialSpec:
        """The trial Tune chose (`variant`, `seed`): built already, or (a resumed study's trial outside this
        run's grid) built now from the base, the variant's overrides and Tune's choices."""
        params = dict(params)
        trial_id = trial_id_of(params, self.kind)
        known = self._built[1].get(trial_id) if trial_id is not None else None
        if known is not None and known.params == {k: v for k, v in params.items() if k != "variant"}:
            return known
        variant = params.pop("variant", "search")
        cfg = ExperimentConfig.from_dict({**self.base, **self.overrides.get(variant, {}), **params})
        return TrialSpec(trial_id, variant, params, cfg)

    def param_space(self) -> dict[str, Any]:
        """Tune's grid over the variants and seeds."""
        from ray import tune

        return {"variant": tune.grid_search(list(self.variants)), "seed": tune.grid_search(list(self.seeds))}


@dataclass(frozen=True)
class SearchSpec:
    """An Optuna search of `n_trials` trials from `base` in `space`. `method`: search that method in its space
    of an equal-budget comparison of methods (SearchSpace.sample_method) instead of Adv-DPNP's (sample).
    `extend`: a new Tune run of `n_trials` more trials continuing the study's Optuna study (the base config
    is not evaluated again)."""

    base: Mapping[str, Any]
    n_trials: int
    space: SearchSpace = SearchSpace()
    sampler: str = "tpe"
    objective: str = "multi"
    scheduler: str = "asha"
    seed: int = 0
    optuna_storage: str | None = None
    extend: bool = False
    method: str | None = None
    kind: ClassVar[str] = "search"

    def for_method(self, method: str) -> "SearchSpec":
        """This search, of `method` (one study of a comparison of methods)."""
        return dataclasses.replace(self, method=method)

    @cached_property
    def trial_base(self) -> dict[str, Any]:
        """The base config every trial starts from: with the searched method when there is one."""
        return {**self.base, "method": self.method} if self.method in METHODS else dict(self.base)

    @cached_property
    def _checked(self) -> tuple[list[str], ExperimentConfig | None, dict[str, Any] | None]:
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(f"--objective {self.objective!r}: allowed {', '.join(OBJECTIVES)}")
        if self.scheduler not in ("asha", "none"):
            problems.append(f"--scheduler {self.scheduler!r}: allowed asha, none")
        if self.sampler not in SAMPLERS:
            problems.append(f"--sampler {self.sampler!r}: allowed {', '.join(SAMPLERS.names())}")
        problems += preflight.count_problem("--trials", self.n_trials, 1)
        problems += preflight.count_problem("--seed", self.seed, 0, preflight.SEED_LIMIT - 1)
        if self.method is not None and self.method not in METHODS:
            problems.append(f"--methods {self.method!r}: allowed {', '.join(METHODS.names())}")
        config_problems, built = _config_problems([("base", self.trial_base)])
        config, point = built.get("base"), None
        if config is not None:
            point = self.space.default_point(config) if self.method is None else self.space.method_default_point(config)
            more, _ = _config_problems([("point", {**self.trial_base, **point})])
            config_problems += [p for p in more if p not in config_problems]
        return problems + config_problems, config, point

    def problems(self) -> list[str]:
        """Every problem of the spec (objective, scheduler, sampler, budget, seed, method, the base config and
        its first point), one line each."""
        return list(self._checked[0])

    @property
    def config(self) -> ExperimentConfig:
        """The base config, built (eps and eval_eps resolved): what the space and ASHA's rungs are set from."""
        config = self._checked[1]
        if config is None:
            raise ConfigError(self.problems())
        return config

    def configs(self) -> list[ExperimentConfig]:
        """The base config if it is valid, else none (problems() says why): what the preflight loads data for."""
        return [self._checked[1]] if self._checked[1] is not None else []

    @property
    def first_point(self) -> dict[str, Any]:
        """The base config as a point of the space: a new search's first trial evaluates it."""
        self.config  # raises with the problems when the base config is invalid
        return dict(self._checked[2] or {})

    def trial(self, params: Mapping[str, Any]) -> TrialSpec:
        """The trial Optuna chose: the base config and its choices; named by its Optuna trial number."""
        params = dict(params)
        trial_id = trial_id_of(params, self.kind)
        variant = params.pop("variant", "search")
        number = params.pop("optuna_trial", None)
        cfg = ExperimentConfig.from_dict({**self.trial_base, **params})
        return TrialSpec(trial_id, variant, params, cfg, number)


StudySpec = AblationSpec | SearchSpec
