"""One study's Parquet results -> a markdown summary for docs/ (every number read from the study's files).

    python -m analysis.markdown results/ablation --out docs/ablation_digits.md \
        --command "python studies/ablation.py --seeds 0 1 2 3 4 --name ablation" --figures docs/ablation_digits_png

For an ablation, the tables are the HTML report's (analysis/report_tables.py): per-variant accuracies with 95%
t-intervals over seeds, paired differences from the reference variant, plus the prototype geometry of
the clean test split and each loss term at the last epoch. For a search: the Pareto front, fANOVA
parameter importances from its Optuna journal, and the front trial that `choose_from_front` picks. If --out already exists and holds the markers
`<!-- generated:begin -->` and `<!-- generated:end -->`, only the text between them is replaced, so the
hand-written question, rule and decision around the tables survive a regeneration.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: `analysis` lives in the repository root, next to dpnp_ray
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from analysis import factorial, figures, stats, verdicts
from analysis.report_tables import (FACTORIAL_NOTE, ci_text, differences_table, factorial_table, percent_text,
                                    result_line, settings_tables, variant_summary_table)
from analysis.study import Study, load_study
from dpnp_ray.results import ResultsError, read_table

BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"

#: geometry.parquet columns summarised per variant (clean test split), with their headers
GEOMETRY_COLUMNS = {
    "mean_angle_deg": "mean prototype angle (°)", "simplex_angle_deg": "regular simplex (°)",
    "simplex_deviation_deg": "mean |angle − simplex| (°)", "mean_dist_own": "mean ‖z − c_y‖",
    "mean_margin": "mean margin ‖z − c_rival‖ − ‖z − c_y‖", "frac_positive_margin": "nearest prototype correct",
}
#: epochs.parquet loss terms shown at each trial's last epoch (mean over seeds)
LOSS_COLUMNS = ("loss_ce", "loss_ppa", "loss_npr", "loss_ce_adv", "loss_ppa_adv", "loss_cons")


def markdown_table(frame: pd.DataFrame | None, empty: str = "none") -> str:
    """A GitHub-flavoured markdown table; floats to 4 significant digits, NaN as '—', '|' escaped."""
    if frame is None or frame.empty:
        return f"_{empty}_"

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.4g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}"


def _mean_sd_by_variant(rows: pd.DataFrame, headers: dict[str, str]) -> pd.DataFrame:
    """One row per variant (in figures.variant_order): mean ± sd over its rows of each column in
    `headers`, under the header it maps to."""
    return pd.DataFrame([{"variant": variant, **{header: _mean_sd(group[c]) for c, header in headers.items()}}
                         for variant in figures.variant_order(rows["variant"])
                         for group in [rows[rows["variant"] == variant]]])


def geometry_table(study: Study) -> pd.DataFrame | None:
    """Per variant, mean ± sd over seeds of GEOMETRY_COLUMNS on the clean test features."""
    geometry = study.geometry
    if geometry is None or geometry.empty or "variant" not in geometry.columns:
        return None
    done = set(figures.completed(study.trials)["trial_id"])
    rows = geometry[geometry["trial_id"].isin(done)]
    if "split" in rows.columns:
        rows = rows[rows["split"] == "test"]
    columns = [c for c in GEOMETRY_COLUMNS if c in rows.columns]
    if rows.empty or not columns:
        return None
    return _mean_sd_by_variant(rows, {c: GEOMETRY_COLUMNS[c] for c in columns})


def last_epoch_losses(study: Study) -> pd.DataFrame | None:
    """Per variant, mean ± sd over seeds of each loss term at a trial's last recorded epoch."""
    epochs = study.epochs
    if epochs is None or epochs.empty or "variant" not in epochs.columns:
        return None
    done = set(figures.completed(study.trials)["trial_id"])
    rows = epochs[epochs["trial_id"].isin(done)]
    last = rows.loc[rows.groupby("trial_id")["epoch"].idxmax()] if not rows.empty else rows
    columns = [c for c in LOSS_COLUMNS if c in last.columns and last[c].notna().any()]
    if last.empty or not columns:
        return None
    return _mean_sd_by_variant(last, {c: c for c in columns})


# ------------------------------------------------------------------ search studies

SEARCH_OBJECTIVES = ("val_clean_acc", "val_robust_acc")


