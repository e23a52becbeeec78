"""The Ray Tune glue of both studies: one trial as a Tune function, the Tuner, and the end of a study.

Each Tune trial is a small driver function (`run_trial`) that launches one TorchTrainer and
writes the trial's record (records.py). When Tune returns, `finish` records the trials whose
driver wrote nothing and exports the Parquet tables.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from typing import Any

from .. import results
from ..config import ConfigError, ExperimentConfig
from ..provenance import provenance, redact
from ..ray_train import Scaling, make_trainer, read_final_record
from .cluster import alive_nodes, driver_request
from .records import export, read_record, record_path, write_record
from .settings import StudyError, StudySettings

#: variant name -> config overrides; ablation studies pass theirs, a search has none
VariantOverrides = dict[str, dict[str, Any]]

REUSE_TRIAL_DRIVERS = True
"""Tune keeps a finished trial's driver actor for the next trial (reuse_actors): one process start
and the driver's imports (Ray Train, torch) less per trial. A trial the scheduler stopped while its
TorchTrainer still runs cannot be reused; Tune then ends that actor and starts a fresh one."""


class StudyInterrupted(StudyError):
    """The study stopped before every trial ended (Ctrl-C); its results so far are exported."""


def validate_configs(base: dict[str, Any], overrides: list[dict[str, Any]]) -> None:
    """Every trial's config (base plus one entry of overrides) must validate before anything starts."""
    problems = []
    for extra in overrides:
        try:
            ExperimentConfig.from_dict({**base, **extra})
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(problems)


def trial_config(params: dict[str, Any], base: dict[str, Any],
                 variant_overrides: VariantOverrides) -> tuple[str, dict[str, Any], ExperimentConfig]:
    """(variant, what Tune chose without the variant, config): the base config, then the variant's
    overrides, then Tune's choices. A search trial's variant is "search"."""
    params = dict(params)
    variant = params.pop("variant", "search")
    cfg = ExperimentConfig.from_dict({**base, **variant_overrides.get(variant, {}), **params})
    return variant, params, cfg


def _report_to_tune(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None})


def run_trial(params: dict[str, Any], *, study: str, study_dir: str, train_storage: str, base: dict[str, Any],
              scaling: dict[str, Any], kind: str, variant_overrides: VariantOverrides) -> None:
    """Tune function trainable: one TorchTrainer run, then the trial record. Never calls ray.train.*."""
    from ray import tune

    variant, params, cfg = trial_config(params, base, variant_overrides)
    trial_id = f"{variant}-s{cfg.seed}" if kind == "ablation" else tune.get_context().get_trial_id()
    existing = read_record(record_path(study_dir, trial_id))
    if existing is not None and existing.get("status") in ("completed", "failed"):
        _report_to_tune(existing.get("final_metrics", {}))  # done before a restart: nothing to re-run
        return
    scale = Scaling(**scaling)
    started = time.time()
    record: dict[str, Any] = {"study": study, "trial_id": trial_id, "variant": variant, "seed": cfg.seed,
                              "study_kind": kind, "config": cfg.to_dict(), "params": params,
                              "started_at": started}
    trainer = make_trainer(cfg, scale, run_name=f"{study}-{trial_id}", storage_path=train_storage)
    try:
        result = trainer.fit()
        record.update(read_final_record(result))
    except Exception as exc:  # Train gave up (worker failures beyond max_failures): record, let the study go on
        record.update(status="failed", error=redact(f"{type(exc).__name__}: {exc}")[:2000],
                      num_workers=scale.num_workers, use_gpu=scale.use_gpu, **provenance())
    record.update(finished_at=time.time(), wall_seconds=time.time() - started)
    write_record(study_dir, record)
    if record["status"] != "completed":
        _report_to_tune({"trial_status": record["status"], "epoch": -1})


def tune_settings(tune_config):
    """A study's TuneConfig with the settings every study shares (REUSE_TRIAL_DRIVERS)."""
    return dataclasses.replace(tune_config, reuse_actors=REUSE_TRIAL_DRIVERS)


