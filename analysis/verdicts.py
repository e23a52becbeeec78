"""The decisions of an ablation study: its declared analysis plan (study.yaml `analysis:`, dpnp_ray/analysis_plan.py)
applied to its results, one verdict per planned comparison x primary endpoint. Every other metric is descriptive.

For a comparison (variant - reference, matched seeds) on an endpoint:

* with per-point results (points.parquet rows of the endpoint's evaluation, POINT_ATTACKS, at the evaluation
  eps, on the test split) for every matched seed of both variants: the seeds x test-images matrix of paired
  differences on the images every one of those trials was evaluated on; its mean, the crossed-design
  interval (crossed_design.crossed_variance: seeds AND test images vary) and beside it the pigeonhole bootstrap
  interval; the test behind Holm is t = mean / se with Satterthwaite's df; CMH p over seeds as strata;
* otherwise (older studies, or an endpoint without points): the paired t over seeds of the trials.parquet
  metric, labelled seed-only: conditional on the one test split, so the test images' variation is left out.

Then: the exact sign-flip p over seeds; Holm over the planned comparisons of that endpoint only; TOST within
+-margin (the same se and df); the minimal detectable effect (power 0.8) at Holm's first step (alpha / m) with
the study's seeds (and test images, when there are points); and the verdict:
`better` / `worse` (Holm p < alpha, by the sign of the difference), `equivalent` (TOST p, Holm-adjusted over the
same family, < alpha), else
`inconclusive`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml

from analysis import crossed_design, figures, stats, t_test_power
from dpnp_ray.analysis_plan import AnalysisPlan, concrete_plan
from dpnp_ray.results import POINT_EVAL_KEY

#: the points.parquet attack that holds each endpoint's per-point results
POINT_ATTACKS = {"clean_acc": "clean", "aa_acc": "autoattack", "worst_case_acc": "worst_case"}
MDE_POWER = 0.8
VERDICTS = ("better", "worse", "equivalent", "inconclusive")
SEED_ONLY = "seed-only t"
CROSSED = "seeds x test images"
HOLM_NAME = "Holm over the planned comparisons of each primary endpoint"
TEST_NAME = ("t of the interval's estimate: mean / se with Satterthwaite's df (seeds x test images), or the paired "
             "t over seeds (seed-only)")


@dataclass(frozen=True)
class Verdict:
    variant: str
    reference: str
    endpoint: str
    n_seeds: int
    n_images: int  # test images of the crossed design; 0: seed-only
    difference: float  # points, variant - reference
    low: float
    high: float
    interval: str  # CROSSED or SEED_ONLY
    se: float
    df: float
    bootstrap_low: float  # NaN without points
    bootstrap_high: float
    p_value: float  # the test of the interval (TEST_NAME)
    p_holm: float
    sign_flip_p: float
    cmh_p: float  # NaN without points
    tost_p: float
    mde: float  # points
    verdict: str
    note: str

    def as_row(self) -> dict:
        return dict(self.__dict__)


def study_plan(study) -> AnalysisPlan:
    """The study's declared plan (study.yaml `analysis:`), or the default plan when it recorded none."""
    recorded = yaml.safe_load(study.recipe) if study.recipe else None
    recorded = recorded if isinstance(recorded, dict) else {}
    variants = list(recorded.get("variants") or [])
    variants += [v for v in figures.variant_order(study.trials["variant"]) if v not in variants]
    return concrete_plan(recorded.get("analysis"), variants, study.trials.columns)


def _per_seed_trials(trials: pd.DataFrame, variant: str) -> pd.Series:
    """seed -> trial_id of the variant's completed trials (a seed run twice: its last trial_id)."""
    rows = figures.completed(trials)
    rows = rows[rows["variant"] == variant].sort_values("trial_id", kind="stable")
    return rows.groupby("seed")["trial_id"].last()


