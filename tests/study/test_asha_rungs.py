"""ASHA never stops a trial at or after its last epoch (no Ray: the rung rule and the stop rule are pure)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from dpnp_ray.ray_train import STOP_LATENCY_EPOCHS, honours_stop
from dpnp_ray.study.search_space import asha_settings
from dpnp_ray.study.cost import asha_rungs


@pytest.mark.parametrize("epochs, rungs", [(2, None), (3, [1]), (4, [1]), (10, [1, 3])])
def test_every_rung_leaves_an_epoch_after_its_stop_takes_effect(epochs, rungs):
    rule = asha_settings(epochs)
    if rungs is None:  # 2 epochs: a stop decided after epoch 1 lands after epoch 2, the last: no rung
        assert rule is None
        return
    assert asha_rungs(rule.grace_period, rule.reduction_factor, rule.max_t) == rungs
    assert all(r + STOP_LATENCY_EPOCHS <= epochs - 1 for r in rungs)


@pytest.mark.parametrize("epochs", [2, 4, 10])
def test_a_stop_reaching_a_trial_after_its_last_epoch_is_dropped(epochs):
    assert [honours_stop(done, epochs) for done in range(1, epochs + 1)] == [True] * (epochs - 1) + [False]


@pytest.mark.parametrize("epochs", [3, 4, 10])
def test_the_scheduler_never_asks_for_a_stop_that_would_land_on_the_last_epoch(epochs, tmp_path):
    """StopAtEpochEnd with the search's rule: 9 trials report every epoch in lockstep, best first, so
    ASHA stops some at each rung. Every stop request, whether the trial sees it after the epoch it was
    decided on or one epoch later, stops the trial with an epoch left; the best trial trains them all."""
    from dpnp_ray.study.tuner import StopAtEpochEnd, stop_request_path

    rule = asha_settings(epochs)
    asha = StopAtEpochEnd(str(tmp_path), time_attr="epochs_done", metric=rule.metric, mode="max", max_t=rule.max_t,
                          grace_period=rule.grace_period, reduction_factor=rule.reduction_factor,
                          stop_last_trials=False)
    trials = [SimpleNamespace(trial_id=f"t{n}", config={"optuna_trial": n}) for n in range(9)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    stopped_at: dict[int, int] = {}
    for done in range(1, epochs + 1):
        for n, trial in enumerate(trials):
            if n in stopped_at:
                continue
            asha.on_trial_result(None, trial, {"epochs_done": done, rule.metric: 0.1 * (9 - n) + 0.01 * done})
            if Path(stop_request_path(str(tmp_path), f"optuna-{n:04d}")).exists():
                stopped_at[n] = done
    assert stopped_at, "ASHA stopped nothing: the test would not test anything"
    assert 0 not in stopped_at  # the best trial is never stopped
    for n, decided in stopped_at.items():
        for seen in (decided, decided + STOP_LATENCY_EPOCHS):
            assert honours_stop(seen, epochs), (n, decided, seen)
