"""Main effects and interactions of a factorial ablation (`--variants factorial:ppa,npr,...`), blocked by seed.

The cells of a 2^k design are the variants `fac_<factor><0|1>_...` (dpnp_ray.study.ablation_grid); the factors
that take both levels among a study's cells are the design. With the levels coded s_f = +1 (the paper's level)
and -1 (removed), the effect of a set E of factors on an endpoint y, within one seed, is the Yates contrast

    effect_E = (2 / 2^k) * sum over cells c of  prod_{f in E} s_f(c) * y_c

so a main effect is mean(y | f on) - mean(y | f off) and a two-factor interaction is half the difference of
one factor's effect between the other's two levels. Each seed is a block: a seed's effect uses that seed's
cells only (all 2^k of them), so anything a seed shifts for every cell cancels. Across seeds the effect gets
the crossed seeds x test-images interval of analysis/verdicts.py when every cell has per-point results (the
contrast applied image by image), else a t interval over seeds; p-values are Holm-adjusted per endpoint over
every effect the table tests (the k main effects and the k(k-1)/2 two-factor interactions; higher orders are
not tested).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from analysis import crossed_design, figures, stats, t_test_power
from analysis.verdicts import CROSSED, MDE_POWER, SEED_ONLY, variants_point_matrices
from dpnp_ray.study.factorial import cell_levels, design_factors

HOLM_NAME = "Holm over every main effect and two-factor interaction of the endpoint"


def design(trials: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(the factors that vary among the factorial cells with completed trials, those cells); ([], []) when the
    study has no complete 2^k design (every combination of the varying factors present)."""
    done = figures.completed(trials)
    cells = [v for v in dict.fromkeys(done["variant"]) if cell_levels(v) is not None]
    if len(cells) < 2:
        return [], []
    levels = {c: cell_levels(c) for c in cells}
    varying = design_factors(cells)
    combos = {tuple(levels[c][f] for f in varying) for c in cells}
    if not varying or len(combos) != 2 ** len(varying) or len(cells) != 2 ** len(varying):
        return [], []
    return varying, cells


def contrast_weights(cells: list[str], factors: list[str], effect: tuple[str, ...]) -> np.ndarray:
    """Per cell, the weight of the effect's Yates contrast: (2 / 2^k) * prod_{f in effect} s_f(c)."""
    signs = [np.prod([1.0 if cell_levels(c)[f] else -1.0 for f in effect]) for c in cells]
    return 2.0 * np.array(signs) / len(cells)


