"""Attacks: bounds, reproducibility, strength ordering, input-only gradients."""

import pytest
import torch

from dpnp_ray.attacks import (PrototypeScores, cw_margin_loss, eval_mode, fgsm, pgd, prototype_margin,
                              prototype_scores, rival_targets, targeted_margin_loss, targeted_pgd)
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate import PointFlags, correct_counts, fgsm_attack, pgd_attack, worst_case
from dpnp_ray.models import prototype_logits
from dpnp_ray.devices import Precision

FP32 = Precision.choose("fp32", torch.device("cpu"))
ENV = LocalEnvironment(torch.device("cpu"))


@pytest.fixture(scope="module")
def model_and_batch(trained_digits, digits):
    net = trained_digits.train.net
    x = digits.test.images[:128].float()
    y = digits.test.labels[:128]
    return net, x, y


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_stays_in_eps_ball_and_pixel_range(model_and_batch, loss):
    net, x, y = model_and_batch
    eps = 0.1
    with eval_mode(net):
        x_adv = pgd(net, x, y, eps=eps, step_size=0.03, steps=5, loss=loss, restarts=2,
                    generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2  # it actually moved


def test_pgd_reproducible_under_seed(model_and_batch):
    net, x, y = model_and_batch
    with eval_mode(net):
        a = pgd(net, x, y, eps=0.1, step_size=0.02, steps=3, generator=torch.Generator().manual_seed(7))
        b = pgd(net, x, y, eps=0.1, step_size=0.02, steps=3, generator=torch.Generator().manual_seed(7))
        c = pgd(net, x, y, eps=0.1, step_size=0.02, steps=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_stronger_than_fgsm_and_eps_zero_is_clean(trained_digits, digits):
    net, cfg = trained_digits.train.net, trained_digits.config
    test = digits.test
    count = lambda attack: correct_counts(net, test, attack, env=ENV, batch_size=500, precision=FP32)[0]
    clean = count(None)
    fgsm_acc = count(fgsm_attack(cfg.eps, FP32))
    pgd_acc = count(pgd_attack(cfg.eps, cfg.eps / 4, 20, FP32))
    assert pgd_acc < fgsm_acc < clean
    assert count(pgd_attack(0.0, 0.0, 10, FP32)) == clean
    assert count(fgsm_attack(0.0, FP32)) == clean


def test_restarts_never_weaker_than_one_run(model_and_batch):
    net, x, y = model_and_batch
    with eval_mode(net), torch.no_grad():
        one = pgd(net, x, y, eps=0.1, step_size=0.025, steps=5, generator=torch.Generator().manual_seed(0))
        many = pgd(net, x, y, eps=0.1, step_size=0.025, steps=5, restarts=3,
                   generator=torch.Generator().manual_seed(0))
        assert (net(many).argmax(1) == y).sum() <= (net(one).argmax(1) == y).sum()


def test_attack_takes_input_gradients_only(model_and_batch):
    net, x, y = model_and_batch
    net.zero_grad(set_to_none=True)
    with eval_mode(net):
        pgd(net, x[:8], y[:8], eps=0.1, step_size=0.02, steps=2)
        fgsm(net, x[:8], y[:8], eps=0.1)
    assert all(p.grad is None for p in net.parameters())


def test_eval_mode_restores_each_module():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    net.train()
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_cw_margin_sign():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(cw_margin_loss(logits, y), torch.tensor([-2.0, 2.0]))


# ------------------------------------------------------------------- attacks that know the model


def test_prototype_margin_is_own_minus_nearest_rival_squared_distance():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    d = ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (20, 4) squared distances, by definition
    rival = d.scatter(1, y.view(-1, 1), float("inf")).min(1).values
    expected = d.gather(1, y.view(-1, 1)).squeeze(1) - rival
    assert prototype_scores(z, c).dtype == torch.float64
    assert torch.allclose(prototype_margin(z, c, y), expected, rtol=0, atol=1e-12)
    assert torch.equal(prototype_margin(z, c, y) > 0, d.argmin(1) != y)  # positive exactly when misclassified


@pytest.mark.parametrize("form", ["dot", "cosine"])
def test_nearest_prototype_is_the_largest_logit_for_prototypes_on_a_sphere(form):
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(200, 8, generator=g), 3.0 * torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=1)
    assert torch.equal(prototype_scores(z, c).argmax(1), prototype_logits(z, c, form, 10.0).argmax(1))


def test_prototype_scores_stay_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(2)
    z, c = torch.randn(16, 8, generator=g), torch.randn(10, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = prototype_scores(z, c)
    assert inside.dtype == torch.float32 and torch.equal(inside, prototype_scores(z, c))


def test_targeted_margin_and_rival_targets_by_hand():
    scores = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 2.0, 5.0, 1.0]])
    y = torch.tensor([0, 2])
    assert torch.equal(rival_targets(scores, y, 2), torch.tensor([[3, 1], [1, 3]]))
    assert rival_targets(scores, y, 10).shape == (2, 3)  # at most C - 1 rivals
    assert torch.equal(targeted_margin_loss(scores, y, torch.tensor([1, 3])), torch.tensor([-2.0, -4.0]))
    with pytest.raises(ValueError, match="target"):
        targeted_margin_loss(scores, y)


