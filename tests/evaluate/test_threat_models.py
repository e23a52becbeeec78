"""Other threat models than the training one (dpnp_ray.evaluate.suite, full level): the APGD-CE + APGD-T
accuracy-vs-eps curve and the L2 threat model, and the evals table's `norm` column. On the session's trained
digits model, with AutoAttack on a handful of points."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from dpnp_ray import results
from dpnp_ray.attacks import eval_mode
from dpnp_ray.config import ExperimentConfig, eval_l2_default
from dpnp_ray.data import to_float
from dpnp_ray.devices import Precision
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate.accuracy import subsample, subsample_index
from dpnp_ray.evaluate.external import autoattack
from dpnp_ray.evaluate.suite import SUITE_LEVELS, SuiteLevel, run_suite

CPU = torch.device("cpu")
ENV = LocalEnvironment(CPU)
FP32 = Precision.choose("fp32", CPU)
N = 12  # attack subset: AutoAttack on CPU stays a few seconds


@pytest.fixture(scope="module")
def cfg(trained_digits):
    return trained_digits.config.replace(eval_n=60, eval_aa_n=N, device="cpu", precision="fp32",
                                         eval_aa_eps_curve=[0.0, 1.0, 2.0])


@pytest.fixture(scope="module")
def other(trained_digits, digits, cfg):
    level = SuiteLevel("other_threat_models", aa_eps_curve=True, l2=True)
    return run_suite(trained_digits.train.net, digits, cfg, ENV, FP32, level=level)


def _subset(digits, cfg):
    test = subsample(digits.test, cfg.eval_n)
    index = subsample_index(len(test), cfg.eval_aa_n)
    return to_float(test.images[index]), test.labels[index]


def test_the_full_level_runs_both():
    full = SUITE_LEVELS.get("full")
    assert full.aa_eps_curve and full.l2 and not SUITE_LEVELS.get("quick").l2


def test_the_default_l2_radius_is_cifars_at_cifars_threat_model_and_scales_with_the_image():
    assert ExperimentConfig.from_dict({"dataset": "cifar10"}).eval_l2_eps == 0.5
    digits = ExperimentConfig.from_dict({"dataset": "digits"})  # eps 0.1 on 1x8x8
    assert digits.eval_l2_eps == pytest.approx(0.5 * (0.1 / (8 / 255)) * math.sqrt(64 / 3072))
    assert eval_l2_default(0.2, (1, 8, 8)) == pytest.approx(2 * digits.eval_l2_eps)
    assert ExperimentConfig.from_dict({"dataset": "digits", "eval_l2_eps": 1.5}).eval_l2_eps == 1.5


def test_apgd_curve_rows_at_each_multiple_of_eval_eps(other, trained_digits, digits, cfg):
    curve = [r for r in other.evals if r["attack"] == "apgd_eps_curve"]
    assert [r["eps"] for r in curve] == pytest.approx([0.0, cfg.eval_eps, 2 * cfg.eval_eps])
    assert all(r["n"] == N and r["norm"] == "Linf" and r["loss"] == "apgd-ce+apgd-t" for r in curve)
    x, y = _subset(digits, cfg)
    net = trained_digits.train.net
    with eval_mode(net), torch.no_grad():
        clean = (net(x).argmax(1) == y).float().mean().item()
    assert curve[0]["accuracy"] == pytest.approx(clean)  # eps 0: no attack, clean accuracy
    with eval_mode(net):  # each point is AutoAttack `apgd` at that eps, seeded as the suite seeds it
        _, robust, _ = autoattack(net, x, y, eps=2 * cfg.eval_eps, version="apgd", seed=cfg.seed,
                                  batch_size=cfg.eval_batch_size, num_classes=10)
    assert curve[2]["accuracy"] == pytest.approx(robust.float().mean().item())
    assert curve[2]["accuracy"] <= curve[0]["accuracy"]


def test_l2_row_and_its_ball(other, trained_digits, digits, cfg):
    (row,) = [r for r in other.evals if r["norm"] == "L2"]
    assert row["attack"] == "autoattack" and row["eps"] == pytest.approx(cfg.eval_l2_eps) and row["n"] == N
    assert other.summary["aa_l2_acc"] == row["accuracy"] and other.summary["aa_l2_eps"] == cfg.eval_l2_eps
    x, y = _subset(digits, cfg)
    net = trained_digits.train.net
    with eval_mode(net):
        x_adv, robust, _ = autoattack(net, x, y, eps=cfg.eval_l2_eps, version="apgd", seed=cfg.seed,
                                      batch_size=cfg.eval_batch_size, num_classes=10, norm="L2")
        assert float((x_adv - x).flatten(1).norm(dim=1).max()) <= cfg.eval_l2_eps + 1e-5
        assert row["accuracy"] == pytest.approx(robust.float().mean().item())
        # radius 8 = sqrt(64) reaches every 8x8 image in [0, 1]: nothing survives
        _, everything, _ = autoattack(net, x, y, eps=8.0, version="apgd", seed=0, batch_size=64, num_classes=10,
                                      norm="L2")
    assert not everything.any()


def test_norm_is_part_of_the_evals_key_and_old_rows_read_as_linf(tmp_path):
    keys = {"study": "s", "trial_id": "t", "variant": "full", "seed": 0, "suite": "full", "split": "test",
            "attack": "autoattack", "loss": "apgd-ce+apgd-t", "eps": 0.5, "steps": 100, "restarts": 1, "n": 10}
    results.write_table(tmp_path, "evals", [{**keys, "norm": "Linf", "accuracy": 0.3},
                                            {**keys, "norm": "L2", "accuracy": 0.6}])
    assert sorted(results.read_table(tmp_path, "evals")["norm"]) == ["L2", "Linf"]  # two threat models, two rows
    old = pd.DataFrame([{**keys, "accuracy": 0.3, "schema_version": results.SCHEMA_VERSION}])
    old.to_parquet(tmp_path / "evals.parquet")  # a table written before the column existed
    assert list(results.read_table(tmp_path, "evals")["norm"]) == ["Linf"]


def test_the_new_rows_have_their_points_keyed_by_norm(other, tmp_path):
    keys = {"study": "s", "trial_id": "t", "variant": "full", "seed": 0}
    results.write_table(tmp_path, "points", results.points_frame(other.evals, other.points, keys))
    points = results.read_table(tmp_path, "points")
    by_key = points.groupby(results.POINT_EVAL_KEY, observed=True)["correct"].agg(["sum", "size"])
    assert len(by_key) == len(other.evals)
    for row in other.evals:  # each row's accuracy is the count of its points over n
        correct, n = by_key.loc[tuple(row[k] for k in results.POINT_EVAL_KEY)]
        assert n == row["n"] and correct / n == row["accuracy"], (row["attack"], row["norm"])
    assert set(points.loc[points["attack"] == "autoattack", "norm"]) == {"L2"}
    # a points file of an older version has no norm: it reads as L-inf
    old = points[points["norm"] == "Linf"].drop(columns=["norm", "schema_version"])
    location = results.write_points_file(str(tmp_path / "old.parquet"), old)
    assert set(results.read_points_file(location)["norm"]) == {"Linf"}


def test_the_report_draws_the_apgd_curve_dashed_beside_pgds(other, cfg):
    from analysis import robustness_figures

    rows = [{"variant": "full", "trial_id": "full-s0", **r} for r in other.evals]
    pgd = [{**r, "attack": "pgd_eps_curve", "accuracy": r["accuracy"] + 0.1} for r in rows
           if r["attack"] == "apgd_eps_curve"]
    fig = robustness_figures.eps_curves(pd.DataFrame(rows + pgd))
    assert [(t.name, t.line.dash) for t in fig.data] == [("full", "solid"), ("full (APGD)", "dash")]
    assert list(fig.data[1].x) == pytest.approx([0.0, cfg.eval_eps, 2 * cfg.eval_eps])  # the L2 row is no point
