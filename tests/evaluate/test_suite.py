"""Tests for dpnp_ray.evaluate.suite: the evaluation suite end to end, on a trained model: its rows and
summaries, the attacks it runs (ours, AutoAttack, Square), masking checks, geometry and corruptions.

Every test uses the session's one trained model (conftest's `trained_digits`: Adv-DPNP, small_cnn,
digits, evaluated by run_experiment at the basic level). The file takes about a minute of CPU time.
The checks' arithmetic alone is tested in test_checks.py, the geometry metrics in test_geometry.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpnp_ray import results
from dpnp_ray.attacks import eval_mode, fgsm, pgd
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.data import DatasetSplits, Split, to_float
from dpnp_ray.devices import Precision
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate.accuracy import (EvalResult, correct_counts, fgsm_attack, fraction, pgd_attack, subsample,
                                        worst_case)
from dpnp_ray.evaluate.checks import noise_tolerance
from dpnp_ray.evaluate.corruptions import GENERATED_BENCHMARK, SEVERITIES
from dpnp_ray.evaluate.external import autoattack, square
from dpnp_ray.evaluate.suite import SUITE_LEVELS, SuiteLevel, check_inputs, run_suite
from dpnp_ray.models import Classifier
from dpnp_ray.registry import UnknownNameError

CPU = torch.device("cpu")
FP32 = Precision.choose("fp32", CPU)
ENV = LocalEnvironment(CPU)
#: the quick level with a cheaper stand-alone Square (the production default is 1000 queries on 500 points)
CHEAP_QUICK = dataclasses.replace(SUITE_LEVELS.get("quick"), square_queries=300, square_n=100)
MASKING_CHECKS = {"fgsm_vs_pgd", "pgd_aa_gap", "eps_monotone", "eps0_equals_clean", "steps_monotone",
                  "unbounded_eps", "zero_gradients", "black_box_vs_white_box"}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def experiment(trained_digits):
    """The session's trained model, evaluated at the basic level by run_experiment (conftest.py)."""
    assert trained_digits.config.eval_suite == "basic" and trained_digits.config.method == "adv_dpnp"
    return trained_digits


@pytest.fixture(scope="module")
def data(digits) -> DatasetSplits:
    return digits


@pytest.fixture(scope="module")
def cfg(experiment) -> ExperimentConfig:
    """The trained model's config with the suite's subset sizes of these tests."""
    return experiment.config.replace(eval_n=200, eval_aa_n=100, eval_corruption_n=100, device="cpu",
                                     precision="fp32")


@pytest.fixture(scope="module")
def net(experiment) -> Classifier:
    return experiment.train.net


@pytest.fixture(scope="module")
def quick(net, data, cfg):
    """The quick suite, started with the model in train mode (it must evaluate in eval mode and restore)."""
    was_training = net.training
    net.train()
    running = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    suite = run_suite(net, data, cfg.replace(eval_suite="quick"), ENV, FP32, level=CHEAP_QUICK)
    assert net.training, "run_suite must restore the caller's train/eval mode"
    for key, value in running.items():  # a forward in train mode would have moved BatchNorm's statistics
        assert torch.equal(net.state_dict()[key], value), f"{key} changed: some attack ran in train mode"
    net.train(was_training)
    return suite


@pytest.fixture(scope="module")
def points(data, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    test = subsample(data.test, cfg.eval_n)
    return to_float(test.images), test.labels


class Quantize(nn.Module):
    """round(16 x) / 16: leaves digits (pixels k/16) unchanged and has zero gradient everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 16) / 16


class DigitsFromRGB32(nn.Module):
    """(3, 32, 32) -> (1, 8, 8): grey, then 4x4 means; inverts `upsample` exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(1, keepdim=True), 4)


def upsample(images: torch.Tensor) -> torch.Tensor:
    """Digits as uint8 (N, 3, 32, 32) pictures: nearest x4, grey replicated to RGB."""
    x = F.interpolate(to_float(images), scale_factor=4, mode="nearest").repeat(1, 3, 1, 1)
    return (x * 255).round().to(torch.uint8)


