"""The claim audit: each of Adv-DPNP's claims, judged from a study's Parquet files, supported, contradicted or
inconclusive, with the numbers behind it and the difference the study could have detected.

    python -m analysis.audit results/audit_digits --out docs/audit_digits.md

The claims (Adv-DPNP, arXiv 2504.03782), each against `full` (the paper's method):

1. higher clean accuracy than adversarial training (PGD-AT, TRADES, MART);
2. competitive robustness under AutoAttack: not worse than any of them by more than the plan's margin;
3. each loss term (PPA, NPR, consistency) contributes;
4. prototypes that learn from clean data only help;
5. corruption robustness, where the data set has corruptions;
6. a more compact and better separated latent space (compactness / separation ratio, lower is better).

Rules (docs/evaluation.md#the-claim-audit): two-sided (1 - alpha) intervals, crossed over seeds and test images
when the study has per-point results (analysis/verdicts.py), Holm within each claim over its comparisons.
A comparison is decided when its Holm-adjusted p is below alpha; a "competitive" comparison is a one-sided
non-inferiority test against -margin (its Holm-adjusted p below alpha: not worse by more than the margin).
A claim is supported when every comparison it makes is decided in its favour, contradicted when one is
decided against it (or, for a component, when its effect is within the margin of zero), else inconclusive,
with the smallest difference the study would have detected (MDE, power 0.8). Claims 1 and 2 are about
well-tuned baselines: when the study's baselines were not tuned (no `tuned_from` in its study.yaml), they can
be contradicted but not supported. An anchor gate refuses every verdict when the data set and backbone have
published numbers and the study's PGD-AT lies outside them (the setup is not the literature's).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import factorial, figures, stats  # noqa: E402
from analysis.audit_figure import write_claims_png  # noqa: E402
from analysis.claim_comparisons import (compare_pairs, display_table, drawn_estimates, mde_span,  # noqa: E402
                                        numbers_text, pp_text)
from analysis.markdown import markdown_table, write_page  # noqa: E402
from analysis.study import Study, load_study  # noqa: E402
from dpnp_ray.results import ResultsError  # noqa: E402
from dpnp_ray.study.study_file import TUNED_PREFIX  # noqa: E402

REFERENCE = "full"
BASELINES = ("pgd_at", "trades", "mart")
TERMS = {"ppa": "no_ppa", "npr": "no_npr", "cons": "no_consistency"}
"""a loss term's factor in a factorial, and its single-switch variant"""
TERM_NAMES = {"ppa": "PPA", "npr": "NPR", "cons": "consistency"}

ANCHORS = {("cifar10", "resnet18"): {"clean_acc": (0.82, 0.85), "aa_acc": (0.47, 0.495)},
           ("cifar10", "preact_resnet18"): {"clean_acc": (0.82, 0.85), "aa_acc": (0.47, 0.495)}}
"""(dataset, model) -> the published range of a PGD-AT model's mean accuracy at L-inf eps 8/255
(docs/evaluation.md#reference-numbers: Madry et al. 2018, Rice et al. 2020, RobustBench), widened to the
ends of the sources' spread"""
ANCHOR_EPS = 8 / 255

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, REFUSED = (
    "supported", "contradicted", "inconclusive", "not measured", "refused")


@dataclass(frozen=True)
class ClaimResult:
    number: int | str
    claim: str
    verdict: str
    reason: str  # one sentence with the numbers
    rows: pd.DataFrame  # the comparisons behind it (display form)
    estimates: pd.DataFrame = field(default_factory=pd.DataFrame)  # comparison, endpoint, estimate, low, high (pp)


def _present(study: Study, names: Sequence[str]) -> list[str]:
    done = set(figures.completed(study.trials)["variant"])
    return [n for n in names if n in done]


def baseline_variants(study: Study) -> list[str]:
    """The study's completed baselines, each at its tuned point (`tuned_<method>`, from `--tuned-from`) where
    the study has it, else at the base config."""
    done = set(figures.completed(study.trials)["variant"])
    chosen = [f"{TUNED_PREFIX}{b}" if f"{TUNED_PREFIX}{b}" in done else b for b in BASELINES]
    return [b for b in chosen if b in done]


def baselines_tuned(study: Study) -> bool:
    """Whether the study ran every baseline it compares at the point an equal-budget tuning chose (study.yaml
    `tuned_from`, and only `tuned_<method>` baselines)."""
    recorded = yaml.safe_load(study.recipe) if study.recipe else None
    baselines = baseline_variants(study)
    return (isinstance(recorded, dict) and bool(recorded.get("tuned_from")) and bool(baselines)
            and all(b.startswith(TUNED_PREFIX) for b in baselines))


