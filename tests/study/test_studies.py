"""End to end with real Ray: the ablation smoke study, a real two-node cluster, a tiny Optuna search.

Few and small on purpose: each starts Ray (seconds) and trains (tens of seconds) on 2 cores.
"""

from __future__ import annotations

import json
import math
import re

import optuna
import pandas as pd
import pytest

from dpnp_ray import results
from dpnp_ray.trial_output import END_MARK
from dpnp_ray.study.search_space import SearchSpace

from ..support import TwoNodeCluster, run_script

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

METRICS = ["clean_acc", "fgsm_acc", "pgd_acc", "cw_acc", "val_clean_acc", "val_robust_acc"]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """`studies/ablation.py --smoke` exactly as the README runs it, into a temporary storage root."""
    storage = tmp_path_factory.mktemp("smoke")
    proc = run_script("ablation.py", "--smoke", "--storage", str(storage), "--name", "smoke")
    return storage / "smoke", proc


def test_smoke_ablation_writes_documented_tables(smoke_study):
    directory, proc = smoke_study
    assert f"results: {directory}" in proc.stdout
    trials = results.read_table(directory, "trials")
    assert sorted(zip(trials["variant"], trials["seed"])) == [("full", 0), ("pgd_at", 0)]
    assert (trials["status"] == "completed").all()
    assert (trials["runner"] == "tune").all()  # the default for a local trial of one worker
    for column in results.REQUIRED_COLUMNS["trials"] + METRICS + ["aa_acc", "cfg_method", "cfg_lambda_ppa"]:
        assert column in trials, column
    for column in METRICS + ["aa_acc"]:
        assert trials[column].between(0, 1).all(), column
    assert (trials["aa_acc"] <= trials["pgd_acc"] + 0.02).all()
    assert set(trials["cfg_method"]) == {"adv_dpnp", "pgd_at"}
    assert trials["code_version"].str.len().gt(6).all() and trials["torch_version"].ne("absent").all()

    epochs = results.read_table(directory, "epochs")
    assert epochs.groupby("trial_id")["epoch"].apply(sorted).tolist() == [[0, 1], [0, 1]]
    for trial_id in trials["trial_id"]:  # what Tune (and every tracker) got: one report per epoch, one final
        reports = [json.loads(line) for line in (directory / "ray" / "tune" / trial_id / "result.json").read_text()
                   .splitlines()]
        assert [r.get("epochs_done") for r in reports] == [1, 2, None], trial_id
        assert reports[-1]["trial_status"] == "completed" and "clean_acc" in reports[-1]
    assert epochs["val_robust_acc"].between(0, 1).all() and (epochs["images_per_s"] > 0).all()
    full = epochs[epochs["variant"] == "full"]
    assert full[["loss_ppa", "loss_npr", "loss_cons", "loss_ce_adv"]].notna().all().all()

    evals = results.read_table(directory, "evals")
    assert {"clean", "fgsm", "pgd", "cw_inf", "autoattack", "pgd_eps_curve"} <= set(evals["attack"])
    assert evals["accuracy"].between(0, 1).all() and (evals["n"] > 0).all()
    assert set(evals["suite"]) == {"quick"}
    # every test evaluation's per-point results, through a real study: their mean is the evals row exactly
    points = results.read_table(directory, "points")
    key = ["trial_id", *results.POINT_EVAL_KEY]
    from_points = points.groupby(key, observed=True)["correct"].agg(["mean", "size"]).reset_index()
    joined = from_points.merge(evals, on=key, how="left", validate="one_to_one")
    assert len(joined) == len(evals[evals["split"] == "test"]) and joined["accuracy"].notna().all()
    assert (joined["mean"] == joined["accuracy"]).all() and (joined["size"] == joined["n"]).all()
    masking = results.read_table(directory, "masking")
    assert {"eps_monotone", "pgd_aa_gap", "unbounded_eps"} <= set(masking["check"])
    geometry = results.read_table(directory, "geometry")
    assert set(geometry["variant"]) == {"full", "pgd_at"}
    # the top of the study directory: the project's own outputs; Ray's files are in one subfolder
    assert {p.name for p in directory.iterdir()} == {
        "study.yaml", "trials", "models", "best", "points", "ray",
        *(f"{table}.parquet" for table in ("trials", "epochs", "evals", "points", "masking", "geometry"))}
    assert {p.name for p in (directory / "ray").iterdir()} <= {"tune", "train", "stop_requests"}
    assert (directory / "ray" / "tune" / "tuner.pkl").is_file()
    # the console: every line a trial printed comes before its own "completed" line, and all of them before
    # the results block (trial_output.py); the end marks that make it so are never shown
    out = proc.stdout
    block = re.search(r"^ +n +clean_acc", out, re.M).start()
    for trial_id in trials["trial_id"]:
        own_lines = [m.start() for m in re.finditer(rf"\[smoke-{trial_id}\] ", out)]
        assert any(f"[smoke-{trial_id}] test:" in line for line in out.splitlines()), trial_id
        assert max(own_lines) < out.index(f"trial {trial_id} ") < block, out
    assert END_MARK not in out + proc.stderr


