"""The power of a two-sided t-test and the smallest true difference it detects, from the non-central t.

Two ways to give the test: a paired t-test over n seeds whose per-seed differences have SD sd_diff
(`paired_t_power`, `minimal_detectable_effect`, `seeds_needed`), or any estimate with its standard error and
degrees of freedom, such as a crossed-design interval's (`t_power`, `detectable_effect`). The plans that use
them (a study's dry run, the factorial design) are in power.py and factorial.py.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats as scipy_stats


def _two_sided_power(nc: float, df: float, alpha: float) -> float:
    """P(|T'| > t_{1 - alpha/2, df}) for T' non-central t with noncentrality nc and df degrees of freedom."""
    t = scipy_stats.t.ppf(1 - alpha / 2, df)
    # P(T' < -t | nc) = P(T' > t | -nc); scipy's nct.cdf at large nc returns NaN where it is ~0
    return float(scipy_stats.nct.sf(t, df, nc) + np.nan_to_num(scipy_stats.nct.sf(t, df, -nc)))


def _smallest_detected(power_of: Callable[[float], float], start: float, power: float, xtol: float) -> float:
    """The difference d > 0 at which power_of(d) == power: brentq on [0, high], high doubled from `start` until
    its power reaches `power`."""
    from scipy.optimize import brentq

    high = start
    while power_of(high) < power:
        high *= 2
    return float(brentq(lambda d: power_of(d) - power, 0.0, high, xtol=xtol))


def paired_t_power(difference: float, sd_diff: float, n_seeds: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level alpha to detect a true mean difference, with n
    seeds whose differences have sd `sd_diff`: exact, from the non-central t (noncentrality
    difference * sqrt(n) / sd_diff, n - 1 degrees of freedom)."""
    if n_seeds < 2:
        return math.nan
    df, nc = n_seeds - 1, abs(difference) * math.sqrt(n_seeds) / sd_diff
    return _two_sided_power(nc, df, alpha)


def minimal_detectable_effect(sd_diff: float, n_seeds: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided paired t-test over n seeds detects with `power` at level
    alpha (for the first step of Holm over m comparisons pass alpha / m); same unit as sd_diff."""
    if n_seeds < 2 or not sd_diff > 0:
        return math.nan
    return _smallest_detected(lambda d: paired_t_power(d, sd_diff, n_seeds, alpha), sd_diff, power, 1e-10)


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
    return _two_sided_power(abs(difference) / se, df, alpha)


def detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided t-test of `t_power` detects with `power` at level alpha;
    same unit as se. minimal_detectable_effect(sd, n) == detectable_effect(sd / sqrt(n), n - 1)."""
    if not (se > 0 and df >= 1):
        return math.nan
    return _smallest_detected(lambda d: t_power(d, se, df, alpha), se, power, 1e-12)