def anchor_gate(study: Study) -> str | None:
    """Why verdicts are refused (the study's PGD-AT outside the published range for its data set and backbone),
    or None: no anchors apply, or PGD-AT lies within them."""
    trials = figures.completed(study.trials)
    pgd = trials[trials["variant"] == next((b for b in baseline_variants(study) if b.endswith("pgd_at")), "pgd_at")]
    if pgd.empty or not {"cfg_dataset", "cfg_model", "cfg_eval_eps"} <= set(pgd.columns):
        return None
    key = (str(pgd["cfg_dataset"].iloc[0]), str(pgd["cfg_model"].iloc[0]))
    if key not in ANCHORS or not math.isclose(float(pgd["cfg_eval_eps"].iloc[0]), ANCHOR_EPS, rel_tol=1e-3):
        return None
    outside = []
    for metric, (lo, hi) in ANCHORS[key].items():
        if metric in pgd and not lo <= float(pgd[metric].mean()) <= hi:
            outside.append(f"{figures.label(metric)} {100 * pgd[metric].mean():.1f}% (published "
                           f"{round(100 * lo, 1):g}-{round(100 * hi, 1):g}%)")
    if not outside:
        return None
    return (f"the study's PGD-AT on {key[0]} / {key[1]} at eps 8/255 is outside the published range: "
            f"{'; '.join(outside)}; its training or evaluation is not the literature's, so no claim is judged")


def claim_clean(study, plan, tuned: bool) -> ClaimResult:
    text = "higher clean accuracy than adversarial training"
    baselines = baseline_variants(study)
    if REFERENCE not in _present(study, [REFERENCE]) or not baselines:
        return ClaimResult(1, text, NOT_MEASURED, f"needs `{REFERENCE}` and a baseline ({', '.join(BASELINES)})",
                           pd.DataFrame())
    frame = compare_pairs(study, "clean_acc", [(REFERENCE, b) for b in baselines], plan)
    decided = frame["p_holm"] < plan.alpha
    verdict, reason = _against_baselines(
        frame, tuned, against=(decided & (frame["difference"] < 0)).any(),
        shown=bool(decided.all() and (frame["difference"] > 0).all()),
        says=("lower than a baseline", "higher than every baseline", "not higher than every baseline at this power"))
    return ClaimResult(1, text, verdict, reason, display_table(frame, plan),
                       drawn_estimates(frame))


def _against_baselines(frame: pd.DataFrame, tuned: bool, against: bool, shown: bool, says: tuple[str, str, str]
                       ) -> tuple[str, str]:
    """(verdict, reason) of a claim against the baselines: contradicted when `against`, supported when `shown`
    and the baselines were tuned (else inconclusive, saying why), else inconclusive with the MDE."""
    numbers = f"`full` minus {numbers_text(frame)}"
    if against:
        return CONTRADICTED, f"{says[0]}: {numbers}"
    if shown:
        return ((SUPPORTED, f"{says[1]}: {numbers}") if tuned else
                (INCONCLUSIVE, f"{says[1]}: {numbers}; but the baselines were not tuned, and the claim is about "
                               "well-tuned ones"))
    return INCONCLUSIVE, f"{says[2]}: {numbers} ({mde_span(frame['mde'])})"


def claim_robust(study, plan, tuned: bool) -> ClaimResult:
    text = f"competitive robustness under AutoAttack (not worse by more than {plan.margin:g} pp)"
    baselines = baseline_variants(study)
    if REFERENCE not in _present(study, [REFERENCE]) or not baselines or "aa_acc" not in study.trials:
        return ClaimResult(2, text, NOT_MEASURED, "needs `full`, a baseline and AutoAttack (eval_suite quick or full)",
                           pd.DataFrame())
    frame = compare_pairs(study, "aa_acc", [(REFERENCE, b) for b in baselines], plan)
    verdict, reason = _against_baselines(
        frame, tuned, against=(frame["high"] < -plan.margin).any(),
        shown=bool((frame["noninferiority_holm"] < plan.alpha).all()),
        says=("worse than a baseline by more than the margin", "not worse than any baseline by more than the margin",
              "non-inferiority not shown against every baseline"))
    return ClaimResult(2, text, verdict, reason, display_table(frame, plan, noninferiority=True),
                       drawn_estimates(frame))


