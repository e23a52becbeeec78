"""Where trials run: storage checks, the Ray connection, and how many trials fit on the cluster at once."""

from __future__ import annotations

import logging
import math
import os
import socket
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from .. import storage
from ..provenance import error_line, redact
from ..ray_train import Scaling, default_runner
from .settings import StudyError, StudySettings

DRIVER_CPU = 0.01
"""CPU that each trial's Tune driver function holds on a cluster (a request of 0 is rejected by Tune)."""

DRIVER_RESOURCE = "dpnp_trial_driver"
"""A custom resource for trial drivers (one unit each). The local instance offers LOCAL_DRIVER_SLOTS of
it, so its drivers hold no CPU and N single-CPU trials fill N cores; a cluster whose nodes offer it
(`ray start --resources '{"dpnp_trial_driver": 64}'`) is used the same way."""

LOCAL_DRIVER_SLOTS = 1024  # on a local instance the workers, never the drivers, limit the trials at once

TRIAL_ENV_VARS = {
    # Ray Train's controller polls its workers this often (default 2 s); a trial's end is noticed
    # within one interval, so a short one shortens every trial's tear-down. A poll is one small RPC.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
LOCAL_TRIAL_ENV_VARS = {
    **TRIAL_ENV_VARS,
    # One more actor (a process) per trial that watches for node preemption (spot instances): a
    # local instance has none to watch, and on 2 cores its start competes with the trial's own.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def trial_env_vars(local: bool) -> dict[str, str]:
    """Env vars Ray Train reads in a trial's processes, for the job's runtime_env: every trial driver
    gets them and Train passes them on to its controller and workers. A value already set in this
    process wins."""
    defaults = LOCAL_TRIAL_ENV_VARS if local else TRIAL_ENV_VARS
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def local_resources(settings: StudySettings) -> dict[str, float]:
    """The resources of the local instance a study starts: every core (or --local-cpus) and the drivers' slots."""
    return {"CPU": float(settings.local_cpus or os.cpu_count() or 1), DRIVER_RESOURCE: float(LOCAL_DRIVER_SLOTS)}


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected Ray cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def driver_request(nodes: list[dict[str, float]]) -> dict[str, float]:
    """What each trial's Tune driver holds: one unit of DRIVER_RESOURCE where the nodes offer it
    (the local instance does), else DRIVER_CPU."""
    if any(n.get(DRIVER_RESOURCE, 0.0) >= 1 for n in nodes):
        return {DRIVER_RESOURCE: 1.0}
    return {"CPU": DRIVER_CPU}


def trial_driver(scaling: Scaling, nodes: list[dict[str, float]]) -> dict[str, float]:
    """What a trial holds besides its workers: nothing for the `tune` runner (its Tune actor is the worker),
    a driver (driver_request) for a TorchTrainer's."""
    return {} if scaling.runner == "tune" else driver_request(nodes)


def trial_request(scaling: Scaling, nodes: list[dict[str, float]]) -> dict[str, float]:
    """The resources of a trial's Tune actor: the worker's CPUs and GPUs where it trains itself (`tune`),
    the small driver slot where it only drives a TorchTrainer (`train`)."""
    return scaling.worker_resources if scaling.runner == "tune" else driver_request(nodes)


def absolute_storage(storage: str) -> str:
    """Tune and Train need absolute local paths; URIs (s3://, gs://, file://) pass through."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def check_storage_writable(root: str) -> None:
    """Fail before any training if results could not be written under `root` (--storage)."""
    probe = storage.join(root, f".dpnp_ray_write_probe_{os.getpid()}")
    try:
        storage.write_bytes_atomic(probe, b"ok")
        storage.delete(probe)
    except storage.ResultsError as exc:  # a URI that cannot be opened at all; the message says why
        raise StudyError(f"--storage: {exc}") from None
    except OSError as exc:
        raise StudyError(f"--storage {redact(root)!r} is not writable ({error_line(exc)}); pick a directory you "
                         "can write to, or a shared URI (s3://...) on multi-node clusters") from None


def keep_credentials_out_of_runtime_envs() -> None:
    """Tune copies the driver's AWS_* credentials into every trial's runtime_env (ray.tune.execution.class_cache),
    and Ray's runtime-env agent logs each runtime_env it creates verbatim, so the secret key ended up in the
    session's logs/runtime_env_agent.log. A local instance's workers inherit this process's environment anyway
    (its raylet is started from here), so on a local instance the copy is dropped. (On a cluster it is kept:
    there it is how a trial on another node gets the driver's credentials; see docs/storage.md.)"""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in class_cache.ENV_VARS_TO_PROPAGATE
                                         if not name.startswith("AWS_")}


def connect(settings: StudySettings) -> None:
    """Start a local Ray instance, or attach to the running cluster (--cluster / --address)."""
    import ray

    import dpnp_ray

    if ray.is_initialized():
        return
    if settings.cluster or settings.address:
        address = settings.address or "auto"
        if address != "auto":
            _probe(address)
        try:
            # Ship this package to the cluster's workers; torch & co. must be installed there.
            ray.init(address=address, runtime_env={"py_modules": [str(Path(dpnp_ray.__file__).parent)],
                                                   "env_vars": trial_env_vars(local=False)},
                     log_to_driver=True, logging_level=_ray_log_level(settings))
        except Exception as exc:
            if _is_auth_failure(exc):
                raise StudyError(f"the Ray cluster at {address!r} uses token authentication and refused this "
                                 f"process ({type(exc).__name__}); {AUTH_HELP}") from None
            if not isinstance(exc, ConnectionError):
                raise
            maybe_auth = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                          f"; if the cluster uses token authentication (Ray's default), {AUTH_HELP}")
            raise StudyError(f"no Ray cluster reachable at {address!r} ({type(exc).__name__}: {exc}); start one with "
                             "`ray start --head` (and `ray start --address <head>:6379` on the other nodes), "
                             f"or drop --cluster to run on a local instance{maybe_auth}") from None
        return
    keep_credentials_out_of_runtime_envs()
    # The dashboard serves the state API that Ray Train's placement-group cleaner needs: without it,
    # the workers of a trial whose driver died keep their CPUs and later trials hang. It listens on
    # loopback only. The cleaner finds the state API by auto-detection (the newest Ray instance on the
    # machine, or RAY_ADDRESS); RAY_API_SERVER_ADDRESS, inherited by every process of this instance,
    # points it at this instance's own dashboard instead.
    resources = local_resources(settings)
    cpus = int(resources.pop("CPU"))
    if not settings.verbose:
        quiet_default_token_auth_warning()
    for attempt in range(3):
        port = free_port()
        try:
            with environment(RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{port}"):
                ray.init(address="local", num_cpus=cpus, resources=resources,
                         runtime_env={"env_vars": trial_env_vars(local=True)}, include_dashboard=True,
                         dashboard_host="127.0.0.1", dashboard_port=port, object_store_memory=300 * 1024 * 1024,
                         log_to_driver=True, logging_level=_ray_log_level(settings))
            return
        except ValueError as exc:  # the port was taken between free_port() and Ray binding it
            if "already occupied" not in str(exc) or attempt == 2:
                raise


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def environment(**variables: str):
    """Set environment variables for the processes started inside the block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


AUTH_HELP = ("export the cluster's token in this shell, as on every node that joins it: "
             "`export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token>` (print the token on the head node with "
             "`ray get-auth-token`; or RAY_AUTH_TOKEN_PATH=<file holding it>), then run the study again")


def _is_auth_failure(exc: BaseException | None) -> bool:
    """Ray's token authentication refused the connection (AuthenticationError, InvalidAuthToken,
    Unauthenticated), here or in the exceptions it was raised from."""
    while exc is not None:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(word in text for word in ("authenticationerror", "invalidauthtoken", "unauthenticated", "auth token",
                                         "authentication token")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropDefaultTokenAuthNotice(logging.Filter):
    """Drops Ray's 'Token authentication is enabled ... set RAY_AUTH_MODE=disabled to opt out' notice: on the
    loopback instance a study starts for itself the default (auth on) is right and nothing is to be done."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_default_token_auth_warning() -> None:
    """Install the filter once (a warning that auth is *disabled* still shows)."""
    logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    if not any(isinstance(f, _DropDefaultTokenAuthNotice) for f in logger.filters):
        logger.addFilter(_DropDefaultTokenAuthNotice())


def _ray_log_level(settings: StudySettings) -> int:
    """Ray's driver-side INFO messages (instance started, files written) only with --verbose."""
    return logging.INFO if settings.verbose else logging.WARNING


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable head: ray.init retries a dead address for minutes."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise StudyError(f"no Ray cluster reachable at {address!r} ({exc}); start one with `ray start --head` "
                         "(and `ray start --address <head>:6379` on the other nodes), check the address, "
                         "or drop --cluster/--address to run on a local instance") from None


