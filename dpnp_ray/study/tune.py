"""Ray Tune studies: the ablation grid, the Optuna search, and the export to Parquet.

Each Tune trial is a small driver function (`run_trial`) that launches one TorchTrainer and
writes the trial's record to `<study dir>/trials/<trial_id>.json` (atomically). `export`
turns those records into the Parquet tables of results.py; it runs at the end of every
study and can be re-run at any time (one row per trial and per trial-epoch, always).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import results
from ..config import ConfigError, ExperimentConfig
from ..provenance import provenance, redact
from ..ray_train import Scaling, make_trainer, read_final_record

ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_npr": {"use_npr": False},
    "no_consistency": {"use_consistency": False},
    "no_ppa": {"use_ppa": False},
    "proto_adversarial": {"prototype_update": "adversarial"},
    "proto_both": {"prototype_update": "both"},
    "pgd_at": {"method": "pgd_at"},
    "trades": {"method": "trades"},
    "dpnp_clean": {"method": "dpnp"},
}
"""variant name -> config overrides. `full` is the paper's Adv-DPNP."""
DEFAULT_VARIANTS = ("full", "no_npr", "no_consistency", "no_ppa", "proto_adversarial", "proto_both", "pgd_at",
                    "trades")


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

    @property
    def directory(self) -> str:
        return results.join(self.storage, self.name)

    @property
    def train_storage(self) -> str:
        return results.join(self.directory, "train")


