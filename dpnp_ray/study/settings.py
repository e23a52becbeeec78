"""Where a study writes and how its trials run: `StudySettings`, and `StudyError` for what stops a study."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import results
from ..ray_train import Scaling


class StudyError(RuntimeError):
    """A study cannot start or continue; the message says what to do."""


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
        return results.join(self.storage, self.name)

    @property
    def train_storage(self) -> str:
        return results.join(self.directory, "train")
