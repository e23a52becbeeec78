"""What a study checks before Ray starts (on a cluster: before the first trial trains).

Every numeric setting in range, every trial's config valid, the results storage writable, the Optuna
storage parseable and open, and the dataset (and released corruption) files of every config there and
readable: on this machine for a local study, on every worker node (one small Ray task each) for a
cluster. Each problem is one line naming the flag or field, its value and what is allowed; all of them
are raised together as one PreflightError (the study scripts exit with code 2).
"""

from __future__ import annotations

from typing import Any

from ..config import SEED_MAX, ConfigError, ExperimentConfig
from ..provenance import redact
from ..ray_train import RUNNERS, Scaling
from .cluster import check_storage_writable
from .settings import StudyError, StudySettings, name_problem

SEED_LIMIT = SEED_MAX + 1  # numpy's, which Optuna's samplers use
DATA_CHECK_TIMEOUT_S = 300


class PreflightError(ConfigError, StudyError):
    """A study cannot start: every problem found, one line each (a ConfigError and a StudyError)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        ValueError.__init__(self, "cannot start the study:\n  - " + "\n  - ".join(problems))


def settings_problems(settings: StudySettings) -> list[str]:
    """Where and how trials run: every number in range."""
    s, problems = settings.scaling, []
    if not isinstance(s.num_workers, int) or s.num_workers < 1:
        problems.append(f"--workers {s.num_workers}: must be an integer >= 1")
    if not s.cpus_per_worker > 0:
        problems.append(f"--cpus-per-worker {s.cpus_per_worker}: must be > 0")
    if not s.gpus_per_worker >= 0:
        problems.append(f"--gpus-per-worker {s.gpus_per_worker}: must be >= 0 (0: CPU workers)")
    problems += runner_problems(s)
    if not isinstance(s.max_failures, int) or s.max_failures < -1:
        problems.append(f"--max-failures {s.max_failures}: must be an integer >= -1 (-1: retry forever)")
    if not isinstance(settings.max_concurrent, int) or settings.max_concurrent < 0:
        problems.append(f"--max-concurrent {settings.max_concurrent}: must be an integer >= 0 "
                        "(0: as many trials as the resources allow)")
    if settings.local_cpus is not None and (not isinstance(settings.local_cpus, int) or settings.local_cpus < 1):
        problems.append(f"--local-cpus {settings.local_cpus}: must be an integer >= 1 (default: all cores)")
    if not isinstance(settings.trial_retries, int) or settings.trial_retries < 0:
        problems.append(f"trial_retries {settings.trial_retries}: must be an integer >= 0")
    problems += credential_problems(settings.storage)
    if name_problem("--name", settings.name):
        problems.append(name_problem("--name", settings.name))
    return problems


def credential_problems(storage: str) -> list[str]:
    """[] unless the storage URI carries credentials (user:password@, a secret query parameter): Ray Tune
    records its storage location in the study's own files, so they would be written there."""
    if "://" not in str(storage) or redact(storage) == storage:
        return []
    return [f"--storage {redact(storage)!r}: holds credentials; Ray Tune records its storage location in the "
            "study's own files, so give them in the environment instead (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN; GOOGLE_APPLICATION_CREDENTIALS)"]


def runner_problems(s: Scaling) -> list[str]:
    """Where trials run: a runner that exists, and what each can do with the workers asked for."""
    if s.runner not in (None, *RUNNERS):
        return [f"--runner {s.runner!r}: allowed {', '.join(RUNNERS)} (default: tune for a local trial of one "
                "worker, train otherwise)"]
    if s.runner == "tune" and isinstance(s.num_workers, int) and s.num_workers >= 2:
        return [f"--runner tune with --workers {s.num_workers}: a trial run in its Tune actor has one worker; "
                "drop --runner (train is the default for 2 or more workers) or use --workers 1"]
    if isinstance(s.num_workers, int) and s.num_workers >= 2 and 0 < s.gpus_per_worker < 1:
        return [f"--gpus-per-worker {s.gpus_per_worker:g} with --workers {s.num_workers}: the DDP ranks of a trial "
                "need a whole GPU each (NCCL refuses two ranks on one GPU); use --gpus-per-worker 1, or --workers 1 "
                "to share a GPU between trials"]
    return []


def count_problem(flag: str, value: Any, lowest: int, highest: int | None = None) -> list[str]:
    """[] if value is an integer in [lowest, highest], else the one line saying so."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= lowest and (highest is None
                                                                                        or value <= highest):
        return []
    allowed = f"an integer >= {lowest}" if highest is None else f"an integer in [{lowest}, {highest}]"
    return [f"{flag} {value!r}: must be {allowed}"]


def _data_key(cfg: ExperimentConfig) -> tuple:
    return (cfg.dataset, cfg.data_root, cfg.download, cfg.val_fraction, cfg.split_seed, cfg.eval_suite,
            cfg.corruption_root)


def data_problems(configs: list[ExperimentConfig], where: str = "") -> list[str]:
    """Load each distinct dataset the configs name, as a trial would; a line per one that does not load."""
    from ..evaluate import check_inputs
    from ..factory import load_data

    problems = []
    for cfg in {_data_key(c): c for c in configs}.values():
        for field, check in ((f"--data-root {cfg.data_root!r} (dataset {cfg.dataset}){where}: ", load_data),
                             (f"evaluation inputs{where}: ", check_inputs)):  # its message names the field
            try:
                check(cfg)
            except (OSError, ValueError, RuntimeError) as exc:  # DataError is a ValueError
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                problems.append(redact(field + message))
    return problems


def check(settings: StudySettings, configs: list[ExperimentConfig], problems: list[str]) -> None:
    """The checks before Ray starts; raises PreflightError with `problems` and every one found here."""
    problems = [*problems, *settings_problems(settings)]
    try:
        check_storage_writable(settings.storage)
    except StudyError as exc:
        problems.append(str(exc))
    if configs and not (settings.cluster or settings.address):
        problems.extend(data_problems(configs))  # on a cluster: on its nodes, see check_data_on_nodes
    if problems:
        raise PreflightError(problems)


def check_data_on_nodes(configs: list[ExperimentConfig], timeout_s: float = DATA_CHECK_TIMEOUT_S) -> None:
    """On a cluster, before any trial: one small task per alive node loads the configs' datasets there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not configs:
        return
    task = ray.remote(num_cpus=0)(_node_data_problems)
    nodes = [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]
    pending = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(configs, n.get("NodeManagerAddress", n["NodeID"])) for n in nodes]
    problems: list[str] = []
    try:
        for found in ray.get(pending, timeout=timeout_s):
            problems.extend(p for p in found if p not in problems)
    except ray.exceptions.GetTimeoutError:
        problems.append(f"the data check on the cluster's nodes did not finish within {timeout_s:g} s; "
                        "are the nodes busy, or the data root on a slow file system?")
    if problems:
        raise PreflightError(problems)


def _node_data_problems(configs: list[ExperimentConfig], node: str) -> list[str]:
    return data_problems(configs, where=f" on node {node}")