def choose_from_front(front: pd.DataFrame, clean_tolerance: float = 0.01) -> pd.Series:
    """The rule of record: among the front's trials whose validation clean accuracy is within
    `clean_tolerance` of the front's best, the one with the highest validation robust accuracy
    (ties: higher clean accuracy, then the earlier trial_id)."""
    if front.empty:
        raise ValueError("an empty Pareto front: no completed trial to choose from")
    clean, robust = SEARCH_OBJECTIVES
    eligible = front[front[clean] >= front[clean].max() - clean_tolerance - 1e-12]
    ranked = eligible.sort_values([robust, clean, "trial_id"], ascending=[False, False, True], kind="stable")
    return ranked.iloc[0]


def searched_parameters(trials: pd.DataFrame) -> list[str]:
    """The searched config fields (param_* columns), in column order."""
    return [c.removeprefix("param_") for c in trials.columns if c.startswith("param_")]


def journal_importances(journal: Path, study_name: str | None = None) -> pd.DataFrame:
    """fANOVA importance (seed 0) of each parameter for each objective, from the search's Optuna journal.

    Only completed trials count; a conditional parameter is scored over the trials that sampled it.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    study = optuna.load_study(study_name=study_name or names[0], storage=storage)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    columns = {}
    for index, objective in enumerate(SEARCH_OBJECTIVES[: len(study.directions)]):
        columns[f"importance for {objective}"] = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda trial, i=index: trial.values[i])
    frame = pd.DataFrame(columns).rename_axis("parameter").reset_index()
    return frame.sort_values(frame.columns[-1], ascending=False, kind="stable")


def search_sections(study: Study, clean_tolerance: float, top: int = 10) -> list[str]:
    """Pareto front, the best trials, parameter importances, and the trial the rule of record chooses.

    Parameters are the values a trial sampled (param_*); '—' where the space did not sample one."""
    trials = figures.completed(study.trials)
    params = searched_parameters(study.trials)
    shown = ["trial_id", *SEARCH_OBJECTIVES, "clean_acc", "pgd_acc", *[f"param_{p}" for p in params]]

    def table(rows: pd.DataFrame) -> str:
        return markdown_table(rows[[c for c in shown if c in rows.columns]].rename(
            columns=lambda c: c.removeprefix("param_")))

    front = trials[trials["trial_id"].isin(study.pareto["trial_id"])] if study.pareto is not None else trials.iloc[:0]
    front = front.sort_values(SEARCH_OBJECTIVES[0], ascending=False, kind="stable")
    best = trials.sort_values([SEARCH_OBJECTIVES[1], SEARCH_OBJECTIVES[0]], ascending=False, kind="stable").head(top)
    parts = ["### Pareto front (validation clean vs validation robust accuracy)", "",
             f"{len(front)} non-dominated of {len(trials)} completed trials; accuracies as fractions; "
             "clean_acc and pgd_acc are the test split's, shown for information only (never used to choose).", "",
             table(front), ""]
    if "started_at" in trials.columns and len(trials):
        first = trials.sort_values("started_at", kind="stable").iloc[0]
        parts += [f"The first trial (`{first['trial_id']}`) evaluates the base config, the provisional defaults: "
                  f"val clean {first[SEARCH_OBJECTIVES[0]]:.4g}, val robust {first[SEARCH_OBJECTIVES[1]]:.4g}.", ""]
    parts += [f"### The {len(best)} best trials by validation robust accuracy", "", table(best), ""]
    journal = study.directory / "optuna.journal"
    if journal.exists():
        importances = journal_importances(journal)
        parts += ["### Parameter importances", "",
                  "fANOVA (`optuna.importance.FanovaImportanceEvaluator(seed=0)`) on the study in "
                  "`optuna.journal`, per objective; each column sums to 1.", "", markdown_table(importances), ""]
    if len(front):
        chosen = choose_from_front(front, clean_tolerance)
        parts += ["### Chosen by the rule", "",
                  f"Rule: among the front's trials with validation clean accuracy within {100 * clean_tolerance:g} "
                  "point(s) of the front's best, the highest validation robust accuracy.", "",
                  table(chosen.to_frame().T), ""]
    return parts


def _settings_line(trials: pd.DataFrame) -> str:
    """dataset, model, epochs, eval suite, seeds and variants as one sentence."""
    def values(column: str) -> str:
        return ", ".join(map(str, dict.fromkeys(trials[column].dropna()))) if column in trials else "—"

    seeds = sorted(set(trials["seed"].dropna().astype(int))) if "seed" in trials else []
    return (f"dataset {values('cfg_dataset')}, model {values('cfg_model')}, {values('cfg_epochs')} epochs, "
            f"eval suite {values('cfg_eval_suite')}; seeds {', '.join(map(str, seeds)) or '—'}; "
            f"variants {', '.join(figures.variant_order(trials['variant']))}.")


def paired_rows(table: pd.DataFrame) -> pd.DataFrame:
    """stats.differences_from_reference's rows in the report's format (Holm over the rows of this table)."""
    return pd.DataFrame({
        "variant": table["variant"], "reference": table["reference"], "metric": table["metric"],
        "matching seeds": table["n_pairs"], "difference (pp)": [percent_text(d) for d in table["mean_difference"]],
        "95% CI (pp)": [f"± {percent_text(h)}" if math.isfinite(h) else "—" for h in table["ci_half_width"]],
        "p (raw)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in table["p_value"]],
        "p (Holm)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in table["p_adjusted"]], "note": table["note"]})


REEVALUATIONS = "evaluations"
"""<study>/evaluations/<trial_id>/: what `python -m dpnp_ray.evaluate <study> --suite full` wrote, in the schema"""


def autoattack_standard_rows(directory: Path) -> pd.DataFrame | None:
    """Per re-evaluated trial: trial_id, n and aa_standard_acc (AutoAttack `standard`, L-inf, test split) from
    <study>/evaluations/*/evals.parquet, with the AutoAttack code that ran (`aa_code` of its evaluation-*.json);
    None when no re-evaluation holds a standard row."""
    import json

    rows = []
    for folder in sorted((directory / REEVALUATIONS).glob("*/")):
        evals = read_table(folder, "evals", required=False)
        if evals is None:
            continue
        test = evals[(evals["split"] == "test") & (evals.get("norm", "Linf") == "Linf")]
        standard = test[(test["attack"] == "autoattack") & (test.get("version") == "standard")]
        if standard.empty:
            continue
        code = ""
        summary = folder / "evaluation-full.json"
        if summary.exists():
            code = str(json.loads(summary.read_text()).get("aa_code") or "")
        row = standard.iloc[-1]
        rows.append({"trial_id": row["trial_id"], "n": int(row["n"]), "aa_standard_acc": float(row["accuracy"]),
                     "aa_code": code or "AutoAttack"})
    return pd.DataFrame(rows) if rows else None


