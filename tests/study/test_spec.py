"""The typed study specs (dpnp_ray.study.spec) and the config's one entrance: every problem listed before Ray
starts, each trial's config built once, carried to the trial as data."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from dpnp_ray.config import ConfigError, ExperimentConfig
from dpnp_ray.study import AblationSpec, SearchSpec
from dpnp_ray.study.search_space import SearchSpace

BASE = {"dataset": "digits", "epochs": 2}


@pytest.fixture
def builds(monkeypatch):
    """Counts ExperimentConfig.from_dict calls."""
    calls = []
    original = ExperimentConfig.from_dict.__func__

    def counted(cls, *args, **kwargs):
        calls.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ExperimentConfig, "from_dict", classmethod(counted))
    return calls


def test_an_ablation_spec_yields_its_trials_in_tunes_order_each_config_built_once(builds):
    spec = AblationSpec(BASE, ["full", "pgd_at"], [0, 1])
    assert spec.problems() == []
    trials = spec.trials()
    assert [t.trial_id for t in trials] == ["full-s0", "full-s1", "pgd_at-s0", "pgd_at-s1"]  # the seed fastest
    assert [(t.variant, t.params, t.cfg.seed, t.cfg.method) for t in trials][2] == ("pgd_at", {"seed": 0}, 0,
                                                                                      "pgd_at")
    assert trials[0].cfg.eps == 0.1 and trials[0].cfg.eval_eps == 0.1  # digits' threat model, resolved
    assert len(builds) == 4
    carried = pickle.loads(pickle.dumps(spec))  # as Tune hands it to every trial's driver
    for trial in trials:
        assert carried.trial({"variant": trial.variant, "seed": trial.cfg.seed}) == trial
    assert len(builds) == 4  # no trial's driver builds its config again


def test_a_trial_outside_this_runs_grid_is_built_from_the_base_and_its_variant(builds):
    spec = AblationSpec(BASE, ["full"], [0])
    spec.trials()
    outside = spec.trial({"variant": "no_npr", "seed": 3})  # a resumed study's trial this run did not ask for
    assert (outside.trial_id, outside.cfg.use_npr, outside.cfg.seed) == ("no_npr-s3", False, 3)
    assert len(builds) == 2


def test_an_ablation_spec_lists_every_problem_at_once():
    spec = AblationSpec({**BASE, "lr": -1.0}, ["full", "nope"], [0])
    problems = spec.problems()
    assert any(p.startswith("unknown variant(s) ['nope']; known: ") and " full, " in p for p in problems)
    assert any("lr" in p and "-1.0" in p for p in problems)
    assert spec.trials() == []
    assert AblationSpec(BASE, [], [0]).problems() == ["--variants [] --seeds [0]: need at least one of each"]


def test_a_search_spec_lists_every_problem_at_once():
    spec = SearchSpec(BASE, 0, sampler="cmaes", objective="fast", scheduler="hyperband", seed=-1, method="sgd")
    problems = "\n".join(spec.problems())
    for expected in ("--objective 'fast': allowed multi, robust, clean", "--scheduler 'hyperband': allowed asha, none",
                     "--sampler 'cmaes': allowed", "--trials 0: must be an integer >= 1",
                     "--seed -1: must be an integer in [0, 4294967295]", "--methods 'sgd': allowed"):
        assert expected in problems
    with pytest.raises(ConfigError, match="lr"):
        SearchSpec({**BASE, "lr": 0.0}, 1).config


def test_a_search_spec_builds_its_base_once_and_each_trial_from_optunas_choices(builds):
    spec = SearchSpec(BASE, 4, SearchSpace(search_switches=False))
    assert spec.problems() == [] and spec.config.eps == 0.1
    assert spec.first_point == SearchSpace(search_switches=False).default_point(spec.config)
    assert len(builds) == 2  # the base and the base at its first point
    trial = spec.trial({"optuna_trial": 7, "lambda_ppa": 0.2})
    assert (trial.trial_id, trial.variant, trial.optuna_trial, trial.params) == ("optuna-0007", "search", 7,
                                                                                 {"lambda_ppa": 0.2})
    assert trial.cfg.lambda_ppa == 0.2 and len(builds) == 3
    tuned = spec.for_method("trades")
    assert tuned.config.method == "trades" and tuned.trial({"optuna_trial": 0}).cfg.method == "trades"
    assert tuned.first_point == SearchSpace(search_switches=False).method_default_point(tuned.config)


def test_every_construction_of_a_config_checks_combinations():
    bad = {"eps": 0.1, "eps_start": 0.2}
    with pytest.raises(ConfigError, match="eps_start=0.2 exceeds eps=0.1"):
        ExperimentConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="eps_start=0.2 exceeds eps=0.1"):
        ExperimentConfig(**bad)
    with pytest.raises(ConfigError, match="eps_start=0.2 exceeds eps=0.1"):
        dataclasses.replace(ExperimentConfig(eps=0.1), eps_start=0.2)
    base = ExperimentConfig.from_dict({"dataset": "digits"}, resolve=False)
    assert base.eps is None and base.eval_eps is None  # a study's base: resolved per trial
    assert ExperimentConfig.from_dict({"dataset": "digits"}).eps == 0.1
