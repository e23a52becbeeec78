import math

import pytest
import torch

from dpnp_ray.schedules import EPS_SCHEDULES, LR_SCHEDULES, make_eps_schedule, make_lr_scheduler


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


@pytest.mark.parametrize("kind", EPS_SCHEDULES.names())
def test_every_eps_schedule_ramps_monotonically_from_start_to_eps_and_is_pure(kind):
    s = make_eps_schedule(kind, 8 / 255, warmup_epochs=3, steps_per_epoch=7, start=1 / 255)
    values = [s(e, k) for e in range(5) for k in range(7)]
    assert values == sorted(values)
    assert values == [s(e, k) for e in range(5) for k in range(7)]  # same inputs, same outputs
    assert values[0] == pytest.approx(8 / 255 if kind == "constant" else 1 / 255)
    assert s(3, 0) == s(4, 6) == pytest.approx(8 / 255)  # at eps from the end of the warm-up on


def test_unknown_schedule_lists_known():
    with pytest.raises(KeyError, match="unknown eps schedule 'exponential'; known: " + ", ".join(EPS_SCHEDULES)):
        make_eps_schedule("exponential", 0.1, warmup_epochs=1)
    with pytest.raises(ValueError, match="unknown lr schedule 'poly'; known: " + ", ".join(LR_SCHEDULES)):
        make_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), "poly", epochs=3)


@pytest.mark.parametrize("kind", LR_SCHEDULES.names())
def test_every_lr_schedule_starts_at_the_initial_lr_and_never_rises(kind):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make_lr_scheduler(opt, kind, epochs=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and all(0 <= b <= a for a, b in zip(lrs, lrs[1:]))


def test_cosine_and_constant_lr():
    lrs = {}
    for kind in ("cosine", "constant"):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = make_lr_scheduler(opt, kind, epochs=4)
        lrs[kind] = []
        for _ in range(4):
            lrs[kind].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    # cosine annealing over 4 epochs: 0.1 * (1 + cos(pi * e / 4)) / 2
    assert lrs["cosine"] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert lrs["constant"] == [0.1] * 4


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
