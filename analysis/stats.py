"""Statistics over seeds: t confidence intervals and paired tests against the reference variant, with
Holm's correction for testing many (variant, metric) pairs at once.

`pareto_mask` (the non-dominated trials) lives with the results schema in dpnp_ray.results and is re-exported here.

Pure functions of numbers and DataFrames; nothing here draws or reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from dpnp_ray.results import pareto_mask  # noqa: F401  (the one Pareto front; figures and tests use stats.pareto_mask)

#: names under which ablation studies record the full Adv-DPNP, in order of preference
REFERENCE_VARIANTS = ("full", "adv_dpnp")

PAIRED_TEST_NAME = "paired t-test over matching seeds (scipy.stats.ttest_rel, two-sided)"
#: the multiple-comparison correction of a differences table. Holm rather than Benjamini-Hochberg: an
#: ablation table is read claim by claim ("removing PPA lowers AutoAttack accuracy"), so each claim should
#: hold at the stated level (family-wise error), and Holm needs no assumption on how the tests depend on
#: each other, while the table's tests share trials and its metrics (PGD, CW, AutoAttack, worst case) are
#: strongly correlated. Holm is uniformly more powerful than Bonferroni at the same guarantee.
CORRECTION_NAME = "Holm step-down adjustment over every (variant, metric) test of the table (family-wise error)"
MIN_PAIRS_FOR_TEST = 2
MIN_PAIRS_FOR_POWER = 5


class SymmetricBounds:
    """low and high of an interval given as mean ± half_width, for the dataclasses below with both fields."""

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


@dataclass(frozen=True)
class Interval(SymmetricBounds):
    """mean ± t_{(1+c)/2, n-1} · s / sqrt(n); half_width is NaN when n < 2 (no spread to estimate)."""

    mean: float
    half_width: float
    n: int
    sd: float


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean of the finite values (NaN and None are dropped)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan)
    if n == 1:
        return Interval(float(x[0]), math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    t = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1))
    return Interval(float(x.mean()), t * sd / math.sqrt(n), n, sd)


def t_intervals_by(frame: pd.DataFrame, by: str | Sequence[str], value: str, confidence: float = 0.95) -> pd.DataFrame:
    """One row per group: mean, sd, n, half_width, low, high of `value` (a t-interval per group)."""
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, group in frame.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ci = t_interval(group[value], confidence)
        rows.append({**dict(zip(by, key)), "mean": ci.mean, "sd": ci.sd, "n": ci.n, "half_width": ci.half_width,
                     "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows, columns=by + ["mean", "sd", "n", "half_width", "low", "high"])


def reference_variant(variants: Iterable[str]) -> str | None:
    """The full Adv-DPNP among an ablation's variants ("full", else "adv_dpnp"), or None."""
    present = set(variants)
    return next((name for name in REFERENCE_VARIANTS if name in present), None)


@dataclass(frozen=True)
class PairedComparison:
    """variant minus reference on one metric, over the seeds both have a finite value for."""

    variant: str
    reference: str
    metric: str
    n_pairs: int
    mean_difference: float
    ci_half_width: float
    statistic: float
    p_value: float
    test: str
    note: str

    def as_row(self) -> dict:
        return dict(self.__dict__)


