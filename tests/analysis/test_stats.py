"""The statistics of analysis/stats.py, crossed_design.py and t_test_power.py that use per-point results or plan a
study, each against a known answer: a published example, an independent computation, or a simulation whose
variance is known exactly."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import scipy.stats

from ..support import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from analysis import crossed_design, stats, t_test_power  # noqa: E402

# ------------------------------------------------------------------ crossed seeds x images design


def _rss(design: np.ndarray, y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(((y - design @ coef) ** 2).sum())


def test_crossed_mean_squares_equal_least_squares_fits():
    """MS_seed, MS_image, MS_resid against an independent computation: residual sums of squares of
    least-squares fits with seed and image dummies (balanced design: SS_seed = RSS(image) - RSS(both))."""
    rng = np.random.default_rng(3)
    s, i = 4, 7
    d = rng.integers(-1, 2, size=(s, i)).astype(float)
    y = d.ravel()
    seed_dummies = np.kron(np.eye(s), np.ones((i, 1)))
    image_dummies = np.kron(np.ones((s, 1)), np.eye(i))
    both = np.hstack([seed_dummies, image_dummies])
    rss_both = _rss(both, y)
    ss_seed = _rss(image_dummies, y) - rss_both
    ss_image = _rss(seed_dummies, y) - rss_both
    result = crossed_design.crossed_variance(d)
    assert result.ms_seed == pytest.approx(ss_seed / (s - 1), rel=1e-9)
    assert result.ms_image == pytest.approx(ss_image / (i - 1), rel=1e-9)
    assert result.ms_resid == pytest.approx(rss_both / ((s - 1) * (i - 1)), rel=1e-9)
    expected = max(result.ms_seed + result.ms_image - result.ms_resid, 0) / (s * i)
    assert result.variance == pytest.approx(expected) and result.mean == pytest.approx(d.mean())
    # Satterthwaite: (sum c_k MS_k)^2 / sum (c_k MS_k)^2 / df_k, and the t quantile at that df
    ms = np.array([result.ms_seed, result.ms_image, result.ms_resid])
    df = (ms[0] + ms[1] - ms[2]) ** 2 / (ms ** 2 / np.array([s - 1, i - 1, (s - 1) * (i - 1)])).sum()
    assert result.df == pytest.approx(max(df, 1))
    assert result.half_width == pytest.approx(scipy.stats.t.ppf(0.975, result.df) * result.se)


def test_crossed_variance_clips_at_zero_and_rejects_a_single_seed():
    d = np.array([[1.0, -1.0], [-1.0, 1.0]])  # all residual: MS_seed = MS_image = 0 < MS_resid
    assert crossed_design.crossed_variance(d).variance == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        crossed_design.crossed_variance(np.ones((1, 5)))


# A per-point simulation whose Var(mean D) is known exactly. Reference right on image i with probability
# q_i; the variant with q_i + d_i + a_s (image-specific effect d_i, seed effect a_s), independently given
# those. Then E[D | a, d] = a_s + d_i, so Var(mean D) = Var(a)/S + Var(d)/I + E[p_v(1-p_v) + q(1-q)]/(S I).
Q = np.array([0.3, 0.5, 0.7])


def _truth(seed_effect: float, image_effect: float, s: int, i: int) -> float:
    a, d = np.array([-seed_effect, seed_effect]), np.array([-image_effect, 0.0, image_effect])
    p_v = Q[:, None, None] + d[None, :, None] + a[None, None, :]
    bernoulli = (p_v * (1 - p_v)).mean() + (Q * (1 - Q)).mean()
    return seed_effect ** 2 / s + d.var() / i + bernoulli / (s * i)


def _simulate(rng: np.random.Generator, sims: int, seed_effect: float, image_effect: float, s: int, i: int
              ) -> np.ndarray:
    q = rng.choice(Q, size=(sims, 1, i))
    d = rng.choice([-image_effect, 0.0, image_effect], size=(sims, 1, i))
    a = rng.choice([-seed_effect, seed_effect], size=(sims, s, 1))
    reference = rng.random((sims, s, i)) < q
    variant = rng.random((sims, s, i)) < q + d + a
    return variant.astype(float) - reference.astype(float)


@pytest.mark.parametrize("seed_effect, image_effect", [(0.05, 0.1), (0.01, 0.02)],
                         ids=["seed-dominated", "residual-dominated"])
def test_moments_se_matches_a_known_variance_and_the_bootstrap_is_conservative(seed_effect, image_effect):
    s, i, sims = 5, 359, 2000
    rng = np.random.default_rng(11)
    truth = _truth(seed_effect, image_effect, s, i)
    d = _simulate(rng, sims, seed_effect, image_effect, s, i)
    # the simulation has the variance we say: the sample variance of the study means, to 4 of its SEs
    means = d.mean(axis=(1, 2))
    assert abs(means.var(ddof=1) - truth) <= 4 * truth * math.sqrt(2 / (sims - 1))
    # the moments estimator is unbiased: its mean over the simulations, to 4 SEs of that mean
    estimates = np.array([crossed_design.crossed_variance(x).variance for x in d])
    assert abs(estimates.mean() - truth) <= 4 * estimates.std(ddof=1) / math.sqrt(sims)
    assert math.sqrt(estimates.mean()) == pytest.approx(math.sqrt(truth), rel=0.05)
    # the pigeonhole bootstrap overstates the SE: the mean bootstrap variance exceeds the truth by more
    # than 4 SEs of that mean (fewer simulations: each runs 200 replicates)
    boot = np.array([crossed_design.pigeonhole_bootstrap(x, n_boot=200, seed=k).se ** 2 for k, x in enumerate(d[:150])])
    assert boot.mean() - 4 * boot.std(ddof=1) / math.sqrt(len(boot)) > truth


def test_bootstrap_percentile_interval_brackets_the_mean_and_is_reproducible():
    d = _simulate(np.random.default_rng(0), 1, 0.05, 0.1, 5, 60)[0]
    first = crossed_design.pigeonhole_bootstrap(d, 500, seed=4)
    again = crossed_design.pigeonhole_bootstrap(d, 500, seed=4)
    assert first == again and first.low < d.mean() < first.high


# ---------------------------------------------------------------------------------- sign flip


def test_sign_flip_matches_fishers_darwin_example():
    """Fisher (1935, The Design of Experiments, section 21): Darwin's 15 pairs of Zea mays (differences in
    eighths of an inch); 1726 of the 32768 sign patterns are at least as extreme, p = 0.05267."""
    darwin = [49, -67, 8, 16, 6, 23, 28, 41, 14, 29, 56, 24, 75, 60, -48]
    assert stats.sign_flip_p(darwin) == pytest.approx(1726 / 32768)


def test_sign_flip_floor_and_brute_force():
    assert stats.sign_flip_p([0.01] * 5) == pytest.approx(0.0625)  # a constant difference: 2 / 2^5
    assert stats.sign_flip_p([-0.5] * 9) == pytest.approx(2 / 512)
    d = [0.3, -0.1, 0.7, 0.2]
    patterns = [abs(sum(sign * x for sign, x in zip(signs, d))) for signs in itertools.product([1, -1], repeat=4)]
    assert stats.sign_flip_p(d) == pytest.approx(np.mean(np.array(patterns) >= abs(sum(d)) - 1e-12))
    # above 20 seeds a Monte-Carlo estimate: the same sign on all 24 seeds has exact p 2 / 2^24 ~ 1e-7, so the
    # estimate is its floor 1 / (draws + 1); a symmetric set (half +1, half -1: exact p 1) estimates 1
    assert stats.sign_flip_p(np.ones(24)) == pytest.approx(1 / (stats.SIGN_FLIP_DRAWS + 1))
    assert stats.sign_flip_p([1.0, -1.0] * 12) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    d = rng.normal(0.3, 1.0, 22)  # the exact p by the normal approximation of the permutation distribution
    z = abs(d.sum()) / math.sqrt((d ** 2).sum())
    assert stats.sign_flip_p(d) == pytest.approx(2 * (1 - scipy.stats.norm.cdf(z)), abs=0.02)


# ----------------------------------------------------------------------------------- McNemar / CMH


def _cmh_general(variant_ok: np.ndarray, reference_ok: np.ndarray) -> float:
    """The Cochran-Mantel-Haenszel statistic from its general definition, one 2x2 stratum per (seed, image)
    matched pair (rows: variant / reference; columns: right / wrong), hypergeometric mean and variance."""
    numerator, variance = 0.0, 0.0
    for v, r in zip(variant_ok.ravel(), reference_ok.ravel()):
        table = np.array([[v, 1 - v], [r, 1 - r]], dtype=float)
        n1, n2 = table.sum(axis=1)
        m1, m2 = table.sum(axis=0)
        total = n1 + n2
        numerator += table[0, 0] - n1 * m1 / total
        variance += n1 * n2 * m1 * m2 / (total ** 2 * (total - 1))
    return numerator ** 2 / variance


def test_mcnemar_cmh_against_the_general_cmh_formula_and_a_hand_table():
    rng = np.random.default_rng(5)
    reference = rng.random((3, 40)) < 0.7
    variant = np.where(rng.random((3, 40)) < 0.2, ~reference, reference)
    result = crossed_design.mcnemar_cmh(variant, reference)
    assert result.statistic == pytest.approx(_cmh_general(variant, reference))
    assert result.p_value == pytest.approx(scipy.stats.chi2.sf(result.statistic, 1))
    # by hand: seeds with (b, c) = (3, 0), (2, 1): statistic (5 - 1)^2 / 6; seed 0's exact p = 2 / 2^3
    v = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=bool)
    r = np.array([[0, 0, 0, 1, 0], [0, 0, 1, 1, 0]], dtype=bool)
    hand = crossed_design.mcnemar_cmh(v, r)
    assert (hand.b, hand.c) == ((3, 2), (0, 1))
    assert hand.statistic == pytest.approx(16 / 6) and hand.odds_ratio == pytest.approx(5.0)
    assert hand.seed_p[0] == pytest.approx(0.25) and hand.seed_p[1] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- TOST


def test_tost_equals_two_one_sided_scipy_t_tests():
    d = np.array([0.2, -0.4, 0.1, 0.5, -0.1])
    se, margin = d.std(ddof=1) / math.sqrt(len(d)), 1.0
    result = stats.tost(d.mean(), se, len(d) - 1, margin)
    assert result.p_lower == pytest.approx(scipy.stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    assert result.p_upper == pytest.approx(scipy.stats.ttest_1samp(d, margin, alternative="less").pvalue)
    # equivalent at 0.05 exactly when the 90% interval lies inside the margin
    half90 = scipy.stats.t.ppf(0.95, len(d) - 1) * se
    assert result.equivalent == (abs(d.mean()) + half90 < margin)
    narrow = stats.tost(d.mean(), se, len(d) - 1, 0.3)
    assert narrow.equivalent == (abs(d.mean()) + half90 < 0.3) and not narrow.equivalent
    with pytest.raises(ValueError, match="margin"):
        stats.tost(0.0, 1.0, 4, 0.0)


# ---------------------------------------------------------------------------------------- power

# The paired-t minimal detectable effect for sd_diff = 0.65 points, power 0.8, at alpha 0.05 and at Holm's
# first step over 7 and 33 comparisons (non-central t); the planning table of docs/statistics.md.
MDE_TABLE = {(5, 1): 1.09, (5, 7): 1.87, (5, 33): 2.79, (10, 1): 0.65, (10, 7): 0.91, (10, 33): 1.15,
             (3, 7): 5.63, (3, 33): 12.23}


@pytest.mark.parametrize("seeds, m", sorted(MDE_TABLE))
def test_minimal_detectable_effect_table(seeds, m):
    mde = t_test_power.minimal_detectable_effect(0.65, seeds, 0.05 / m, 0.8)
    assert mde == pytest.approx(MDE_TABLE[seeds, m], abs=0.006)


def test_minimal_detectable_effect_has_the_stated_power_in_a_simulation():
    """At the MDE, simulated paired t-tests reject in 80% of studies (to 4 binomial SEs)."""
    n, sd, runs = 5, 0.65, 40_000
    mde = t_test_power.minimal_detectable_effect(sd, n)
    d = np.random.default_rng(2).normal(mde, sd, size=(runs, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rate = np.mean(np.abs(t) > scipy.stats.t.ppf(0.975, n - 1))
    assert abs(rate - 0.8) <= 4 * math.sqrt(0.8 * 0.2 / runs)


def test_seeds_needed_is_the_smallest_n_with_the_power():
    mde5 = t_test_power.minimal_detectable_effect(0.65, 5)
    assert t_test_power.seeds_needed(mde5 * 1.001, 0.65) == 5
    assert t_test_power.paired_t_power(mde5 * 1.001, 0.65, 4) < 0.8
    assert t_test_power.seeds_needed(0.01, 0.65, max_seeds=50) is None