def _component(study, plan, number: int | str, text: str, factor: str, variant: str, endpoints: Sequence[str]
               ) -> ClaimResult:
    """A component's contribution: its factorial main effect when the study holds the factor in a 2^k
    design, else full minus its single-switch variant; per primary endpoint."""
    factors, _ = factorial.design(study.trials)
    if factor in factors:
        table = factorial.effects_table(study.trials, study.points, list(endpoints), plan.alpha)
        rows = table[table["effect"] == factor]
        estimate, low, high = rows["estimate"], rows["low"], rows["high"]
        decided = rows["decided"]
        shown = factorial.effects_rows(rows)
        source = f"factorial main effect of `{factor}`"
        drawn = drawn_estimates(rows, f"{factor} main effect", estimate="estimate")
    elif variant in _present(study, [variant]) and REFERENCE in _present(study, [REFERENCE]):
        frame = pd.concat([compare_pairs(study, e, [(REFERENCE, variant)], plan) for e in endpoints], ignore_index=True)
        frame["p_holm"] = stats.holm_planned(frame["p_value"])  # Holm over the claim's endpoints
        rows, estimate, low, high = frame, frame["difference"], frame["low"], frame["high"]
        decided = frame["p_holm"] < plan.alpha
        shown = display_table(frame, plan)
        source = f"`{REFERENCE}` − `{variant}`"
        drawn = drawn_estimates(frame)
    else:
        return ClaimResult(number, text, NOT_MEASURED,
                           f"needs the factor `{factor}` in a factorial, or the variants `{REFERENCE}` and `{variant}`",
                           pd.DataFrame())
    names = [figures.label(e) for e in rows["endpoint"]]
    helps = [f"{n} {pp_text(e)} pp [{pp_text(lo)}, {pp_text(hi)}]" for n, e, lo, hi in zip(names, estimate, low, high)]
    within = (low > -plan.margin) & (high < plan.margin)
    if (decided & (estimate < 0)).any():
        verdict, reason = CONTRADICTED, f"{source} is negative: {'; '.join(helps)}"
    elif (decided & (estimate > 0)).any():
        verdict, reason = SUPPORTED, f"{source} is positive: {'; '.join(helps)}"
    elif within.all():
        verdict, reason = CONTRADICTED, (f"{source} lies within ±{plan.margin:g} pp of zero on every endpoint: "
                                         f"{'; '.join(helps)}")
    else:
        verdict, reason = INCONCLUSIVE, f"{source}: {'; '.join(helps)} ({mde_span(list(rows['mde']))})"
    return ClaimResult(number, text, verdict, reason, shown, drawn)


def claim_corruptions(study, plan) -> ClaimResult:
    text = "more robust to common corruptions"
    trials = figures.completed(study.trials)
    if "corruption_acc" not in trials or not trials["corruption_acc"].notna().any():
        return ClaimResult(5, text, NOT_MEASURED, "the study measured no corruption accuracy (the data set has no "
                           "corruption set here, or the suite level skipped it)", pd.DataFrame())
    baselines = baseline_variants(study)
    frame = compare_pairs(study, "corruption_acc", [(REFERENCE, b) for b in baselines], plan)
    decided = frame["p_holm"] < plan.alpha
    if (decided & (frame["difference"] < 0)).any():
        verdict = CONTRADICTED
    elif len(frame) and decided.all() and (frame["difference"] > 0).all():
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    reason = ", ".join(f"`{b}` {d:+.2f} pp" for b, d in zip(frame["reference"], frame["difference"]))
    return ClaimResult(5, text, verdict, reason or "no baseline to compare with", display_table(frame, plan))


def claim_geometry(study, plan) -> ClaimResult:
    text = "a more compact and better separated latent space"
    geometry = study.geometry
    metric = "compactness_separation_ratio"
    if geometry is None or geometry.empty or metric not in geometry:
        return ClaimResult(6, text, NOT_MEASURED, "no geometry.parquet (eval_suite quick or full measures it)",
                           pd.DataFrame())
    clean = geometry[geometry["split"] == "test"].assign(status="completed")
    baselines = [b for b in baseline_variants(study) if b in set(clean["variant"])]
    rows = []
    for b in baselines:
        c = stats.paired_difference(clean, metric, REFERENCE, b, confidence=1 - plan.alpha)
        rows.append({"reference": b, "n": c.n_pairs, "difference": c.mean_difference, "half": c.ci_half_width,
                     "p": c.p_value, "note": c.note})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return ClaimResult(6, text, NOT_MEASURED, "no baseline in geometry.parquet", pd.DataFrame())
    frame["p_holm"] = stats.holm_adjust([p if math.isfinite(p) else 1.0 for p in frame["p"]])
    decided = (frame["p_holm"] < plan.alpha) & np.isfinite(frame["p"].astype(float))
    if (decided & (frame["difference"] > 0)).any():
        verdict = CONTRADICTED
    elif decided.all() and (frame["difference"] < 0).all():
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    reason = "ratio of `full` minus baseline (lower: more compact for its separation): " + ", ".join(
        f"`{b}` {d:+.4f} ± {h:.4f}" for b, d, h in zip(frame["reference"], frame["difference"], frame["half"]))
    shown = pd.DataFrame({"comparison": [f"full − {b}" for b in frame["reference"]], "seeds": frame["n"],
                          "ratio difference": [f"{d:+.4f}" for d in frame["difference"]],
                          f"± ({100 * (1 - plan.alpha):g}% t, seeds)": [f"{h:.4f}" if math.isfinite(h) else "—"
                                                                      for h in frame["half"]],
                          "p (Holm)": [f"{p:.3g}" for p in frame["p_holm"]], "note": frame["note"]})
    return ClaimResult(6, text, verdict, reason, shown)