def point_matrices(points: pd.DataFrame | None, trials: pd.DataFrame, endpoint: str, variant: str, reference: str
                   ) -> tuple[np.ndarray, np.ndarray, list] | None:
    """(variant_ok, reference_ok, seeds): `variants_point_matrices` of the two."""
    found = variants_point_matrices(points, trials, endpoint, [variant, reference])
    if found is None:
        return None
    matrices, seeds = found
    return matrices[variant], matrices[reference], seeds


def variants_point_matrices(points: pd.DataFrame | None, trials: pd.DataFrame, endpoint: str, variants: list[str]
                            ) -> tuple[dict[str, np.ndarray], list] | None:
    """({variant: seeds x images booleans}, seeds) of the endpoint's evaluation (test split, at the trial's
    evaluation eps; clean at eps 0), on the seeds every variant completed and the images every one of those
    trials was evaluated on; None when some such trial lacks them (then comparisons are seed-only). A trial
    with several such evaluations (suites, steps) uses the one with the most points."""
    attack = POINT_ATTACKS.get(endpoint)
    if points is None or attack is None or points.empty:
        return None
    ids = {v: _per_seed_trials(trials, v) for v in variants}
    seeds = sorted(set.intersection(*(set(i.index) for i in ids.values())))
    if len(seeds) < 2:
        return None
    eval_eps = trials.set_index("trial_id")["cfg_eval_eps"] if "cfg_eval_eps" in trials.columns else None
    rows = points[(points["attack"] == attack) & (points["split"] == "test")]
    if "norm" in rows:  # the threat model's L-inf ball, not the L2 one (docs/evaluation.md#l2-threat-model)
        rows = rows[rows["norm"].astype(str) == "Linf"]
    else:  # points written before the L2 threat model: every one L-inf
        rows = rows.assign(norm="Linf")
    flags = {}
    for trial_id in [t for v in variants for t in ids[v][seeds]]:
        mine = rows[rows["trial_id"] == trial_id]
        if attack != "clean":
            if eval_eps is None or not np.isfinite(eval_eps.get(trial_id, np.nan)):
                return None
            mine = mine[np.isclose(mine["eps"].astype(float), float(eval_eps[trial_id]), rtol=1e-6, atol=1e-9)]
        if mine.empty:
            return None
        sizes = mine.groupby(POINT_EVAL_KEY, dropna=False).size().sort_values(ascending=False, kind="stable")
        key = dict(zip(POINT_EVAL_KEY, sizes.index[0]))
        chosen = mine
        for column, value in key.items():
            chosen = chosen[chosen[column].isna()] if pd.isna(value) else chosen[chosen[column] == value]
        flags[trial_id] = chosen.set_index("index")["correct"].astype(bool)
    common = sorted(set.intersection(*(set(f.index) for f in flags.values())))
    if len(common) < 2:
        return None
    return {v: np.array([flags[t].loc[common].to_numpy() for t in ids[v][seeds]]) for v in variants}, seeds


def _verdict(difference: float, p_holm: float, tost_p: float, alpha: float) -> str:
    if math.isfinite(p_holm) and p_holm < alpha and difference != 0:
        return "better" if difference > 0 else "worse"
    if math.isfinite(tost_p) and tost_p < alpha:
        return "equivalent"
    return "inconclusive"