def with_input_layer(net: Classifier, layer: nn.Module) -> Classifier:
    """The same trained modules behind an extra input transform."""
    return Classifier(nn.Sequential(layer, net.normalize), net.backbone, net.head, net.projection).eval()


@pytest.fixture(scope="module")
def rgb32(net, data):
    """The trained digits model as a model of 32x32 RGB images, and digits as such images."""
    info = dataclasses.replace(data.info, image_shape=(3, 32, 32))
    test = Split(upsample(data.test.images), data.test.labels)
    return with_input_layer(net, DigitsFromRGB32()), DatasetSplits(info, data.train, data.val, test)


def evaluate_attack(net, split, *, name, attack, eps, steps, restarts, env, batch_size, precision, loss="ce", seed=0):
    """Accuracy on the whole split under `attack` (None: clean), as a row: the reference the suite must match."""
    correct, total = correct_counts(net, split, attack, env=env, batch_size=batch_size, precision=precision, seed=seed)
    return EvalResult(name, eps, steps, restarts, total, correct / max(total, 1), "test", loss)


def reference_threat_model_rows(net, data, cfg, env, precision):
    """The four threat-model rows computed directly with evaluate_attack, outside the suite's driver:
    what the basic level (run_experiment -> run_suite) must reproduce row for row."""
    test = subsample(data.test, cfg.eval_n)
    common = dict(env=env, batch_size=cfg.eval_batch_size, precision=precision, seed=cfg.seed)
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    return [
        evaluate_attack(net, test, name="clean", attack=None, eps=0.0, steps=0, restarts=0, **common),
        evaluate_attack(net, test, name="fgsm", attack=fgsm_attack(eps, precision), eps=eps, steps=1,
                        restarts=1, **common),
        evaluate_attack(net, test, name="pgd", attack=pgd_attack(eps, step, k, precision, restarts=restarts),
                        eps=eps, steps=k, restarts=restarts, **common),
        evaluate_attack(net, test, name="cw_inf",
                        attack=pgd_attack(eps, step, k, precision, restarts=restarts, loss="cw"),
                        eps=eps, steps=k, restarts=restarts, loss="cw", **common),
    ]


def assert_in_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------- basic level


def test_basic_level_reproduces_the_threat_model_rows(experiment, net, data):
    fields = ("attack", "eps", "steps", "restarts", "n", "accuracy", "split", "loss")
    basic_cfg = experiment.config
    precision = Precision.choose(basic_cfg.eval_precision, CPU)
    reference = [{f: getattr(e, f) for f in fields}
                 for e in reference_threat_model_rows(net, data, basic_cfg, ENV, precision)]
    rows = experiment.evals
    assert [{f: r[f] for f in fields} for r in rows] == reference
    assert [r["attack"] for r in rows] == ["clean", "fgsm", "pgd", "cw_inf"]
    assert all(r["suite"] == "basic" for r in rows)
    assert experiment.corruptions == [] and experiment.geometry == [] and experiment.masking == []
    summary = experiment.summary
    assert summary["eval_suite"] == "basic" and summary["eval_n"] == len(subsample(data.test, basic_cfg.eval_n))
    assert (summary["clean_acc"], summary["fgsm_acc"], summary["pgd_acc"], summary["cw_acc"]) == tuple(
        r["accuracy"] for r in reference)
    assert "aa_acc" not in summary and "masking_flags" not in summary
    assert summary["clean_acc"] > 0.9, "the shared model did not train; every later test would be meaningless"