# ------------------------------------------------------------------------------- Ray set-up
def absolute_storage(storage: str) -> str:
    """Tune and Train need absolute local paths; URIs (s3://, gs://, file://) pass through."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def check_storage_writable(storage: str) -> None:
    """Fail before any training if results could not be written there."""
    probe = results.join(storage, f".dpnp_ray_write_probe_{os.getpid()}")
    try:
        results.write_bytes_atomic(probe, b"ok")
        if not results.is_uri(probe):
            results.local_path(probe).unlink()
    except OSError as exc:
        raise StudyError(f"--storage {redact(storage)!r} is not writable ({exc}); pick a directory you can "
                         "write to, or a shared URI (s3://...) on multi-node clusters") from None


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
            ray.init(address=address, runtime_env={"py_modules": [str(Path(dpnp_ray.__file__).parent)]},
                     log_to_driver=True)
        except ConnectionError as exc:
            raise StudyError(f"no Ray cluster reachable at {address!r} ({type(exc).__name__}: {exc}); start one with "
                             "`ray start --head` (and `ray start --address <head>:6379` on the other nodes), "
                             "or drop --cluster to run on a local instance") from None
        return
    # The dashboard serves the state API that Ray Train's placement-group cleaner needs: without
    # it, the workers of a trial stopped early by the scheduler keep their CPUs and later trials hang.
    # It listens on loopback only.
    ray.init(address="local", num_cpus=settings.local_cpus or os.cpu_count(), include_dashboard=True,
             dashboard_host="127.0.0.1", object_store_memory=300 * 1024 * 1024, log_to_driver=True)


DRIVER_CPU = 0.01  # what each trial's Tune driver function holds (0 is rejected by Tune)


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


def plan_concurrency(scaling: Scaling, max_concurrent: int, nodes: list[dict[str, float]] | None = None) -> int:
    """How many trials fit at once on the cluster's nodes; a request that can never fit is an
    error before training, not a trial that waits forever.

    Workers are packed per node (a worker cannot span nodes). Each trial's driver holds
    DRIVER_CPU; drivers go into the fractional CPU left over on nodes, and where none is
    left they cost a whole worker slot.
    """
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpw, gpw = scaling.cpus_per_worker, scaling.gpus_per_worker
    cpu_slots = [int((n.get("CPU", 0.0) + 1e-9) // cpw) for n in nodes]
    if gpw > 0:
        cpu_slots = [min(c, int((n.get("GPU", 0.0) + 1e-9) // gpw)) for c, n in zip(cpu_slots, nodes)]
    slots = sum(cpu_slots)
    spare = sum(int((n.get("CPU", 0.0) - c * cpw + 1e-9) // DRIVER_CPU) for c, n in zip(cpu_slots, nodes))

    def fits(k: int) -> bool:
        lost = math.ceil(max(0, k - spare) * DRIVER_CPU / cpw) if k > spare else 0
        return k * scaling.num_workers <= slots - lost

    if not fits(1):
        total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
        total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
        largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        raise StudyError(
            f"a trial needs {scaling.num_workers} workers x ({cpw:g} CPU" + (f", {gpw:g} GPU" if gpw else "")
            + f") plus {DRIVER_CPU} CPU for its driver, which this cluster cannot place "
            f"({len(nodes)} nodes, {total_cpu:g} CPUs (largest node {largest:g}), {total_gpu:g} GPUs); "
            "lower --workers, --cpus-per-worker or --gpus-per-worker, or add nodes")
    k = 1
    while fits(k + 1) and (not max_concurrent or k < max_concurrent):
        k += 1
    return k


# ------------------------------------------------------------------------------- one trial
def record_path(study_dir: str, trial_id: str) -> str:
    return results.join(study_dir, "trials", f"{trial_id}.json")


def _read_record(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(results.read_bytes(path))
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def _report_to_tune(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None})


def run_trial(params: dict[str, Any], *, study: str, study_dir: str, train_storage: str, base: dict[str, Any],
              scaling: dict[str, Any], kind: str) -> None:
    """Tune function trainable: one TorchTrainer run, then the trial record. Never calls ray.train.*."""
    from ray import tune

    params = dict(params)
    variant = params.pop("variant", "search")
    overrides = ABLATION_VARIANTS.get(variant, {}) if kind == "ablation" else {}
    cfg = ExperimentConfig.from_dict({**base, **overrides, **params})
    trial_id = f"{variant}-s{cfg.seed}" if kind == "ablation" else tune.get_context().get_trial_id()
    path = record_path(study_dir, trial_id)
    existing = _read_record(path)
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
    results.write_bytes_atomic(path, json.dumps(record, default=str).encode())
    if record["status"] != "completed":
        _report_to_tune({"trial_status": record["status"], "epoch": -1})


# ------------------------------------------------------------------------------- export
def _flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: record.get(k) for k in ("study", "trial_id", "variant", "seed", "study_kind", "status", "error",
                                      "num_workers", "use_gpu", "wall_seconds", "worker_seconds",
                                      "started_at", "finished_at")}
    row["error"] = row["error"] or ""
    summary = record.get("summary") or {}
    row.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
    for key in ("clean_acc", "pgd_acc"):
        row.setdefault(key, float("nan"))
    history = record.get("history") or []
    if history:
        row["images_per_s"] = sum(r.get("images_per_s", 0.0) for r in history) / len(history)
    for key, value in record.items():
        if key.endswith("_version") or key in ("hardware", "platform"):
            row[key] = value
    # Paths in the config (data_root, corruption_root) must not reveal a home directory or credentials.
    config = {k: redact(v) if isinstance(v, str) else v for k, v in (record.get("config") or {}).items()}
    row.update(results.config_columns(config))
    # What the searcher sampled (absent: not sampled for this trial, e.g. a weight whose term was off).
    row.update({f"param_{k}": v for k, v in (record.get("params") or {}).items()})
    return row


def export(study_dir: str) -> dict[str, str]:
    """Trial records -> Parquet tables (atomically). Returns table name -> location."""
    paths = results.list_files(results.join(study_dir, "trials"), ".json")
    records = [r for r in (_read_record(p) for p in paths) if r is not None]
    if not records:
        raise StudyError(f"{redact(study_dir)} has no trial records (trials/*.json); nothing to export")
    keys = lambda r: {"study": r["study"], "trial_id": r["trial_id"], "variant": r["variant"], "seed": r["seed"]}
    tables: dict[str, list[dict]] = {"trials": [], "epochs": [], "evals": [], "corruptions": [], "geometry": [],
                                     "masking": []}
    for record in records:
        tables["trials"].append(_flatten_record(record))
        for name in ("epochs", "evals", "corruptions", "geometry", "masking"):
            source = record.get("history" if name == "epochs" else name) or []
            tables[name].extend({**keys(record), **row} for row in source)
    written = {}
    for name, rows in tables.items():
        if rows or name == "trials":
            written[name] = results.write_table(study_dir, name, rows)
    return written


class StudyInterrupted(StudyError):
    """The study stopped before every trial ended (Ctrl-C); its results so far are exported."""


def record_unfinished(grid, settings: StudySettings, base: dict[str, Any], kind: str) -> int:
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
        variant = params.pop("variant", "search")
        try:
            cfg = ExperimentConfig.from_dict({**base, **(ABLATION_VARIANTS.get(variant, {}) if kind == "ablation"
                                                         else {}), **params})
        except ConfigError:
            continue
        trial_id = f"{variant}-s{cfg.seed}" if kind == "ablation" else last.get("trial_id")
        if not trial_id or _read_record(record_path(settings.directory, trial_id)) is not None:
            continue
        history = []
        frame = result.metrics_dataframe
        if frame is not None and "epoch" in frame and "trial_status" in frame:
            epochs = frame[frame["trial_status"] == "running"].drop_duplicates("epoch", keep="last")
            keep = [c for c in epochs.columns if c.startswith(("loss_", "train_", "val_")) or c in (
                "epoch", "eps", "lr", "images_per_s", "epoch_seconds", "eval_seconds", "best_epoch")]
            history = epochs[keep].to_dict("records")
        status = "failed" if result.error is not None else "stopped"
        record = {"study": settings.name, "trial_id": trial_id, "variant": variant, "seed": cfg.seed,
                  "study_kind": kind, "config": cfg.to_dict(), "params": params, "status": status,
                  "error": redact(str(result.error or "stopped early by the scheduler"))[:2000],
                  "summary": {"val_clean_acc": last.get("val_clean_acc"), "val_robust_acc": last.get("val_robust_acc"),
                              "epochs_run": len(history)},
                  "history": history, "num_workers": settings.scaling.num_workers,
                  "use_gpu": settings.scaling.use_gpu, **provenance()}
        results.write_bytes_atomic(record_path(settings.directory, trial_id), json.dumps(record, default=str).encode())
    return interrupted


def finish(grid, settings: StudySettings, base: dict[str, Any], kind: str) -> dict[str, str]:
    """Record what Tune knows, export the tables, and say so when the study did not finish."""
    interrupted = record_unfinished(grid, settings, base, kind)
    written = export(settings.directory)
    if interrupted:
        raise StudyInterrupted(f"{interrupted} trial(s) had not finished when the study stopped; the results "
                               f"so far are in {redact(settings.directory)}; continue with the same command "
                               "plus --resume")
    return written


def pareto_front(frame, objectives: tuple[str, ...] = ("val_clean_acc", "val_robust_acc")):
    """Rows not dominated in the objectives (all maximized), among completed trials."""
    done = frame[(frame["status"] == "completed")].dropna(subset=list(objectives))
    values = done[list(objectives)].to_numpy()
    keep = []
    for i, row in enumerate(values):
        dominated = ((values >= row).all(axis=1) & (values > row).any(axis=1)).any()
        keep.append(not dominated)
    return done[keep]


# ------------------------------------------------------------------------------- studies
def _validate_base(base: dict[str, Any], overrides: list[dict[str, Any]]) -> None:
    """Every trial's config must validate before anything starts."""
    problems = []
    for extra in overrides:
        try:
            ExperimentConfig.from_dict({**base, **extra})
        except ConfigError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    if problems:
        raise ConfigError(problems)


