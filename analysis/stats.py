"""Statistics over seeds: t confidence intervals and paired tests against the reference variant, with
Holm's correction for testing many (variant, metric) pairs at once; the exact sign-flip test of per-seed
differences and Schuirmann's equivalence test (TOST) of an estimate.

The seeds x test-images design of per-point results is in crossed_design.py, the power of a t-test and the
smallest difference it detects in t_test_power.py. `pareto_mask` (the non-dominated trials) lives with the
results schema in dpnp_ray.results and is re-exported here.

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


def holm_planned(p_values: Iterable[float]) -> np.ndarray:
    """Holm over a planned family: a comparison without a test (NaN) counts as p = 1, so the family never
    shrinks below the plan's, and keeps NaN as its own adjusted p."""
    p = np.asarray(list(p_values), dtype=float)
    adjusted = holm_adjust(np.where(np.isfinite(p), p, 1.0))
    adjusted[~np.isfinite(p)] = np.nan
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


# ------------------------------------------------------------ beyond the t-test: sign flips and equivalence

SIGN_FLIP_EXACT_MAX = 20
"""sign_flip_p enumerates every sign pattern up to this many seeds, and draws SIGN_FLIP_DRAWS of them above."""
SIGN_FLIP_DRAWS = 200_000


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
