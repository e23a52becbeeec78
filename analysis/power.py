"""Power before the bill: what difference a planned ablation can detect (`studies/ablation.py --dry-run`).

Two limits, stated separately because they come from different sources of variation:

- **seeds**: the paired test over seeds of each planned comparison (variant vs the reference, matched
  seeds), at level alpha / m for the first step of Holm over the m planned comparisons, with the SD of a
  per-seed paired difference taken from an earlier study (`seed_sd_from`), since no formula gives it;
- **test images, on one seed**: a paired difference measured on one split of n images moves with the draw
  of those images by SD sqrt(q / n), q the fraction of images on which the two models disagree (McNemar's
  discordant pairs); a normal test at `power` on one seed cannot resolve a difference below
  (z_{1 - alpha/2m} + z_{power}) times that. It is an upper bound on what the test set alone costs: the part
  of q that changes from seed to seed averages out over seeds, and only the images' own share stays
  (the crossed interval of analysis/verdicts.py measures it once a study has points). q comes from an
  earlier study's points.parquet when it has one; without it the bound assumes independent errors,
  q = 2 p (1 - p), at the earlier study's accuracy p, or p = 0.5 (the loosest) without an earlier study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .t_test_power import minimal_detectable_effect, seeds_needed

PRIMARY_METRICS = ("worst_case_acc", "aa_acc", "pgd_acc")
"""The robust endpoint of a trials table, first present wins (the per-point worst case over every attack)."""


def test_set_floor(n_test: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest paired accuracy difference (fraction) a two-sided normal test detects with `power` on one split
    of n_test images whose pairs disagree on a fraction `discordance` of them: (z_{1-alpha/2} + z_power)
    sqrt(q / n)."""
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    return float(z * math.sqrt(discordance / n_test))


def discordance_from(points: pd.DataFrame, attack: str, reference: str = "full") -> float:
    """The fraction of (seed, test image) pairs on which a variant and the reference disagree in `attack`'s
    per-point results (points.parquet), pooled over the variants; the earlier study's own eps."""
    rows = points[(points["attack"] == attack) & (points["split"] == "test")] if "split" in points else \
        points[points["attack"] == attack]
    if "norm" in rows:  # the threat model's L-inf ball, not the L2 one
        rows = rows[rows["norm"].astype(str) == "Linf"]
    if rows.empty:
        raise ValueError(f"no {attack!r} rows in the earlier study's points.parquet")
    # one evaluation of the attack: the one with the most points (the study's own threat model, not the strong
    # PGD-50x10 check or an eps-curve point)
    key = [c for c in ("loss", "eps", "steps", "restarts") if c in rows]
    if key:
        sizes = rows.groupby(key, observed=True).size().sort_values(ascending=False)
        chosen = sizes.index[0] if len(key) > 1 else (sizes.index[0],)
        rows = rows[np.logical_and.reduce([rows[c] == v for c, v in zip(key, chosen)])]
    wide = rows.pivot_table(index=["seed", "index"], columns="variant", values="correct", aggfunc="first")
    if reference not in wide:
        raise ValueError(f"no {reference!r} points to pair with")
    flags = [(wide[v] != wide[reference])[wide[v].notna() & wide[reference].notna()] for v in wide.columns.drop(reference)]
    pooled = pd.concat(flags) if flags else pd.Series(dtype=bool)
    if pooled.empty:
        raise ValueError("no variant's points pair with the reference's")
    return float(pooled.mean())


ATTACK_OF = {"worst_case_acc": "worst_case", "aa_acc": "autoattack", "pgd_acc": "pgd", "clean_acc": "clean"}
"""the points.parquet attack of a trials.parquet endpoint"""


def seed_sd_from(trials: pd.DataFrame, metric: str | None = None, reference: str = "full") -> tuple[float, str, int]:
    """(SD of a per-seed paired difference variant - reference, the metric, how many differences), pooled over
    the variants of an earlier study's completed trials: the square root of the mean within-variant variance
    of the differences (each variant's own mean removed)."""
    done = trials[trials["status"] == "completed"] if "status" in trials else trials
    metric = metric or next((m for m in PRIMARY_METRICS if m in done and done[m].notna().any()), None)
    if metric is None:
        raise ValueError(f"no robust endpoint ({', '.join(PRIMARY_METRICS)}) in the earlier study's trials")
    table = done.pivot_table(index="seed", columns="variant", values=metric, aggfunc="mean")
    if reference not in table:
        raise ValueError(f"the earlier study has no {reference!r} trials to pair with")
    residuals = []
    for variant in table.columns.drop(reference):
        d = (table[variant] - table[reference]).dropna().to_numpy()
        if len(d) >= 2:
            residuals.append(d - d.mean())
    if not residuals:
        raise ValueError("the earlier study has no variant with two or more seeds paired with the reference")
    pooled = np.concatenate(residuals)
    dof = len(pooled) - len(residuals)
    return float(math.sqrt((pooled ** 2).sum() / dof)), metric, len(pooled)


