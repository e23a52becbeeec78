"""Faults injected for real: bad input, tampered checkpoints, truncated results, killed workers and drivers."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpnp_ray import results
from dpnp_ray.provenance import redact

from ..support import PYTHON, REPO, FileEvents, kill_study, run_script, study_env

# ---------------------------------------------------------------------------------------------- no Ray


class FakeCheckpoint:
    def __init__(self, directory: Path):
        self.directory = directory

    @contextmanager
    def as_directory(self):
        yield str(self.directory)


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_checkpoint_is_refused(tmp_path):
    from dpnp_ray.ray_train import STATE_FILE, _load_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"version": 1, "model": Payload(marker)}, tmp_path / STATE_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        _load_checkpoint(FakeCheckpoint(tmp_path))
    assert not marker.exists()
    # an honest checkpoint of tensors and plain containers loads
    torch.save({"version": 1, "model": {"w": torch.ones(2)}, "history": [{"epoch": 0, "loss": 1.0}]},
               tmp_path / STATE_FILE)
    state, final = _load_checkpoint(FakeCheckpoint(tmp_path))
    assert final is None and torch.equal(state["model"]["w"], torch.ones(2))


def test_truncated_and_foreign_parquet_get_clear_errors(tmp_path):
    results.write_table(tmp_path, "trials", [{"study": "s", "trial_id": "t", "variant": "v", "seed": 0,
                                              **{c: 0 for c in results.REQUIRED_COLUMNS["trials"][4:]}}])
    data = (tmp_path / "trials.parquet").read_bytes()
    (tmp_path / "trials.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(results.ResultsError, match=r"trials\.parquet: not a readable Parquet file"):
        results.read_table(tmp_path, "trials")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "epochs.parquet")
    with pytest.raises(results.ResultsError, match=r"epochs\.parquet: missing columns"):
        results.read_table(tmp_path, "epochs")
    with pytest.raises(results.ResultsError, match="not found"):
        results.read_table(tmp_path / "nowhere", "trials")


def test_a_flipped_bit_in_a_parquet_data_page_fails_the_read(tmp_path):
    import struct

    import numpy as np

    accuracies = np.random.default_rng(0).random(50)  # distinct values: stored as literals in a page
    base = {c: 0 for c in results.REQUIRED_COLUMNS["trials"]}
    results.write_table(tmp_path, "trials", [{**base, "study": "s", "trial_id": f"t{i}", "variant": "v", "seed": i,
                                              "clean_acc": float(a)} for i, a in enumerate(accuracies)])
    path = tmp_path / "trials.parquet"
    data = path.read_bytes()
    where = data.find(struct.pack("<d", accuracies[17]))
    assert where > 0
    flipped = bytearray(data)
    flipped[where] ^= 1  # the lowest mantissa bit of one accuracy
    # unverified, the file reads back with a wrong accuracy and no complaint ...
    assert pd.read_parquet(io.BytesIO(bytes(flipped)))["clean_acc"][17] != accuracies[17]
    path.write_bytes(bytes(flipped))
    # ... the project's reader checks every page's CRC and names the file
    with pytest.raises(results.ResultsError, match=r"trials\.parquet: not a readable Parquet file.*CRC"):
        results.read_table(tmp_path, "trials")


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    results.write_table(tmp_path, "pareto", [{"study": "s", "trial_id": "a"}])
    before = (tmp_path / "pareto.parquet").read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        results.write_table(tmp_path, "pareto", [{"study": "s", "trial_id": "b"}])
    assert (tmp_path / "pareto.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_credentials_and_home_are_redacted():
    text = redact(f"s3://AKIAXYZ:verysecret@bucket/x?X-Amz-Signature=abc123&part=1 {os.path.expanduser('~')}/r")
    assert "verysecret" not in text and "AKIAXYZ" not in text and "abc123" not in text
    assert "s3://***@bucket/x" in text and "part=1" in text
    assert os.path.expanduser("~") not in text or os.path.expanduser("~") == "/"


def test_exported_rows_hold_no_home_paths_or_credentials(tmp_path):
    from dpnp_ray.study import export

    home = os.path.expanduser("~")
    record = {"study": "s", "trial_id": "t", "variant": "full", "seed": 0, "status": "completed", "error": "",
              "config": {"data_root": f"{home}/datasets", "corruption_root": "s3://key:secret@bucket/c"},
              "summary": {"clean_acc": 0.9, "pgd_acc": 0.5}, "num_workers": 1, "use_gpu": False,
              "hardware": "cpu", "code_version": "x", "torch_version": "t", "ray_version": "r",
              "python_version": "p", "wall_seconds": 1.0}
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "t.json").write_text(json.dumps(record))
    export(str(tmp_path))
    row = results.read_table(tmp_path, "trials").iloc[0]
    assert row["cfg_data_root"] == "~/datasets" or home == "/"
    assert "secret" not in row["cfg_corruption_root"]


@pytest.mark.parametrize("args, fragment", [
    (["--variants", "full", "nope"], "unknown variant(s) ['nope']; known: dpnp_clean"),
    (["--variants", "factorial:ppa,nope"], "--variants factorial:ppa,nope: name distinct factors among ppa"),
    (["--dataset", "mnist"], "'dataset' = 'mnist'"),
    (["--set", "lambda_ppa=-1"], "'lambda_ppa' = -1.0"),
    (["--set", "eps=1.5"], "'eps' = 1.5"),
    (["--set", "colour=blue"], "unknown field 'colour'"),
    (["--workers", "0"], "--workers 0"),
    (["--storage", "/proc/no/such/place"], "is not writable"),
    # found by every trial after Ray had started, each with a multi-screen traceback, and the study exited 0
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "--data-root '/nonexistent' (dataset cifar10): "),
    (["--max-concurrent", "-2"], "--max-concurrent -2: must be an integer >= 0"),  # ran
    (["--runner", "tune", "--workers", "2"], "--runner tune with --workers 2: a trial run in its Tune actor has one"),
    # NCCL fails such a trial with "Duplicate GPU detected" after Ray has started
    (["--workers", "2", "--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5 with --workers 2: the DDP ranks"),
])
def test_bad_cli_input_fails_before_training(tmp_path, args, fragment):
    if "--storage" not in args:
        args = [*args, "--storage", str(tmp_path)]
    ray_temp = tmp_path / "ray-temp"  # where a Ray instance started by the script would put its session
    proc = subprocess.run([PYTHON, str(REPO / "studies" / "ablation.py"), "--smoke", *args], cwd=REPO,
                          env=study_env(RAY_TMPDIR=str(ray_temp)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Ray instance" not in proc.stderr + proc.stdout  # found before Ray started ...
    assert not ray_temp.exists()  # ... and Ray never started (it makes its session folder first)
    assert not list(tmp_path.glob("**/trials/*.json"))  # nothing trained


def test_every_bad_search_input_is_one_line_before_ray_starts(tmp_path):
    """A bad --optuna-storage printed a SQLAlchemy traceback after Ray had started; all problems at once now."""
    proc = subprocess.run([PYTHON, str(REPO / "studies" / "search.py"), "--smoke", "--storage", str(tmp_path),
                           "--optuna-storage", "nosuch://x", "--trials", "0", "--seed", "-1", "--local-cpus", "0"],
                          cwd=REPO, env=study_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Ray instance" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    for fragment in ("--optuna-storage 'nosuch://x': cannot be opened", "--trials 0: must be an integer >= 1",
                     "--seed -1: must be an integer in [0, 4294967295]", "--local-cpus 0: must be an integer >= 1"):
        assert sum(fragment in line for line in lines) == 1, (fragment, proc.stderr)
    assert not list(tmp_path.iterdir())  # nothing written: no journal, no study directory


def test_optuna_storage_problems_name_the_flag_the_value_and_what_is_allowed(tmp_path):
    from dpnp_ray.study.optuna_storage import optuna_storage_problems

    journal = tmp_path / "j" / "study.journal"
    assert optuna_storage_problems(str(journal))[0] == [] and journal.exists()
    for location, reason in [("nosuch://x", "cannot be opened (NoSuchModuleError"),
                             ("postgresql://localhost:1/db", "its database driver is not installed"),
                             ("/proc/no/such/dir/study.journal", "the journal file cannot be written")]:
        (problem,), storage = optuna_storage_problems(location)
        assert storage is None and problem.startswith(f"--optuna-storage {location!r}: {reason}"), problem
        assert "allowed: a journal file path, or an RDB URL" in problem and "\n" not in problem


def test_exit_code_reports_each_distinct_error_once_with_its_logs():
    from dpnp_ray.study.cli import exit_code

    def trials(*rows):
        return pd.DataFrame([dict(zip(("trial_id", "status", "error", "error_log"), r)) for r in rows])

    out = io.StringIO()
    assert exit_code(trials(("a", "completed", "", ""), ("b", "stopped", "", "")), out) == 0 and not out.getvalue()
    same = "DataError: dataset 'cifar10': missing /d/cifar-10-batches-py/data_batch_1"
    frame = trials(*[(f"t{i}", "failed", same, f"/s/logs/t{i}.log") for i in range(5)],
                   ("u", "failed", "NonFiniteLossError: training loss became non-finite", "/s/logs/u.log"),
                   ("v", "completed", "", ""), ("w", "stopped", "", ""))
    assert exit_code(frame, out) == 1
    lines = out.getvalue().strip().splitlines()
    assert lines[0] == "6 of 8 trial(s) failed:" and len(lines) == 3
    assert lines[1].startswith(f"  5 x {same}  [t0, t1, t2, ...]; full log: /s/logs/t0.log (one per trial in /s/logs/)")
    assert lines[2] == "  1 x NonFiniteLossError: training loss became non-finite  [u]; full log: /s/logs/u.log"


def test_one_line_error_names_the_root_cause():
    from ray.train import WorkerGroupError

    from dpnp_ray.study.records import one_line_error

    workers = WorkerGroupError("rank 0 and 1 failed", {1: ValueError("b"), 0: FileNotFoundError("no file x\nmore")})
    assert one_line_error(workers) == "FileNotFoundError: no file x"
    leaky = RuntimeError("key s3://AKIA:secret@bucket/x\nline 2")
    assert one_line_error(leaky) == "RuntimeError: key s3://***@bucket/x"


def test_a_stop_request_ends_the_trial_after_that_epoch_and_keeps_its_epochs(tmp_path, monkeypatch):
    """The worker loop in Ray Train's local mode (no Ray instance): the scheduler's stop request, written after
    epoch 0's report, ends training after that epoch with status stopped and epoch 0 recorded; without one the
    trial completes. Every report carries the objective metrics; only epoch reports carry the time attribute."""
    import ray.train

    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.ray_train import FINAL_FILE, OBJECTIVE_METRICS, TIME_ATTR, Scaling, make_trainer

    stop = tmp_path / "stop_requests" / "t"
    reports: list[tuple[dict, dict | None]] = []
    real_report = ray.train.report

    def scheduler(metrics, checkpoint=None, **kwargs):
        final = Path(checkpoint.path) / FINAL_FILE if checkpoint is not None else None
        reports.append((dict(metrics), json.loads(final.read_text()) if final and final.exists() else None))
        if metrics.get(TIME_ATTR) == 1 and asked_to_stop:
            stop.parent.mkdir(exist_ok=True)
            stop.write_text("stop")
        return real_report(metrics, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(ray.train, "report", scheduler)
    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=2, train_attack_steps=1, val_attack_steps=1,
                                          eval_attack_steps=1, eval_suite="basic", batch_size=128))
    outcomes = {}
    for asked_to_stop in (True, False):
        reports.clear()
        stop.unlink(missing_ok=True)
        make_trainer(cfg, Scaling(num_workers=0), run_name=f"r{asked_to_stop}", storage_path=str(tmp_path / "train"),
                     in_tune=False, stop_request=str(stop)).fit()
        assert all(set(OBJECTIVE_METRICS) <= set(m) for m, _ in reports)
        epochs = [m for m, _ in reports if TIME_ATTR in m]
        assert [m[TIME_ATTR] for m in epochs] == [m["epoch"] + 1 for m in epochs]
        final_metrics, record = reports[-1]
        assert TIME_ATTR not in final_metrics and final_metrics["trial_status"] == record["status"]
        outcomes[asked_to_stop] = (len(epochs), record)
    epochs, record = outcomes[True]
    assert epochs == 1 and record["status"] == "stopped" and [h["epoch"] for h in record["history"]] == [0]
    assert record["evals"] == [] and record["summary"]["val_robust_acc"] == record["history"][0]["val_robust_acc"]
    epochs, record = outcomes[False]
    assert epochs == 2 and record["status"] == "completed" and len(record["history"]) == 2 and record["evals"]


def test_the_searcher_tells_optuna_what_the_record_says(tmp_path):
    """COMPLETE with its values, PRUNED for a stopped trial, FAIL for a failed one; a trial whose driver died
    is what its Train run's final record says (else FAIL); one Tune ended without an end stays RUNNING."""
    import optuna

    from dpnp_ray.ray_train import FINAL_FILE
    from dpnp_ray.study.optuna_search import PruningAwareOptunaSearch, _DefineByRun
    from dpnp_ray.study.search_space import SearchSpace

    train, storage = tmp_path / "train", optuna.storages.InMemoryStorage()
    searcher = PruningAwareOptunaSearch(
        space=_DefineByRun(SearchSpace(), 0.1, 4), metric=["val_clean_acc", "val_robust_acc"], mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0), study_name="s", storage=storage, seed=0, study="s",
        train_storage=str(train))
    numbers = [searcher.suggest(f"tune{i}")["optuna_trial"] for i in range(6)]
    assert numbers == list(range(6))
    values = {"val_clean_acc": 0.9, "val_robust_acc": 0.5}
    final = train / "s-optuna-0003" / "final_1" / FINAL_FILE
    final.parent.mkdir(parents=True)
    final.write_text(json.dumps({"status": "completed", "final_metrics": {**values, "trial_status": "completed"}}))
    searcher.on_trial_complete("tune0", {**values, "trial_status": "completed"})
    searcher.on_trial_complete("tune1", {**values, "trial_status": "stopped"})  # its last epoch's values: not a result
    searcher.on_trial_complete("tune2", {"val_clean_acc": math.nan, "val_robust_acc": math.nan,
                                         "trial_status": "failed"})
    searcher.on_trial_complete("tune3", None, error=True)  # driver died after its run wrote the final record
    searcher.on_trial_complete("tune4", None, error=True)  # driver died, no final record
    searcher.on_trial_complete("tune5", {**values, "trial_status": "running"})  # ended by Tune, not by itself
    trials = optuna.load_study(study_name="s", storage=storage).trials
    State = optuna.trial.TrialState
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL, State.COMPLETE, State.FAIL,
                                         State.RUNNING]
    assert trials[0].values == trials[3].values == [0.9, 0.5]


