"""The trial loop of both runners (`run_loop`), its Ray Train adapter, and the TorchTrainer that runs it.

A trial's loop runs `experiment.run_experiment`, reports every epoch's metrics with a checkpoint from
rank 0, resumes from the latest checkpoint after a restart, and ends with one report whose checkpoint
holds `final.json`: the trial's whole record. Where it runs is a runner (`Scaling.runner`): `train`, a
TorchTrainer whose workers run it with a DistributedEnvironment (DDP through
`ray.train.torch.prepare_model`, each rank its own shard of every split); `tune`, the trial's own Tune
actor, one process (study/tuner.py). The loop talks to its runner through a `TrialIO` only: `TrainIO`
here, `TuneIO` in study/tuner.py. Both keep the final record at the same place,
`<train storage>/<run name>/final_<time ns>/final.json` (`find_final_record`).

A trial's status is decided here, once, and written into that record: `completed`, `failed`
(training or evaluation failed) or `stopped` (the scheduler asked it to stop: a file at the
loop's `stop_request` location, looked at after every epoch). Every report after an epoch
carries `epochs_done`, the scheduler's time attribute; the final report does not, so no
scheduler can act on it. Before that report rank 0 exports the selected model (model_export.py) to the trial's
`model_dir`, in the study's storage, so every completed trial has its model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import results, storage
from .config import ExperimentConfig
from .distributed import DistributedEnvironment, LocalEnvironment
from .provenance import provenance
from .train_logs import _controller_callbacks

STATE_FILE = "state.pt"
FINAL_FILE = "final.json"
FINAL_PREFIX = "final_"
"""the checkpoint directories of final reports: `<storage>/<run name>/final_<time ns>/final.json`"""
TIME_ATTR = "epochs_done"
"""in every epoch's report (epoch + 1) and in no other: the time attribute of a scheduler"""
OBJECTIVE_METRICS = ("val_clean_acc", "val_robust_acc")
"""in every report to Tune (NaN where a trial has none): Tune refuses a result without its metrics"""
RUNNERS = ("train", "tune")
"""where a trial's loop runs: a TorchTrainer (any number of workers, any cluster), or its own Tune trial (one
worker: no Train controller and worker processes to start, seconds instead of ~15 s per trial on 2 cores)"""


def default_runner(num_workers: int, on_cluster: bool) -> str:
    """`tune` for a local trial of one worker, `train` for DDP trials and on a cluster (long trials, where
    Train's worker placement and restarts matter and its start-up is noise)."""
    return "tune" if num_workers == 1 and not on_cluster else "train"


STOP_LATENCY_EPOCHS = 1
"""A stop decided on an epoch's report reaches the trial while it trains the next epoch (the report
travels to Tune while the trial goes on): a trial stopped at a rung of m epochs done pays for m + 1."""


class StopRequested(Exception):
    """The scheduler asked this trial to stop; raised on every rank at the end of an epoch."""


def honours_stop(epochs_done: int, epochs: int) -> bool:
    """Whether a stop request seen after `epochs_done` of `epochs` epochs stops the trial: only while an
    epoch is left to skip. A trial that trained every epoch completes (test evaluation, exported model,
    COMPLETE in Optuna) however late a stop reached it; stopping it would only throw its result away."""
    return epochs_done < epochs


@dataclass(frozen=True)
class Scaling:
    """How many Train workers a trial gets and what each one holds."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    runner: str | None = None  # one of RUNNERS; None: default_runner, decided where the study runs

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def worker_resources(self) -> dict[str, float]:
        """What one worker holds: its CPUs, and its GPUs if any."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}


def _load_checkpoint(checkpoint) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(training state to resume from, final record if the run had already finished)."""
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as directory:
        final = Path(directory) / FINAL_FILE
        if final.exists():
            return None, json.loads(final.read_text())
        # weights_only: a checkpoint is data; a tampered one with a pickled payload is refused.
        return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True), None


def _fault_injection(epoch: int, rank: int) -> None:
    """Tests set DPNP_RAY_FAIL_AT_EPOCH=<epoch>:<marker file> to kill a worker once, for real."""
    spec = os.environ.get("DPNP_RAY_FAIL_AT_EPOCH")
    if not spec or rank != 0:
        return
    at, _, marker = spec.partition(":")
    if int(at) == epoch and marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)  # a hard crash, not an exception: the worker process dies


def _stop_requested(location: str | None, env: LocalEnvironment) -> bool:
    """Whether the stop request exists, as rank 0 sees it, on every rank (a collective)."""
    if location is None:
        return False
    seen = torch.tensor([float(env.is_main and storage.exists(location))], device=env.device)
    return bool(env.all_reduce_sum(seen).item() > 0)


def outcome_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The final report: the record's status and scalar summary, without the time attribute."""
    summary = record.get("summary") or {}
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) and k != TIME_ATTR}
    for key in OBJECTIVE_METRICS:
        if not isinstance(metrics.get(key), (int, float)):
            metrics[key] = float("nan")
    return {**metrics, "trial_status": record["status"]}


