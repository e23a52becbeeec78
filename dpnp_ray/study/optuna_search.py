"""The Optuna search over loss weights, eps schedules and ablation switches (Ray Tune + OptunaSearch).

The space is define-by-run, so a weight is only sampled when its term is switched on and a
warm-up length only when the eps schedule ramps. Parameter names are config field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from .. import results
from ..config import ExperimentConfig, field_choices
from ..registry import Registry
from .cluster import plan_concurrency, prepare
from .settings import StudyError, StudySettings
from .tune import build_tuner, finish, validate_configs

OBJECTIVES = {"multi": (["val_clean_acc", "val_robust_acc"], ["max", "max"]),
              "robust": ("val_robust_acc", "max"), "clean": ("val_clean_acc", "max")}


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the searched fields; eps is searched as a fraction of the threat model's eps."""

    lambda_ppa: tuple[float, float] = (1e-3, 1.0)
    lambda_npr: tuple[float, float] = (1e-3, 1.0)
    lambda_cons: tuple[float, float] = (0.1, 10.0)
    beta_adv: tuple[float, float] = (0.25, 2.0)
    prototype_radius: tuple[float, float] = (1.0, 10.0)
    eps_fraction: tuple[float, float] = (0.5, 1.0)
    warmup_fraction: tuple[float, float] = (0.1, 0.5)  # of the epochs
    search_switches: bool = True

    def sample(self, trial, threat_eps: float, epochs: int) -> None:
        """Suggest every parameter on an Optuna trial (define-by-run)."""
        choices = field_choices()
        for term, weight in (("use_ppa", "lambda_ppa"), ("use_npr", "lambda_npr"),
                             ("use_consistency", "lambda_cons")):
            on = trial.suggest_categorical(term, [True, False]) if self.search_switches else True
            if on:
                trial.suggest_float(weight, *getattr(self, weight), log=True)
        trial.suggest_float("beta_adv", *self.beta_adv)
        trial.suggest_float("prototype_radius", *self.prototype_radius, log=True)
        if self.search_switches:
            trial.suggest_categorical("prototype_update", list(choices["prototype_update"]))
        schedule = trial.suggest_categorical("eps_schedule", list(choices["eps_schedule"]))
        if schedule != "constant":
            lo, hi = self.warmup_fraction
            trial.suggest_float("eps_warmup_epochs", max(lo * epochs, 0.1), max(hi * epochs, 0.2))
        lo, hi = self.eps_fraction
        trial.suggest_float("eps", lo * threat_eps, hi * threat_eps)

    def default_point(self, base: ExperimentConfig) -> dict[str, Any]:
        """The base config expressed as a point of this space: the first trial evaluates it."""
        point: dict[str, Any] = {}
        for term, weight in (("use_ppa", "lambda_ppa"), ("use_npr", "lambda_npr"),
                             ("use_consistency", "lambda_cons")):
            if self.search_switches:
                point[term] = getattr(base, term)
            if getattr(base, term):
                lo, hi = getattr(self, weight)
                point[weight] = min(max(getattr(base, weight), lo), hi)
        point["beta_adv"] = min(max(base.beta_adv, self.beta_adv[0]), self.beta_adv[1])
        point["prototype_radius"] = min(max(base.prototype_radius, self.prototype_radius[0]), self.prototype_radius[1])
        if self.search_switches:
            point["prototype_update"] = base.prototype_update
        point["eps_schedule"] = base.eps_schedule
        if base.eps_schedule != "constant":
            point["eps_warmup_epochs"] = base.eps_warmup_epochs
        point["eps"] = min(max(base.eps, self.eps_fraction[0] * base.eval_eps), self.eps_fraction[1] * base.eval_eps)
        return point


SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler]] = Registry("sampler")
"""name -> factory(seed) of the Optuna sampler (--sampler)."""
SAMPLERS.register("tpe")(lambda seed: optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed))
SAMPLERS.register("nsga2")(lambda seed: optuna.samplers.NSGAIISampler(seed=seed))
SAMPLERS.register("gp")(lambda seed: optuna.samplers.GPSampler(seed=seed))
SAMPLERS.register("random")(lambda seed: optuna.samplers.RandomSampler(seed=seed))


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The seeded sampler `--sampler name` asks for; a StudyError lists the known names."""
    if name not in SAMPLERS:
        raise StudyError(f"--sampler {name!r}: allowed {', '.join(SAMPLERS.names())}")
    return SAMPLERS.get(name)(seed)


def make_storage(location: str):
    """An Optuna storage from a journal file path or an RDB URL (sqlite:///..., postgresql://...)."""
    if "://" in location and not location.startswith("file://"):
        return optuna.storages.RDBStorage(location)
    from optuna.storages.journal import JournalFileBackend

    path = results.local_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


class PruningAwareOptunaSearch(OptunaSearch):
    """Records scheduler-stopped trials as PRUNED and failed ones as FAIL in the Optuna study
    (plain OptunaSearch records an early-stopped trial's last score as a finished result)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        status = (result or {}).get("trial_status")
        if status in ("running", "failed") and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            state = optuna.trial.TrialState.PRUNED if status == "running" else optuna.trial.TrialState.FAIL
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


@dataclass(frozen=True)
class _DefineByRun:
    """The define-by-run function: a plain object, because Tune pickles the searcher."""

    space: SearchSpace
    threat_eps: float
    epochs: int

    def __call__(self, trial) -> None:
        self.space.sample(trial, self.threat_eps, self.epochs)


def run_search(base: dict[str, Any], settings: StudySettings, *, trials: int, space: SearchSpace = SearchSpace(),
               sampler: str = "tpe", objective: str = "multi", scheduler: str = "asha", seed: int = 0,
               optuna_storage: str | None = None) -> dict[str, str]:
    """Search, then export every table and the Pareto front. Returns the Parquet locations."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if objective not in OBJECTIVES:
        raise StudyError(f"--objective {objective!r}: allowed {', '.join(OBJECTIVES)}")
    if scheduler not in ("asha", "none"):
        raise StudyError(f"--scheduler {scheduler!r}: allowed asha, none")
    if trials < 1:
        raise StudyError(f"--trials {trials}: must be >= 1")
    cfg = ExperimentConfig.from_dict(base)
    validate_configs(base, [space.default_point(cfg)])
    make_sampler(sampler, seed)  # fail on a bad name before Ray starts
    settings = prepare(settings)
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent)
    metric, mode = OBJECTIVES[objective]
    storage_location = optuna_storage or (results.join(settings.directory, "optuna.journal")
                                          if not results.is_uri(settings.directory) else None)
    searcher = PruningAwareOptunaSearch(
        space=_DefineByRun(space, cfg.eval_eps, cfg.epochs), metric=metric, mode=mode,
        points_to_evaluate=None if settings.resume else [space.default_point(cfg)],
        sampler=make_sampler(sampler, seed), study_name=settings.name,
        storage=make_storage(storage_location) if storage_location else None, seed=seed,
    )
    asha = None
    if scheduler == "asha":
        # Early stopping watches one scalar: the robust accuracy on the validation split.
        # Epochs count from 0, so max_t = epochs is never reached: ASHA only stops trials at its rungs,
        # and every trial that survives them finishes its last epoch and its test evaluation.
        asha = ASHAScheduler(time_attr="epoch", max_t=cfg.epochs, grace_period=max(1, cfg.epochs // 4),
                             reduction_factor=2, stop_last_trials=False,
                             **({"metric": "val_robust_acc", "mode": "max"} if isinstance(metric, list) else {}))
    single = not isinstance(metric, list)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=trials,
                                  max_concurrent_trials=concurrent,
                                  metric=metric if single else None, mode=mode if single else None)
    tuner = build_tuner(settings, base, "search", tune_config=tune_config)
    written = finish(tuner.fit(), settings, base, "search")
    frame = results.read_table(settings.directory, "trials")
    objectives = tuple(metric) if isinstance(metric, list) else (metric,)
    done = frame[frame["status"] == "completed"]
    front = done[results.pareto_mask(done[list(objectives)].to_numpy(float))]
    keep = ["study", "trial_id", *objectives, "clean_acc", "pgd_acc"] + [c for c in front.columns
                                                                         if c.startswith("param_")]
    written["pareto"] = results.write_table(settings.directory, "pareto", front[[c for c in keep if c in front]])
    if storage_location:
        written["optuna_storage"] = storage_location
    return written