def test_resume_of_finished_study_reruns_nothing_and_keeps_one_row_each(smoke_study):
    directory, _ = smoke_study
    before = results.read_table(directory, "trials").set_index("trial_id")["finished_at"]
    proc = run_script("ablation.py", "--smoke", "--storage", str(directory.parent), "--name", "smoke", "--resume")
    assert "epoch   0" not in proc.stdout + proc.stderr  # nothing trained again
    trials = results.read_table(directory, "trials").set_index("trial_id")
    assert trials.index.is_unique and len(trials) == 2
    pd.testing.assert_series_equal(trials["finished_at"], before)
    epochs = results.read_table(directory, "epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 4


def test_report_builds_from_real_smoke_output(smoke_study, tmp_path):
    from analysis.report import build_report

    directory, _ = smoke_study
    out = build_report(directory, tmp_path / "report.html", log=lambda *_: None)
    html = out.read_text()
    assert 'id="fig-ablation_bars"' in html and "plotly" in html.lower()


def test_cluster_flag_without_cluster_fails_clearly(tmp_path):
    proc = run_script("ablation.py", "--smoke", "--cluster", "--address", "127.0.0.1:1", "--storage", str(tmp_path),
                      check=False, timeout=180)
    assert proc.returncode == 2
    assert "127.0.0.1:1" in proc.stderr and "ray start --head" in proc.stderr
    assert not (tmp_path / "ablation" / "trials").exists()  # nothing trained


def test_a_local_two_worker_trial_is_a_ddp_torch_trainer(tmp_path):
    """--workers 2 on the local instance: the default runner is train, two DDP ranks on the one node."""
    proc = run_script("ablation.py", "--smoke", "--variants", "full", "--workers", "2", "--local-cpus", "2",
                      "--storage", str(tmp_path), "--set", "eval_suite=basic")
    assert "world_size=2" in proc.stdout + proc.stderr
    trials = results.read_table(tmp_path / "ablation", "trials")
    assert len(trials) == 1 and trials.loc[0, "status"] == "completed"
    assert trials.loc[0, "runner"] == "train" and trials.loc[0, "num_workers"] == 2


def test_two_node_cluster_runs_ddp_trial(tmp_path):
    with TwoNodeCluster() as cluster:
        storage = tmp_path / "results"
        proc = run_script("ablation.py", "--smoke", "--address", cluster.address, "--workers", "2",
                          "--cpus-per-worker", "0.5", "--variants", "full", "--storage", str(storage),
                          "--set", "eval_suite=basic", env=cluster.env)
        assert "world_size=2" in proc.stdout + proc.stderr
        trials = results.read_table(storage / "ablation", "trials")
        assert len(trials) == 1 and trials.loc[0, "status"] == "completed"
        assert trials.loc[0, "num_workers"] == 2 and 0.5 < trials.loc[0, "clean_acc"] <= 1
        assert trials.loc[0, "runner"] == "train"  # DDP, and on a cluster: a TorchTrainer
        # a request the cluster cannot place fails before training, naming what is missing
        proc = run_script("ablation.py", "--smoke", "--address", cluster.address, "--workers", "2",
                          "--gpus-per-worker", "1", "--storage", str(tmp_path / "r2"), env=cluster.env, check=False)
        assert proc.returncode == 2 and "GPU" in proc.stderr and "cannot place" in proc.stderr
        # the data root is checked where trials would read it, on every node, before any trial trains
        proc = run_script("ablation.py", "--smoke", "--address", cluster.address, "--dataset", "cifar10",
                          "--data-root", "/nonexistent", "--storage", str(tmp_path / "r3"), env=cluster.env,
                          check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        problems = [line for line in proc.stderr.splitlines() if "--data-root '/nonexistent' (dataset cifar10) on node"
                    in line]
        assert len(problems) == 1 and "missing" in problems[0]  # both nodes share one IP: one line
        assert not (tmp_path / "r3" / "ablation" / "trials").exists()


def _row_of(trials: pd.DataFrame, params: dict) -> pd.Series:
    """The one row whose param_* columns are an Optuna trial's params (independent of how trials are named)."""
    def same(row) -> bool:
        return all(f"param_{k}" in row and (row[f"param_{k}"] == v if isinstance(v, (str, bool))
                                            else row[f"param_{k}"] == pytest.approx(v)) for k, v in params.items())
    rows = [row for _, row in trials.iterrows() if same(row)]
    assert len(rows) == 1, params
    return rows[0]


def test_search_with_asha_records_each_trial_as_optuna_does_and_loses_no_work(tmp_path):
    """ASHA stops several of 8 trials. Observed on the code this replaced (`search.py --smoke --trials 8`): Optuna
    had 4 PRUNED and 4 COMPLETE, trials.parquet 4 completed, 1 stopped and 3 failed with "ActorDiedError ...
    placement group was removed", without epochs, one of them after it had written its final record."""
    run_script("search.py", "--smoke", "--trials", "8", "--epochs", "3", "--storage", str(tmp_path), "--name", "asha",
               "--max-concurrent", "1", "--set", "train_attack_steps=1", "val_attack_steps=2", "eval_attack_steps=2")
    directory = tmp_path / "asha"
    trials = results.read_table(directory, "trials")
    epochs = results.read_table(directory, "epochs")
    study = optuna.load_study(study_name="asha", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(directory / "optuna.journal"))))
    State = optuna.trial.TrialState
    assert len(study.trials) == len(trials) == 8 and trials["trial_id"].is_unique
    status_of = {State.COMPLETE: "completed", State.PRUNED: "stopped", State.FAIL: "failed"}
    for trial in study.trials:  # one to one with the searcher
        assert _row_of(trials, trial.params)["status"] == status_of[trial.state], trial.number
    assert (trials["status"] == "stopped").sum() >= 2 and (trials["status"] == "completed").sum() >= 2
    assert not (trials["status"] == "failed").any()
    for _, row in trials.iterrows():
        trained = sorted(epochs.loc[epochs["trial_id"] == row["trial_id"], "epoch"])
        assert trained == list(range(row["epochs_run"])), row["trial_id"]  # every epoch it reported
        if row["status"] == "completed":
            assert trained == [0, 1, 2] and 0 < row["clean_acc"] <= 1 and 0 <= row["pgd_acc"] <= 1
        else:  # stopped at or after ASHA's first rung, before its test evaluation
            assert len(trained) >= 1 and math.isnan(row["clean_acc"])
    # no completed work is lost: every final record in the Train runs' storage is in the table as it says
    finals = list((directory / "ray" / "train").glob("asha-*/final_*/final.json"))
    assert len({f.parent.parent for f in finals}) == len(trials)
    by_id = trials.set_index("trial_id")
    for final in finals:
        record = json.loads(final.read_text())
        assert by_id.loc[final.parent.parent.name[len("asha-"):], "status"] == record["status"]

    # the space is respected, conditional parameters are sampled only when they apply
    space = SearchSpace()
    eps = 0.1  # digits' threat model
    for _, row in trials.iterrows():
        for term, weight in (("use_ppa", "lambda_ppa"), ("use_npr", "lambda_npr"), ("use_consistency", "lambda_cons")):
            sampled = row.get(f"param_{weight}")
            if row[f"param_{term}"]:
                lo, hi = getattr(space, weight)
                assert lo <= sampled <= hi
                assert row[f"cfg_{weight}"] == pytest.approx(sampled)
            else:  # conditional: no weight is sampled for a switched-off term
                assert sampled is None or math.isnan(sampled)
        assert 0.5 * eps - 1e-12 <= row["param_eps"] <= eps + 1e-12
        assert row["param_beta_adv"] >= space.beta_adv[0] and row["param_beta_adv"] <= space.beta_adv[1]
        warmup = row.get("param_eps_warmup_epochs")
        assert (row["param_eps_schedule"] == "constant") == (warmup is None or math.isnan(warmup))
        assert row["cfg_eval_eps"] == pytest.approx(eps)  # evaluation keeps the threat model
    pareto = results.read_table(directory, "pareto")
    completed = set(trials.loc[trials["status"] == "completed", "trial_id"])
    assert len(pareto) >= 1 and set(pareto["trial_id"]) <= completed
    # the first trial evaluates the base config (points_to_evaluate)
    assert study.trials[0].params["lambda_ppa"] == pytest.approx(0.1)


