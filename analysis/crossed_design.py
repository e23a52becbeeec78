"""The crossed seeds x test-images design of per-point results (points.parquet).

A study's accuracy varies with the training seed and with the test images. With per-point results the paired
difference of two variants is a seeds x images matrix D[s, i] = correct_variant[s, i] - correct_reference[s, i]
in {-1, 0, 1}, a crossed design: the same images for every seed. The functions below take that matrix (or the
two boolean matrices it comes from); verdicts.variants_point_matrices builds them from a study.

Pure functions of arrays; nothing here draws or reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from .stats import SymmetricBounds

MOMENTS_INTERVAL_NAME = ("seed x test-image method of moments: var(mean D) = (MS_seed + MS_image - MS_resid) / "
                         "(seeds x images), t with Satterthwaite's degrees of freedom")
BOOTSTRAP_INTERVAL_NAME = "two-level paired (pigeonhole) bootstrap over seeds and test images, percentile"
SEED_ONLY_INTERVAL_NAME = "t over seeds (conditional on this one test split: the test images' variation is left out)"


@dataclass(frozen=True)
class CrossedVariance(SymmetricBounds):
    """The mean of a seeds x images matrix and the variance of that mean over new seeds AND new images,
    from the mean squares of a two-way analysis of variance without replication."""

    mean: float
    n_seeds: int
    n_images: int
    ms_seed: float
    ms_image: float
    ms_resid: float
    variance: float  # (ms_seed + ms_image - ms_resid) / (n_seeds * n_images), clipped at 0
    df: float  # Satterthwaite's degrees of freedom of that combination of mean squares
    half_width: float  # of the `confidence` t-interval
    confidence: float

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)


def crossed_variance(d: np.ndarray, confidence: float = 0.95) -> CrossedVariance:
    """Method-of-moments variance of mean(d) for a crossed seeds x images design (rows: seeds).

    Model d[s, i] = mu + a_s + b_i + e_si (seed, image and residual components). The mean squares have
    E[MS_seed] = I s_a^2 + s_e^2, E[MS_image] = S s_b^2 + s_e^2, E[MS_resid] = s_e^2, so
    (MS_seed + MS_image - MS_resid) / (S I) is unbiased for Var(mean) = s_a^2/S + s_b^2/I + s_e^2/(S I);
    a negative estimate (possible by chance) is clipped at 0. The interval is t with Satterthwaite's
    degrees of freedom for a sum of mean squares (coefficients +1, +1, -1).
    """
    d = np.asarray(d, dtype=float)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(f"crossed_variance needs a seeds x images matrix with at least 2 of each, not shape {d.shape}")
    s, i = d.shape
    grand = d.mean()
    seed_means, image_means = d.mean(axis=1), d.mean(axis=0)
    ms = np.array([i * ((seed_means - grand) ** 2).sum() / (s - 1),
                   s * ((image_means - grand) ** 2).sum() / (i - 1),
                   ((d - seed_means[:, None] - image_means[None, :] + grand) ** 2).sum() / ((s - 1) * (i - 1))])
    dfs = np.array([s - 1, i - 1, (s - 1) * (i - 1)], dtype=float)
    combined = ms[0] + ms[1] - ms[2]
    variance = max(combined, 0.0) / (s * i)
    denominator = float(((ms ** 2) / dfs).sum())
    df = combined ** 2 / denominator if combined > 0 and denominator > 0 else float(s - 1)
    df = max(df, 1.0)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, df)) * math.sqrt(variance)
    return CrossedVariance(float(grand), s, i, float(ms[0]), float(ms[1]), float(ms[2]), variance, float(df),
                           half, confidence)


@dataclass(frozen=True)
class BootstrapInterval:
    mean: float
    se: float  # sd of the bootstrap means
    low: float
    high: float
    n_boot: int


def pigeonhole_bootstrap(d: np.ndarray, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
                         ) -> BootstrapInterval:
    """Two-level paired bootstrap of mean(d) (Owen 2007, "The pigeonhole bootstrap"): each replicate draws
    seeds with replacement and test images with replacement, independently, and keeps every (seed, image)
    cell of the two draws, so the same images serve every seed and both variants (d is already paired).
    Conservative: each level's resampling also carries the residual (and the other level's spread), so its
    expected variance exceeds Var(mean) and its SE overstates; show it beside `crossed_variance`, not instead."""
    d = np.asarray(d, dtype=float)
    s, i = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        rows = np.bincount(rng.integers(0, s, s), minlength=s)  # multiplicities: a weighted mean, no copies
        cols = np.bincount(rng.integers(0, i, i), minlength=i)
        means[b] = rows @ d @ cols / (s * i)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return BootstrapInterval(float(d.mean()), float(means.std(ddof=1)), float(low), float(high), n_boot)


@dataclass(frozen=True)
class McNemarCMH:
    """Per-seed McNemar tables combined over seeds as strata (Cochran-Mantel-Haenszel).

    b[s]: images the variant gets right and the reference wrong on seed s; c[s]: the reverse. Each image
    of a seed is a matched pair (a 2x2 stratum of its own); summing the strata's hypergeometric means and
    variances seed by seed gives the statistic (sum b - sum c)^2 / sum (b + c) and the Mantel-Haenszel
    common odds ratio sum b / sum c. Images are treated as independent within a seed; the same image's
    correlation across seeds is not modelled (the crossed-design interval accounts for it)."""

    b: tuple[int, ...]
    c: tuple[int, ...]
    seed_p: tuple[float, ...]  # exact per-seed McNemar p (binomial, two-sided)
    statistic: float
    p_value: float
    odds_ratio: float


def mcnemar_cmh(variant_ok: np.ndarray, reference_ok: np.ndarray) -> McNemarCMH:
    """McNemar per seed (rows) and the CMH combination over seeds; inputs are seeds x images booleans."""
    v, r = np.asarray(variant_ok, dtype=bool), np.asarray(reference_ok, dtype=bool)
    if v.shape != r.shape or v.ndim != 2:
        raise ValueError(f"mcnemar_cmh needs two seeds x images arrays of one shape, not {v.shape} and {r.shape}")
    b, c = (v & ~r).sum(axis=1), (~v & r).sum(axis=1)
    seed_p = tuple(float(scipy_stats.binomtest(int(bs), int(bs + cs)).pvalue) if bs + cs else 1.0
                   for bs, cs in zip(b, c))
    discordant = int((b + c).sum())
    if discordant == 0:
        return McNemarCMH(tuple(map(int, b)), tuple(map(int, c)), seed_p, 0.0, 1.0, math.nan)
    statistic = float((b.sum() - c.sum()) ** 2 / discordant)
    odds = float(b.sum() / c.sum()) if c.sum() else math.inf
    return McNemarCMH(tuple(map(int, b)), tuple(map(int, c)), seed_p, statistic,
                      float(scipy_stats.chi2.sf(statistic, 1)), odds)
