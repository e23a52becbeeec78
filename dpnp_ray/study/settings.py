"""Where a study writes and how its trials run: `StudySettings`, and `StudyError` for what stops a study."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import storage
from ..ray_train import Scaling


RAY_FOLDER = "ray"
"""The one subfolder of a study directory that holds Ray's own files: Tune's experiment (`ray/tune/`: its
state, the searcher's, a folder per trial with the `tune` runner's checkpoints and TensorBoard's events),
Train's runs (`ray/train/<study>-<trial_id>/`) and the scheduler's stop requests (`ray/stop_requests/`).
Everything else at the top is the project's own output (docs: the study directory)."""


TUNE_EXPERIMENT = "tune"


def ray_path(study_dir: str, *parts: str) -> str:
    """A location inside a study's RAY_FOLDER."""
    return storage.join(study_dir, RAY_FOLDER, *parts)


class StudyError(RuntimeError):
    """A study cannot start or continue; the message says what to do."""


NAME_RULE = "one directory name: not empty, not '.' or '..', without '/', '\\', '?', '#' or control characters"
"""What a study's --name and a trial's id must be: a single path component, so that nothing built from them
(the study directory, trials/<id>.json, best/<id>.yaml, models/<id>/) lies outside where it belongs, on a
local disk or in a bucket (where '?' and '#' would start a URI's query or fragment)."""


def name_problem(field: str, value: object) -> str | None:
    """None if value is a safe name (NAME_RULE), else the one line naming the field, the value and the rule."""
    if (isinstance(value, str) and value not in ("", ".", "..")
            and not any(c in value for c in "/\\?#") and all(ord(c) >= 32 and ord(c) != 127 for c in value)):
        return None
    return f"{field} {value!r}: must be {NAME_RULE}"


@dataclass(frozen=True)
class StudySettings:
    name: str
    storage: str = "results"
    scaling: Scaling = field(default_factory=Scaling)
    max_concurrent: int = 0  # 0: as many trials as the cluster's CPUs / GPUs allow
    cluster: bool = False
    address: str | None = None
    resume: bool = False
    trial_retries: int = 0  # Tune retries of a trial whose driver failed
    local_cpus: int | None = None  # local Ray instance size; None: all cores
    log_to: tuple[str, ...] = ()  # trackers (study/trackers.py): tensorboard, mlflow, wandb
    mlflow_tracking_uri: str | None = None  # None: a SQLite store in the study directory
    verbose: bool = False  # Tune's progress tables and Ray's INFO logs on the console

    @property
    def directory(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def tune_storage(self) -> str:
        """Tune's storage_path: the experiment (RunConfig name TUNE_EXPERIMENT) lies in it."""
        return ray_path(self.directory)

    @property
    def tune_experiment(self) -> str:
        return ray_path(self.directory, TUNE_EXPERIMENT)

    @property
    def train_storage(self) -> str:
        return ray_path(self.directory, "train")