def autoattack_standard_sections(study: Study) -> list[str]:
    """AutoAttack `standard` on the whole test split for the re-evaluated trials, next to the study's
    own numbers for the same trials, and paired against the reference variant."""
    standard = autoattack_standard_rows(study.directory)
    if standard is None:
        return []
    recorded = [c for c in ("clean_acc", "aa_acc", "worst_case_acc") if c in study.trials.columns]
    merged = standard.merge(
        study.trials[["trial_id", "variant", "seed", *recorded]], on="trial_id", how="left")
    metrics = ["aa_standard_acc", *[c for c in recorded if c != "clean_acc"]]
    rows = [{"variant": v, "trials": len(g), "clean (%)": ci_text(g["clean_acc"]),
             **{f"{m} (%)": ci_text(g[m]) for m in metrics}}
            for v in figures.variant_order(merged["variant"]) for g in [merged[merged["variant"] == v]]]
    parts = ["### AutoAttack standard on the whole test split", "",
             f"`python -m dpnp_ray.evaluate <study> --suite full` on the selected models of this study "
             f"({len(standard)} trials, n = {', '.join(map(str, sorted(set(standard['n']))))} test points, "
             f"{', '.join(sorted(set(standard['aa_code'].astype(str))))}; rows in evaluations/<trial_id>/). "
             "Percent, mean ± 95% t-interval half-width; clean as the study measured it.", "",
             markdown_table(pd.DataFrame(rows)), ""]
    if stats.reference_variant(merged["variant"]) is not None and merged["variant"].nunique() > 1:
        table = stats.differences_from_reference(merged, ["aa_standard_acc"])
        parts += [markdown_table(paired_rows(table)), ""]
    return parts


def plan_sections(study: Study) -> list[str]:
    """The declared analysis plan and its verdicts (analysis/verdicts.py), then the note that the rest is
    descriptive."""
    plan, table = study.planned_verdicts
    parts = ["### Plan and verdicts", "", *(line for text in verdicts.plan_text(plan) for line in (text, ""))]
    if table.empty:
        return parts + [f"_No verdicts: the reference `{plan.reference}` has no completed trial._", "",
                        verdicts.DESCRIPTIVE_NOTE, ""]
    return parts + [verdicts.interval_note(table, verdicts.test_split_size(study)), "",
                    markdown_table(verdicts.verdict_rows(table, plan, emphasis=True)), "", verdicts.DESCRIPTIVE_NOTE, ""]


def factorial_sections(study: Study) -> list[str]:
    """A factorial ablation's main effects and two-factor interactions (analysis/factorial.py), on the plan's
    primary endpoints; nothing when the study holds no complete 2^k design."""
    table = factorial_table(study)
    if table is None:
        return []
    return ["### Factorial effects", "", FACTORIAL_NOTE, "", markdown_table(factorial.effects_rows(table)), ""]