class TrialIO:
    """How a trial's loop meets its runner: rank, device, environment, the checkpoint to resume from, and
    reports (metrics, with a checkpoint directory from rank 0). Subclassed per runner."""

    rank: int = 0
    world: int = 1

    def device(self, cfg: ExperimentConfig, use_gpu: bool) -> torch.device:
        raise NotImplementedError

    def environment(self, device: torch.device) -> LocalEnvironment:
        return LocalEnvironment(device)

    def checkpoint(self):
        """The latest checkpoint of this trial (ray Checkpoint), None on a first start."""
        raise NotImplementedError

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        """Report metrics; `directory` (rank 0 only) becomes the checkpoint named `name`."""
        raise NotImplementedError


class TrainIO(TrialIO):
    """A Ray Train worker: its rank in the run, DDP when there are several, ray.train reports."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()

    def device(self, cfg: ExperimentConfig, use_gpu: bool) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if cfg.device != "cpu" else torch.device("cpu")

    def environment(self, device: torch.device) -> LocalEnvironment:
        import ray.train.torch

        if self.world > 1:
            return DistributedEnvironment(device, self.rank, self.world, wrap=ray.train.torch.prepare_model)
        return LocalEnvironment(device)

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if directory else None)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: one call per worker."""
    run_loop(loop_config, TrainIO())


def run_loop(loop_config: dict[str, Any], io: TrialIO) -> None:
    """One trial's training loop (`loop_config` from `trial_loop_config`), whichever runner calls it."""
    from .training_loop import ConsoleLog
    from .trial_output import LineWriter

    # Ray Train logs some of its INFO messages (every report, every checkpoint) through loggers its
    # LoggingConfig does not filter; "ray" sets its own level, so its train loggers need theirs
    for name in ("", "ray.train"):
        logging.getLogger(name).setLevel(loop_config.get("log_level", "INFO"))
    cfg = loop_config["experiment"]  # built and checked where the trial began (the study spec)
    writer = LineWriter(loop_config["run_name"])
    log = ConsoleLog(writer, progress_every_s=float(loop_config.get("progress_every_s", 0.0))) if io.rank == 0 else None
    # Per trial, not per process: a reused actor (Tune's reuse_actors) keeps the last trial's thread count.
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    gpus = float(loop_config.get("gpus_per_worker", 0.0))
    device = io.device(cfg, gpus > 0)
    with gpu_share(device, gpus):
        _train_and_report(loop_config, io, cfg, device, log)
    if log is not None:
        writer.end()  # the driver prints the trial's "completed" line once this arrived (trial_output.py)


@contextlib.contextmanager
def gpu_share(device: torch.device, gpus: float):
    """A trial's hold on its GPU: capped at its fraction (Ray shares a GPU by bookkeeping only, so without a cap
    one trial can starve the others), and the cached memory handed back at the end, for a reused actor or the
    next trial on the GPU. Nothing on a CPU device."""
    if device.type == "cuda" and 0 < gpus < 1:
        torch.cuda.set_per_process_memory_fraction(gpus, device)
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            if 0 < gpus < 1:
                torch.cuda.set_per_process_memory_fraction(1.0, device)  # the actor may host a whole-GPU trial next