def paired_difference(frame: pd.DataFrame, metric: str, variant: str, reference: str, *,
                      pair_on: str = "seed", confidence: float = 0.95) -> PairedComparison:
    """Compare `variant` with `reference` on `metric`, pairing rows by `pair_on` (seed).

    The difference d_i = variant_i - reference_i for each matching seed; its t-interval and
    scipy.stats.ttest_rel's p-value. Fewer than 2 pairs: no test. Fewer than 5: a low-power note.
    """
    def per_seed(name: str) -> pd.Series:
        rows = frame[frame["variant"] == name][[pair_on, metric]].dropna()
        return rows.groupby(pair_on)[metric].mean()  # a seed run twice (resume) counts once

    pairs = pd.concat([per_seed(variant).rename("v"), per_seed(reference).rename("r")], axis=1, join="inner")
    n = len(pairs)
    diff = t_interval(pairs["v"] - pairs["r"], confidence)
    if n < MIN_PAIRS_FOR_TEST:
        note = (f"no test: {n} matching seed{'s' if n != 1 else ''} with {reference!r}; "
                f"a paired test needs at least {MIN_PAIRS_FOR_TEST}")
        return PairedComparison(variant, reference, metric, n, diff.mean, math.nan, math.nan, math.nan,
                                PAIRED_TEST_NAME, note)
    if np.allclose(pairs["v"] - pairs["r"], (pairs["v"] - pairs["r"]).iloc[0]):
        # scipy returns NaN for zero-variance differences; say why instead of showing "p=nan"
        statistic, p_value = math.nan, math.nan
        note = "no test: the difference is identical on every seed (zero variance)"
    else:
        result = scipy_stats.ttest_rel(pairs["v"], pairs["r"])
        statistic, p_value = float(result.statistic), float(result.pvalue)
        note = (f"low power: only {n} matching seeds (fewer than {MIN_PAIRS_FOR_POWER}); "
                "a non-significant p says little" if n < MIN_PAIRS_FOR_POWER else "")
    return PairedComparison(variant, reference, metric, n, diff.mean, diff.half_width, statistic, p_value,
                            PAIRED_TEST_NAME, note)