def test_a_local_study_points_the_placement_group_cleaner_at_its_own_instance(monkeypatch):
    """Ray Train's placement-group cleaner asks the state API whether a run's controller lives, finding the API by
    auto-detection (RAY_ADDRESS, else the newest instance). With RAY_ADDRESS naming another cluster, a process of
    the study's local instance still reaches its own dashboard: connect() set RAY_API_SERVER_ADDRESS for them."""
    import os

    import ray

    from dpnp_ray.study.cluster import connect
    from dpnp_ray.study.settings import StudySettings

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # another cluster's address, as a user's shell may hold
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    connect(StudySettings("cleaner", local_cpus=1))
    try:
        assert "RAY_API_SERVER_ADDRESS" not in os.environ  # this process is left as it was

        @ray.remote(num_cpus=0)
        class Alive:
            def ping(self) -> str:
                return ray.get_runtime_context().get_actor_id()

        @ray.remote(num_cpus=0)
        def state_of(actor_id: str) -> tuple[str | None, str]:
            from ray.util.state import get_actor

            return os.environ.get("RAY_API_SERVER_ADDRESS"), get_actor(actor_id, timeout=30).state

        actor = Alive.remote()
        address, state = ray.get(state_of.remote(ray.get(actor.ping.remote())), timeout=120)
        assert address is not None and address.startswith("http://127.0.0.1:")
        assert state == "ALIVE"  # found through this instance's own dashboard, not the cluster RAY_ADDRESS names
    finally:
        ray.shutdown()