@pytest.mark.parametrize("eval_precision, autocast_in_evaluation", [("fp32", False), ("bf16", True)])
def test_evaluation_runs_at_eval_precision_whatever_training_uses(digits, monkeypatch, eval_precision,
                                                                   autocast_in_evaluation):
    """Training in bf16 (CPU autocast) must leave validation and the test suite at eval_precision: with the
    default fp32 every evaluation forward runs with autocast off. Records the autocast state at the head."""
    import dpnp_ray.training_loop as training_loop
    from dpnp_ray.experiment import run_experiment

    seen: dict[str, set[bool]] = {"train": set(), "eval": set()}
    phase = ["eval"]
    real_step, real_model = training_loop.train_step, training_loop.model_from_config

    def marked_step(*args, **kwargs):
        phase[0] = "train"
        try:
            return real_step(*args, **kwargs)
        finally:
            phase[0] = "eval"

    def recording_model(*args, **kwargs):
        net = real_model(*args, **kwargs)
        net.head.register_forward_hook(lambda *_: seen[phase[0]].add(torch.is_autocast_enabled("cpu")))
        return net

    monkeypatch.setattr(training_loop, "train_step", marked_step)
    monkeypatch.setattr(training_loop, "model_from_config", recording_model)
    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=1, batch_size=128, device="cpu", precision="bf16",
                                          eval_precision=eval_precision, eval_suite="basic", eval_n=50,
                                          train_attack_steps=1, val_attack_steps=1, eval_attack_steps=2))
    result = run_experiment(cfg, data=digits, log=None)
    assert seen["train"] == {True}, "training did not run under bf16 autocast"
    assert seen["eval"] == {autocast_in_evaluation}
    assert result.summary["precision"] == "bf16"


# -------------------------------------------------------------------------------- attacks


def test_every_attack_stays_in_the_threat_model(net, points, cfg):
    x, y = points[0][:50], points[1][:50]
    eps = cfg.eps
    with eval_mode(net):
        gen = torch.Generator().manual_seed(0)
        assert_in_threat_model(fgsm(net, x, y, eps=eps), x, eps)
        assert_in_threat_model(pgd(net, x, y, eps=eps, step_size=cfg.eval_step, steps=10, generator=gen), x, eps)
        assert_in_threat_model(pgd(net, x, y, eps=eps, step_size=cfg.eval_step, steps=10, loss="cw",
                                   restarts=2, generator=gen), x, eps)
        rng = torch.random.get_rng_state()
        x_aa, robust, _ = autoattack(net, x, y, eps=eps, version="apgd", seed=0, batch_size=500, num_classes=10)
        x_sq = square(net, x, y, eps=eps, queries=100, seed=0, batch_size=500)
        assert torch.equal(torch.random.get_rng_state(), rng), "AutoAttack/Square reseed torch's global RNG"
        assert_in_threat_model(x_aa, x, eps)
        assert_in_threat_model(x_sq, x, eps)
        # AutoAttack's robust flags are the model's verdict on its adversarial points
        assert torch.equal(robust, net(x_aa).argmax(1) == y)
        # ... and it is at least as strong as PGD-20 on the same points (one point of slack)
        x_pgd = pgd(net, x, y, eps=eps, step_size=cfg.eval_step, steps=20, generator=gen)
        assert robust.float().mean().item() <= accuracy(net, x_pgd, y) + 1 / len(y)


def test_pgd_is_at_least_as_strong_as_fgsm(experiment, net, points, cfg):
    acc = {r["attack"]: r["accuracy"] for r in experiment.evals}
    n = experiment.evals[0]["n"]
    assert acc["pgd"] <= acc["fgsm"] + noise_tolerance(n)
    assert acc["cw_inf"] <= acc["clean"] and acc["pgd"] < acc["clean"]
    x, y = points
    with eval_mode(net):  # on the same points, point by point: PGD breaks what FGSM breaks (almost always)
        fgsm_ok = net(fgsm(net, x, y, eps=cfg.eps)).argmax(1) == y
        pgd_ok = net(pgd(net, x, y, eps=cfg.eps, step_size=cfg.eval_step, steps=20,
                         generator=torch.Generator().manual_seed(0))).argmax(1) == y
    assert (pgd_ok & ~fgsm_ok).sum() <= 2


