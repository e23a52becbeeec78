"""The search's Optuna study: metric names and trial_id user attributes in the journal, the report's
search views read from that journal, the Parquet rebuild (only without one) honouring conditional
parameters, and the journal of a study kept on object storage. No Ray instance: the searcher is driven
through its Tune interface (suggest / on_trial_complete) directly."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from ..support import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from analysis import optuna_study  # noqa: E402
from analysis.figure_registry import make_figures  # noqa: E402
from analysis.report import build_report  # noqa: E402
from analysis.study import load_study  # noqa: E402
from dpnp_ray import results, storage  # noqa: E402
from dpnp_ray.config import ExperimentConfig  # noqa: E402
from dpnp_ray.ray_train import TIME_ATTR  # noqa: E402
from dpnp_ray.study import records  # noqa: E402
from dpnp_ray.study.optuna_search import PruningAwareOptunaSearch, _DefineByRun  # noqa: E402
from dpnp_ray.study.search_space import OBJECTIVES, SearchSpace, make_sampler  # noqa: E402
from dpnp_ray.study.optuna_storage import journal_locations, make_storage  # noqa: E402
from dpnp_ray.study.settings import StudySettings  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_searcher(journal: Path, n: int = 8, prune: tuple[int, ...] = (5,), sampler: str = "random") -> list[dict]:
    """Ask the project's searcher for n trials and tell it made-up results, as Tune would.

    Returns one dict per trial: its Tune trial id, the sampled params and the objectives."""
    cfg = ExperimentConfig.from_dict({"epochs": 8})
    metric, mode = OBJECTIVES["multi"]
    searcher = PruningAwareOptunaSearch(space=_DefineByRun(SearchSpace(), cfg.eval_eps, cfg.epochs, tuple(metric)),
                                        metric=metric, mode=mode, sampler=make_sampler(sampler, 0),
                                        study_name="journal_study", storage=make_storage(str(journal)), seed=0,
                                        study="journal_study", train_storage=str(journal.parent / "train"),
                                        intermediate="val_robust_acc")
    trials = []
    for i in range(n):
        tune_trial_id = f"a1b2c_{i:05d}"
        params = dict(searcher.suggest(tune_trial_id))
        trial_id = records.trial_id_of(params, "search")  # the project's id, from the Optuna trial number
        params.pop("optuna_trial")
        clean = 0.9 - 0.1 * params.get("lambda_ppa", 0.0) - 0.01 * i
        robust = 0.5 + 0.05 * params["beta_adv"] + 0.002 * i
        status = "stopped" if i in prune else "completed"  # the trial's final report says how it ended
        epochs = 1 if i in prune else 2
        for epoch in range(epochs):  # the epoch reports, as the trial's workers send them
            searcher.on_trial_result(tune_trial_id, {"val_clean_acc": clean - 0.1 * (epochs - epoch),
                                                     "val_robust_acc": robust - 0.1 * (epochs - epoch),
                                                     "epoch": epoch, TIME_ATTR: epoch + 1,
                                                     "trial_status": "running"})
        searcher.on_trial_complete(tune_trial_id, {"val_clean_acc": clean, "val_robust_acc": robust, "epoch": 2,
                                                   "trial_status": status})
        trials.append({"trial_id": trial_id, "params": params, "val_clean_acc": clean, "val_robust_acc": robust,
                       "status": status, "epochs": epochs})
    return trials


def trials_table(trials: list[dict], study: str = "journal_study") -> pd.DataFrame:
    """trials.parquet as records.export writes it for these trials: cfg_* for every field, param_* as sampled."""
    base = ExperimentConfig().to_dict()
    rows = []
    for t in trials:
        row = {"study": study, "trial_id": t["trial_id"], "variant": "search", "seed": 0, "study_kind": "search",
               "status": t["status"], "error": "", "val_clean_acc": t["val_clean_acc"],
               "val_robust_acc": t["val_robust_acc"], "clean_acc": 0.8, "pgd_acc": 0.5, "wall_seconds": 10.0,
               "num_workers": 1, "use_gpu": False, "hardware": "2 CPU (test)", "code_version": "abc1234",
               "torch_version": "2.4.0", "ray_version": "2.60.0", "python_version": "3.11"}
        row.update(results.config_columns({**base, **t["params"]}))
        row.update({f"param_{k}": v for k, v in t["params"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def test_journal_names_its_objectives_and_joins_trials_parquet(tmp_path):
    journal = tmp_path / "optuna.journal"
    trials = run_searcher(journal)
    study = optuna.load_study(study_name="journal_study", storage=make_storage(str(journal)))
    assert study.metric_names == ["val_clean_acc", "val_robust_acc"]
    assert [t.user_attrs["trial_id"] for t in study.trials] == [t["trial_id"] for t in trials]
    assert [t.state.name for t in study.trials].count("PRUNED") == 1 and study.trials[5].state.name == "PRUNED"
    for frozen, trial in zip(study.trials, trials):  # the join: the same params under the same trial_id
        assert frozen.params == pytest.approx(trial["params"])
        assert ("lambda_ppa" in frozen.params) == frozen.params["use_ppa"]  # conditional: sampled only when on


def test_every_epoch_reaches_optuna_stopped_trials_included(tmp_path):
    """The scheduler's metric per epoch as a curve user attribute in a multi-objective search (no intermediate
    values: its TPE cannot rank a pruned trial with them), and each objective's latest validation value as
    user attributes: a stopped trial is not blank."""
    journal = tmp_path / "optuna.journal"
    trials = run_searcher(journal)
    study = optuna.load_study(study_name="journal_study", storage=make_storage(str(journal)))
    for frozen, trial in zip(study.trials, trials):
        epochs = trial["epochs"]
        expected = {e: trial["val_robust_acc"] - 0.1 * (epochs - e) for e in range(epochs)}
        assert {int(e): v for e, v in frozen.user_attrs["curve_val_robust_acc"].items()} == pytest.approx(expected)
        assert frozen.intermediate_values == {}
        assert frozen.user_attrs["last_epoch"] == epochs - 1
        assert frozen.user_attrs["last_val_clean_acc"] == pytest.approx(trial["val_clean_acc"] - 0.1)
        assert frozen.user_attrs["last_val_robust_acc"] == pytest.approx(trial["val_robust_acc"] - 0.1)
    stopped = study.trials[5]
    assert stopped.state.name == "PRUNED" and stopped.user_attrs["curve_val_robust_acc"] and stopped.values is None


def test_tpe_keeps_sampling_a_multi_objective_search_past_its_startup_trials_with_stopped_ones(tmp_path):
    """TPE's own sampling starts after 10 trials; with pruned trials that had intermediate values it raised
    'A single direction cannot be retrieved from a multi-objective study' (the digits tuning of record, trial 11)."""
    trials = run_searcher(tmp_path / "optuna.journal", n=14, prune=(1, 4, 7, 9, 11), sampler="tpe")
    study = optuna.load_study(study_name="journal_study", storage=make_storage(str(tmp_path / "optuna.journal")))
    assert len(study.trials) == 14 and [t.state.name for t in study.trials].count("PRUNED") == 5
    assert len({tuple(sorted(t["params"].items())) for t in trials}) == 14  # every trial sampled, none repeated


def test_report_reads_the_journal_not_a_rebuild(tmp_path):
    trials = run_searcher(tmp_path / "optuna.journal")
    table = trials_table(trials)
    off = table[~table["param_use_ppa"].astype(bool)]
    assert len(off) and (off["cfg_lambda_ppa"] == 0.1).all()  # the config default, never sampled
    results.write_table(tmp_path, "trials", table)
    study = load_study(tmp_path)
    assert study.search_source == f"Optuna journal {tmp_path / 'optuna.journal'}"
    search = study.search
    assert len(search.trials) == 8 and search.trials[5].state == optuna.trial.TrialState.PRUNED
    drawn = make_figures(study)
    assert {"optuna_history_val_clean_acc", "optuna_parallel_val_robust_acc", "optuna_importances",
            "optuna_pareto_front"} <= set(drawn.drawn)
    history = drawn.drawn["optuna_history_val_robust_acc"][1]
    assert history.layout.yaxis.title.text == "val robust accuracy"
    assert len(history.data[0].y) == 7  # completed trials only: the pruned one is not a result
    # the slice of lambda_ppa shows only the trials that sampled it
    slices = drawn.drawn["optuna_slice_val_clean_acc"][1]
    sampled = sum(1 for t in trials if "lambda_ppa" in t["params"] and t["status"] == "completed")
    assert 0 < sampled < 7
    lambda_trace = [t for t in slices.data if t.x is not None and t.xaxis == _axis_of(slices, "lambda_ppa")]
    assert sum(len(t.x) for t in lambda_trace) == sampled
    html = build_report(tmp_path, log=None).read_text()
    assert "Optuna journal" in html and "fig-optuna_pareto_front" in html


def _axis_of(figure, parameter: str) -> str:
    """The x axis ('x', 'x2', ...) whose title is the parameter in a plot_slice figure."""
    layout = figure.layout.to_plotly_json()
    for key, axis in layout.items():
        if key.startswith("xaxis") and (axis.get("title") or {}).get("text") == parameter:
            return "x" + key.removeprefix("xaxis")
    raise AssertionError(f"no axis titled {parameter}")


def test_parquet_rebuild_keeps_conditional_parameters_unsampled(tmp_path):
    trials = run_searcher(tmp_path / "elsewhere.journal")
    table = trials_table(trials)
    results.write_table(tmp_path, "trials", table)
    study = load_study(tmp_path)  # no optuna.journal in the study directory
    assert study.search_source.startswith("rebuilt from trials.parquet")
    rebuilt = study.search
    done = [t for t in trials if t["status"] == "completed"]
    assert len(rebuilt.trials) == len(done)
    for frozen, trial in zip(rebuilt.trials, done):
        assert set(frozen.params) == set(trial["params"])  # lambda_ppa absent where use_ppa was off
        assert frozen.params == pytest.approx(trial["params"])
        assert frozen.user_attrs["trial_id"] == trial["trial_id"]
    assert "seed" not in optuna_study.search_space(table)  # param_* columns: only what was sampled
    # the same study through --optuna-storage reads the journal again
    assert len(load_study(tmp_path, str(tmp_path / "elsewhere.journal")).search.trials) == 8


def test_parquet_rebuild_without_param_columns_uses_varying_config():
    table = pd.DataFrame({"study": "s", "trial_id": ["t0", "t1", "t2"], "status": "completed",
                          "val_clean_acc": [0.8, 0.7, 0.9], "val_robust_acc": [0.4, 0.5, 0.45],
                          "cfg_lr": [0.1, 0.01, 0.05], "cfg_seed": [0, 1, 2], "cfg_epochs": [3, 3, 3]})
    study = optuna_study.rebuild_study(table)
    assert [t.params for t in study.trials] == [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.05}]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_single_objective_journal_leaves_the_other_objective_out(tmp_path):
    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="one", storage=make_storage(str(journal)), direction="maximize")
    study.set_metric_names(["val_robust_acc"])
    for x in (0.1, 0.5, 0.9):
        study.add_trial(optuna.trial.create_trial(params={"beta_adv": x}, value=x / 2, user_attrs={"trial_id": str(x)},
                                                  distributions={"beta_adv": optuna.distributions.FloatDistribution(0, 1)}))
    assert optuna_study.optimization_history(study, "val_robust_acc").layout.yaxis.title.text == "val robust accuracy"
    with pytest.raises(optuna_study.NoData, match="val clean accuracy is not an objective"):
        optuna_study.optimization_history(study, "val_clean_acc")
    with pytest.raises(optuna_study.NoData, match="single-objective"):
        optuna_study.pareto_front(study)


def test_journal_of_a_study_on_object_storage_is_kept_locally_and_copied(tmp_path, monkeypatch):
    """--storage s3://... without --optuna-storage: a local journal at a path fixed by the study directory,
    copied back before --resume."""
    remote = {"s3://bucket/studies/big/optuna.journal": b"journal bytes"}
    monkeypatch.setattr(storage, "read_bytes", lambda location: remote[location])
    settings = StudySettings(name="big", storage="s3://bucket/studies")
    local, copy = journal_locations(settings, None)
    assert copy == "s3://bucket/studies/big/optuna.journal"
    assert not Path(local).exists()  # a fresh study starts empty
    again, _ = journal_locations(StudySettings(name="big", storage="s3://bucket/studies", resume=True), None)
    assert again == local and Path(local).read_bytes() == b"journal bytes"
    assert journal_locations(settings, "sqlite:///x.db") == ("sqlite:///x.db", None)
    assert journal_locations(StudySettings(name="n", storage=str(tmp_path)), None) == (
        f"{tmp_path}/n/optuna.journal", None)
    Path(local).unlink()



def test_trials_left_running_by_a_killed_driver_are_settled_as_their_records_say(tmp_path):
    from dpnp_ray.study.optuna_search import ORPHANED, settle_orphaned_trials

    storage = make_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    told = study.ask()
    study.tell(told, [0.9, 0.5])
    ran, stopped, lost = study.ask(), study.ask(), study.ask()  # asked; then the driver was killed
    for trial, status in ((ran, "completed"), (stopped, "stopped")):
        records.write_record(str(tmp_path), {"trial_id": records.trial_id_of({"optuna_trial": trial.number}, "search"),
                                             "status": status,
                                             "final_metrics": {"val_clean_acc": 0.8, "val_robust_acc": 0.4}})
    settled = settle_orphaned_trials(storage, "s", str(tmp_path), ["val_clean_acc", "val_robust_acc"])
    assert settled == [ran.number, stopped.number, lost.number]
    trials = {t.number: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert not [t for t in trials.values() if t.state == optuna.trial.TrialState.RUNNING]
    assert trials[told.number].values == [0.9, 0.5]  # untouched
    assert trials[ran.number].state == optuna.trial.TrialState.COMPLETE and trials[ran.number].values == [0.8, 0.4]
    assert trials[stopped.number].state == optuna.trial.TrialState.PRUNED
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    assert trials[lost.number].user_attrs["ended_by"] == ORPHANED
    for number in settled:  # asked, then killed before the objective named it: the settled trial joins its row
        assert trials[number].user_attrs["trial_id"] == records.trial_id_of({"optuna_trial": number}, "search")
    assert settle_orphaned_trials(storage, "s", str(tmp_path), ["val_clean_acc", "val_robust_acc"]) == []