def _tuner(trainable: Callable, settings: StudySettings, base: dict[str, Any], kind: str, *, param_space=None,
           tune_config=None):
    from ray import tune

    study_dir = settings.directory
    bound = tune.with_parameters(trainable, study=settings.name, study_dir=study_dir,
                                 train_storage=settings.train_storage, base=base, scaling=asdict(settings.scaling),
                                 kind=kind)
    bound = tune.with_resources(bound, {"CPU": 0.01})
    experiment_path = results.join(settings.storage, settings.name)
    if settings.resume:
        if not tune.Tuner.can_restore(experiment_path):
            raise StudyError(f"--resume: no Tune experiment to restore at {redact(experiment_path)}; "
                             "check --storage and --name, or drop --resume to start afresh")
        return tune.Tuner.restore(experiment_path, trainable=bound, resume_errored=True)
    run_config = tune.RunConfig(name=settings.name, storage_path=settings.storage,
                                failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
                                verbose=1)
    return tune.Tuner(bound, param_space=param_space or {}, tune_config=tune_config, run_config=run_config)


def prepare(settings: StudySettings) -> StudySettings:
    """Resolve storage, check it, connect to Ray: everything that can fail before training."""
    settings = StudySettings(**{**asdict(settings), "storage": absolute_storage(settings.storage),
                                "scaling": settings.scaling})
    check_storage_writable(settings.storage)
    connect(settings)
    return settings


def run_ablation(base: dict[str, Any], variants: list[str], seeds: list[int], settings: StudySettings) -> dict[str, str]:
    """The ablation grid: every variant x seed, as a Ray Tune grid. Returns the Parquet locations."""
    from ray import tune

    unknown = [v for v in variants if v not in ABLATION_VARIANTS]
    if unknown:
        raise StudyError(f"unknown variant(s) {unknown}; known: {', '.join(ABLATION_VARIANTS)}")
    _validate_base(base, [{**ABLATION_VARIANTS[v], "seed": s} for v in variants for s in seeds])
    settings = prepare(settings)
    concurrent = plan_concurrency(settings.scaling, settings.max_concurrent)
    tuner = _tuner(run_trial, settings, base, "ablation",
                   param_space={"variant": tune.grid_search(list(variants)), "seed": tune.grid_search(list(seeds))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, num_samples=1))
    return finish(tuner.fit(), settings, base, "ablation")