def test_feature_margin_pgd_is_cw_pgd_for_dot_logits(model_and_batch):
    """With dot logits and prototypes of equal norm, ||z - c_y||^2 - ||z - c_k||^2 = 2 (l_k - l_y): the
    prototype-margin loss is twice the C&W margin, so the sign steps, hence the iterates, are the same
    (up to fp32 rounding of near-zero gradient components)."""
    net, x, y = model_and_batch
    assert net.has_prototypes and net.head.logit_form == "dot"
    with eval_mode(net):
        kw = dict(eps=0.1, step_size=0.025, steps=10, random_start=False)
        ours = pgd(PrototypeScores(net), x, y, loss="cw", **kw)
        cw = pgd(net, x, y, loss="cw", **kw)
    assert (ours - cw).abs().le(1e-6).float().mean() > 0.99


def test_targeted_pgd_breaks_every_point_its_first_target_breaks(model_and_batch):
    net, x, y = model_and_batch
    scores_model = PrototypeScores(net)
    kw = dict(eps=0.1, step_size=0.025, steps=5)
    with eval_mode(net), torch.no_grad():
        targets = rival_targets(scores_model(x), y, 3)
        worst = targeted_pgd(scores_model, x, y, targets, generator=torch.Generator().manual_seed(0), **kw)
        first = pgd(scores_model, x, y, loss="targeted", reference=targets[:, 0], early_stop=True,
                    generator=torch.Generator().manual_seed(0), **kw)
        worst_ok, first_ok = net(worst).argmax(1) == y, net(first).argmax(1) == y
    assert (worst - x).abs().max() <= 0.1 + 1e-6 and worst.min() >= 0 and worst.max() <= 1
    assert not (worst_ok & ~first_ok).any()  # the same first pass, then more targets on the survivors
    assert worst_ok.sum() < len(y)  # it breaks points


def test_worst_case_by_hand():
    ok = lambda *v: torch.tensor(v, dtype=torch.bool)
    flags = {"a": PointFlags(torch.arange(4), ok(1, 1, 0, 1)),
             "b": PointFlags(torch.arange(4), ok(1, 0, 1, 1)),
             "c": PointFlags(torch.tensor([0, 3]), ok(0, 1))}  # ran on points 0 and 3 only
    assert torch.equal(worst_case(flags, 4), ok(0, 0, 0, 1))
    assert torch.equal(worst_case({}, 2), ok(1, 1))
    for f in flags.values():  # never above any single attack on that attack's points
        assert worst_case(flags, 4)[f.index].float().mean() <= f.accuracy
