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

from .. import results, storage
from ..config import ExperimentConfig
from ..provenance import redact
from ..ray_train import TIME_ATTR, find_final_record
from . import preflight
from .cluster import plan_concurrency, prepare, resolve
from .optuna_storage import journal_locations, make_storage, optuna_storage_problems
from .records import ENDED, read_record, record_path, train_run_name, trial_id_of
from .settings import StudySettings
from .search_space import OBJECTIVES, AshaSettings, SearchSpace, asha_settings, make_sampler
from .spec import SearchSpec
from .tuner import StopAtEpochEnd, StudyContext, build_tuner, finish

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


def run_search(spec: SearchSpec, settings: StudySettings, *,
               before_training: Callable[[], Any] | None = None) -> dict[str, str]:
    """The search of `spec`, then every table and the Pareto front exported. Returns the Parquet locations.
    `before_training` runs once the inputs passed the preflight, before any trial (e.g. writing study.yaml)."""
    from ray import tune

    configs, extend = spec.configs(), spec.extend
    settings = resolve(settings)
    storage_problems, optuna_storage = (optuna_storage_problems(spec.optuna_storage) if spec.optuna_storage
                                        else ([], None))
    preflight.check(settings, configs, spec.problems() + storage_problems)
    storage_location, journal_copy = journal_locations(settings, spec.optuna_storage,
                                                       restore=settings.resume or extend)
    if optuna_storage is None:  # the default journal: in the study directory checked above, or kept locally
        optuna_storage = make_storage(storage_location)
    if not (settings.resume or extend) and settings.name in optuna.get_all_study_names(optuna_storage):
        raise preflight.PreflightError([
            f"--name {settings.name}: the Optuna storage {redact(storage_location)!r} already holds a study of that "
            "name, and a new search would add its trials to it; continue it with --resume, or use another --name"])
    cfg = spec.config
    settings = prepare(settings)
    if settings.cluster or settings.address:
        preflight.check_data_on_nodes(configs)
    if before_training is not None:
        before_training()
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent)
    metric, mode = OBJECTIVES[spec.objective]
    searcher = PruningAwareOptunaSearch(
        space=_DefineByRun(spec.space, cfg.eval_eps, cfg.epochs,
                           tuple(metric) if isinstance(metric, list) else (metric,),
                           cfg if spec.method is not None else None),
        metric=metric, mode=mode,
        points_to_evaluate=None if settings.resume or extend else [spec.first_point],
        sampler=make_sampler(spec.sampler, spec.seed), study_name=settings.name, storage=optuna_storage, seed=spec.seed,
        study=settings.name, train_storage=settings.train_storage,
        intermediate=AshaSettings.metric if isinstance(metric, list) else metric,  # the scheduler's scalar
    )
    asha = None
    rule = asha_settings(cfg.epochs) if spec.scheduler == "asha" else None
    if rule is not None:
        # Early stopping watches one scalar: the robust accuracy on the validation split. Its rungs lie
        # early enough that a stop takes effect before the last epoch: stopping after the last epoch would
        # only skip the test evaluation. Under 3 epochs there is nothing to stop early. Rungs: asha_settings.
        asha = StopAtEpochEnd(settings.directory, time_attr=TIME_ATTR, max_t=rule.max_t,
                              grace_period=rule.grace_period, reduction_factor=rule.reduction_factor,
                              stop_last_trials=False,
                              **({"metric": rule.metric, "mode": "max"} if isinstance(metric, list) else {}))
    single = not isinstance(metric, list)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=asha, num_samples=spec.n_trials,
                                  max_concurrent_trials=concurrent,
                                  metric=metric if single else None, mode=mode if single else None)
    context = StudyContext.of(settings, spec)
    tuner = build_tuner(settings, context, tune_config=tune_config)
    try:
        written = finish(tuner.fit(), settings, context)  # raises when trials are left to --resume
        settle_orphaned_trials(optuna_storage, settings.name, settings.directory,
                               list(metric) if isinstance(metric, list) else [metric])
    finally:
        if journal_copy and Path(storage_location).exists():  # also when interrupted: --resume starts from it
            storage.write_bytes_atomic(journal_copy, storage.local_path(storage_location).read_bytes())
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