@dataclass(frozen=True)
class PowerPlan:
    seeds: int
    n_test: int
    comparisons: int
    alpha: float = 0.05
    power: float = 0.8
    seed_sd: float | None = None  # fraction; None: not known
    seed_sd_source: str = ""
    discordance: float = 0.5  # fraction of test images two models disagree on (0.5: independent, p = 0.5)
    discordance_source: str = "no earlier study: independent errors at p = 0.5, the loosest bound"
    difference: float | None = None  # fraction: the difference the user wants to detect

    @property
    def level(self) -> float:
        """Holm's first step over the planned comparisons."""
        return self.alpha / max(self.comparisons, 1)

    def lines(self) -> list[str]:
        pct = 100
        out = [f"power: {self.comparisons} planned comparison(s) against the reference, each at alpha "
               f"{self.alpha:g} / {max(self.comparisons, 1)} = {self.level:.3g} (Holm's first step), "
               f"{self.power:.0%} power"]
        floor = test_set_floor(self.n_test, self.discordance, self.level, self.power)
        out.append(f"  test images: {self.n_test} per model; on one seed the draw of the test images alone hides a "
                   f"difference below {floor * pct:.2g} points (the models disagree on {self.discordance:.1%} of "
                   f"images: {self.discordance_source}); an upper bound on the test set's share once seeds average")
        if self.seed_sd is None:
            out.append("  seeds: the SD of a per-seed difference is unknown; give --power-from <an earlier study "
                       "directory> to use its trials")
            return out
        mde = minimal_detectable_effect(self.seed_sd, self.seeds, self.level, self.power)
        out.append(f"  seeds: {self.seeds} seeds detect {mde * pct:.2g} points (paired t; SD of a per-seed "
                   f"difference {self.seed_sd * pct:.2g} points, {self.seed_sd_source})")
        if self.seeds <= 5:
            out.append(f"  note: an exact sign-flip test over {self.seeds} seeds cannot go below p = "
                       f"{2 / 2 ** self.seeds:.3g}")
        if self.difference is not None:
            needed = seeds_needed(self.difference, self.seed_sd, self.level, self.power)
            said = f"{needed} seeds" if needed is not None else "more than 10,000 seeds"
            out.append(f"  a difference of {self.difference * pct:g} points needs {said}"
                       + (f"; it is below the one-seed test-image bound ({floor * pct:.2g} points): more test "
                          "images shrink that part" if self.difference < floor else ""))
        return out


def cell_sd_from(trials: pd.DataFrame, metric: str | None = None, reference: str = "full") -> tuple[float, str, int]:
    """(SD over seeds of one variant's endpoint, the endpoint, seeds): what one factorial cell varies by from seed
    to seed, from an earlier study's reference variant (its completed trials)."""
    done = trials[trials["status"] == "completed"] if "status" in trials else trials
    metric = metric or next((m for m in PRIMARY_METRICS if m in done and done[m].notna().any()), None)
    if metric is None:
        raise ValueError(f"the earlier study has none of {', '.join(PRIMARY_METRICS)}")
    values = done.loc[done["variant"] == reference, metric].dropna()
    if len(values) < 2:
        raise ValueError(f"the earlier study has {len(values)} completed {reference!r} trial(s); a SD needs 2")
    return float(values.std(ddof=1)), metric, len(values)


def factorial_lines(factors: int, seeds: int, alpha: float = 0.05, cell_sd: float | None = None,
                    source: str = "") -> list[str]:
    """The dry run's lines for a 2^k factorial: what it estimates and, with a cell SD, each effect's MDE."""
    from .factorial import effect_mde

    tests = factors + factors * (factors - 1) // 2
    lines = [f"factorial: {factors} factors, {2 ** factors} cells x {seeds} seed(s) (each seed a block): {factors} "
             f"main effects and {tests - factors} two-factor interactions, each from every trial; Holm over the "
             f"{tests}, first step at alpha {alpha:g} / {tests}"]
    if cell_sd is None or seeds < 2:
        lines.append("  effects: the seed-to-seed SD of one cell is unknown; give --power-from <an earlier study>")
    else:
        mde = effect_mde(cell_sd, factors, seeds, alpha, tests)
        lines.append(f"  effects: an effect below {100 * mde:.2f} points is missed more often than not (80% power), "
                     f"with a cell SD of {100 * cell_sd:.2f} points ({source}), cells independent given the seed")
    return lines