def test_every_ablation_variant_is_a_valid_config_and_the_default_grid_is_registered():
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.study.variants import ABLATION_VARIANTS, DEFAULT_VARIANTS

    for name in ABLATION_VARIANTS:
        ExperimentConfig.from_dict(ABLATION_VARIANTS.get(name).overrides)  # raises ConfigError naming the field
    assert "full" in DEFAULT_VARIANTS and "dpnp_clean" not in DEFAULT_VARIANTS
    assert set(DEFAULT_VARIANTS) < set(ABLATION_VARIANTS.names())


def test_unknown_variant_or_sampler_fails_naming_the_known_ones(tmp_path):
    import optuna

    from dpnp_ray.study import AblationSpec, run_ablation
    from dpnp_ray.study.variants import LISTED_VARIANTS
    from dpnp_ray.study.search_space import SAMPLERS, make_sampler
    from dpnp_ray.study.settings import StudyError, StudySettings

    known = ", ".join(LISTED_VARIANTS) + ", or the cells of factorial:"
    with pytest.raises(StudyError, match=r"unknown variant\(s\) \['nope'\]; known: " + known):
        run_ablation(AblationSpec({}, ["full", "nope"], [0]), StudySettings("x", storage=str(tmp_path)))
    assert not list(tmp_path.iterdir())  # failed before touching the storage
    with pytest.raises(StudyError, match="--sampler 'cmaes': allowed gp, nsga2, random, tpe"):
        make_sampler("cmaes", 0)
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, 0), optuna.samplers.BaseSampler)


