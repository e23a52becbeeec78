"""The Ray Tune glue of both studies: one trial as a Tune function, the Tuner, the scheduler, and the end of a study.

A trial runs its loop (ray_train.run_loop) in one of two runners (`Scaling.runner`): `tune`, in the Tune
trial's own actor, which then holds the worker's CPUs and GPUs (`TuneIO`: reports and checkpoints through
ray.tune; a crash is a Tune retry from the latest checkpoint, `--max-failures` times); `train`, in a
TorchTrainer that the trial's small driver function starts (a crash restarts Train's workers). A trial's
status is decided once, where it ran: its loop writes `completed`, `stopped` or `failed` into its final
record (ray_train.py), and the trial function (`run_trial`) copies that record into the study's (records.py). The scheduler never kills a trial: `StopAtEpochEnd` turns ASHA's STOP into
a stop request that the trial honours at the end of its current epoch, so a stopped trial keeps every
epoch it trained and a trial that finished is never killed after the fact. A trial whose driver died
is recorded from its Train run's storage: a final record there makes it what that record says, else it
failed (`record_errored_trial`, called by a Tune callback when it happens and by `finish` for any left).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .. import storage
from ..config import ConfigError, ExperimentConfig
from ..provenance import provenance, redact
from ..ray_train import (FINAL_FILE, FINAL_PREFIX, Scaling, TrialIO, find_final_record, make_trainer, outcome_metrics,
                         read_final_record, run_loop, trial_loop_config)
from .cluster import alive_nodes, trial_request
from .records import (ENDED, export, model_path, one_line_error, points_path, read_record, record_path,
                      train_run_name, trial_id_of, write_error_log, write_record)
from .settings import RAY_FOLDER, TUNE_EXPERIMENT, StudyError, StudySettings, ray_path
from .spec import StudySpec, TrialSpec

REUSE_TRIAL_DRIVERS = True
"""Tune keeps a finished trial's actor for the next trial (reuse_actors): one process start and its
imports (Ray Train, torch) less per trial. A reused actor keeps module state: run_loop sets the torch
threads and train() the seeds per trial, and a trial on a GPU empties the CUDA cache at its end. A trial
the scheduler stopped while its TorchTrainer still runs cannot be reused; Tune then ends that actor and
starts a fresh one."""


class StudyInterrupted(StudyError):
    """The study stopped before every trial ended (Ctrl-C); its results so far are exported."""


@dataclass(frozen=True)
class StudyContext:
    """What a trial's driver (and whoever records a trial) needs to know of its study; picklable."""

    study: str
    study_dir: str
    train_storage: str
    scaling: dict[str, Any]
    spec: StudySpec

    @classmethod
    def of(cls, settings: StudySettings, spec: StudySpec) -> "StudyContext":
        return cls(settings.name, settings.directory, settings.train_storage, asdict(settings.scaling), spec)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def trial(self, params: dict[str, Any]) -> TrialSpec:
        """The trial Tune chose (its config): the study spec's."""
        return self.spec.trial(params)

    def new_record(self, spec: TrialSpec) -> dict[str, Any]:
        record = {"study": self.study, "trial_id": spec.trial_id, "variant": spec.variant, "seed": spec.cfg.seed,
                  "study_kind": self.kind, "runner": self.scaling.get("runner") or "train",
                  "config": spec.cfg.to_dict(), "params": spec.params}
        if spec.optuna_trial is not None:
            record["optuna_trial"] = spec.optuna_trial
        return record

    def failure(self, spec: TrialSpec, error: str, trace: str) -> dict[str, Any]:
        """The fields of a failed trial's record; the traceback goes to its log file."""
        scaling = Scaling(**self.scaling)
        return {"status": "failed", "error": error, "error_log": write_error_log(self.study_dir, spec.trial_id, trace),
                "num_workers": scaling.num_workers, "use_gpu": scaling.use_gpu, **provenance()}

    def keep_traceback(self, record: dict[str, Any]) -> dict[str, Any]:
        """A Train run's record of a failure carries its traceback: into the log file with it."""
        trace = record.pop("traceback", None)
        if trace:
            record["error_log"] = write_error_log(self.study_dir, record["trial_id"], trace)
        return record