def with_runner(settings: StudySettings) -> StudySettings:
    """The settings with the trials' runner decided (`default_runner` unless --runner chose one)."""
    scaling = settings.scaling
    if scaling.runner is not None:
        return settings
    on_cluster = bool(settings.cluster or settings.address)
    return replace(settings, scaling=replace(scaling, runner=default_runner(scaling.num_workers, on_cluster)))


def resolve(settings: StudySettings) -> StudySettings:
    """The settings with an absolute storage location (Tune and Train need one) and the trials' runner."""
    return replace(with_runner(settings), storage=absolute_storage(settings.storage))


def prepare(settings: StudySettings) -> StudySettings:
    """Resolve storage and connect to Ray (after preflight.check)."""
    settings = resolve(settings)
    connect(settings)
    return settings


def plan_concurrency(scaling: Scaling, max_concurrent: int, nodes: list[dict[str, float]] | None = None,
                     driver: dict[str, float] | None = None) -> int:
    """How many trials fit at once on the cluster's nodes; a request that can never fit is an
    error before training, not a trial that waits forever.

    Workers are packed per node (a worker cannot span nodes). Each trial's driver holds `driver`
    (default: `trial_driver`: none for the `tune` runner). A driver of DRIVER_RESOURCE holds no CPU: the drivers only
    bound the trials by the units the nodes offer. A driver of DRIVER_CPU goes into the fractional
    CPU left over on nodes, and where none is left it costs a whole worker slot.
    """
    if nodes is None:
        nodes = alive_nodes()
    driver = driver if driver is not None else trial_driver(scaling, nodes)
    driver_cpu = driver.get("CPU", 0.0)
    cpw, gpw = scaling.cpus_per_worker, scaling.gpus_per_worker
    cpu_slots = [int((n.get("CPU", 0.0) + 1e-9) // cpw) for n in nodes]
    if gpw > 0:
        cpu_slots = [min(c, int((n.get("GPU", 0.0) + 1e-9) // gpw)) for c, n in zip(cpu_slots, nodes)]
    slots = sum(cpu_slots)
    driver_slots = min((int((sum(n.get(name, 0.0) for n in nodes) + 1e-9) // amount)
                        for name, amount in driver.items() if name != "CPU" and amount > 0), default=math.inf)
    spare = (sum(int((n.get("CPU", 0.0) - c * cpw + 1e-9) // driver_cpu) for c, n in zip(cpu_slots, nodes))
             if driver_cpu > 0 else math.inf)

    def fits(k: int) -> bool:
        lost = math.ceil((k - spare) * driver_cpu / cpw) if k > spare else 0
        return k <= driver_slots and k * scaling.num_workers <= slots - lost

    if not fits(1):
        total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
        total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
        largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        held = ", ".join(f"{amount:g} {name}" for name, amount in driver.items())
        held = f" plus {held} for its driver" if held else ""
        raise StudyError(
            f"a trial needs {scaling.num_workers} workers x ({cpw:g} CPU" + (f", {gpw:g} GPU" if gpw else "")
            + f"){held}, which this cluster cannot place "
            f"({len(nodes)} nodes, {total_cpu:g} CPUs (largest node {largest:g}), {total_gpu:g} GPUs); "
            "lower --workers, --cpus-per-worker or --gpus-per-worker, or add nodes")
    k = 1
    while fits(k + 1) and (not max_concurrent or k < max_concurrent):
        k += 1
    return k
