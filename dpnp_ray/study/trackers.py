"""`--log-to tensorboard,mlflow,wandb`: Ray Tune's logger callbacks for the trackers researchers use.

Every Tune report of a trial (one per epoch, then the test evaluation) is logged; the run of
each trial is named by its trial_id, as in trials.parquet.

    tensorboard  event files in each trial's Tune directory, <storage>/<name>/<trial_id>/events.out.tfevents.*
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
from typing import Any

from .. import results
from ..provenance import redact
from .settings import StudyError

TRACKERS = ("tensorboard", "mlflow", "wandb")
INSTALL = "pip install -e '.[trackers]'"
#: tracker -> the module it needs
MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
WANDB_PROJECT = "dpnp_ray"
"""W&B project when WANDB_PROJECT is not set; runs are grouped by study name."""


def parse_log_to(value: str | None) -> tuple[str, ...]:
    """'tensorboard,mlflow' -> ('tensorboard', 'mlflow'); unknown names are a StudyError naming the flag."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in (value or "").split(",") if n.strip()))
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
    if results.is_uri(study_dir):
        raise StudyError(f"--log-to mlflow with --storage {redact(study_dir)!r}: the default MLflow store is a "
                         "SQLite file in the study directory, which must be local; pass --mlflow-tracking-uri "
                         "(an MLflow server, or sqlite:////path/to/mlflow.db)")
    return "sqlite:///" + str(results.local_path(study_dir) / "mlflow.db")


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


def tracker_callbacks(log_to: tuple[str, ...], *, study_dir: str, study: str, kind: str,
                      mlflow_tracking_uri: str | None = None) -> list[Any]:
    """The Tune logger callbacks for `--log-to`; raises StudyError for a missing package or store."""
    check_installed(log_to)
    callbacks: list[Any] = []
    if "tensorboard" in log_to:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    if "mlflow" in log_to:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = resolve_mlflow_uri(study_dir, mlflow_tracking_uri)
        artifacts = None if mlflow_tracking_uri else str(results.local_path(study_dir) / "mlflow-artifacts")
        _mlflow_experiment(uri, study, artifacts)
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=study,
                                              tags={"study": study, "study_kind": kind}))
    if "wandb" in log_to:
        from ray.air.integrations.wandb import WandbLoggerCallback

        extra = {}
        if wandb_offline():
            os.environ.setdefault("WANDB_MODE", "offline")  # Ray's callback asks for an API key otherwise
            extra["mode"] = "offline"
        callbacks.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), group=study,
                                             **extra))
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
        where["wandb"] = ("offline runs in each trial's directory: wandb sync " + f"{study_dir}/*/wandb/offline-run-*"
                          if wandb_offline() else f"W&B project {os.environ.get('WANDB_PROJECT', WANDB_PROJECT)}")
    return where