def test_our_pgd_agrees_with_torchattacks(net, points, cfg):
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is not installed; install it with "
        "`pip install --no-deps torchattacks==3.5.1` (--no-deps: it pins an old requests that breaks Ray)")
    x, y = points
    eps, alpha, steps = cfg.eps, cfg.eval_step, 20
    with eval_mode(net):
        # No random start: the same deterministic iteration, so the same points up to float rounding.
        ours = pgd(net, x, y, eps=eps, step_size=alpha, steps=steps, random_start=False)
        theirs = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
        assert (ours - theirs).abs().le(1e-5).float().mean() > 0.99
        assert abs(accuracy(net, ours, y) - accuracy(net, theirs, y)) <= 1 / len(y)
        # Random start: different draws, so accuracies agree within the attacks' noise.
        ours = pgd(net, x, y, eps=eps, step_size=alpha, steps=steps, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(1)
        theirs = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
        assert abs(accuracy(net, ours, y) - accuracy(net, theirs, y)) <= noise_tolerance(len(y))


# ------------------------------------------------------------------------------- quick level


def test_quick_level_rows_and_summary(quick, cfg):
    evals = {(r["attack"], r["eps"], r["steps"]): r for r in quick.evals}
    assert [r["attack"] for r in quick.evals[:4]] == ["clean", "fgsm", "pgd", "cw_inf"]
    assert all(r["suite"] == "quick" for r in quick.evals)
    aa = evals[("autoattack", cfg.eps, 100)]
    assert aa["version"] == "apgd" and aa["loss"] == "apgd-ce+apgd-t" and aa["n"] == cfg.eval_aa_n
    curve = sorted((r["eps"], r["accuracy"]) for r in quick.evals if r["attack"] == "pgd_eps_curve")
    assert [e for e, _ in curve] == pytest.approx([m * cfg.eps for m in sorted(set(cfg.eval_eps_curve) | {1.0})])
    summary = quick.summary
    # AutoAttack is at least as strong as PGD-CE on the same points
    assert summary["aa_acc"] <= summary["pgd_acc_subset"] + 1 / cfg.eval_aa_n
    assert summary["pgd_aa_gap"] == pytest.approx(summary["pgd_acc_subset"] - summary["aa_acc"])
    assert summary["aa_version"] == "apgd" and summary["aa_code"].startswith("pyautoattack")
    assert curve[0] == (0.0, summary["clean_acc_subset"])
    assert dict(curve)[cfg.eps] == summary["pgd_acc_subset"]
    assert evals[("pgd_unbounded", 1.0, 50)]["accuracy"] <= 0.02
    for key in ("seconds_threat_model", "seconds_autoattack", "seconds_square"):
        assert summary[key] >= 0
    json_safe = (bool, int, float, str)
    for table in (quick.evals, quick.masking, quick.geometry):
        for row in table:
            assert all(v is None or isinstance(v, json_safe) for v in row.values()), row
    assert all(isinstance(v, json_safe) for v in summary.values())


#: what the quick level's worst case is over: clean and every attack at eval_eps on the attack subset's points
QUICK_WORST_CASE_ATTACKS = {"clean", "fgsm", "pgd", "cw_inf", "pgd_subset", "autoattack", "feature_margin",
                            "targeted_rivals", "pgd_steps_check", "square"}


def test_worst_case_is_never_above_any_single_attack_on_the_same_points(quick, cfg):
    flags, n = quick.subset_flags, cfg.eval_aa_n
    assert set(flags) == QUICK_WORST_CASE_ATTACKS
    worst = worst_case(flags, n)
    for name, attack in flags.items():
        assert len(attack.ok) == len(attack.index) and attack.index.max() < n
        assert fraction(worst[attack.index]) <= attack.accuracy, name
        assert not (worst[attack.index] & ~attack.ok).any(), name  # per point, not only on average
    assert len(flags["square"].index) == CHEAP_QUICK.square_n  # Square covers part of the subset
    summary = quick.summary
    assert summary["worst_case_acc"] == fraction(worst) and summary["worst_case_n"] == n
    assert set(summary["worst_case_attacks"].split(",")) == QUICK_WORST_CASE_ATTACKS
    for key in ("aa_acc", "pgd_acc_subset", "clean_acc_subset"):
        assert summary["worst_case_acc"] <= summary[key]
    row = next(r for r in quick.evals if r["attack"] == "worst_case")
    assert row["accuracy"] == summary["worst_case_acc"] and row["n"] == n and row["eps"] == cfg.eps
    gap = next(r for r in quick.masking if r["check"] == "pgd_aa_gap")
    assert gap["value"] == pytest.approx(summary["pgd_acc_subset"] - summary["worst_case_acc"])
    print({name: round(f.accuracy - fraction(worst[f.index]), 4) for name, f in flags.items()})


def test_attacks_that_know_the_model(quick, cfg):
    """Rows of the prototype-margin and targeted attacks: at most clean accuracy, and the same points'
    accuracy under them agrees with the rows."""
    rows = {r["attack"]: r for r in quick.evals}
    clean = quick.summary["clean_acc_subset"]
    margin, targeted = rows["feature_margin"], rows["targeted_rivals"]
    assert margin["loss"] == "prototype_margin" and margin["scores"] == "prototype_distance"
    assert targeted["loss"] == "targeted" and targeted["targets"] == cfg.eval_rival_targets == 3
    for row in (margin, targeted):
        assert row["n"] == cfg.eval_aa_n and row["eps"] == cfg.eps and row["steps"] == cfg.eval_attack_steps
        assert row["accuracy"] <= clean
        assert row["accuracy"] == quick.subset_flags[row["attack"]].accuracy
    # with dot logits the prototype margin is twice the C&W margin (tests/test_attacks.py): the same attack as CW-inf
    assert abs(margin["accuracy"] - quick.subset_flags["cw_inf"].accuracy) <= noise_tolerance(cfg.eval_aa_n)


def test_a_linear_head_gets_the_targeted_attack_on_logits_and_no_feature_attack(net, data, cfg):
    """A linear head whose weights are the prototypes (bias 0) makes the same decisions as the dot-logit
    prototype head: no feature-space row, a targeted row on its logits that agrees with the prototype
    model's within the attacks' noise (their losses differ by the factor 2 only)."""
    linear = nn.Linear(net.head.raw.shape[1], net.head.raw.shape[0])
    with torch.no_grad():
        linear.weight.copy_(net.head.prototypes())
        linear.bias.zero_()
    as_linear = Classifier(net.normalize, net.backbone, linear, net.projection).eval()
    assert not as_linear.has_prototypes
    level = SuiteLevel("adaptive_only", adaptive=True)
    ours = run_suite(as_linear, data, cfg, ENV, FP32, level=level)
    reference = run_suite(net, data, cfg, ENV, FP32, level=level)
    rows = {r["attack"]: r for r in ours.evals}
    assert "feature_margin" not in rows and "feature_margin" not in ours.subset_flags
    assert rows["targeted_rivals"]["scores"] == "logits"
    reference_targeted = next(r for r in reference.evals if r["attack"] == "targeted_rivals")["accuracy"]
    assert abs(rows["targeted_rivals"]["accuracy"] - reference_targeted) <= noise_tolerance(cfg.eval_aa_n)
    assert ours.summary["worst_case_acc"] <= rows["targeted_rivals"]["accuracy"]


def test_trained_model_passes_the_masking_checks(quick):
    checks = {row["check"]: row for row in quick.masking}
    assert set(checks) == MASKING_CHECKS
    assert not [row for row in quick.masking if row["flagged"]], quick.masking
    assert quick.summary["masking_flags"] == 0 and quick.summary["any_masking_flag"] is False
    for row in quick.masking:
        assert set(row) >= {"check", "value", "threshold", "flagged", "detail", "n"}
        assert row["flagged"] == (row["value"] > row["threshold"])


def test_a_gradient_masked_model_is_flagged(net, data, cfg):
    """Input quantization (round, no straight-through gradient) hides the gradient from every white-box
    attack: PGD and AutoAttack barely move, so black-box Square beats them and eps = 1 leaves points."""
    masked = with_input_layer(net, Quantize())
    suite = run_suite(masked, data, cfg.replace(eval_suite="quick", eval_aa_n=60), ENV, FP32, level=CHEAP_QUICK)
    flagged = {row["check"] for row in suite.masking if row["flagged"]}
    assert {"zero_gradients", "unbounded_eps", "black_box_vs_white_box"} <= flagged
    assert suite.summary["any_masking_flag"] is True and suite.summary["masking_flags"] == len(flagged)
    assert "zero gradient" in suite.summary["aa_warnings"]  # AutoAttack's own check, recorded
    assert suite.summary["square_acc"] < suite.summary["aa_acc"]


# ---------------------------------------------------------------------------------- geometry


def test_geometry_rows(quick, cfg):
    rows = {row["split"]: row for row in quick.geometry}
    assert set(rows) == {"test", "test_pgd"}
    metrics = {"intra_class_compactness", "inter_class_separation", "compactness_separation_ratio",
               "min_angle_deg", "mean_angle_deg", "simplex_angle_deg", "simplex_deviation_deg",
               "mean_dist_own", "mean_dist_rival", "mean_margin", "frac_positive_margin"}
    for row in rows.values():
        assert metrics <= set(row) and row["n"] == cfg.eval_aa_n and row["prototype_source"] == "prototype_head"
        assert all(math.isfinite(row[m]) for m in metrics)
        assert 0 < row["min_angle_deg"] <= row["mean_angle_deg"] <= 180
        assert row["simplex_angle_deg"] == pytest.approx(math.degrees(math.acos(-1 / 9)))
        # dot logits with prototypes of equal norm: argmax_j <z, c_j> = argmin_j ||z - c_j||, so the
        # nearest-prototype rule is the classifier and its accuracy is the row's accuracy
        assert row["frac_positive_margin"] == pytest.approx(row["accuracy"])
    assert rows["test"]["accuracy"] == quick.summary["clean_acc_subset"]
    assert rows["test_pgd"]["accuracy"] == quick.summary["pgd_acc_subset"]
    assert rows["test_pgd"]["mean_margin"] < rows["test"]["mean_margin"]  # attacks push features to rivals
    assert rows["test_pgd"]["min_angle_deg"] == rows["test"]["min_angle_deg"]  # same prototypes


# ------------------------------------------------------------------------------- corruptions


def test_no_generated_corruptions_for_8x8_digits(quick):
    assert quick.corruptions == []
    assert quick.summary["corruption_source"] == "none"
    assert "(3, 32, 32)" in quick.summary["corruption_note"]


def test_generated_corruption_rows(rgb32, cfg):
    model, data32 = rgb32
    level = SuiteLevel("corruptions_only", corruptions=True)
    suite = run_suite(model, data32, cfg.replace(eval_n=100), ENV, FP32, level=level)
    rows = suite.corruptions
    assert len(rows) == len(GENERATED_BENCHMARK) * len(SEVERITIES) == 70
    assert {(r["corruption"], r["severity"]) for r in rows} == {
        (c, s) for c in GENERATED_BENCHMARK for s in SEVERITIES}
    for row in rows:
        assert set(row) >= {"source", "corruption", "severity", "n", "accuracy"}
        assert row["source"] == "generated-c" and row["n"] == cfg.eval_corruption_n
        assert 0 <= row["accuracy"] <= 1 and row["label_agreement"] == 1.0
    summary = suite.summary
    n = summary["corruption_n"]
    assert summary["corruption_source"] == "generated-c" and summary["corruption_count"] == 14
    assert summary["corruption_acc"] == pytest.approx(np.mean([r["accuracy"] for r in rows]))
    assert summary["corruption_clean_acc"] > 0.9
    assert summary["corruption_acc"] <= summary["corruption_clean_acc"] + noise_tolerance(n)
    by_severity = {s: np.mean([r["accuracy"] for r in rows if r["severity"] == s]) for s in SEVERITIES}
    assert by_severity[5] <= by_severity[1] + noise_tolerance(n)  # harsher corruptions cost accuracy


def test_released_corruption_files_are_read_and_named(rgb32, tmp_path):
    """Fake CIFAR-10-C files whose 'corrupted' images are the clean ones: every row must equal clean accuracy."""
    model, data32 = rgb32
    m = 20
    hwc = data32.test.images[:m].permute(0, 2, 3, 1).numpy()
    for name in ("gaussian_noise", "fog"):
        np.save(tmp_path / f"{name}.npy", np.concatenate([hwc] * 5))
    np.save(tmp_path / "labels.npy", np.concatenate([data32.test.labels[:m].numpy()] * 5))
    cfg = ExperimentConfig.from_dict(dict(dataset="cifar10", corruption_root=str(tmp_path), eval_corruption_n=m,
                                          eval_n=m, device="cpu", precision="fp32"))
    suite = run_suite(model, data32, cfg, ENV, FP32, level=SuiteLevel("corruptions_only", corruptions=True))
    assert suite.summary["corruption_source"] == "cifar10-c" and suite.summary["corruption_count"] == 2
    assert len(suite.corruptions) == 10
    clean = suite.summary["corruption_clean_acc"]
    assert all(r["source"] == "cifar10-c" and r["n"] == m and r["accuracy"] == clean for r in suite.corruptions)
    assert suite.summary["corruption_label_agreement"] == 1.0


def test_an_empty_corruption_root_fails_before_training(tmp_path):
    cfg = ExperimentConfig.from_dict(dict(dataset="cifar10", corruption_root=str(tmp_path)))
    with pytest.raises(ValueError, match="corruption_root"):
        check_inputs(cfg)
    check_inputs(cfg.replace(eval_suite="basic"))  # the basic level reads no corruptions
    check_inputs(cfg.replace(dataset="svhn"))  # no released files for SVHN: the generator is used


# ------------------------------------------------------------------------------ integration


def test_suite_rows_fit_the_parquet_schema(quick, tmp_path):
    keys = {"study": "s", "trial_id": "t0", "variant": "full", "seed": 0}
    for table, rows in (("evals", quick.evals), ("geometry", quick.geometry), ("masking", quick.masking)):
        results.write_table(tmp_path, table, [{**keys, **row} for row in rows])
        frame = results.read_table(tmp_path, table)
        assert len(frame) == len(rows), f"{table}: rows collide on the natural key {results.UNIQUE_KEYS[table]}"


def test_unknown_suite_level_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="basic, full, quick"):
        SUITE_LEVELS.get("thorough")
    full = SUITE_LEVELS.get("full")
    assert full.autoattack == "standard" and full.strong_pgd == (50, 10)