def compare(trials: pd.DataFrame, points: pd.DataFrame | None, endpoint: str, variant: str, reference: str,
            plan: AnalysisPlan, n_boot: int = 2000) -> dict:
    """One comparison on one endpoint, before Holm (p_holm and verdict filled by `verdicts`). Points, as the
    stats functions return them in accuracy fractions, are converted to percentage points here."""
    m = max(len(plan.comparisons), 1)
    base = dict(variant=variant, reference=reference, endpoint=endpoint, bootstrap_low=math.nan,
                bootstrap_high=math.nan, cmh_p=math.nan, p_holm=math.nan, verdict="inconclusive", note="")
    matrices = point_matrices(points, trials, endpoint, variant, reference)
    if matrices is not None:
        v, r, seeds = matrices
        d = v.astype(float) - r.astype(float)
        crossed = crossed_design.crossed_variance(d, 1 - plan.alpha)
        boot = crossed_design.pigeonhole_bootstrap(d, n_boot=n_boot, confidence=1 - plan.alpha)
        se, df = crossed.se, crossed.df
        p = float(2 * stats.scipy_stats.t.sf(abs(crossed.mean) / se, df)) if se > 0 else math.nan
        tost = stats.tost(crossed.mean, se, df, plan.margin_fraction, plan.alpha)
        return {**base, "n_seeds": len(seeds), "n_images": d.shape[1], "difference": 100 * crossed.mean,
                "low": 100 * crossed.low, "high": 100 * crossed.high, "interval": CROSSED, "se": 100 * se, "df": df,
                "bootstrap_low": 100 * boot.low, "bootstrap_high": 100 * boot.high, "p_value": p,
                "sign_flip_p": stats.sign_flip_p(d.mean(axis=1)), "cmh_p": crossed_design.mcnemar_cmh(v, r).p_value,
                "tost_p": tost.p_value, "mde": 100 * t_test_power.detectable_effect(se, df, plan.alpha / m, MDE_POWER)}
    done = figures.completed(trials)
    if endpoint not in done.columns:
        return {**base, "n_seeds": 0, "n_images": 0, "difference": math.nan, "low": math.nan, "high": math.nan,
                "interval": SEED_ONLY, "se": math.nan, "df": math.nan, "p_value": math.nan, "sign_flip_p": math.nan,
                "tost_p": math.nan, "mde": math.nan, "note": f"no {endpoint} column in trials.parquet"}
    paired = stats.paired_difference(done, endpoint, variant, reference, confidence=1 - plan.alpha)
    per_seed = pd.concat([done[done["variant"] == name].groupby("seed")[endpoint].mean().rename(name)
                          for name in (variant, reference)], axis=1, join="inner").dropna()
    diffs = (per_seed[variant] - per_seed[reference]).to_numpy() if len(per_seed) else np.array([])
    n = len(diffs)
    # the same difference on every seed (within rounding: differences of image counts are not exact in binary)
    # has no spread to test or to bound; paired_difference says so in its note and p
    spread = n >= 2 and not np.allclose(diffs, diffs[0], rtol=0, atol=1e-12)
    sd = float(diffs.std(ddof=1)) if spread else math.nan
    se, df = (sd / math.sqrt(n), n - 1) if spread else (math.nan, math.nan)
    tost = stats.tost(paired.mean_difference, se, df, plan.margin_fraction, plan.alpha) if spread else None
    half = paired.ci_half_width if spread else math.nan
    return {**base, "n_seeds": n, "n_images": 0, "difference": 100 * paired.mean_difference,
            "low": 100 * (paired.mean_difference - half),
            "high": 100 * (paired.mean_difference + half), "interval": SEED_ONLY,
            "se": 100 * se, "df": df, "p_value": paired.p_value, "sign_flip_p": stats.sign_flip_p(diffs),
            "tost_p": tost.p_value if tost else math.nan,
            "mde": 100 * t_test_power.detectable_effect(se, df, plan.alpha / m, MDE_POWER) if spread else math.nan,
            "note": paired.note}


