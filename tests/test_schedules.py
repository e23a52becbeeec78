import math

import pytest
import torch

from dpnp_ray.schedules import make_eps_schedule, make_lr_scheduler


def test_constant_linear_cosine_eps():
    const = make_eps_schedule("constant", 0.03, warmup_epochs=5, steps_per_epoch=10)
    assert const(0, 0) == const(7, 3) == 0.03
    linear = make_eps_schedule("linear", 0.04, warmup_epochs=2, steps_per_epoch=10)
    assert linear(0, 0) == 0.0
    assert linear(0, 5) == pytest.approx(0.01)  # 0.25 of the way
    assert linear(1, 0) == pytest.approx(0.02)
    assert linear(2, 0) == linear(9, 9) == pytest.approx(0.04)
    cosine = make_eps_schedule("cosine", 0.04, warmup_epochs=2, steps_per_epoch=10, start=0.01)
    assert cosine(0, 0) == pytest.approx(0.01)
    assert cosine(1, 0) == pytest.approx(0.01 + 0.03 * 0.5)
    assert cosine(0, 5) == pytest.approx(0.01 + 0.03 * (1 - math.cos(math.pi / 4)) / 2)
    assert cosine(5, 0) == pytest.approx(0.04)


def test_schedules_are_monotone_and_pure():
    for kind in ("linear", "cosine"):
        s = make_eps_schedule(kind, 8 / 255, warmup_epochs=3, steps_per_epoch=7)
        values = [s(e, k) for e in range(5) for k in range(7)]
        assert values == sorted(values)
        assert values == [s(e, k) for e in range(5) for k in range(7)]  # same inputs, same outputs


def test_unknown_schedule_lists_known():
    with pytest.raises(KeyError, match="constant, cosine, linear"):
        make_eps_schedule("exponential", 0.1, warmup_epochs=1)


def test_step_lr_decays_at_fractions():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make_lr_scheduler(opt, "step", epochs=10, milestones=(0.5, 0.75), gamma=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == [0.1] * 5
    assert lrs[5] == pytest.approx(0.01) and lrs[8] == pytest.approx(0.001)