def test_asha_stops_by_request_and_never_kills_a_trial(tmp_path):
    """StopAtEpochEnd: ASHA's STOP becomes a stop request the trial reads (ray_train.py); Tune is told to go
    on, and later reports of that trial, or a final report (no time attribute), change nothing."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from dpnp_ray.study.tuner import StopAtEpochEnd, stop_request_path

    asha = StopAtEpochEnd(str(tmp_path), time_attr="epochs_done", metric="val_robust_acc", mode="max", max_t=3,
                          grace_period=1, reduction_factor=2, stop_last_trials=False)
    good, bad = (SimpleNamespace(trial_id=f"tune{n}", config={"optuna_trial": n}) for n in (0, 1))
    for trial in (good, bad):
        asha.on_trial_add(None, trial)
    report = lambda trial, done, acc: asha.on_trial_result(None, trial, {"epochs_done": done, "val_robust_acc": acc})
    assert report(good, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(bad, 1, 0.1) == TrialScheduler.CONTINUE  # ASHA said STOP
    assert Path(stop_request_path(str(tmp_path), "optuna-0001")).exists()
    assert not Path(stop_request_path(str(tmp_path), "optuna-0000")).exists()
    assert report(bad, 2, 0.0) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, good, {"val_robust_acc": 0.0, "trial_status": "completed"}) == \
        TrialScheduler.CONTINUE
    assert not Path(stop_request_path(str(tmp_path), "optuna-0000")).exists()


def test_plan_concurrency_packs_workers_per_node_and_refuses_what_cannot_fit():
    from dpnp_ray.ray_train import Scaling
    from dpnp_ray.study.cluster import plan_concurrency
    from dpnp_ray.study.settings import StudyError

    two_nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    # 8 one-CPU worker slots and no fractional CPU left for drivers: the drivers (DRIVER_CPU = 0.01 each) take one slot,
    # so k trials of 2 workers fit while 2k <= 8 - 1: k = 3.
    assert plan_concurrency(Scaling(num_workers=2), 0, two_nodes) == 3
    assert plan_concurrency(Scaling(num_workers=2), 2, two_nodes) == 2
    # 1.25-CPU workers: 3 per node (3.75 of 4 CPUs); the 0.25 CPU left on each node holds the drivers,
    # so no slot is lost: 6 slots, 3 trials of 2 workers (2 if a driver took a slot).
    assert plan_concurrency(Scaling(num_workers=2, cpus_per_worker=1.25), 0, two_nodes) == 3
    with pytest.raises(StudyError, match=r"2 workers x \(1 CPU, 1 GPU\).*cannot place.*0 GPUs"):
        plan_concurrency(Scaling(num_workers=2, gpus_per_worker=1.0), 0, two_nodes)


def test_a_tune_trial_holds_its_worker_and_a_train_trial_a_driver():
    """The `tune` runner's trial is its worker (the worker's CPUs/GPUs, no driver); a `train` trial's Tune actor is
    a small driver that, without the driver resource, takes a slot of fractional CPU; the default runner is tune
    for a local 1-worker trial only."""
    from dpnp_ray.ray_train import Scaling, default_runner
    from dpnp_ray.study.cluster import DRIVER_CPU, driver_request, plan_concurrency, resolve, trial_request
    from dpnp_ray.study.settings import StudySettings

    nodes = [{"CPU": 2.0}]
    assert trial_request(Scaling(runner="tune", cpus_per_worker=2, gpus_per_worker=0.25), nodes) == \
        {"CPU": 2.0, "GPU": 0.25}
    assert trial_request(Scaling(runner="train"), nodes) == driver_request(nodes) == {"CPU": DRIVER_CPU}
    # 2 one-CPU workers fit; a train trial's driver (0.01 CPU) finds no fractional CPU left and costs a slot
    assert plan_concurrency(Scaling(runner="tune"), 0, nodes) == 2
    assert plan_concurrency(Scaling(runner="train"), 0, nodes) == 1
    assert plan_concurrency(Scaling(runner="tune", gpus_per_worker=0.25), 0, [{"CPU": 8.0, "GPU": 1.0}]) == 4
    assert [default_runner(w, c) for w, c in ((1, False), (2, False), (1, True))] == ["tune", "train", "train"]
    assert resolve(StudySettings("x")).scaling.runner == "tune"
    assert resolve(StudySettings("x", address="h:1")).scaling.runner == "train"
    assert resolve(StudySettings("x", scaling=Scaling(runner="train"))).scaling.runner == "train"


# ---------------------------------------------------------------------------------------------- with Ray
ray_test = [pytest.mark.ray, pytest.mark.timeout(900)]


def _records(directory: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (directory / "trials").glob("*.json")}


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("runner", ["tune", "train"])
def test_killed_worker_resumes_from_checkpoint_and_matches_undisturbed_run(tmp_path, digits, runner):
    """The worker dies (os._exit) after epoch 1's training, before its checkpoint: with --runner train Ray Train
    restarts the worker group, with --runner tune Ray Tune retries the trial; either resumes after epoch 0."""
    from dpnp_ray.config import ExperimentConfig, parse_assignments
    from dpnp_ray.experiment import run_experiment

    marker = tmp_path / "killed-once"
    overrides = ["epochs=3", "train_attack_steps=3", "val_attack_steps=3", "eval_attack_steps=10",
                 "eval_suite=basic", "lr=0.05", "batch_size=64"]
    env = study_env(DPNP_RAY_FAIL_AT_EPOCH=f"1:{marker}")
    run_script("ablation.py", "--variants", "full", "--seeds", "0", "--storage", str(tmp_path), "--name", "kill",
               "--max-failures", "2", "--runner", runner, "--set", *overrides, env=env)
    assert marker.exists(), "the worker was not killed"
    directory = tmp_path / "kill"
    epochs = results.read_table(directory, "epochs")
    assert epochs["epoch"].tolist() == [0, 1, 2]  # each epoch once: epoch 1 was trained twice, recorded once
    trial = results.read_table(directory, "trials").iloc[0]
    assert trial["status"] == "completed" and trial["runner"] == runner
    if runner == "tune":  # Tune's own history of the retried trial is continuous: epochs 1, 2, 3, one report each
        reports = [json.loads(line) for line in (directory / "ray" / "tune" / "full-s0" / "result.json").read_text().splitlines()]
        assert [r["epochs_done"] for r in reports if "epochs_done" in r] == [1, 2, 3]
        assert [r["training_iteration"] for r in reports] == list(range(1, len(reports) + 1))

    # The same config and seed (the study's defaults, then the overrides, as the trial recorded them),
    # undisturbed, in this process: identical numbers (CPU, one thread each).
    recorded = _records(directory)["full-s0"]["config"]
    cfg = ExperimentConfig.from_dict(recorded)
    assert all(recorded[k] == v for k, v in parse_assignments(overrides).items())
    reference = run_experiment(cfg, data=digits, log=None)
    for record in reference.train.history:
        row = epochs[epochs["epoch"] == record["epoch"]].iloc[0]
        for key in ("loss_total", "val_clean_acc", "val_robust_acc", "train_adv_acc"):
            assert row[key] == pytest.approx(record[key], rel=1e-6, abs=1e-9), (record["epoch"], key)
    for key in ("clean_acc", "pgd_acc", "cw_acc"):
        assert trial[key] == pytest.approx(reference.summary[key], abs=1e-9), key


@pytest.mark.ray
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("runner", ["tune", "train"])
def test_driver_killed_then_resumed_finishes_without_rerunning(tmp_path, runner):
    args = ["--smoke", "--variants", "full", "pgd_at", "no_npr", "--storage", str(tmp_path), "--name", "drv",
            "--runner", runner, "--set", "eval_suite=basic"]
    directory = tmp_path / "drv"

    def start():
        return subprocess.Popen([PYTHON, str(REPO / "studies" / "ablation.py"), *args], cwd=REPO, env=study_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    proc = start()
    with FileEvents(tmp_path) as events:
        events.wait(lambda: len(_records(directory)) >= 1, proc=proc, timeout=400, what="a first trial record")
    kill_study(proc)  # the driver and everything it started, at once
    first = _records(directory)
    assert 1 <= len(first) < 3

    since = time.time()
    resumed = subprocess.Popen([PYTHON, str(REPO / "studies" / "ablation.py"), *args, "--resume"], cwd=REPO,
                               env=study_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    # Interrupt it once it has recorded a trial of its own (started after it), not before it has even started:
    # a trial that the killed driver's processes were finishing can still add its record after `first`.
    with FileEvents(tmp_path) as events:
        try:
            events.wait(lambda: any(r.get("started_at", 0) >= since for r in _records(directory).values()),
                        proc=resumed, timeout=400, what="a trial record of the resumed driver")
        except AssertionError:
            assert resumed.poll() is not None, "the resumed driver recorded nothing of its own in 400 s"
    if resumed.poll() is None:
        resumed.send_signal(signal.SIGINT)
    out, _ = resumed.communicate(timeout=300)
    if len(_records(directory)) < 3:
        assert "--resume" in out  # the interrupted driver says how to continue

    run_script("ablation.py", *args, "--resume")
    records = _records(directory)
    assert sorted(records) == ["full-s0", "no_npr-s0", "pgd_at-s0"]
    for trial_id, record in first.items():
        assert records[trial_id]["finished_at"] == record["finished_at"], f"{trial_id} was run again"
    trials = results.read_table(directory, "trials")
    assert trials["trial_id"].is_unique and len(trials) == 3 and (trials["status"] == "completed").all()
    assert (trials["runner"] == runner).all()
    epochs = results.read_table(directory, "epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_non_finite_trial_fails_alone_and_is_recorded(tmp_path):
    # An enormous PPA weight overflows the Adv-DPNP loss at step 0; the PGD-AT baseline has no PPA term.
    proc = run_script("ablation.py", "--smoke", "--variants", "full", "pgd_at", "--storage", str(tmp_path),
                      "--name", "nan", "--set", "lambda_ppa=1e38", "eval_suite=basic", check=False)
    trials = results.read_table(tmp_path / "nan", "trials").set_index("variant")
    assert trials.loc["full", "status"] == "failed"
    assert "epoch 0, step" in trials.loc["full", "error"] and "non-finite" in trials.loc["full", "error"]
    assert "\n" not in trials.loc["full", "error"]
    log = Path(trials.loc["full", "error_log"])
    assert log.parent == tmp_path / "nan" / "logs" and "Traceback" in log.read_text()
    assert trials.loc["pgd_at", "status"] == "completed" and trials.loc["pgd_at", "clean_acc"] > 0.5
    assert trials.loc["pgd_at", "error_log"] == ""
    assert "failed" in proc.stdout
    # the tables are written, then the exit status says a trial failed, with its error once and its log
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 trial(s) failed:" in proc.stderr
    assert sum(trials.loc["full", "error"] in line for line in proc.stderr.splitlines()) == 1
    assert f"full log: {log}" in proc.stderr


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_search_killed_right_after_optuna_proposed_a_trial_resumes_and_optuna_agrees_with_the_tables(tmp_path):
    import optuna

    args = ["--smoke", "--trials", "3", "--max-concurrent", "1", "--scheduler", "none", "--storage", str(tmp_path),
            "--name", "srch"]
    directory = tmp_path / "srch"
    journal = directory / "optuna.journal"

    def asked() -> int:  # trials created in the journal (op code 4: CREATE_TRIAL)
        lines = journal.read_text().splitlines() if journal.exists() else []
        return sum(1 for line in lines if line.strip() and json.loads(line).get("op_code") == 4)

    log = tmp_path / "driver.log"  # shown if the driver ends before the kill
    with open(log, "wb") as out:
        proc = subprocess.Popen([PYTHON, str(REPO / "studies" / "search.py"), *args], cwd=REPO, env=study_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with FileEvents(tmp_path) as events:  # the moment Optuna hands out the second trial
            events.wait(lambda: asked() >= 2, proc=proc, timeout=400, what="a second trial asked from Optuna")
    except AssertionError as exc:
        with contextlib.suppress(ProcessLookupError):  # what is left of its session
            kill_study(proc)
        raise AssertionError(f"{exc}; the driver's last output:\n{log.read_text()[-4000:]}") from None
    kill_study(proc)
    done_before = set(_records(directory))
    assert "optuna-0000" in done_before

    run_script("search.py", *args, "--resume")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="srch", storage=storage)
    assert not [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    trials = results.read_table(directory, "trials").set_index("trial_id")
    assert trials.index.is_unique and len(trials) == 3 and (trials["status"] == "completed").all()
    assert done_before <= set(trials.index)
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for trial_id, row in trials.iterrows():  # every row of the table is a COMPLETE Optuna trial with its values
        assert by_id[trial_id].state == optuna.trial.TrialState.COMPLETE
        assert by_id[trial_id].values == [row["val_clean_acc"], row["val_robust_acc"]]
    for trial_id, trial in by_id.items():  # and every other Optuna trial says it never ran
        if trial_id not in trials.index:
            assert trial.state == optuna.trial.TrialState.FAIL and "ended_by" in trial.user_attrs


def test_the_cleaners_harmless_timeout_is_one_line_in_the_controller():
    """Ray Train's controller logs a GetTimeoutError traceback when its placement-group cleaner confirms its stop
    late (an overloaded machine); our Train callback, unpickled in the controller, makes that one line."""
    import logging

    import ray.cloudpickle
    import ray.exceptions

    from dpnp_ray.train_logs import CLEANER_LOGGER, CLEANER_STOP_FAILED, OVERLOADED_CLEANER, _controller_callbacks

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(logging.Formatter("%(levelname)s %(message)s").format(record))

    logger, kept = logging.getLogger(CLEANER_LOGGER), Keep()
    saved = list(logger.filters)
    logger.addHandler(kept)
    try:
        logger.filters.clear()
        ray.cloudpickle.loads(ray.cloudpickle.dumps(_controller_callbacks()))  # as the controller actor gets them
        for error in (ray.exceptions.GetTimeoutError("Get timed out"), ValueError("something else")):
            try:
                raise error
            except Exception:
                logger.exception(CLEANER_STOP_FAILED)
        timeout, other = kept.lines
        assert timeout == f"WARNING {OVERLOADED_CLEANER}"  # one line, no traceback
        assert other.startswith(f"ERROR {CLEANER_STOP_FAILED}\nTraceback") and "ValueError" in other  # real ones stay
    finally:
        logger.filters[:] = saved
        logger.removeHandler(kept)
