"""A few epochs of Adv-DPNP on digits learn something real, and the loop records what it did."""

import pytest
import torch

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate import correct_counts, pgd_attack
from dpnp_ray.devices import Precision
from dpnp_ray.optimizers import OPTIMIZERS
from dpnp_ray.factory import make_optimizer, model_from_config
from dpnp_ray.training_loop import train

CHANCE = 0.1


def test_adv_dpnp_on_digits_beats_chance_and_untrained(trained_digits, digits, capsys):
    result = trained_digits
    s = result.summary
    cfg = result.config
    env = LocalEnvironment(torch.device("cpu"))
    fp32 = Precision.choose("fp32", env.device)
    torch.manual_seed(123)
    untrained = model_from_config(cfg, digits.info)
    untrained_clean, n = correct_counts(untrained, digits.test, None, env=env, batch_size=500, precision=fp32)
    untrained_pgd, _ = correct_counts(untrained, digits.test, pgd_attack(cfg.eps, cfg.eval_step, 20, fp32),
                                      env=env, batch_size=500, precision=fp32)
    with capsys.disabled():
        print(f"\n[digits adv_dpnp {cfg.epochs} epochs] clean {s['clean_acc']:.3f} pgd {s['pgd_acc']:.3f} "
              f"cw {s['cw_acc']:.3f} fgsm {s['fgsm_acc']:.3f}; untrained clean {untrained_clean / n:.3f} "
              f"pgd {untrained_pgd / n:.3f}")
    assert s["clean_acc"] > 0.85 and s["clean_acc"] > untrained_clean / n + 0.5
    assert s["pgd_acc"] > 0.5 and s["pgd_acc"] > untrained_pgd / n + 0.4 and s["pgd_acc"] > 3 * CHANCE
    assert s["pgd_acc"] <= s["fgsm_acc"] + 0.02 and s["pgd_acc"] <= s["clean_acc"]


def test_history_records_every_epoch_and_term(trained_digits):
    history = trained_digits.train.history
    assert [r["epoch"] for r in history] == list(range(4))
    for record in history:
        for key in ["loss_total", "loss_ce", "loss_ppa", "loss_npr", "loss_ce_adv", "loss_ppa_adv", "loss_cons",
                    "train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc", "eps", "lr",
                    "images_per_s", "epoch_seconds"]:
            assert key in record, key
        assert 0 <= record["val_robust_acc"] <= record["val_clean_acc"] + 0.05
    # model selection picks the best validation robust accuracy
    best = max(history, key=lambda r: r["val_robust_acc"])
    assert trained_digits.train.best_epoch == best["epoch"]
    assert history[-1]["loss_total"] < history[0]["loss_total"]


def test_same_seed_same_history_on_cpu(digits):
    cfg = ExperimentConfig.from_dict(dict(epochs=2, batch_size=128, train_attack_steps=2, val_attack_steps=2,
                                          eval_suite="basic"))
    small = digits.__class__(digits.info, digits.train, digits.val, digits.test)
    first = train(cfg, data=small, log=None).history
    second = train(cfg, data=small, log=None).history
    strip = lambda h: [{k: v for k, v in r.items() if "seconds" not in k and k != "images_per_s"} for r in h]
    assert strip(first) == strip(second)


def test_non_finite_loss_names_epoch_and_step(digits):
    from dpnp_ray.training_loop import NonFiniteLossError

    cfg = ExperimentConfig.from_dict(dict(epochs=1, lr=1e30, optimizer="sgd", momentum=0.0, batch_size=256,
                                          train_attack_steps=1, val_attack_steps=1))
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step \d+"):
        train(cfg, data=digits, log=None)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_from_the_config_and_descends(name):
    cfg = ExperimentConfig.from_dict(dict(optimizer=name, lr=0.05, momentum=0.5, nesterov=True, weight_decay=1e-3))
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    optimizer = make_optimizer(cfg, net)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-3
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in net.parameters())
    x = torch.linspace(-1, 1, 12).view(4, 3)
    loss = lambda: net(x).pow(2).mean()  # noqa: E731
    before = loss().item()
    for _ in range(3):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < before


def test_sgd_takes_momentum_and_nesterov_only_with_momentum():
    net = torch.nn.Linear(2, 1)
    base = dict(optimizer="sgd", momentum=0.9, nesterov=True)
    group = make_optimizer(ExperimentConfig.from_dict(base), net).param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"]
    group = make_optimizer(ExperimentConfig.from_dict({**base, "momentum": 0.0}), net).param_groups[0]
    assert group["momentum"] == 0.0 and not group["nesterov"]  # torch refuses Nesterov without momentum