def holm_adjust(p_values: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order; NaN (no test) stays NaN and is not counted in the family.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Rejecting where the adjusted p <= a keeps the family-wise error rate <= a under any dependence (Holm 1979).
    """
    p = np.asarray(list(p_values), dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def differences_from_reference(frame: pd.DataFrame, metrics: Sequence[str], reference: str | None = None,
                               confidence: float = 0.95) -> pd.DataFrame:
    """A PairedComparison row for every (non-reference variant, metric) whose metric column exists, and
    `p_adjusted`: Holm's adjustment over every test of this table (CORRECTION_NAME)."""
    reference = reference or reference_variant(frame["variant"])
    if reference is None:
        raise ValueError(f"no reference variant among {sorted(frame['variant'].unique())}; "
                         f"expected one of {REFERENCE_VARIANTS} or pass reference=")
    rows = [paired_difference(frame, metric, variant, reference, confidence=confidence).as_row()
            for variant in frame["variant"].drop_duplicates() if variant != reference
            for metric in metrics if metric in frame.columns]
    table = pd.DataFrame(rows, columns=list(PairedComparison.__dataclass_fields__))
    table["p_adjusted"] = holm_adjust(table["p_value"])
    return table


# ------------------------------------------------------------ seeds x test images (per-point results)
#
# A study's accuracy varies with the training seed and with the test images. With per-point results
# (points.parquet) the paired difference of two variants is a seeds x images matrix
# D[s, i] = correct_variant[s, i] - correct_reference[s, i] in {-1, 0, 1}, a crossed design: the same
# images for every seed. The functions below take that matrix; `paired_points` builds it.

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


def sign_flip_p(differences: Iterable[float]) -> float:
    """Exact two-sided sign-flip (permutation) p of paired per-seed differences: the share of the 2^n sign
    patterns whose |sum| is at least the observed |sum| (Fisher 1935, Darwin's Zea mays pairs). Its
    smallest value is 2 / 2^n (n = 5: 0.0625), reached by a difference of the same sign on every seed. Above
    SIGN_FLIP_EXACT_MAX seeds, a Monte-Carlo estimate (fixed seed) from SIGN_FLIP_DRAWS random patterns."""
    d = np.asarray(list(differences), dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return math.nan
    observed, tolerance = abs(d.sum()), 1e-9 * max(1.0, np.abs(d).sum())
    if n > SIGN_FLIP_EXACT_MAX:  # 2^n patterns are too many: a Monte-Carlo p from random sign patterns
        signs = 1 - 2 * np.random.default_rng(0).integers(0, 2, size=(SIGN_FLIP_DRAWS, n))
        hits = int(np.sum(np.abs(signs @ d) >= observed - tolerance))
        return (hits + 1) / (SIGN_FLIP_DRAWS + 1)  # counts the observed pattern: never 0
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    sums = np.abs(signs @ d)
    return float(np.mean(sums >= observed - tolerance))


SIGN_FLIP_EXACT_MAX = 20
"""sign_flip_p enumerates every sign pattern up to this many seeds, and draws SIGN_FLIP_DRAWS of them above."""
SIGN_FLIP_DRAWS = 200_000


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


@dataclass(frozen=True)
class Equivalence:
    """Schuirmann's two one-sided tests of |true difference| < margin."""

    margin: float
    p_lower: float  # H0: difference <= -margin
    p_upper: float  # H0: difference >= +margin
    alpha: float

    @property
    def p_value(self) -> float:
        return max(self.p_lower, self.p_upper)

    @property
    def equivalent(self) -> bool:
        return bool(self.p_value < self.alpha)


def tost(estimate: float, se: float, df: float, margin: float, alpha: float = 0.05) -> Equivalence:
    """TOST (Schuirmann 1987) for an estimate with standard error `se` and t degrees of freedom `df`:
    equivalence within +-margin when both one-sided tests reject at alpha (the same as the 1 - 2 alpha
    interval lying inside (-margin, margin))."""
    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, not {margin!r}")
    if not (se > 0 and math.isfinite(estimate)):
        return Equivalence(margin, math.nan, math.nan, alpha)
    return Equivalence(margin, float(scipy_stats.t.sf((estimate + margin) / se, df)),
                       float(scipy_stats.t.cdf((estimate - margin) / se, df)), alpha)


# ------------------------------------------------------------------------------------- power


def paired_t_power(difference: float, sd_diff: float, n_seeds: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level alpha to detect a true mean difference, with n
    seeds whose differences have sd `sd_diff`: exact, from the non-central t (noncentrality
    difference * sqrt(n) / sd_diff, n - 1 degrees of freedom)."""
    if n_seeds < 2:
        return math.nan
    df, nc = n_seeds - 1, abs(difference) * math.sqrt(n_seeds) / sd_diff
    t = scipy_stats.t.ppf(1 - alpha / 2, df)
    # P(T' < -t | nc) = P(T' > t | -nc); scipy's nct.cdf at large nc returns NaN where it is ~0
    return float(scipy_stats.nct.sf(t, df, nc) + np.nan_to_num(scipy_stats.nct.sf(t, df, -nc)))


def minimal_detectable_effect(sd_diff: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided paired t-test over n seeds detects with `power` at level
    alpha (for the first step of Holm over m comparisons pass alpha / m); same unit as sd_diff."""
    if n_seeds < 2 or not sd_diff > 0:
        return math.nan
    from scipy.optimize import brentq

    high = sd_diff
    while paired_t_power(high, sd_diff, n_seeds, alpha) < power:
        high *= 2
    return float(brentq(lambda d: paired_t_power(d, sd_diff, n_seeds, alpha) - power, 0.0, high, xtol=1e-10))


def seeds_needed(difference: float, sd_diff: float, alpha: float = 0.05, power: float = 0.8,
                 max_seeds: int = 10_000) -> int | None:
    """The fewest seeds (>= 2) at which the paired t-test detects `difference` with `power`; None above max_seeds."""
    for n in range(2, max_seeds + 1):
        if paired_t_power(difference, sd_diff, n, alpha) >= power:
            return n
    return None


def t_power(difference: float, se: float, df: float, alpha: float = 0.05) -> float:
    """Power of a two-sided t-test at level alpha of an estimate with standard error `se` and `df` degrees of
    freedom (a crossed-design interval's Satterthwaite df, or n - 1 over seeds) to detect a true difference:
    non-central t with noncentrality difference / se. paired_t_power is the case se = sd / sqrt(n), df = n - 1."""
    if not (se > 0 and df >= 1):
        return math.nan
    nc = abs(difference) / se
    t = scipy_stats.t.ppf(1 - alpha / 2, df)
    return float(scipy_stats.nct.sf(t, df, nc) + np.nan_to_num(scipy_stats.nct.sf(t, df, -nc)))


def detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided t-test of `t_power` detects with `power` at level alpha;
    same unit as se. minimal_detectable_effect(sd, n) == detectable_effect(sd / sqrt(n), n - 1)."""
    if not (se > 0 and df >= 1):
        return math.nan
    from scipy.optimize import brentq

    high = se
    while t_power(high, se, df, alpha) < power:
        high *= 2
    return float(brentq(lambda d: t_power(d, se, df, alpha) - power, 0.0, high, xtol=1e-12))