def effects_table(trials: pd.DataFrame, points: pd.DataFrame | None, endpoints: list[str], alpha: float = 0.05
                  ) -> pd.DataFrame:
    """One row per endpoint x effect (main effects, then two-factor interactions): the estimate and its
    interval in accuracy points, p, Holm-adjusted p, the MDE at Holm's first step, and the interval's kind."""
    factors, cells = design(trials)
    if not factors:
        return pd.DataFrame()
    effects = [(f,) for f in factors] + list(itertools.combinations(factors, 2))
    done = figures.completed(trials)
    rows = []
    for endpoint in endpoints:
        if endpoint not in done.columns:
            continue
        matrices = variants_point_matrices(points, trials, endpoint, cells)
        per_seed = done[done["variant"].isin(cells)].pivot_table(index="seed", columns="variant", values=endpoint,
                                                                 aggfunc="last")[cells].dropna()
        group = []
        for effect in effects:
            w = contrast_weights(cells, factors, effect)
            row = {"endpoint": endpoint, "effect": " x ".join(effect), "order": len(effect)}
            if matrices is not None:
                cell_ok = matrices[0]
                contrast = sum(wc * cell_ok[c].astype(float) for wc, c in zip(w, cells))
                crossed = crossed_design.crossed_variance(contrast, 1 - alpha)
                se, df, estimate = crossed.se, crossed.df, crossed.mean
                row.update(n_seeds=contrast.shape[0], n_images=contrast.shape[1], interval=CROSSED)
            else:
                values = per_seed.to_numpy() @ w
                n = len(values)
                estimate = float(values.mean()) if n else math.nan
                se = float(values.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
                df = float(n - 1)
                row.update(n_seeds=n, n_images=0, interval=SEED_ONLY)
            ok = math.isfinite(se) and se > 0
            half = float(stats.scipy_stats.t.ppf(1 - alpha / 2, df)) * se if ok else math.nan
            p = float(2 * stats.scipy_stats.t.sf(abs(estimate) / se, df)) if ok else math.nan
            row.update(estimate=100 * estimate, low=100 * (estimate - half), high=100 * (estimate + half),
                       se=100 * se if ok else math.nan, df=df, p_value=p,
                       mde=100 * t_test_power.detectable_effect(se, df, alpha / len(effects), MDE_POWER)
                       if ok else math.nan)
            group.append(row)
        for row, p_holm in zip(group, stats.holm_planned([r["p_value"] for r in group])):
            row["p_holm"] = float(p_holm)
            row["decided"] = bool(math.isfinite(row["p_holm"]) and row["p_holm"] < alpha)
        rows += group
    return pd.DataFrame(rows)


def effect_mde(cell_sd: float, factors: int, seeds: int, alpha: float = 0.05, tests: int | None = None) -> float:
    """The smallest effect (same units as cell_sd) a 2^k factorial with `seeds` blocks detects with power
    MDE_POWER at Holm's first step over `tests` effects (default: k main effects + k(k-1)/2 interactions),
    when each trial's endpoint varies from seed to seed with SD cell_sd independently across cells: a seed's
    contrast has SD 2 cell_sd / sqrt(2^k), so every effect uses every trial."""
    tests = tests or factors + factors * (factors - 1) // 2
    se = 2 * cell_sd / math.sqrt(2 ** factors) / math.sqrt(seeds)
    return t_test_power.detectable_effect(se, seeds - 1, alpha / tests, MDE_POWER)


def effects_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The effects table in display form (accuracy points)."""
    def pp(v: float, signed: bool = True) -> str:
        return "—" if not math.isfinite(v) else (f"{v:+.2f}" if signed else f"{v:.2f}")

    return pd.DataFrame({
        "endpoint": [figures.label(e) for e in table["endpoint"]],
        "effect": table["effect"],
        "seeds × images": [f"{s} × {i}" if i else f"{s}" for s, i in zip(table["n_seeds"], table["n_images"])],
        "estimate (pp)": [pp(v) for v in table["estimate"]],
        "95% interval (pp)": [f"[{pp(lo)}, {pp(hi)}]" if math.isfinite(lo) else "—"
                              for lo, hi in zip(table["low"], table["high"])],
        "interval": table["interval"],
        "p (Holm)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in table["p_holm"]],
        "MDE (pp)": [pp(m, signed=False) for m in table["mde"]],
        "decided": ["yes" if d else "no" for d in table["decided"]],
    })


def effects_sentence(table: pd.DataFrame) -> str:
    """The factorial's result in words: per endpoint, the effects Holm decides (estimate and interval) and how
    many it leaves undecided, with the smallest effects the design detects."""
    parts = []
    for endpoint, rows in table.groupby("endpoint", sort=False):
        decided = [f"{r.effect} {r.estimate:+.2f} pp [{r.low:+.2f}, {r.high:+.2f}]" for r in rows.itertuples()
                   if r.decided]
        open_rows = rows[~rows["decided"]]
        mde = open_rows["mde"][np.isfinite(open_rows["mde"].astype(float))]
        rest = (f"{len(open_rows)} of {len(rows)} undecided" + (f" (detectable: {mde.min():.2f}-{mde.max():.2f} pp)"
                                                               if len(mde) else "")) if len(open_rows) else ""
        said = "; ".join(p for p in ("; ".join(decided), rest) if p)
        parts.append(f"Factorial effects on {figures.label(endpoint)}: {said}.")
    return " ".join(parts)