def variant_sections(study: Study) -> list[str]:
    """The plan's verdicts, then (descriptive) per-variant accuracies, paired differences, geometry and
    last-epoch losses of an ablation."""
    trials = study.trials
    parts = plan_sections(study)
    parts += ["### Per variant (descriptive)", "",
              "Accuracies in percent on the test split: mean ± 95% t-interval half-width over seeds (n seeds).", "",
              markdown_table(variant_summary_table(trials, study.masking)), ""]
    differences = differences_table(trials)
    parts += ["### Paired differences from the reference (descriptive)", "",
              "Variant minus reference on matching seeds, in percentage points; "
              f"test: {stats.PAIRED_TEST_NAME}; p (Holm): {stats.CORRECTION_NAME}. "
              "These p-values are not the plan's: they decide nothing.", "",
              markdown_table(differences, "no reference variant or a single variant: no paired comparison"), ""]
    parts += factorial_sections(study)
    parts += autoattack_standard_sections(study)
    geometry = geometry_table(study)
    if geometry is not None:
        parts += ["### Prototype geometry (clean test features)", "",
                  "Mean ± sd over seeds (docs/evaluation.md#geometry).", "", markdown_table(geometry), ""]
    losses = last_epoch_losses(study)
    if losses is not None:
        parts += ["### Loss terms at the last epoch", "", "Mean ± sd over seeds; unweighted terms as logged.", "",
                  markdown_table(losses), ""]
    return parts


def study_markdown(study: Study, *, commands: Sequence[str] = (), figure_dir: Path | None = None,
                   relative_to: Path | None = None, clean_tolerance: float = 0.01) -> str:
    """The generated part of the page: command, study facts, tables, figures (PNG links)."""
    trials = study.trials
    fixed, varied = settings_tables(trials)
    statuses = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    parts = ["_Generated by `python -m analysis.markdown` from the study's Parquet files; do not edit by hand._", ""]
    if commands:
        parts += ["**Command**", "", "```bash", *commands, "```", ""]
    code = ", ".join(dict.fromkeys(trials["code_version"].dropna().astype(str))) if "code_version" in trials else "—"
    parts += [f"**Result.** {result_line(study)}", ""]
    parts += [f"**Study** `{study.name}`: {len(trials)} trials ({statuses}); {_settings_line(trials)} "
              f"Code version: {code}.", ""]
    if study.kind == "search":
        parts += search_sections(study, clean_tolerance)
    else:
        parts += variant_sections(study)
    if figure_dir is not None and figure_dir.is_dir():
        pngs = sorted(figure_dir.glob("*.png"))
        if pngs:
            parts += ["### Figures", ""]
            for png in pngs:
                link = os.path.relpath(png.resolve(), relative_to) if relative_to is not None else str(png)
                parts += [f"![{png.stem.replace('_', ' ')}]({Path(link).as_posix()})", ""]
    parts += ["### Settings", "", "<details><summary>Config fields that vary across trials, and the fixed ones"
              "</summary>", "", markdown_table(varied, "no field varies"), "", markdown_table(fixed), "",
              "</details>", ""]
    return "\n".join(parts)


def write_page(generated: str, out: Path, title: str) -> None:
    """Replace the marked region of `out`, or write a new page holding a title and the marked region."""
    block = f"{BEGIN}\n{generated.rstrip()}\n{END}"
    if out.exists():
        text = out.read_text(encoding="utf-8")
        if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            out.write_text(head + block + tail, encoding="utf-8")
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {title}\n\n{block}\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A markdown summary of a dpnp_ray study, for docs/.")
    parser.add_argument("directory", help="a study directory (holding trials.parquet, ...)")
    parser.add_argument("--out", required=True, help="the markdown file (its marked region is replaced if present)")
    parser.add_argument("--command", action="append", default=[],
                        help="the exact command that produced the study (repeat for several lines)")
    parser.add_argument("--figures", help="a folder of PNGs (analysis/report.py --png) to show, linked relative to --out")
    parser.add_argument("--title", default=None, help="page title for a new page (default: the study name)")
    parser.add_argument("--clean-tolerance", type=float, default=0.01,
                        help="search studies: the rule's allowed drop in val clean accuracy from the front's best")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.directory)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    generated = study_markdown(study, commands=args.command, figure_dir=Path(args.figures) if args.figures else None,
                               relative_to=out.resolve().parent, clean_tolerance=args.clean_tolerance)
    write_page(generated, out, args.title or study.name)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
