"""The trial loop of both runners without Ray: run_loop talks to its runner only through a TrialIO."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dpnp_ray import ray_train
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.ray_train import FINAL_FILE, FINAL_PREFIX, STATE_FILE, Scaling, TrialIO, gpu_share, run_loop, \
    trial_loop_config


class RecordingIO(TrialIO):
    """A runner that keeps every report and the files of its checkpoint, in memory."""

    def __init__(self):
        self.reports: list[tuple[str, dict, dict[str, bytes]]] = []

    def device(self, cfg, use_gpu):
        return torch.device("cpu")

    def checkpoint(self):
        return None

    def report(self, metrics, directory, name):
        files = {p.name: p.read_bytes() for p in Path(directory).iterdir()} if directory else {}
        self.reports.append((name, dict(metrics), files))


def test_the_loop_reports_each_epoch_with_its_state_then_one_final_record():
    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=2, batch_size=128, train_attack_steps=1,
                                          val_attack_steps=1, eval_suite="basic", eval_n=40, eval_attack_steps=1,
                                          device="cpu", seed=3))
    io = RecordingIO()
    run_loop(trial_loop_config(cfg, Scaling(runner="tune"), run_name="t"), io)
    names = [name for name, _, _ in io.reports]
    assert names[:2] == ["epoch_0000", "epoch_0001"] and names[2].startswith(FINAL_PREFIX) and len(names) == 3
    for epoch, (_, metrics, files) in enumerate(io.reports[:2]):
        assert metrics["trial_status"] == "running" and metrics[ray_train.TIME_ATTR] == epoch + 1
        assert set(files) == {STATE_FILE}
    _, final_metrics, files = io.reports[2]
    record = json.loads(files[FINAL_FILE])
    assert record["status"] == "completed" and record["runner"] == "tune" and record["num_workers"] == 1
    assert final_metrics["trial_status"] == "completed"
    assert record["summary"]["eval_n"] == 40 and len(record["history"]) == 2


def test_a_fractional_gpu_trial_caps_its_memory_and_gives_it_back(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append(("cap", f)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("free",)))
    cuda = torch.device("cuda", 0)
    with gpu_share(cuda, 0.25):
        assert calls == [("cap", 0.25)]
    assert calls == [("cap", 0.25), ("free",), ("cap", 1.0)]
    calls.clear()
    with gpu_share(cuda, 1.0):
        pass
    assert calls == [("free",)]  # a whole GPU: no cap
    calls.clear()
    try:
        with gpu_share(torch.device("cpu"), 0.0):
            raise RuntimeError("a failing trial")
    except RuntimeError:
        pass
    assert calls == []