def _train_and_report(loop_config: dict[str, Any], io: TrialIO, cfg: ExperimentConfig, device: torch.device,
                      log) -> None:
    from .experiment import run_experiment
    from .model_export import export_model
    from .training_loop import NonFiniteLossError

    rank, world = io.rank, io.world
    env = io.environment(device)
    resume, finished = _load_checkpoint(io.checkpoint())
    if finished is not None:  # restarted after the end: report the same record again, train nothing
        _report_final(finished, io)
        return
    started = time.time()
    stop_request = loop_config.get("stop_request")
    history: list[dict[str, Any]] = list(resume["history"]) if resume else []
    if log is not None:
        log(f"training on {world} worker(s) (world_size={world}), device {device}"
            + (f", resuming after epoch {resume['epoch']}" if resume else ""))

    def on_epoch(metrics: dict[str, Any], make_state) -> None:
        state = make_state()  # a collective: every rank calls it
        history[:] = state["history"]
        _fault_injection(metrics["epoch"], rank)
        report = {**metrics, "trial_status": "running", TIME_ATTR: metrics["epoch"] + 1}
        name = f"epoch_{metrics['epoch']:04d}"
        if rank != 0:
            io.report(report, None, name)
        else:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(state, Path(directory) / STATE_FILE)
                io.report(report, directory, name)
        if honours_stop(metrics["epoch"] + 1, cfg.epochs) and _stop_requested(stop_request, env):
            raise StopRequested()

    record: dict[str, Any] = {"status": "completed", "error": "", "num_workers": world,
                              "use_gpu": device.type == "cuda", "runner": loop_config.get("runner", "train"),
                              **provenance(str(device))}
    try:
        result = run_experiment(cfg, env=env, resume=resume, on_epoch=on_epoch, log=log)
        if rank == 0 and loop_config.get("model_dir"):
            export_model(loop_config["model_dir"], result.train.net, result.config, result.train.info,
                         metrics=result.summary, trial=loop_config.get("trial"))
        if rank == 0 and loop_config.get("points_path"):  # a Parquet file of its own: kept out of the JSON record
            results.write_points_file(loop_config["points_path"], result.points_frame())
        record.update(summary=result.summary, history=result.train.history, evals=result.evals,
                      corruptions=result.corruptions, geometry=result.geometry, masking=result.masking)
    except StopRequested:
        # Every epoch it trained is kept; the validation accuracies are those the scheduler judged.
        last = history[-1] if history else {}
        summary = {key: last.get(key) for key in OBJECTIVE_METRICS}
        record.update(status="stopped", error="", history=history, evals=[],
                      summary={**summary, "epochs_run": len(history), "best_epoch": last.get("best_epoch", -1)})
    except NonFiniteLossError as exc:
        # Deterministic: retrying from the checkpoint would fail the same way, so fail the trial now.
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                      summary={}, history=history, evals=[])
    record["worker_seconds"] = time.time() - started
    record["final_metrics"] = outcome_metrics(record)
    _report_final(record, io)


def _report_final(record: dict[str, Any], io: TrialIO) -> None:
    final_metrics = record.get("final_metrics") or outcome_metrics(record)
    name = f"{FINAL_PREFIX}{time.time_ns()}"
    if io.rank != 0:
        io.report(final_metrics, None, name)
        return
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, FINAL_FILE).write_text(json.dumps(record, default=_json_default))
        io.report(final_metrics, directory, name)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a trial record")


def trial_loop_config(cfg: ExperimentConfig, scaling: Scaling, *, run_name: str, stop_request: str | None = None,
                      log_level: str = "WARNING", progress_every_s: float = 0.0, model_dir: str | None = None,
                      points_path: str | None = None, trial: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `run_loop` needs (picklable), the same for both runners. `run_name` labels its lines; the
    trial stops after the epoch at which a file appears at `stop_request` (see StopRequested).

    `log_level` filters Ray Train's own messages (worker group start, every report and checkpoint);
    `progress_every_s` > 0 adds a progress line inside epochs at most that often. With `model_dir`,
    rank 0 exports the selected model there, labelled with `trial` (study, trial_id, ...); with `points_path`,
    rank 0 writes the test evaluations' per-point results there (records.points_path).
    """
    return {"experiment": cfg, "threads": max(1, int(scaling.cpus_per_worker)),
            "gpus_per_worker": scaling.gpus_per_worker, "runner": scaling.runner or "train", "run_name": run_name,
            "stop_request": stop_request, "progress_every_s": progress_every_s, "log_level": log_level,
            "model_dir": model_dir, "points_path": points_path, "trial": trial}


def make_trainer(cfg: ExperimentConfig, scaling: Scaling, *, run_name: str, storage_path: str,
                 in_tune: bool = True, **loop: Any):
    """A TorchTrainer for one trial (`loop`: the options of trial_loop_config). A fixed `run_name` lets a
    relaunched trial find its checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = _controller_callbacks()
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    loop_config = trial_loop_config(cfg, replace(scaling, runner="train"), run_name=run_name, **loop)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=scaling.worker_resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level=loop_config["log_level"]),
        ),
    )


def find_final_record(storage_path: str, run_name: str) -> dict[str, Any] | None:
    """The record of the Train run `run_name` if it wrote one, read from storage (whatever became of
    the process that launched it); None if it never got that far."""
    run = storage.join(storage_path, run_name)
    for name in reversed(storage.list_names(run, FINAL_PREFIX)):
        try:
            return json.loads(storage.read_bytes(storage.join(run, name, FINAL_FILE)))
        except (OSError, json.JSONDecodeError):  # a checkpoint directory still being written
            continue
    return None


def read_final_record(result) -> dict[str, Any]:
    """The record the last report of rank 0 stored (see train_loop_per_worker)."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"Train run {result.path} ended without a final checkpoint")
    with checkpoint.as_directory() as directory:
        path = Path(directory) / FINAL_FILE
        if not path.exists():
            raise RuntimeError(f"Train run {result.path}: latest checkpoint has no {FINAL_FILE}")
        return json.loads(path.read_text())
