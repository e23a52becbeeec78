"""The tables and the result sentence of a study's report, as DataFrames and text; the HTML report and the
Markdown pages (analysis/markdown.py) both print them.

Accuracies are in percent points; an interval is mean ± 95% t-interval half-width over seeds (stats.t_interval).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd
import plotly
import scipy

from analysis import figures, optuna_study, stats
from analysis.study import Study
from dpnp_ray.results import points_measured

PROVENANCE_COLUMNS = ("code_version", "torch_version", "ray_version", "optuna_version", "python_version",
                      "aa_version", "hardware", "platform", "num_workers", "use_gpu")


def percent_text(value: float) -> str:
    """A fraction in percent with one decimal; "—" when missing."""
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def ci_text(values: pd.Series) -> str:
    """'mean ± half-width (n)' in percent points; no ± with one seed."""
    ci = stats.t_interval(values)
    if ci.n == 0:
        return "—"
    if ci.n == 1:
        return f"{percent_text(ci.mean)} (n=1)"
    return f"{percent_text(ci.mean)} ± {percent_text(ci.half_width)} (n={ci.n})"


def variant_summary_table(trials: pd.DataFrame, masking: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per variant: seeds completed, trials not completed, accuracies (% mean ± 95% CI over seeds, the number of
    test points each stands on in its header), PGD−AA gap, flags, time."""
    frame = trials.copy()
    if "pgd_aa_gap" not in frame.columns and {"pgd_acc", "aa_acc"} <= set(frame.columns):
        frame["pgd_aa_gap"] = frame["pgd_acc"] - frame["aa_acc"]
    metrics = [c for c in (*figures.ACCURACY_LABELS, "pgd_aa_gap") if c in frame.columns]
    rows = []
    for variant in figures.variant_order(frame["variant"]):
        rows_v = frame[frame["variant"] == variant]
        done = figures.completed(rows_v)
        row = {"variant": variant, "completed": len(done), "not completed": len(rows_v) - len(done)}
        row.update({_summary_header(frame, m): ci_text(done[m]) for m in metrics})
        if masking is not None and len(masking) and "flagged" in masking.columns:
            flags = masking[masking["variant"] == variant]
            row["masking flags"] = f"{int(flags['flagged'].astype(bool).sum())} of {len(flags)}"
        row["wall s (mean)"] = f"{rows_v['wall_seconds'].mean():.0f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _summary_header(trials: pd.DataFrame, metric: str) -> str:
    name = figures.label(metric) if metric != "pgd_aa_gap" else "PGD − AA gap"
    points = points_measured(figures.completed(trials), metric)
    return f"{name} (%, {points})" if points else f"{name} (%)"


def differences_table(trials: pd.DataFrame) -> pd.DataFrame | None:
    done = figures.completed(trials)
    metrics, _ = figures.present_columns(done, figures.ABLATION_METRICS)
    if stats.reference_variant(done["variant"]) is None or done["variant"].nunique() < 2 or not metrics:
        return None
    table = stats.differences_from_reference(done, metrics)
    return pd.DataFrame({
        "variant": table["variant"], "reference": table["reference"],
        "metric": [figures.label(m) for m in table["metric"]], "matching seeds": table["n_pairs"],
        "difference (pp)": [percent_text(d) for d in table["mean_difference"]],
        "95% CI (pp)": [f"± {percent_text(h)}" if math.isfinite(h) else "—" for h in table["ci_half_width"]],
        "t": [f"{t:.3f}" if math.isfinite(t) else "—" for t in table["statistic"]],
        "p (raw)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in table["p_value"]],
        "p (Holm)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in table["p_adjusted"]],
        "note": table["note"],
    })