def test_points_give_every_evals_row_its_accuracy_exactly(quick, data, net, cfg, tmp_path):
    """points.parquet: per evaluation, the mean of `correct` is the evals row's accuracy (the same count
    over the same n), and `index` is the point's position in the whole test split."""
    keys = {"study": "s", "trial_id": "t0", "variant": "full", "seed": 0}
    results.write_table(tmp_path, "points", results.points_frame(quick.evals, quick.points, keys))
    points = results.read_table(tmp_path, "points")
    assert points["index"].dtype == "int32" and points["correct"].dtype == bool
    assert str(points["attack"].dtype) == "category"
    by_key = points.groupby(results.POINT_EVAL_KEY, observed=True)["correct"].agg(["sum", "size"])
    assert len(by_key) == len(quick.evals)  # every evaluation has its points, no two share a key
    for row in quick.evals:
        correct, n = by_key.loc[tuple(row[k] for k in results.POINT_EVAL_KEY)]
        assert n == row["n"] and correct / n == row["accuracy"], row["attack"]
    # the clean points are the model's clean answers on those positions of the test split
    clean = points[points["attack"] == "clean"]
    x = to_float(data.test.images[torch.tensor(clean["index"].to_numpy(), dtype=torch.long)])
    with torch.no_grad(), eval_mode(net):
        expected = (net(x).argmax(1) == data.test.labels[clean["index"].to_numpy()]).numpy()
    assert (clean["correct"].to_numpy() == expected).all()
    worst = points[points["attack"] == "worst_case"].set_index("index")["correct"]
    for attack in ("clean", "autoattack", "targeted_rivals"):  # the worst case is never right where one is wrong
        other = points[points["attack"] == attack].set_index("index")["correct"].reindex(worst.index)
        assert not (worst & ~other).any(), attack