def describe_trial(context: StudyContext, params: dict[str, Any]):
    """A trial's identity for the trackers (study/trackers.py): its id, variant, seed and resolved config."""
    from .trackers import TrialIdentity

    spec = context.trial(params)
    if spec.trial_id is None:
        return None
    return TrialIdentity(spec.trial_id, spec.variant, spec.cfg.seed, spec.cfg.to_dict())


def stop_request_path(study_dir: str, trial: str) -> str:
    """Where the scheduler asks a trial to stop (ray_train.py looks after every epoch)."""
    return ray_path(study_dir, "stop_requests", trial)


def _report_outcome(record: dict[str, Any]) -> None:
    from ray import tune

    metrics = record.get("final_metrics") or outcome_metrics(record)
    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None})


class TuneIO(TrialIO):
    """The loop in the Tune trial's own actor: one worker, ray.tune reports and checkpoints (in the trial's
    Tune directory). Its final record also goes where a Train run keeps its own
    (`<train storage>/<run name>/final_<ns>/final.json`), so whatever reads final records reads both runners'."""

    def __init__(self, train_storage: str, run_name: str):
        self.run = storage.join(train_storage, run_name)
        self.final: dict[str, Any] | None = None  # the record of the final report, once made

    def device(self, cfg: ExperimentConfig, use_gpu: bool):
        import torch

        # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPU; like Train, a trial without GPUs trains on the CPU
        return torch.device("cuda", 0) if use_gpu and cfg.device != "cpu" else torch.device("cpu")

    def checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        from pathlib import Path

        from ray import tune

        if directory and name.startswith(FINAL_PREFIX):
            final = Path(directory, FINAL_FILE).read_bytes()
            storage.write_bytes_atomic(storage.join(self.run, name, FINAL_FILE), final)
            self.final = json.loads(final)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)


def _run_in_train(context: StudyContext, spec: TrialSpec, run_name: str, **loop: Any) -> tuple[dict[str, Any], bool]:
    """A TorchTrainer run of the loop: the fields of the trial's record, and whether its final metrics already
    reached Tune (Train forwards every report of rank 0 through TuneReportCallback, the final one included)."""
    trainer = make_trainer(spec.cfg, Scaling(**context.scaling), run_name=run_name,
                           storage_path=context.train_storage, **loop)
    try:
        return read_final_record(trainer.fit()), True
    except Exception as exc:  # Train gave up (worker failures beyond max_failures): record, let the study go on
        final = find_final_record(context.train_storage, run_name)  # finished before the failure reached us
        if final is not None:
            return final, False
        return context.failure(spec, one_line_error(exc), traceback.format_exc()), False


def _run_in_tune(context: StudyContext, spec: TrialSpec, run_name: str, **loop: Any) -> tuple[dict[str, Any], bool]:
    """The loop right here, in the Tune trial; its final report is the trial's. A crash is not caught: Tune retries
    the trial from its latest checkpoint (FailureConfig), and when the retries are spent RecordErroredTrials
    records it."""
    io = TuneIO(context.train_storage, run_name)
    run_loop(trial_loop_config(spec.cfg, Scaling(**context.scaling), run_name=run_name, **loop), io)
    return io.final, True


TRIAL_RUNNERS = {"train": _run_in_train, "tune": _run_in_tune}
"""Scaling.runner -> how a trial function runs the loop: (its record's fields, whether the loop's final report
reached Tune) (ray_train.RUNNERS)."""