def settings_tables(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(config fields equal in every trial: field, value), (fields that vary: field, values)."""
    config = [c for c in trials.columns if c.startswith("cfg_")]
    varying = set(figures.varying_config_columns(trials))
    fixed = pd.DataFrame([{"field": c.removeprefix("cfg_"), "value": trials[c].iloc[0]}
                          for c in config if c not in varying], columns=["field", "value"])
    varied = pd.DataFrame([{"field": c.removeprefix("cfg_"), "values": _values_text(trials[c])}
                           for c in config if c in varying], columns=["field", "values"])
    return fixed, varied


def _values_text(values: pd.Series, listed: int = 8) -> str:
    """The distinct values, or for many numbers their range and count."""
    distinct = list(dict.fromkeys(values.dropna()))
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    text = [f"{v:.4g}" if numeric else str(v) for v in distinct]
    if values.isna().any():
        text.append("(unset)")
    if numeric and len(distinct) > listed:
        return f"{min(distinct):.4g} … {max(distinct):.4g} ({len(distinct)} values)"
    return ", ".join(text)


def provenance_table(study: Study) -> pd.DataFrame:
    trials = study.trials
    rows = [("study", study.name), ("kind", study.kind), ("directory", str(study.directory.resolve())),
            ("trials", ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items()))]
    if study.kind == "search":
        rows.append(("search views", study.search_source))
    rows += [(c, ", ".join(map(str, dict.fromkeys(trials[c].dropna().astype(str)))) or "—")
             for c in PROVENANCE_COLUMNS if c in trials.columns]
    rows += [("report generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
             ("report packages", f"plotly {plotly.__version__}, pandas {pd.__version__}, "
                                 f"optuna {optuna_study.optuna.__version__}, scipy {scipy.__version__}")]
    return pd.DataFrame(rows, columns=["item", "value"])


FACTORIAL_NOTE = ("Effects in accuracy points, each seed a block: a main effect is the mean with the factor at the "
                  "paper's level minus the mean without it, over every cell; an interaction is half the difference "
                  "of one factor's effect between the other's levels (Yates). p (Holm): Holm over every main effect "
                  "and two-factor interaction of the endpoint; decided: p (Holm) below the plan's alpha.")


def factorial_table(study: Study) -> pd.DataFrame | None:
    """The factorial effects on the plan's primary endpoints, or None without a complete 2^k design."""
    from analysis import factorial

    plan = study.planned_verdicts[0]
    table = factorial.effects_table(study.trials, study.points, list(plan.primary), plan.alpha)
    return None if table.empty else table


def result_line(study: Study) -> str:
    """What the study found, in words, from its data: an ablation's planned verdicts (verdicts.result_sentence),
    a search's outcome on validation data."""
    if study.kind != "search":
        from analysis import factorial, verdicts

        text = verdicts.result_sentence(study.planned_verdicts[1], study.planned_verdicts[0])
        effects = factorial_table(study)
        return text if effects is None else f"{text} {factorial.effects_sentence(effects)}"
    trials = study.trials
    text = f"{len(trials)} trials (" + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items()) + ")."
    done = figures.completed(trials)
    if len(done) and "val_robust_acc" in done and done["val_robust_acc"].notna().any():
        best = done.loc[done["val_robust_acc"].idxmax()]
        text += (f" Highest validation robust accuracy: {percent_text(best['val_robust_acc'])}% ({best['trial_id']}, "
                 f"validation clean {percent_text(best.get('val_clean_acc', math.nan))}%)")
        if "clean_acc" in best and "pgd_acc" in best:
            text += (f"; on the test split {percent_text(best['clean_acc'])}% clean and "
                     f"{percent_text(best['pgd_acc'])}% PGD ({points_measured(done, 'pgd_acc') or 'test points'}, "
                     "one seed)")
        text += "."
    if study.pareto is not None:
        text += f" {len(study.pareto)} trial(s) on the Pareto front of the objectives."
    return text + (" A search selects on validation data and decides no comparison: run its chosen point against "
                   "the baselines as an ablation with several seeds for that.")


def pareto_trials_table(study: Study) -> pd.DataFrame | None:
    if study.pareto is None or not len(study.pareto):
        return None
    front = study.trials[study.trials["trial_id"].isin(study.pareto["trial_id"])]
    shown = ["trial_id", "variant", "seed", *figures.SEARCH_OBJECTIVES, "clean_acc", "pgd_acc", "aa_acc",
             *figures.varying_config_columns(study.trials)]
    front = front[[c for c in dict.fromkeys(shown) if c in front.columns]]
    return front.rename(columns=lambda c: c.removeprefix("cfg_"))


def failed_trials_table(trials: pd.DataFrame) -> pd.DataFrame | None:
    rows = trials[trials["status"] != "completed"]
    if rows.empty:
        return None
    return rows[[c for c in ("trial_id", "variant", "seed", "status", "error") if c in rows.columns]]

