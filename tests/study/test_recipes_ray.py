"""End to end with real Ray, in one Ray instance: an ablation of one seed grown to two, a search of two
trials grown to three; every completed trial's model loads, best configs parse, study.yaml records the growth."""

from __future__ import annotations

import sys

import optuna
import pytest
import torch

from dpnp_ray import load_model, results, storage
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.model_export import read_model_metadata
from dpnp_ray.study.study_file import config_from_file, read_yaml
from dpnp_ray.study.records import read_records

from ..support.studies import load_script

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

TINY = ["--smoke", "--set", "epochs=1", "eval_suite=basic", "eval_n=100", "train_attack_steps=2",
        "val_attack_steps=2", "eval_attack_steps=3"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Both studies, each run then grown with --resume, in this process (one Ray instance for all four runs)."""
    import ray

    storage = str(tmp_path_factory.mktemp("grow"))
    ablation, search = load_script("ablation"), load_script("search")
    finished = {}

    def run(script, *argv: str) -> None:
        saved = sys.argv
        sys.argv = [script.__file__, *argv]
        try:
            assert script.main() == 0
        finally:
            sys.argv = saved

    try:
        run(ablation, *TINY, "--variants", "full", "--seeds", "0", "--storage", storage, "--name", "abl")
        finished["full-s0"] = read_records(f"{storage}/abl")[0]["finished_at"]
        run(ablation, "--resume", "--seeds", "0", "1", "--storage", storage, "--name", "abl")  # the record is the base
        run(search, *TINY, "--trials", "2", "--scheduler", "none", "--storage", storage, "--name", "srch")
        run(search, "--resume", "--trials", "3", "--storage", storage, "--name", "srch")
    finally:
        ray.shutdown()
    return {"ablation": f"{storage}/abl", "search": f"{storage}/srch", "finished": finished}


def _check_models(directory: str, trials) -> None:
    for _, row in trials[trials["status"] == "completed"].iterrows():
        model_dir = f"{directory}/models/{row['trial_id']}"
        net = load_model(model_dir)
        assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
        metadata = read_model_metadata(model_dir)
        assert metadata["trial"]["trial_id"] == row["trial_id"] and metadata["trial"]["variant"] == row["variant"]
        assert metadata["metrics"]["clean_acc"] == row["clean_acc"]
        assert metadata["config"]["epochs"] == 1


def test_ablation_grows_by_a_seed(studies):
    directory = studies["ablation"]
    trials = results.read_table(directory, "trials").set_index("trial_id", drop=False)
    assert sorted(trials.index) == ["full-s0", "full-s1"] and (trials["status"] == "completed").all()
    assert trials.loc["full-s0", "finished_at"] == studies["finished"]["full-s0"]  # not run again
    recorded = read_yaml(f"{directory}/study.yaml", "test")
    assert recorded["seeds"] == [0, 1] and recorded["config"]["epochs"] == 1 and "--resume" in recorded["command"]
    _check_models(directory, trials)
    best = list(storage.list_files(f"{directory}/best", ".yaml"))
    assert len(best) == 1  # one variant: its best seed
    record = {r["trial_id"]: r for r in read_records(directory)}[best[0].rsplit("/", 1)[-1][:-5]]
    assert ExperimentConfig.from_dict(config_from_file(best[0])) == ExperimentConfig.from_dict(record["config"])


def test_search_grows_to_more_trials_of_the_same_optuna_study(studies):
    directory = studies["search"]
    trials = results.read_table(directory, "trials")
    assert len(trials) == 3 and trials["trial_id"].is_unique and (trials["status"] == "completed").all()
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{directory}/optuna.journal"))
    study = optuna.load_study(study_name="srch", storage=journal)
    assert len(study.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # the base config was evaluated once, by the first run, not again by the growth
    assert sum(t.params.get("lambda_ppa") == pytest.approx(0.1) and t.params.get("beta_adv") == 1.0
               for t in study.trials) == 1
    assert read_yaml(f"{directory}/study.yaml", "test")["trials"] == 3
    _check_models(directory, trials)
    pareto = results.read_table(directory, "pareto")
    best = {p.rsplit("/", 1)[-1][:-5] for p in storage.list_files(f"{directory}/best", ".yaml")}
    assert best == set(pareto["trial_id"]) and best <= set(trials["trial_id"])