def build_tuner(settings: StudySettings, base: dict[str, Any], kind: str, *,
                variant_overrides: VariantOverrides | None = None, param_space=None, tune_config=None):
    """A Tuner running `run_trial` for every trial, or the restored one with --resume."""
    from ray import tune

    bound = tune.with_parameters(run_trial, study=settings.name, study_dir=settings.directory,
                                 train_storage=settings.train_storage, base=base, scaling=asdict(settings.scaling),
                                 kind=kind, variant_overrides=variant_overrides or {})
    bound = tune.with_resources(bound, driver_request(alive_nodes()))
    experiment_path = results.join(settings.storage, settings.name)
    if settings.resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise StudyError(f"--resume: no Tune experiment to restore at {redact(experiment_path)}; "
                             "check --storage and --name, or drop --resume to start afresh")
        return tune.Tuner.restore(experiment_path, trainable=bound, resume_errored=True)
    run_config = tune.RunConfig(name=settings.name, storage_path=settings.storage,
                                failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
                                verbose=1)
    return tune.Tuner(bound, param_space=param_space or {}, tune_config=tune_settings(tune_config or tune.TuneConfig()),
                      run_config=run_config)


def record_unfinished(grid, settings: StudySettings, base: dict[str, Any], kind: str,
                      variant_overrides: VariantOverrides | None = None) -> int:
    """Trials whose driver never wrote a record (stopped by the scheduler, or errored in Tune):
    write one from Tune's results so every trial is in the tables. Returns how many trials had
    not ended at all (the experiment was interrupted): those get no record and run on --resume."""
    # ResultGrid lists its results in the order of the experiment's trials, which carry the status.
    trials = grid._experiment_analysis.trials
    interrupted = 0
    for result, trial in zip(grid, trials):
        if trial.status not in ("TERMINATED", "ERROR"):
            interrupted += 1
            continue
        params = dict(trial.config or result.config or {})
        last = dict(result.metrics or {})
        if kind == "ablation" and "variant" not in params:
            continue  # Tune knows nothing of this trial's grid point: nothing to attribute a record to
        try:
            variant, params, cfg = trial_config(params, base, variant_overrides or {})
        except ConfigError:
            continue
        trial_id = f"{variant}-s{cfg.seed}" if kind == "ablation" else last.get("trial_id")
        if not trial_id or read_record(record_path(settings.directory, trial_id)) is not None:
            continue
        history = []
        frame = result.metrics_dataframe
        if frame is not None and "epoch" in frame and "trial_status" in frame:
            epochs = frame[frame["trial_status"] == "running"].drop_duplicates("epoch", keep="last")
            keep = [c for c in epochs.columns if c.startswith(("loss_", "train_", "val_")) or c in (
                "epoch", "eps", "lr", "images_per_s", "epoch_seconds", "eval_seconds", "best_epoch")]
            history = epochs[keep].to_dict("records")
        status = "failed" if result.error is not None else "stopped"
        write_record(settings.directory, {
            "study": settings.name, "trial_id": trial_id, "variant": variant, "seed": cfg.seed,
            "study_kind": kind, "config": cfg.to_dict(), "params": params, "status": status,
            "error": redact(str(result.error or "stopped early by the scheduler"))[:2000],
            "summary": {"val_clean_acc": last.get("val_clean_acc"), "val_robust_acc": last.get("val_robust_acc"),
                        "epochs_run": len(history)},
            "history": history, "num_workers": settings.scaling.num_workers,
            "use_gpu": settings.scaling.use_gpu, **provenance()})
    return interrupted


def finish(grid, settings: StudySettings, base: dict[str, Any], kind: str,
           variant_overrides: VariantOverrides | None = None) -> dict[str, str]:
    """Record what Tune knows, export the tables, and say so when the study did not finish."""
    interrupted = record_unfinished(grid, settings, base, kind, variant_overrides)
    written = export(settings.directory)
    if interrupted:
        raise StudyInterrupted(f"{interrupted} trial(s) had not finished when the study stopped; the results "
                               f"so far are in {redact(settings.directory)}; continue with the same command "
                               "plus --resume")
    return written
