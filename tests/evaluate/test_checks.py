"""Tests of dpnp_ray.evaluate.checks: the gradient-masking checks' arithmetic, by hand."""

from __future__ import annotations

import pytest

from dpnp_ray.evaluate.checks import (
    PGD_AA_GAP_THRESHOLD,
    check_black_box,
    check_eps0_equals_clean,
    check_eps_monotone,
    check_pgd_aa_gap,
    check_steps_monotone,
    check_unbounded,
    noise_tolerance,
)


def test_masking_checks_by_hand():
    # about 1.6 points at n = 1000, the noise of 1k-point subsets (docs/evaluation.md#pitfalls)
    assert noise_tolerance(1000) == pytest.approx(0.0158, abs=1e-4)  # docs/evaluation.md#noise-tolerance: 1.6 points
    assert noise_tolerance(4) == 0.25 and noise_tolerance(10_000) == 0.005
    rising = check_eps_monotone([0.0, 0.1, 0.2], [0.9, 0.5, 0.6], n=1000)
    assert rising["flagged"] and rising["value"] == pytest.approx(0.1)
    assert not check_eps_monotone([0.2, 0.0, 0.1], [0.4, 0.9, 0.41], n=1000)["flagged"]  # 1 point: noise
    assert not check_steps_monotone("s", ("PGD-10", 0.50), ("PGD-20", 0.51), n=1000)["flagged"]
    assert check_steps_monotone("s", ("PGD-10", 0.50), ("PGD-20", 0.53), n=1000)["flagged"]
    assert check_eps0_equals_clean(0.9, 0.899, n=1000)["flagged"]
    assert not check_eps0_equals_clean(0.9, 0.9, n=1000)["flagged"]
    assert check_pgd_aa_gap(0.55, 0.50, n=1000, strongest="AutoAttack apgd")["flagged"]
    gap = check_pgd_aa_gap(0.53, 0.50, n=1000, strongest="AutoAttack apgd")
    assert not gap["flagged"] and gap["threshold"] == PGD_AA_GAP_THRESHOLD
    assert check_pgd_aa_gap(0.53, 0.50, n=100, strongest="AutoAttack apgd")["threshold"] == pytest.approx(0.05)
    assert check_black_box(0.40, 0.50, n=1000, queries=1000)["flagged"]
    assert not check_black_box(0.55, 0.50, n=1000, queries=1000)["flagged"]
    assert check_unbounded(0.05, n=1000, steps=50)["flagged"] and not check_unbounded(0.0, n=1000, steps=50)["flagged"]
