"""The Optuna search over loss weights, eps schedules and ablation switches (Ray Tune + OptunaSearch).

The space is define-by-run, so a weight is only sampled when its term is switched on and a
warm-up length only when the eps schedule ramps. Parameter names are config field names. Each
trial's config also carries its Optuna trial number (`optuna_trial`), which names the trial
(`optuna-<number>`), and Optuna hears each trial's outcome as trials.parquet records it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from .. import results
from ..config import ExperimentConfig, field_choices
from ..methods import METHODS, loss_weights
from ..provenance import redact
from ..ray_train import STOP_LATENCY_EPOCHS, TIME_ATTR, find_final_record
from ..registry import Registry
from . import preflight
from .cluster import plan_concurrency, prepare, resolve
from .optuna_storage import journal_locations, make_storage, optuna_storage_problems
from .records import ENDED, read_record, record_path, train_run_name, trial_id_of
from .settings import StudyError, StudySettings
from .tuner import StopAtEpochEnd, build_tuner, finish

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
    # searched only in an equal-budget comparison of methods (sample_method): the optimiser, the baselines' weights
    lr: tuple[float, float] = (0.01, 0.2)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)
    trades_beta: tuple[float, float] = (1.0, 12.0)
    mart_beta: tuple[float, float] = (1.0, 12.0)

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
        trial.suggest_float("eps", *self.eps_range(threat_eps))

    def eps_range(self, threat_eps: float) -> tuple[float, float]:
        """The searched training eps: eps_fraction of the threat model's eps."""
        return self.eps_fraction[0] * threat_eps, self.eps_fraction[1] * threat_eps

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
        lo, hi = self.eps_range(base.eval_eps)
        point["eps"] = min(max(base.eps, lo), hi)
        return point

    def method_params(self, cfg: ExperimentConfig) -> tuple[tuple[str, tuple[float, float], bool], ...]:
        """(field, bounds, log-uniform) of what a comparison of methods searches for cfg.method, in this order:
        SHARED_PARAMS and, for an adversarial method, the training eps (eps_range), the same for every method,
        then the loss weights its loss reads (methods.loss_weights under cfg's switches)."""
        shared = [(name, getattr(self, name), True) for name in SHARED_PARAMS]
        eps = [("eps", self.eps_range(cfg.eval_eps), False)] if cfg.is_adversarial else []
        own = [(name, getattr(self, name), name not in LINEAR_PARAMS)
               for name in loss_weights(cfg.method, cfg.to_dict())]
        return tuple(shared + eps + own)

    def sample_method(self, trial, cfg: ExperimentConfig) -> None:
        """Suggest one trial of cfg.method's search in a comparison of methods (define-by-run, no switches)."""
        for name, (lo, hi), log in self.method_params(cfg):
            trial.suggest_float(name, lo, hi, log=log)

    def method_default_point(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """cfg as a point of cfg.method's space (clamped into it): each method's first trial."""
        return {name: min(max(getattr(cfg, name), lo), hi) for name, (lo, hi), _ in self.method_params(cfg)}


SHARED_PARAMS = ("lr", "weight_decay")
"""What a comparison of methods searches log-uniformly for every method, in the same ranges (and the training eps,
uniformly, for an adversarial one)."""
LINEAR_PARAMS = ("beta_adv",)
"""Loss weights sampled uniformly; every other one log-uniformly."""


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping as run_search uses it (Tune's AsyncHyperBandScheduler), in epochs done."""

    grace_period: int  # the first rung
    reduction_factor: float  # each rung keeps 1 / reduction_factor of the trials that reach it
    max_t: int  # the last rung: a stop decided there still takes effect before the last epoch
    metric: str = "val_robust_acc"  # one scalar, even when the search has two objectives


def asha_settings(epochs: int) -> AshaSettings | None:
    """The scheduler settings of a search of `epochs` epochs: rungs after max(1, epochs // 8) epochs and
    then every 3x as many, each keeping the best third. A stop reaches a trial during the epoch after
    its rung (STOP_LATENCY_EPOCHS), so a trial stopped at the first rung of an 8-epoch search trains 2
    epochs, and the last rung is at most epochs - 1 - STOP_LATENCY_EPOCHS epochs done: every stop leaves
    at least one epoch untrained (a later one is dropped by the trial, ray_train.honours_stop). None
    (no early stopping) when no rung fits, i.e. under 3 epochs. Expected share
    of the epochs of the full search (dpnp_ray.study.cost.asha_expected_epochs): 39% at 8 epochs, 28%
    at 100, against 59% at 8 epochs for rungs every 2x from epochs // 4. Measured by bench/asha.py
    (bench/README.md)."""
    grace, last = max(1, epochs // 8), epochs - 1 - STOP_LATENCY_EPOCHS
    return AshaSettings(grace_period=grace, reduction_factor=3, max_t=last) if last >= grace else None


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


class PruningAwareOptunaSearch(OptunaSearch):
    """Tells Optuna each trial's outcome as its record has it: completed -> COMPLETE (with its objective
    values), stopped by the scheduler -> PRUNED, failed -> FAIL. (Plain OptunaSearch records a stopped
    trial's last epoch as a finished result.) The outcome is the trial_status of the trial's final report,
    which its final record carries too (ray_train.py); for a trial whose driver died, the final record in
    its Train run's storage if there is one, else FAIL.

    Every epoch report reaches Optuna as it arrives, at step = epoch (from 0): `intermediate` (the
    scheduler's metric) as the trial's intermediate value in a single-objective study (optuna-dashboard
    draws every trial's curve, stopped ones included), as the user attribute `curve_<intermediate>`
    ({"epoch": value}) in a multi-objective one, whose TPE cannot rank a PRUNED trial that has
    intermediate values (it asks the study for its one direction: optuna/optuna#5260's kind; Trial.report
    refuses multi-objective studies for the same reason); and each objective's latest value as user
    attributes `last_<metric>`, with `last_epoch`.
    Overrides public OptunaSearch methods only: suggest, on_trial_result, on_trial_complete. (The
    objectives' names and each Optuna trial's project trial_id are set through the public Optuna trial in
    `_DefineByRun`.)
    """

    def __init__(self, *args, study: str, train_storage: str, intermediate: str = "val_robust_acc", **kwargs):
        super().__init__(*args, **kwargs)
        self.study = study
        self.train_storage = train_storage
        self.intermediate = intermediate
        self.optuna_numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config and "optuna_trial" in config:
            self.optuna_numbers[trial_id] = config["optuna_trial"]
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)  # OptunaSearch's Optuna trial of this Tune trial
        if TIME_ATTR not in result or ot_trial is None or trial_id in self._completed_trials:
            return
        epoch = int(result["epoch"])
        value = result.get(self.intermediate)
        if isinstance(value, (int, float)) and math.isfinite(value):
            if isinstance(self.metric, list) and len(self.metric) > 1:
                curve = {**ot_trial.user_attrs.get(f"curve_{self.intermediate}", {}), str(epoch): float(value)}
                ot_trial.set_user_attr(f"curve_{self.intermediate}", curve)
            else:  # Trial.report's own call (report itself refuses a trial Tune, not Optuna, runs)
                ot_trial.storage.set_trial_intermediate_value(ot_trial._trial_id, epoch, float(value))
        ot_trial.set_user_attr("last_epoch", epoch)
        for name in self.metric if isinstance(self.metric, list) else [self.metric]:
            if isinstance(result.get(name), (int, float)):
                ot_trial.set_user_attr(f"last_{name}", float(result[name]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        status = (result or {}).get("trial_status")
        if error or status not in ENDED:
            record = self._final_record(trial_id)
            if record is None and not error:
                return  # ended by Tune before its end (an interrupted study): it runs again on --resume
            status, result = (record["status"], record.get("final_metrics")) if record else ("failed", None)
        if status == "completed":
            super().on_trial_complete(trial_id, result)
        else:
            super().on_trial_complete(trial_id, None, error=status == "failed")  # PRUNED or FAIL

    def _final_record(self, tune_trial_id: str) -> dict | None:
        number = self.optuna_numbers.get(tune_trial_id)
        if number is None:
            return None
        name = train_run_name(self.study, trial_id_of({"optuna_trial": number}, "search"))
        return find_final_record(self.train_storage, name)


@dataclass(frozen=True)
class _DefineByRun:
    """The define-by-run function: a plain object, because Tune pickles the searcher."""

    space: SearchSpace
    threat_eps: float
    epochs: int
    metric_names: tuple[str, ...] = ()
    method_config: ExperimentConfig | None = None  # a comparison of methods: its method's space (sample_method)

    def __call__(self, trial) -> dict[str, int]:
        if self.metric_names and trial.study.metric_names is None:
            with warnings.catch_warnings():  # set_metric_names is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial.study.set_metric_names(list(self.metric_names))  # the trials.parquet column names
        trial.set_user_attr("trial_id", trial_id_of({"optuna_trial": trial.number}, "search"))  # joins trials.parquet
        if self.method_config is None:
            self.space.sample(trial, self.threat_eps, self.epochs)
        else:
            self.space.sample_method(trial, self.method_config)
        return {"optuna_trial": trial.number}  # a constant of the config, not a searched parameter


def run_search(base: dict[str, Any], settings: StudySettings, *, trials: int, space: SearchSpace = SearchSpace(),
               sampler: str = "tpe", objective: str = "multi", scheduler: str = "asha", seed: int = 0,
               optuna_storage: str | None = None, extend: bool = False,
               before_training: Callable[[], Any] | None = None, method: str | None = None) -> dict[str, str]:
    """Search, then export every table and the Pareto front. Returns the Parquet locations.
    `before_training` runs once the inputs passed the preflight, before any trial (e.g. writing study.yaml).

    method: search that method (set in the base config) in its space of an equal-budget comparison of methods
    (SearchSpace.sample_method) instead of Adv-DPNP's space (SearchSpace.sample).

    extend: a new Tune run of `trials` more trials that continues the study's existing Optuna study
    (growing a finished search, recipe.py); the base config is not evaluated again."""
    from ray import tune

    problems = []
    if objective not in OBJECTIVES:
        problems.append(f"--objective {objective!r}: allowed {', '.join(OBJECTIVES)}")
    if scheduler not in ("asha", "none"):
        problems.append(f"--scheduler {scheduler!r}: allowed asha, none")
    if sampler not in SAMPLERS:
        problems.append(f"--sampler {sampler!r}: allowed {', '.join(SAMPLERS.names())}")
    problems += preflight.count_problem("--trials", trials, 1)
    problems += preflight.count_problem("--seed", seed, 0, preflight.SEED_LIMIT - 1)
    if method is not None:
        if method not in METHODS:
            problems.append(f"--methods {method!r}: allowed {', '.join(METHODS.names())}")
            method = None
        else:
            base = {**base, "method": method}
    config_problems, configs = preflight.config_problems(base, [{}])
    if configs:
        point = space.default_point(configs[0]) if method is None else space.method_default_point(configs[0])
        more, _ = preflight.config_problems(base, [point])
        config_problems += [p for p in more if p not in config_problems]
    settings = resolve(settings)
    storage_problems, storage = optuna_storage_problems(optuna_storage) if optuna_storage else ([], None)
    preflight.check(settings, configs, problems + config_problems + storage_problems)
    storage_location, journal_copy = journal_locations(settings, optuna_storage, restore=settings.resume or extend)
    if storage is None:  # the default journal: in the study directory checked above, or kept locally
        storage = make_storage(storage_location)
    if not (settings.resume or extend) and settings.name in optuna.get_all_study_names(storage):
        raise preflight.PreflightError([
            f"--name {settings.name}: the Optuna storage {redact(storage_location)!r} already holds a study of that "
            "name, and a new search would add its trials to it; continue it with --resume, or use another --name"])
    cfg = configs[0]
    settings = prepare(settings)
    if settings.cluster or settings.address:
        preflight.check_data_on_nodes(configs)
    if before_training is not None:
        before_training()
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent)
    metric, mode = OBJECTIVES[objective]
    searcher = PruningAwareOptunaSearch(
        space=_DefineByRun(space, cfg.eval_eps, cfg.epochs, tuple(metric) if isinstance(metric, list) else (metric,),
                           cfg if method is not None else None),
        metric=metric, mode=mode,
        points_to_evaluate=None if settings.resume or extend else [point],
        sampler=make_sampler(sampler, seed), study_name=settings.name, storage=storage, seed=seed,
        study=settings.name, train_storage=settings.train_storage,
        intermediate=AshaSettings.metric if isinstance(metric, list) else metric,  # the scheduler's scalar
    )
    asha = None
    rule = asha_settings(cfg.epochs) if scheduler == "asha" else None
    if rule is not None:
        # Early stopping watches one scalar: the robust accuracy on the validation split. Its rungs lie
        # early enough that a stop takes effect before the last epoch: stopping after the last epoch would
        # only skip the test evaluation. Under 3 epochs there is nothing to stop early. Rungs: asha_settings.
        asha = StopAtEpochEnd(settings.directory, time_attr=TIME_ATTR, max_t=rule.max_t,
                              grace_period=rule.grace_period, reduction_factor=rule.reduction_factor,
                              stop_last_trials=False,
                              **({"metric": rule.metric, "mode": "max"} if isinstance(metric, list) else {}))
    single = not isinstance(metric, list)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=trials,
                                  max_concurrent_trials=concurrent,
                                  metric=metric if single else None, mode=mode if single else None)
    tuner = build_tuner(settings, base, "search", tune_config=tune_config)
    try:
        written = finish(tuner.fit(), settings, base, "search")  # raises when trials are left to --resume
        settle_orphaned_trials(storage, settings.name, settings.directory,
                               list(metric) if isinstance(metric, list) else [metric])
    finally:
        if journal_copy and Path(storage_location).exists():  # also when interrupted: --resume starts from it
            results.write_bytes_atomic(journal_copy, results.local_path(storage_location).read_bytes())
    frame = results.read_table(settings.directory, "trials")
    objectives = tuple(metric) if isinstance(metric, list) else (metric,)
    done = frame[frame["status"] == "completed"]
    front = done[results.pareto_mask(done[list(objectives)].to_numpy(float))]
    keep = ["study", "trial_id", *objectives, "clean_acc", "pgd_acc"] + [c for c in front.columns
                                                                         if c.startswith("param_")]
    written["pareto"] = results.write_table(settings.directory, "pareto", front[[c for c in keep if c in front]])
    written["optuna_storage"] = journal_copy or storage_location
    return written


ORPHANED = ("proposed by Optuna but lost to Tune when the study's driver stopped: it never trained here, and "
            "another trial took its place on --resume")
"""the `ended_by` user attribute of an Optuna trial that settle_orphaned_trials failed"""


def settle_orphaned_trials(storage, study_name: str, study_dir: str, objectives: list[str]) -> list[int]:
    """After a search ended with every Tune trial ended, end the Optuna trials still RUNNING: they were asked
    from Optuna just before a driver was killed, after Tune last saved its state, so no Tune trial will ever
    report them. A trial whose record has ended (it trained, but its end never reached Optuna) gets that end:
    completed -> COMPLETE with the record's objective values, stopped -> PRUNED, failed -> FAIL; any other
    gets FAIL with user attribute `ended_by` (ORPHANED); each gets its `trial_id` user attribute if the kill
    came before the objective set it. Optuna then agrees with trials.parquet.
    Returns the numbers of the trials settled."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    settled = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = trial_id_of({"optuna_trial": trial.number}, "search")
        if "trial_id" not in trial.user_attrs:  # killed between Optuna's ask and the objective's first line
            study._storage.set_trial_user_attr(trial._trial_id, "trial_id", trial_id)
        record = read_record(record_path(study_dir, trial_id))
        status = (record or {}).get("status")
        values = [(record.get("final_metrics") or {}).get(name) for name in objectives] if record else []
        if status == "completed" and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            study.tell(trial.number, [float(v) for v in values])
        elif status == "stopped":
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        else:
            if status != "failed":
                study._storage.set_trial_user_attr(trial._trial_id, "ended_by", ORPHANED)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        settled.append(trial.number)
    return settled


