"""`--log-to tensorboard,mlflow,wandb`: Ray Tune's logger callbacks for the trackers researchers use.

Each trial's run is named by its trial_id, as in trials.parquet, and carries the whole resolved config as
its parameters (one per config field), tags naming the study, its kind, the variant, the seed, the code
version and the trial's status (completed / stopped / failed). Metrics are logged at step = epoch (from 0,
as in epochs.parquet and the console): one point per epoch, and the test evaluation once, at the last
epoch's step. A run ends with a status that says how the trial ended (MLflow: FINISHED, KILLED for a trial
the scheduler stopped, FAILED), and, for a local study directory, the exported model directory and
study.yaml are its artifacts. TensorBoard gets an HParams summary per trial (its HParams tab compares
trials); W&B gets the same config.

    tensorboard  event files in each trial's Tune directory, <storage>/<name>/ray/tune/<trial_id>/events.out.tfevents.*
                 (`tensorboard --logdir <storage>/<name>`); tensorboardX comes with ray[tune]
    mlflow       one MLflow experiment named after the study; by default a SQLite store
                 <storage>/<name>/mlflow.db (`mlflow ui --backend-store-uri sqlite:///<that file>`),
                 or --mlflow-tracking-uri
    wandb        one W&B run per trial, grouped by study; offline (files in each trial's directory,
                 upload later with `wandb sync`) unless WANDB_API_KEY is set or `wandb login` was run

MLflow and W&B are optional: `pip install -e '.[trackers]'`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import storage
from ..provenance import redact
from .records import model_path, read_record, record_path
from .settings import StudyError

TRACKERS = ("tensorboard", "mlflow", "wandb")
INSTALL = "pip install -e '.[trackers]'"
#: tracker -> the module it needs
MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
WANDB_PROJECT = "dpnp_ray"
"""W&B project when WANDB_PROJECT is not set; runs are grouped by study name."""


def parse_log_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'tensorboard,mlflow' (or a study file's list of names) -> ('tensorboard', 'mlflow'); unknown names are
    a StudyError naming the flag."""
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in (value or ())]
    names = tuple(dict.fromkeys(n.strip().lower() for n in parts if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise StudyError(f"--log-to {value!r}: unknown tracker(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(TRACKERS)} (comma-separated, any of them)")
    return names


def check_installed(log_to: tuple[str, ...]) -> None:
    """Fail before Ray starts when a tracker's package is missing, saying how to install it."""
    import importlib.util

    missing = [n for n in log_to if importlib.util.find_spec(MODULES[n]) is None]
    if missing:
        packages = ", ".join(MODULES[n] for n in missing)
        raise StudyError(f"--log-to {','.join(missing)} needs {packages}, which is not installed: {INSTALL}"
                         + (" (tensorboardX comes with ray[tune])" if "tensorboard" in missing else ""))


def resolve_mlflow_uri(study_dir: str, tracking_uri: str | None) -> str:
    """The given URI, else a SQLite store in the study directory (which must then be local)."""
    if tracking_uri:
        return tracking_uri
    if storage.is_uri(study_dir):
        raise StudyError(f"--log-to mlflow with --storage {redact(study_dir)!r}: the default MLflow store is a "
                         "SQLite file in the study directory, which must be local; pass --mlflow-tracking-uri "
                         "(an MLflow server, or sqlite:////path/to/mlflow.db)")
    return "sqlite:///" + str(storage.local_path(study_dir) / "mlflow.db")


def _mlflow_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> None:
    """Create the study's MLflow experiment with its artifacts next to the store (MLflow's default
    is ./mlruns in whatever directory the study was started from)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifact_location)


def wandb_offline() -> bool:
    """True unless W&B can upload: WANDB_API_KEY set, or a `wandb login` on this machine
    (WANDB_MODE, when set, decides)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    import netrc

    try:  # where `wandb login` keeps the key
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc: nothing to log in with
        return True


@dataclass(frozen=True)
class TrialIdentity:
    """What a tracker shows of a trial beside its metrics: its id, variant, seed and resolved config."""

    trial_id: str
    variant: str
    seed: int
    config: dict[str, Any]


#: Tune's trial config (what the searcher or grid chose) -> the trial's identity, None if it names no trial
Describe = Callable[[dict[str, Any]], "TrialIdentity | None"]

#: the trial's status (its record's) -> how its MLflow run ends
MLFLOW_RUN_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as tracker parameters: nested mappings flattened with dotted keys, lists as their text, None
    as 'None' (MLflow and TensorBoard's HParams take scalars only)."""
    params: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flat_params(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            params[name] = value
        else:
            params[name] = str(value)
    return params


def is_epoch_report(result: dict[str, Any]) -> bool:
    """Epoch reports carry the scheduler's time attribute; the final (test) report does not."""
    from ..ray_train import TIME_ATTR

    return TIME_ATTR in result


@dataclass
class StudyTrackerState:
    """The logic every study tracker shares: the trial's identity and tags, step = epoch, the test
    evaluation logged once, and how the trial ended (from its record)."""

    study: str
    kind: str
    study_dir: str
    describe: Describe
    last_epoch: dict[str, int] = field(default_factory=dict)  # Tune trial id -> last epoch logged
    final_logged: set[str] = field(default_factory=set)  # Tune trial ids whose test evaluation is logged
    epoch_keys: dict[str, set[str]] = field(default_factory=dict)  # Tune trial id -> keys its epochs reported

    def identity(self, trial) -> TrialIdentity | None:
        try:
            return self.describe(dict(trial.config or {}))
        except Exception:  # a config that does not resolve is the trial's own failure, recorded elsewhere
            return None

    def tags(self, trial) -> dict[str, str]:
        from ..provenance import code_version

        tags = {"study": self.study, "study_kind": self.kind, "code_version": code_version()}
        who = self.identity(trial)
        if who is not None:
            tags.update(trial_id=who.trial_id, variant=who.variant, seed=str(who.seed))
        return tags

    def params(self, trial) -> dict[str, Any]:
        who = self.identity(trial)
        return flat_params(who.config) if who is not None else flat_params(dict(trial.config or {}))

    def step(self, trial, result: dict[str, Any]) -> int | None:
        """The step to log this report at, or None when it must not be logged (a repeated test report)."""
        if is_epoch_report(result):
            epoch = int(result["epoch"])
            self.last_epoch[trial.trial_id] = epoch
            self.epoch_keys.setdefault(trial.trial_id, set()).update(  # NaN: a test metric epochs do not have
                k for k, v in result.items() if not (isinstance(v, float) and v != v))
            return epoch
        if trial.trial_id in self.final_logged:
            return None
        self.final_logged.add(trial.trial_id)
        return self.last_epoch.get(trial.trial_id, 0)

    def loggable(self, trial, result: dict[str, Any]) -> dict[str, Any]:
        """What of a report to log: an epoch report whole; the final report without what the epochs
        logged already (its validation metrics repeat the selected epoch's, at the last epoch's step)."""
        if is_epoch_report(result):
            return result
        seen = self.epoch_keys.get(trial.trial_id, set())
        return {k: v for k, v in result.items() if k not in seen}

    def record(self, trial) -> dict[str, Any] | None:
        who = self.identity(trial)
        return None if who is None else read_record(record_path(self.study_dir, who.trial_id))

    def status(self, trial, failed: bool) -> str:
        record = self.record(trial) or {}
        return record.get("status") or ("failed" if failed else "completed")

    def artifacts(self, trial) -> list[str]:
        """Local directories and files to attach to the trial's run: its exported model and study.yaml."""
        if storage.is_uri(self.study_dir):
            return []
        who = self.identity(trial)
        paths = []
        if who is not None:
            paths.append(model_path(self.study_dir, who.trial_id))
        paths.append(storage.join(self.study_dir, "study.yaml"))
        return [p for p in paths if os.path.exists(p)]


def metrics_only(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a report (trackers take numbers; the trial's status goes to tags)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _mlflow_callback_class():
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflowCallback(MLflowLoggerCallback):
        """MLflow runs with the resolved config as params, the study's tags, step = epoch, the test
        evaluation once, the model and study.yaml as artifacts, and an end status that says how it ended."""

        def __init__(self, state: StudyTrackerState, **kwargs):
            super().__init__(**kwargs)
            self.state = state

        def log_trial_start(self, trial) -> None:
            if trial not in self._trial_runs:
                tags = {**(self.tags or {}), **self.state.tags(trial), "trial_name": str(trial)}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
                self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=self.state.params(trial))

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            step = self.state.step(trial, result)
            if step is not None:
                self.mlflow_util.log_metrics(run_id=self._trial_runs[trial],
                                             metrics_to_log=metrics_only(self.state.loggable(trial, result)),
                                             step=step)

        def log_trial_end(self, trial, failed: bool = False) -> None:
            import mlflow

            run_id = self._trial_runs[trial]
            status = self.state.status(trial, failed)
            client = mlflow.MlflowClient(self.tracking_uri)
            client.set_tag(run_id, "status", status)
            for path in self.state.artifacts(trial):
                if os.path.isdir(path):
                    client.log_artifacts(run_id, path, artifact_path=os.path.basename(path.rstrip("/")))
                else:
                    client.log_artifact(run_id, path)
            self.mlflow_util.end_run(run_id=run_id, status=MLFLOW_RUN_STATUS.get(status, "FAILED"))

    return StudyMLflowCallback


def _tensorboard_callback_class():
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.result import TRAINING_ITERATION

    class StudyTBXCallback(TBXLoggerCallback):
        """TensorBoard scalars at step = epoch, the test evaluation once, and an HParams summary of the
        resolved config (its HParams tab compares trials by any config field)."""

        def __init__(self, state: StudyTrackerState):
            super().__init__()
            self.state = state

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            step = self.state.step(trial, result)
            if step is not None:  # Tune's callback logs at training_iteration: give it the epoch
                super().log_trial_result(iteration, trial,
                                         {**self.state.loggable(trial, result), TRAINING_ITERATION: step})

        def _try_log_hparams(self, trial, result: dict) -> None:
            from tensorboardX.summary import hparams

            params = self.state.params(trial)
            params["status"] = self.state.status(trial, failed=False)
            metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for summary in hparams(hparam_dict=params, metric_dict=metrics):
                self._trial_writer[trial].file_writer.add_summary(summary)

    return StudyTBXCallback


def _wandb_callback_class():
    from ray.air.integrations.wandb import WandbLoggerCallback

    class StudyWandbCallback(WandbLoggerCallback):
        """W&B runs with the resolved config and the study's tags."""

        def __init__(self, state: StudyTrackerState, **kwargs):
            super().__init__(**kwargs)
            self.state = state

        def _start_logging_actor(self, trial, exclude_results, **wandb_init_kwargs) -> None:
            tags = self.state.tags(trial)
            wandb_init_kwargs.update(config=self.state.params(trial),
                                     tags=[f"{k}:{v}" for k, v in tags.items()])
            super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    return StudyWandbCallback


def _no_identity(params: dict[str, Any]) -> TrialIdentity | None:
    return None


def tracker_callbacks(log_to: tuple[str, ...], *, study_dir: str, study: str, kind: str,
                      mlflow_tracking_uri: str | None = None, describe: Describe = _no_identity) -> list[Any]:
    """The Tune logger callbacks for `--log-to`; raises StudyError for a missing package or store.
    `describe` maps a Tune trial config to the trial's identity (study/tuner.py passes the study's)."""
    check_installed(log_to)
    def state() -> StudyTrackerState:  # one per tracker: each logs every report once
        return StudyTrackerState(study=study, kind=kind, study_dir=study_dir, describe=describe)

    callbacks: list[Any] = []
    if "tensorboard" in log_to:
        callbacks.append(_tensorboard_callback_class()(state()))
    if "mlflow" in log_to:
        uri = resolve_mlflow_uri(study_dir, mlflow_tracking_uri)
        artifacts = None if mlflow_tracking_uri else str(storage.local_path(study_dir) / "mlflow-artifacts")
        _mlflow_experiment(uri, study, artifacts)
        callbacks.append(_mlflow_callback_class()(state(), tracking_uri=uri, experiment_name=study,
                                                  tags={"study": study, "study_kind": kind}))
    if "wandb" in log_to:
        extra = {}
        if wandb_offline():
            os.environ.setdefault("WANDB_MODE", "offline")  # Ray's callback asks for an API key otherwise
            extra["mode"] = "offline"
        callbacks.append(_wandb_callback_class()(state(), project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
                                                 group=study, **extra))
    return callbacks


def tracker_locations(log_to: tuple[str, ...], *, study_dir: str, mlflow_tracking_uri: str | None = None) -> dict[str, str]:
    """Where each tracker's data goes, as one line a person can act on."""
    where = {}
    if "tensorboard" in log_to:
        where["tensorboard"] = f"tensorboard --logdir {study_dir}"
    if "mlflow" in log_to:
        uri = resolve_mlflow_uri(study_dir, mlflow_tracking_uri)
        where["mlflow"] = f"mlflow ui --backend-store-uri {redact(uri)}"
    if "wandb" in log_to:
        where["wandb"] = ("offline runs in each trial's directory: wandb sync " + f"{study_dir}/ray/tune/*/wandb/offline-run-*"
                          if wandb_offline() else f"W&B project {os.environ.get('WANDB_PROJECT', WANDB_PROJECT)}")
    return where
