"""Attacks: bounds, reproducibility, strength ordering, input-only gradients."""

import pytest
import torch

from dpnp_ray.attacks import cw_margin_loss, eval_mode, fgsm, pgd
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate import correct_counts, fgsm_attack, pgd_attack
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
