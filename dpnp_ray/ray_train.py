"""Ray Train: the training loop as `train_loop_per_worker`, and the TorchTrainer that runs it.

Each worker runs `experiment.run_experiment` with a DistributedEnvironment (DDP through
`ray.train.torch.prepare_model`, its own shard of every split), reports every epoch's
metrics with a checkpoint from rank 0, resumes from the latest checkpoint after a restart,
and ends with one report whose checkpoint holds `final.json`: the trial's whole record.
Before that report rank 0 exports the selected model (model_export.py) to the trial's
`model_dir`, in the study's storage, so every completed trial has its model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig
from .distributed import DistributedEnvironment, LocalEnvironment
from .provenance import provenance

STATE_FILE = "state.pt"
FINAL_FILE = "final.json"


@dataclass(frozen=True)
class Scaling:
    """How many Train workers a trial gets and what each one holds."""

    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: one call per worker."""
    import ray.train
    import ray.train.torch

    from .experiment import run_experiment
    from .model_export import export_model
    from .training_loop import NonFiniteLossError

    cfg = ExperimentConfig.from_dict(loop_config["experiment"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    device = ray.train.torch.get_device() if cfg.device != "cpu" else torch.device("cpu")
    if world > 1:
        env: LocalEnvironment = DistributedEnvironment(device, rank, world, wrap=ray.train.torch.prepare_model)
    else:
        env = LocalEnvironment(device)
    resume, finished = _load_checkpoint(ray.train.get_checkpoint())
    if finished is not None:  # restarted after the end: report the same record again, train nothing
        _report_final(finished, finished.get("final_metrics", {"epoch": -1}), rank)
        return
    started = time.time()

    def on_epoch(metrics: dict[str, Any], make_state) -> None:
        state = make_state()  # a collective: every rank calls it
        _fault_injection(metrics["epoch"], rank)
        report = {**metrics, "trial_status": "running"}
        if rank != 0:
            ray.train.report(report, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state, Path(directory) / STATE_FILE)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}")

    record: dict[str, Any] = {"status": "completed", "error": "", "num_workers": world,
                              "use_gpu": device.type == "cuda", **provenance(str(device))}
    try:
        result = run_experiment(cfg, env=env, resume=resume, on_epoch=on_epoch,
                                log=print if rank == 0 else None)
        if rank == 0 and loop_config.get("model_dir"):
            export_model(loop_config["model_dir"], result.train.net, result.config, result.train.info,
                         metrics=result.summary, trial=loop_config.get("trial"))
        record.update(summary=result.summary, history=result.train.history, evals=result.evals,
                      corruptions=result.corruptions, geometry=result.geometry, masking=result.masking)
        final_metrics = {"epoch": result.train.history[-1]["epoch"] if result.train.history else -1,
                         **{k: v for k, v in result.summary.items() if isinstance(v, (int, float, str, bool))}}
    except NonFiniteLossError as exc:
        # Deterministic: retrying from the checkpoint would fail the same way, so fail the trial now.
        record.update(status="failed", error=str(exc), summary={}, history=[], evals=[])
        final_metrics = {"epoch": -1}
    record["worker_seconds"] = time.time() - started
    final_metrics["trial_status"] = record["status"]
    record["final_metrics"] = final_metrics
    _report_final(record, final_metrics, rank)


def _report_final(record: dict[str, Any], final_metrics: dict[str, Any], rank: int) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(final_metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, FINAL_FILE).write_text(json.dumps(record, default=_json_default))
        ray.train.report(final_metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"final_{time.time_ns()}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a trial record")


def make_trainer(cfg: ExperimentConfig, scaling: Scaling, *, run_name: str, storage_path: str,
                 in_tune: bool = True, model_dir: str | None = None, trial: dict[str, Any] | None = None):
    """A TorchTrainer for one trial. A fixed `run_name` lets a relaunched trial find its checkpoints.
    With `model_dir`, rank 0 exports the selected model there, labelled with `trial` (study, trial_id, ...)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_dict(), "threads": max(1, int(scaling.cpus_per_worker)),
                           "model_dir": model_dir, "trial": trial},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


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