def audit(study: Study) -> tuple[list[ClaimResult], str | None, bool]:
    """(every claim's result, the anchor gate's refusal or None, whether the baselines were tuned)."""
    plan = study.planned_verdicts[0]
    tuned = baselines_tuned(study)
    robust = [e for e in plan.primary if e != "clean_acc"] or ["aa_acc"]
    results = [claim_clean(study, plan, tuned), claim_robust(study, plan, tuned)]
    for letter, (factor, variant) in zip("abc", TERMS.items()):
        results.append(_component(study, plan, f"3{letter}", f"the {TERM_NAMES[factor]} term contributes", factor,
                                  variant, ["clean_acc", *robust]))
    results.append(_component(study, plan, 4, "prototypes that learn from clean data only help", "cleanupd",
                              "proto_adversarial", ["clean_acc", *robust]))
    results += [claim_corruptions(study, plan), claim_geometry(study, plan)]
    refused = anchor_gate(study)
    if refused:
        results = [replace(r, verdict=REFUSED, reason=refused) for r in results]
    return results, refused, tuned


def audit_markdown(study: Study, commands: Sequence[str] = ()) -> str:
    """The generated part of the verdict page."""
    results, refused, tuned = audit(study)
    plan = study.planned_verdicts[0]
    trials = study.trials
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    parts = ["_Generated by `python -m analysis.audit` from the study's Parquet files; do not edit by hand._", ""]
    if commands:
        parts += ["**Command**", "", "```bash", *commands, "```", ""]
    parts += [f"**Study** `{study.name}`: {len(trials)} trials ({statuses}); {_settings(trials)}",
              f"Baselines {'tuned with an equal budget (study.yaml `tuned_from`)' if tuned else 'not tuned: claims 1 and 2 can be contradicted, not supported'}; "
              f"alpha {plan.alpha:g}, margin ±{plan.margin:g} pp.", ""]
    if refused:
        parts += [f"**No verdicts**: {refused}.", ""]
    summary = pd.DataFrame({"claim": [f"{r.number}. {r.claim}" for r in results],
                            "verdict": [f"**{r.verdict}**" for r in results], "why": [r.reason for r in results]})
    parts += ["### Verdicts", "", markdown_table(summary), ""]
    for r in results:
        if not r.rows.empty:
            parts += [f"### {r.number}. {r.claim}", "", markdown_table(r.rows), ""]
    parts += ["### How to read this", "", __doc__.split("Rules ", 1)[1].strip().replace("\n", " "), ""]
    return "\n".join(parts)


def _settings(trials: pd.DataFrame) -> str:
    first = trials.iloc[0]
    fields = [f"{k} {first[f'cfg_{k}']}" for k in ("dataset", "model", "epochs", "eval_eps", "eval_suite")
              if f"cfg_{k}" in trials]
    return ", ".join(fields) + f"; seeds {', '.join(map(str, sorted(set(trials['seed']))))}."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The claim audit of a dpnp_ray ablation study, as a markdown page.")
    parser.add_argument("directory", help="an ablation study directory (trials.parquet, ...)")
    parser.add_argument("--out", required=True, help="the markdown page (its generated region is replaced)")
    parser.add_argument("--command", action="append", default=[], help="the exact command that made the study")
    parser.add_argument("--figure", help="also write claims 1-4 as a PNG (kaleido + Chrome/Chromium): audit_figure.py")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.directory)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_page(audit_markdown(study, args.command), Path(args.out), f"Claim audit: {study.name}")
    print(f"wrote {args.out}")
    if args.figure:  # the claims of record as one picture
        return write_claims_png(audit(study)[0], study.planned_verdicts[0], study.name, Path(args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
