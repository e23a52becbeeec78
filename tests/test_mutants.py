"""Tests that kill the mutants a hand mutation test left alive (issue 18): a one-sided PGD random start, the
prototype-form NPR on detached prototypes under prototype_update=adversarial, a wrong restart-selection rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpnp_ray import losses
from dpnp_ray.attacks import pgd
from dpnp_ray.steps import PROTOTYPE_DETACH, DualBranchForward, method_loss

from .support.nets import batch, cfg_of, make_net


class Linear(nn.Module):
    """A fixed linear classifier on flattened pixels: every decision is known in closed form."""

    def __init__(self, features: int, classes: int = 3, scale: float = 20.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(features, classes, generator=g) * scale, requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.weight


# --------------------------------------------------------------------------------- random start


@pytest.mark.parametrize("early_stop", [False, True])
def test_the_random_start_is_symmetric_around_x(early_stop):
    """A restart starts at x + U(-eps, eps): as many pixels below x as above, spread over the whole ball.
    A one-sided U(0, eps) start has no pixel below x."""
    x = torch.full((2000, 8), 0.5)
    eps = 0.25
    model = Linear(8)
    delta = pgd(model, x, model(x).argmax(1), eps=eps, step_size=0.01, steps=0, random_start=True,
                generator=torch.Generator().manual_seed(0), early_stop=early_stop) - x
    assert delta.abs().max() <= eps + 1e-6
    assert delta.min() < -0.9 * eps and delta.max() > 0.9 * eps
    below = (delta < 0).float().mean().item()
    assert 0.48 < below < 0.52, below
    assert abs(delta.mean().item()) < 0.01
    for lo, hi in ((-eps, -eps / 2), (-eps / 2, 0), (0, eps / 2), (eps / 2, eps)):  # uniform: a quarter each
        share = ((delta >= lo) & (delta < hi)).float().mean().item()
        assert 0.23 < share < 0.27, (lo, hi, share)


# --------------------------------------------------------------------------- restart selection


@pytest.mark.parametrize("early_stop", [False, True])
def test_restarts_keep_per_point_a_misclassifying_one_else_the_highest_loss(early_stop):
    """pgd's rule across restarts: each point keeps a perturbation that misclassifies it if any restart
    found one, else the one of highest final loss. With steps=0 each restart's result is its random start,
    which pgd with one restart returns for the same generator draws: the candidates are known exactly."""
    torch.manual_seed(0)
    n, restarts, eps = 400, 4, 0.15
    x = torch.rand(n, 6) * 0.6 + 0.2
    model = Linear(6, classes=10, scale=2.0)  # soft enough that a misclassified start can have the lower CE
    y = model(x).argmax(1)  # every point is classified correctly when clean
    chosen = pgd(model, x, y, eps=eps, step_size=0.01, steps=0, restarts=restarts,
                 generator=torch.Generator().manual_seed(3), early_stop=early_stop)
    g = torch.Generator().manual_seed(3)
    starts = torch.stack([pgd(model, x, y, eps=eps, step_size=0.01, steps=0, restarts=1, generator=g)
                          for _ in range(restarts)])  # (restarts, n, 6)
    logits = model(starts.flatten(0, 1)).view(restarts, n, -1)
    wrong = logits.argmax(2) != y  # (restarts, n)
    loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(restarts), reduction="none").view(restarts, n)

    # the test can tell the rule from the mutants: points where the last restart is not the one to keep
    last_right_earlier_wrong = wrong[:-1].any(0) & ~wrong[-1]
    none_wrong_last_not_highest = ~wrong.any(0) & (loss[-1] < loss.max(0).values)
    highest_right = torch.where(wrong, float("-inf"), loss).max(0).values
    wrong_but_lower_loss = (wrong & (loss < highest_right)).any(0)
    assert last_right_earlier_wrong.sum() >= 5 and none_wrong_last_not_highest.sum() >= 5
    assert wrong_but_lower_loss.sum() >= 1  # a loss-only rule would keep a correctly classified restart

    which = (chosen.unsqueeze(0) == starts).all(2)  # (restarts, n): the restart each point kept
    assert which.any(0).all(), "every point keeps one of its restarts' perturbations"
    picked = which.float().argmax(0)
    picked_wrong = wrong[picked, torch.arange(n)]
    picked_loss = loss[picked, torch.arange(n)]
    any_wrong = wrong.any(0)
    assert torch.equal(picked_wrong, any_wrong), "a point some restart misclassifies keeps a misclassifying one"
    assert torch.equal(model(chosen).argmax(1) != y, any_wrong)
    assert torch.allclose(picked_loss[~any_wrong], loss.max(0).values[~any_wrong]), \
        "a point no restart misclassifies keeps the restart of highest loss"


# ------------------------------------------------------------------------ NPR sees the live prototypes


@pytest.mark.parametrize("update", sorted(PROTOTYPE_DETACH))
def test_the_prototype_npr_always_trains_the_prototypes(update):
    """Under every prototype_update the prototype-form NPR is computed on the live prototypes: the prototypes'
    gradient with lambda_npr = w minus the one with lambda_npr = 0 is exactly w * d NPR(c) / dc. On detached
    prototypes (the mutant) that difference would be zero under prototype_update=adversarial."""
    x, y = batch(0)
    x_adv, _ = batch(1)
    weight = 0.7
    gradients = []
    for lambda_npr in (weight, 0.0):
        cfg = cfg_of(prototype_update=update, npr_form="prototype", lambda_npr=lambda_npr)
        net = make_net()
        dc, da = PROTOTYPE_DETACH[update]
        loss, terms = method_loss(DualBranchForward(net)(x, x_adv, detach_clean=dc, detach_adv=da), y, cfg)
        assert ("npr" in terms) == (lambda_npr > 0)
        loss.backward()
        gradients.append(net.head.raw.grad.clone())
    net = make_net()
    (weight * losses.npr_prototype(net.head.prototypes())).backward()
    expected = net.head.raw.grad
    assert expected.abs().sum() > 0
    torch.testing.assert_close(gradients[0] - gradients[1], expected, rtol=1e-4, atol=1e-6)