def run_trial(params: dict[str, Any], *, context: StudyContext, log_level: str = "WARNING",
              progress_every_s: float = 0.0) -> None:
    """Tune function trainable: the trial's loop in its runner, then the trial record. Never calls ray.train.*.
    Tune gets one report per epoch and one final report (the loop's own, or the outcome when the loop made none)."""
    spec = context.trial(params)
    existing = read_record(record_path(context.study_dir, spec.trial_id))
    if existing is not None and existing.get("status") in ENDED:
        _report_outcome(existing)  # done before a restart: nothing to re-run
        return
    started = time.time()
    record = {**context.new_record(spec), "started_at": started}
    run = TRIAL_RUNNERS[context.scaling.get("runner") or "train"]
    fields, reported = run(context, spec, train_run_name(context.study, spec.trial_id),
                           stop_request=stop_request_path(context.study_dir, spec.trial_id)
                           if context.kind == "search" else None, log_level=log_level,
                           progress_every_s=progress_every_s, model_dir=model_path(context.study_dir, spec.trial_id),
                           points_path=points_path(context.study_dir, spec.trial_id),
                           trial={"study": context.study, "trial_id": spec.trial_id, "variant": spec.variant,
                                  "seed": spec.cfg.seed})
    record.update(fields)
    record.update(finished_at=time.time(), wall_seconds=time.time() - started)
    write_record(context.study_dir, context.keep_traceback(record))
    if not reported:
        _report_outcome(record)


def record_errored_trial(context: StudyContext, params: dict[str, Any], error: BaseException | None) -> None:
    """The record of a trial whose driver died: what its Train run's final record says if it wrote one,
    else failed with the driver's error. Nothing if the trial already has a record of its end."""
    try:
        spec = context.trial(params)
    except ConfigError:
        return
    if spec.trial_id is None:
        return
    existing = read_record(record_path(context.study_dir, spec.trial_id))
    if existing is not None and existing.get("status") in ENDED:
        return
    record = context.new_record(spec)
    final = find_final_record(context.train_storage, train_run_name(context.study, spec.trial_id))
    if final is not None:
        record.update(final)
    elif error is not None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        record.update(context.failure(spec, one_line_error(error), trace))
    else:
        record.update(context.failure(spec, "the trial's driver ended without a result", "(no traceback)"))
    record.setdefault("finished_at", time.time())
    write_record(context.study_dir, context.keep_traceback(record))


class RecordErroredTrials(Callback):
    """A Tune callback: records a trial the moment Tune marks it ERROR (its driver died), the same moment
    the searcher is told, so a later --resume finds it ended instead of running it again."""

    def __init__(self, context: StudyContext):
        self.context = context

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = trial.get_pickled_error() or trial.get_error()
        record_errored_trial(self.context, dict(trial.config or {}), error)


class StopAtEpochEnd(ASHAScheduler):
    """ASHA (time attribute `epochs_done`) whose STOP is a request the trial honours at the end of its
    current epoch (ray_train.StopRequested) instead of Tune killing the trial's driver."""

    def __init__(self, study_dir: str, kind: str = "search", **asha):
        super().__init__(**asha)
        self.study_dir = study_dir
        self.kind = kind
        self.stop_requested: set[str] = set()  # Tune trial ids

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.stop_requested:
            return TrialScheduler.CONTINUE  # asked already; its later epochs must not count at higher rungs
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP:
            return decision
        name = trial_id_of(dict(trial.config or {}), self.kind)
        if name is None:
            return decision
        request = f"stopped by ASHA at epochs_done={result.get('epochs_done')}"
        storage.write_bytes_atomic(stop_request_path(self.study_dir, name), request.encode())
        self.stop_requested.add(trial.trial_id)
        return TrialScheduler.CONTINUE


TRIAL_PROGRESS_EVERY_S = 30.0
"""Seconds between progress lines inside an epoch from each trial, when the study's output is a terminal."""


def tune_retries(settings: StudySettings) -> int:
    """Tune's retries of a failed trial: a `tune` trial is its worker, so a worker crash is a Tune retry and
    --max-failures counts those; a `train` trial's workers are restarted by Train, and Tune retries its driver
    settings.trial_retries times."""
    return settings.scaling.max_failures if settings.scaling.runner == "tune" else settings.trial_retries