def verdicts(study, plan: AnalysisPlan | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """One Verdict row per planned comparison x primary endpoint of an ablation study (analysis.study.Study),
    in plan order; Holm per endpoint over the planned comparisons. Empty when the reference has no trials."""
    plan = plan or study_plan(study)
    trials = study.trials
    columns = list(Verdict.__dataclass_fields__)
    if plan.reference not in set(figures.completed(trials)["variant"]):
        return pd.DataFrame(columns=columns)
    points = study.points
    rows = []
    for endpoint in plan.primary:
        group = [compare(trials, points, endpoint, variant, plan.reference, plan, n_boot)
                 for variant in plan.comparisons]
        # Holm over every planned comparison of the endpoint, for the difference test and for TOST alike (an
        # equivalence claim is a claim of the family too); a comparison without a test counts as p = 1, so the
        # family never shrinks below the plan's (stats.holm_planned)
        holm = stats.holm_planned([g["p_value"] for g in group])
        holm_tost = stats.holm_planned([g["tost_p"] for g in group])
        for row, adjusted, adjusted_tost in zip(group, holm, holm_tost):
            row["p_holm"], row["tost_p"] = float(adjusted), float(adjusted_tost)
            row["verdict"] = _verdict(row["difference"], row["p_holm"], row["tost_p"], plan.alpha)
            rows.append(Verdict(**row).as_row())
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------ shown in the markdown page and the HTML report


def _points(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text.replace("-0.00", "0.00").replace("+0.00", "0.00")


def _p(value: float) -> str:
    return f"{value:.3g}" if value is not None and math.isfinite(value) else "—"


def plan_text(plan: AnalysisPlan) -> list[str]:
    """The plan as sentences: where it comes from, what decides and how."""
    source = ("declared in the study's `analysis:` (study.yaml)" if plan.declared else
              "the default plan (the study recorded no `analysis:`)")
    endpoints = ", ".join(f"`{e}`" for e in plan.primary)
    return [
        f"Plan: {source}. Primary endpoints: {endpoints}; reference `{plan.reference}`; "
        f"{len(plan.comparisons)} planned comparisons ({', '.join(f'`{c}`' for c in plan.comparisons)} against "
        f"`{plan.reference}`); equivalence margin ±{plan.margin:g} pp; alpha {plan.alpha:g}.",
        f"Verdict: `better` / `worse` when the Holm-adjusted p ({HOLM_NAME}) is below alpha, by the sign of the "
        f"difference; `equivalent` when TOST within ±{plan.margin:g} pp has a Holm-adjusted p (the same family) below "
        "alpha; else `inconclusive` (also when the difference is the same on every seed, so its spread cannot be "
        "estimated; a comparison without a test counts as p = 1 in Holm's family). "
        f"p: {TEST_NAME}. The sign-flip p is exact over seeds (its floor with n seeds is 2/2^n: 0.0625 for 5). "
        f"MDE: the smallest true difference the test detects with power {MDE_POWER:g} at Holm's first step "
        "(alpha / comparisons), with this study's seeds (and test images when there are points).",
    ]


def interval_note(table: pd.DataFrame, test_images: int | None = None) -> str:
    """What the intervals cover: seed-only (conditional on one test split) or seeds x test images."""
    kinds = set(table["interval"]) if len(table) else set()
    images = f" of {test_images} images" if test_images else ""
    if kinds == {SEED_ONLY}:
        return ("The study has no per-point results (points.parquet) for these endpoints, so every interval, p and "
                f"MDE is seed-only: {crossed_design.SEED_ONLY_INTERVAL_NAME}. It holds for this one fixed test "
                f"split{images}; "
                "another draw of test images would add its own variation, which these intervals omit.")
    parts = []
    if CROSSED in kinds:
        parts.append(f"'{CROSSED}': {crossed_design.MOMENTS_INTERVAL_NAME}; "
                     f"bootstrap: {crossed_design.BOOTSTRAP_INTERVAL_NAME} (conservative)")
    if SEED_ONLY in kinds:
        parts.append(f"'{SEED_ONLY}': {crossed_design.SEED_ONLY_INTERVAL_NAME}")
    return "Intervals: " + "; ".join(parts) + "."


def verdict_rows(table: pd.DataFrame, plan: AnalysisPlan, emphasis: bool = False) -> pd.DataFrame:
    """The verdicts in display form: one row per comparison x endpoint (emphasis: the verdict in markdown bold)."""
    confidence = f"{100 * (1 - plan.alpha):g}%"
    return pd.DataFrame({
        "comparison": [f"{v} − {r}" for v, r in zip(table["variant"], table["reference"])],
        "endpoint": [figures.label(e) for e in table["endpoint"]],
        "seeds × images": [f"{s} × {i}" if i else f"{s}" for s, i in zip(table["n_seeds"], table["n_images"])],
        "difference (pp)": [_points(d, signed=True) for d in table["difference"]],
        f"{confidence} interval (pp)": [f"[{_points(lo, True)}, {_points(hi, True)}]" if math.isfinite(lo) else "—"
                                        for lo, hi in zip(table["low"], table["high"])],
        "interval": table["interval"],
        "bootstrap (pp)": [f"[{_points(lo, True)}, {_points(hi, True)}]" if math.isfinite(lo) else "—"
                           for lo, hi in zip(table["bootstrap_low"], table["bootstrap_high"])],
        "p (Holm)": [_p(p) for p in table["p_holm"]],
        "sign-flip p": [_p(p) for p in table["sign_flip_p"]],
        "CMH p": [_p(p) for p in table["cmh_p"]],
        f"TOST p (Holm, ±{plan.margin:g})": [_p(p) for p in table["tost_p"]],
        "MDE (pp)": [_points(m) for m in table["mde"]],
        "verdict": [f"**{v}**" if emphasis else v for v in table["verdict"]],
        "note": table["note"],
    })


def result_sentence(table: pd.DataFrame, plan: AnalysisPlan) -> str:
    """The study's result in words, one sentence per primary endpoint, from the verdicts and nothing else:
    decided comparisons with their difference and interval, equivalences with their margin, and how many are
    inconclusive with the differences the study could have detected (MDE)."""
    if table.empty:
        return f"No verdicts: the reference `{plan.reference}` has no completed trial."
    sentences = []
    for endpoint in plan.primary:
        rows = table[table["endpoint"] == endpoint]
        if rows.empty:
            continue
        sizes = sorted({f"{s} seeds x {i} test images" if i else f"{s} seeds"
                        for s, i in zip(rows["n_seeds"], rows["n_images"])})
        said = []
        for row in rows.itertuples():
            if row.verdict in ("better", "worse"):
                said.append(f"`{row.variant}` {row.verdict} than `{row.reference}` by "
                            f"{_points(abs(row.difference))} pp (interval [{_points(row.low, True)}, "
                            f"{_points(row.high, True)}])")
        equivalent = [f"`{v}`" for v in rows.loc[rows["verdict"] == "equivalent", "variant"]]
        if equivalent:
            said.append(f"{', '.join(equivalent)} equivalent to `{plan.reference}` within ±{plan.margin:g} pp")
        open_rows = rows[rows["verdict"] == "inconclusive"]
        if len(open_rows):
            mde = open_rows["mde"][np.isfinite(open_rows["mde"].astype(float))]
            span = (_points(mde.min()) if len(mde) and _points(mde.min()) == _points(mde.max())
                    else f"{_points(mde.min())}-{_points(mde.max())}" if len(mde) else "")
            detectable = f"; this study detects differences of {span} pp with power {MDE_POWER:g}" if span else ""
            said.append(f"{len(open_rows)} of {len(rows)} comparisons inconclusive "
                        f"({', '.join(f'`{v}`' for v in open_rows['variant'])}{detectable})")
        sentences.append(f"On {figures.label(endpoint)} ({', '.join(sizes)}): {'; '.join(said)}.")
    return " ".join(sentences)


def test_split_size(study) -> int | None:
    """The test split's size, from the clean evaluation rows of evals.parquet (one value), else None."""
    evals = study.evals
    if evals is None or evals.empty:
        return None
    sizes = set(evals[(evals["attack"] == "clean") & (evals["split"] == "test")]["n"].dropna().astype(int))
    return sizes.pop() if len(sizes) == 1 else None


DESCRIPTIVE_NOTE = ("Everything after the verdicts is descriptive: other metrics, other variants' tables and their "
                    "p-values (Holm over each table's own tests) describe the study and decide nothing.")