def tune_settings(tune_config):
    """A study's TuneConfig with the settings every study shares (REUSE_TRIAL_DRIVERS)."""
    return replace(tune_config, reuse_actors=REUSE_TRIAL_DRIVERS)


def build_tuner(settings: StudySettings, context: StudyContext, *, param_space=None, tune_config=None):
    """A Tuner running `run_trial` for every trial, or the restored one with --resume.

    The console: one line per finished trial (console.StudyConsole) instead of Tune's tables, and
    Ray Train's INFO messages filtered, unless settings.verbose. A restored study keeps the
    console and the trackers (--log-to) it was started with.
    """
    from ray import tune

    from ..trial_output import watch
    from .console import StudyConsole, tune_trial_name
    from .trackers import tracker_callbacks

    watch()  # trials' end marks recorded, not printed (a restored study's console waits for them too)

    if not settings.verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's classic output engine prints nothing at verbose=0
        # Tune's hint to checkpoint less often: every epoch checkpoints on purpose (a kill loses at most one)
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    bound = tune.with_parameters(run_trial, context=context, log_level="INFO" if settings.verbose else "WARNING",
                                 progress_every_s=TRIAL_PROGRESS_EVERY_S if sys.stdout.isatty() else 0.0)
    bound = tune.with_resources(bound, trial_request(settings.scaling, alive_nodes()))
    experiment_path = settings.tune_experiment
    if settings.resume:
        if not tune.Tuner.can_restore(experiment_path):
            if tune.Tuner.can_restore(settings.directory):
                raise StudyError(f"--resume: {redact(settings.directory)} was written by an older dpnp_ray, with Ray's "
                                 f"files at its top instead of in {RAY_FOLDER}/; resume it with that version, or start "
                                 "it again under another --name")
            raise StudyError(f"--resume: no Tune experiment to restore at {redact(experiment_path)}; "
                             "check --storage and --name, or drop --resume to start afresh")
        return tune.Tuner.restore(experiment_path, trainable=bound, resume_errored=True)
    callbacks = tracker_callbacks(settings.log_to, study_dir=settings.directory, study=settings.name, kind=context.kind,
                                  mlflow_tracking_uri=settings.mlflow_tracking_uri,
                                  describe=functools.partial(describe_trial, context))
    run_config = tune.RunConfig(name=TUNE_EXPERIMENT, storage_path=settings.tune_storage,
                                failure_config=tune.FailureConfig(max_failures=tune_retries(settings)),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # the `tune` runner's
                                callbacks=[RecordErroredTrials(context), *callbacks]
                                + ([] if settings.verbose else [StudyConsole(context.study)]),
                                verbose=1 if settings.verbose else 0)
    # Trials (and their directories: TensorBoard runs, MLflow and W&B runs) are named by trial_id.
    tune_config = tune_settings(replace(tune_config or tune.TuneConfig(), trial_name_creator=tune_trial_name,
                                        trial_dirname_creator=tune_trial_name))
    return tune.Tuner(bound, param_space=param_space or {}, tune_config=tune_config, run_config=run_config)


def finish(grid, settings: StudySettings, context: StudyContext) -> dict[str, str]:
    """Record the trials whose driver died, export the tables, and say so when the study did not finish."""
    interrupted = 0
    for result in grid:
        params = dict(result.config or {})
        trial_id = trial_id_of(params, context.kind)
        if trial_id is None:
            continue  # Tune knows nothing of this trial's identity: nothing to attribute a record to
        record = read_record(record_path(settings.directory, trial_id))
        if record is not None and record.get("status") in ENDED:
            continue
        if result.error is not None:
            record_errored_trial(context, params, result.error)
        else:
            interrupted += 1  # not ended: it runs on --resume
    written = export(settings.directory)
    if interrupted:
        raise StudyInterrupted(f"{interrupted} trial(s) had not finished when the study stopped; the results "
                               f"so far are in {redact(settings.directory)}; continue with the same command "
                               "plus --resume")
    return written
