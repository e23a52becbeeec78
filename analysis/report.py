"""One study's Parquet results -> one self-contained HTML report (and optionally a PNG per figure).

    python analysis/report.py results/ablation [--out report.html] [--png]

The report works offline: plotly.js is embedded once in the page head. Figures a study has no data for
are left out with a note. PNGs need kaleido>=1 and a Chrome/Chromium binary (BROWSER_PATH or on PATH);
without them the HTML report is still written and a message says why there are no PNGs.
"""

from __future__ import annotations

import argparse
import functools
import html
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: `analysis` lives in the repository root, next to dpnp_ray
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import plotly
import plotly.graph_objects as go
import plotly.io as pio
import scipy

from analysis import figures, optuna_study, stats
from dpnp_ray.results import ResultsError, points_measured, read_table

OPTIONAL_TABLES = ("epochs", "evals", "corruptions", "geometry", "masking", "pareto")
PROVENANCE_COLUMNS = ("code_version", "torch_version", "ray_version", "optuna_version", "python_version",
                      "aa_version", "hardware", "platform", "num_workers", "use_gpu")
NO_VARIANT = "(no variant)"
STUDY_FILE = "study.yaml"  # dpnp_ray.study.study_file.STUDY_FILE; importing that module would import torch
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


# ------------------------------------------------------------------ the study


@dataclass
class Study:
    """The tables of one study directory; optional tables are None when their file is absent."""

    directory: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame | None = None
    evals: pd.DataFrame | None = None
    corruptions: pd.DataFrame | None = None
    geometry: pd.DataFrame | None = None
    masking: pd.DataFrame | None = None
    pareto: pd.DataFrame | None = None
    optuna_storage: str | None = None  # the search's Optuna storage; None: <directory>/optuna.journal
    recipe: str | None = None  # study.yaml: the resolved study and its command line, when the study wrote one

    @property
    def name(self) -> str:
        names = list(dict.fromkeys(self.trials["study"].astype(str)))
        return ", ".join(names) if names else self.directory.name

    @property
    def kind(self) -> str:
        """'ablation' or 'search': trials.study_kind, else 'search' when there is a Pareto table."""
        if "study_kind" in self.trials.columns and self.trials["study_kind"].notna().any():
            return str(self.trials["study_kind"].dropna().iloc[0])
        return "search" if self.pareto is not None else "ablation"

    @functools.cached_property
    def points(self) -> pd.DataFrame | None:
        """points.parquet (per-point correctness of every test evaluation), read when first asked for; None when
        the study has none (studies older than it)."""
        return _named_variants(read_table(self.directory, "points", required=False))

    @functools.cached_property
    def planned_verdicts(self):
        """(plan, verdict table) of an ablation (analysis/verdicts.py): computed once, read by every section."""
        from analysis import verdicts

        plan = verdicts.study_plan(self)
        return plan, verdicts.verdicts(self, plan)

    @property
    def journal(self) -> str | None:
        """The search's Optuna storage if there is one to read (--optuna-storage, or <directory>/optuna.journal)."""
        if self.optuna_storage:
            return self.optuna_storage
        path = optuna_study.journal_path(self.directory)
        return str(path) if path.is_file() else None

    @functools.cached_property
    def search(self):
        """The search's Optuna study: from its journal when there is one, else rebuilt from trials.parquet;
        NoData (not cached) when nothing was searched."""
        if self.journal is not None:
            return optuna_study.journal_study(self.journal, self.name)
        return optuna_study.rebuild_study(self.trials)

    @property
    def search_source(self) -> str:
        if self.journal is not None:
            return f"Optuna journal {self.journal}"
        return "rebuilt from trials.parquet (no Optuna journal in the study directory)"


def load_study(directory: str | Path, optuna_storage: str | None = None) -> Study:
    """Read a study directory; ResultsError when it is not one (no trials.parquet) or a file is not of the schema.
    `optuna_storage`: the search's Optuna storage when it is not <directory>/optuna.journal."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: not a directory; pass a study directory holding trials.parquet")
    inner = sorted(p.parent.name for p in directory.glob("*/trials.parquet"))
    if inner and not (directory / "trials.parquet").exists():
        raise ResultsError(f"{directory}: not a study directory, but holds studies {', '.join(inner)}; "
                           f"pass one of them, e.g. {directory / inner[0]}")
    trials = read_table(directory, "trials")
    if trials.empty:
        raise ResultsError(f"{directory / 'trials.parquet'}: no trials recorded yet; nothing to report")
    tables = {t: _named_variants(read_table(directory, t, required=False)) for t in OPTIONAL_TABLES}
    recipe = directory / STUDY_FILE
    return Study(directory, _named_variants(trials), **tables, optuna_storage=optuna_storage,
                 recipe=recipe.read_text(encoding="utf-8") if recipe.is_file() else None)


def _named_variants(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Variants as strings, a missing one named: figures select rows by variant name."""
    if frame is None or "variant" not in frame.columns:
        return frame
    return frame.assign(variant=frame["variant"].astype("string").fillna(NO_VARIANT).astype(str))


# ------------------------------------------------------------------ the figure registry


@dataclass(frozen=True)
class FigureSpec:
    name: str  # the div id is fig-<name>; the PNG is <name>.png
    title: str
    shows: str  # one sentence for the reader
    build: Callable[[Study], go.Figure]
    kinds: tuple[str, ...] | None = None  # the study kinds it belongs to; None: every study


def _objective_specs() -> list[FigureSpec]:
    specs = []
    for objective in figures.SEARCH_OBJECTIVES:
        name = figures.label(objective)
        specs += [
            FigureSpec(f"optuna_history_{objective}", f"Optimization history: {name}",
                       f"{name} of each completed trial in order, and the best so far (optuna.visualization).",
                       lambda s, o=objective: optuna_study.optimization_history(s.search, o), ("search",)),
            FigureSpec(f"optuna_parallel_{objective}", f"Parallel coordinates: {name}",
                       "Each trial as a line through its parameter values, coloured by the objective.",
                       lambda s, o=objective: optuna_study.parallel_coordinates(s.search, o), ("search",)),
            FigureSpec(f"optuna_slice_{objective}", f"Slice plots: {name}",
                       "The objective against each parameter on its own.",
                       lambda s, o=objective: optuna_study.slices(s.search, o), ("search",)),
        ]
    return specs


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("ablation_bars", "Accuracy per variant",
               "Clean, PGD, CW-inf, AutoAttack, per-point worst case over every attack (worst_case_acc) and "
               "corruption accuracy of each variant: mean over seeds with a 95% t-interval (mean ± t·s/√n).",
               lambda s: figures.ablation_bars(s.trials), ("ablation",)),
    FigureSpec("ablation_differences", "Difference from the full Adv-DPNP",
               f"Each variant minus the reference over matching seeds, with the {stats.PAIRED_TEST_NAME}; "
               "the raw and the Holm-adjusted p-value (or why there is no test) are written above each point.",
               lambda s: figures.ablation_differences(s.trials), ("ablation",)),
    FigureSpec("clean_robust", "Clean vs robust accuracy (validation objectives)",
               "Every completed trial; the Pareto front is highlighted; hover a point for its config.",
               lambda s: figures.clean_robust_scatter(s.trials, s.pareto), ("search",)),
    FigureSpec("clean_robust_test", "Clean vs PGD accuracy (test)",
               "Every completed trial, one colour per variant; hover a point for its config.",
               lambda s: figures.clean_robust_scatter(s.trials, x="clean_acc", y="pgd_acc", front=False),
               ("ablation",)),
    FigureSpec("optuna_importances", "Parameter importances",
               "fANOVA importance of each searched parameter for each objective (optuna.visualization).",
               lambda s: optuna_study.parameter_importances(s.search), ("search",)),
    FigureSpec("optuna_pareto_front", "Pareto front (Optuna)",
               "The completed trials in objective space; the Pareto-optimal ones highlighted (optuna.visualization).",
               lambda s: optuna_study.pareto_front(s.search), ("search",)),
    *_objective_specs(),
    FigureSpec("learning_curves", "Learning curves",
               "Loss terms, train/val clean and robust accuracy, training eps and learning rate per epoch: mean "
               "over seeds per variant.", lambda s: figures.learning_curves(s.epochs)),
    FigureSpec("eps_curves", "Accuracy vs attack eps",
               "PGD accuracy at each attack budget: mean over seeds with 95% t-intervals.",
               lambda s: figures.eps_curves(s.evals)),
    FigureSpec("corruption_heatmap", "Corruption accuracy",
               "Accuracy per corruption and severity, mean over each variant's trials.",
               lambda s: figures.corruption_heatmap(s.corruptions)),
    FigureSpec("geometry_bars", "Prototype geometry",
               "Angles, compactness, separation and margins of clean and adversarial features per variant.",
               lambda s: figures.geometry_bars(s.geometry)),
    FigureSpec("masking_table", "Gradient-masking checks",
               "Every sanity check of every trial; flagged checks first and shaded.",
               lambda s: figures.masking_table(s.masking)),
    FigureSpec("cost_bars", "Cost", "Wall-clock seconds and training images/s of every trial.",
               lambda s: figures.cost_bars(s.trials, s.epochs)),
)


@dataclass
class Figures:
    """The drawn figures of a study, in report order, and a note for each one left out."""

    drawn: dict[str, tuple[FigureSpec, go.Figure]] = field(default_factory=dict)
    left_out: list[tuple[FigureSpec, str]] = field(default_factory=list)


def make_figures(study: Study, specs: Sequence[FigureSpec] = FIGURES) -> Figures:
    result = Figures()
    for spec in specs:
        if spec.kinds is not None and study.kind not in spec.kinds:
            continue
        try:
            result.drawn[spec.name] = (spec, spec.build(study))
        except figures.NoData as reason:
            result.left_out.append((spec, str(reason)))
    return result


# ------------------------------------------------------------------ tables


def _pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def ci_text(values: pd.Series) -> str:
    """'mean ± half-width (n)' in percent points; no ± with one seed."""
    ci = stats.t_interval(values)
    if ci.n == 0:
        return "—"
    return f"{_pct(ci.mean)} (n=1)" if ci.n == 1 else f"{_pct(ci.mean)} ± {_pct(ci.half_width)} (n={ci.n})"


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
        "difference (pp)": [_pct(d) for d in table["mean_difference"]],
        "95% CI (pp)": [f"± {_pct(h)}" if math.isfinite(h) else "—" for h in table["ci_half_width"]],
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
        text += (f" Highest validation robust accuracy: {_pct(best['val_robust_acc'])}% ({best['trial_id']}, "
                 f"validation clean {_pct(best.get('val_clean_acc', math.nan))}%)")
        if "clean_acc" in best and "pgd_acc" in best:
            text += (f"; on the test split {_pct(best['clean_acc'])}% clean and {_pct(best['pgd_acc'])}% PGD "
                     f"({points_measured(done, 'pgd_acc') or 'test points'}, one seed)")
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


# ------------------------------------------------------------------ HTML

STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table.data { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
table.data th { background: #f1f3f5; } p.shows { color: #555; } .note { color: #8a6d3b; }
nav li { margin: 0.1em 0; } details summary { cursor: pointer; font-weight: bold; margin: 1em 0; }
"""


def _table_html(frame: pd.DataFrame | None, empty: str = "none") -> str:
    if frame is None or frame.empty:
        return f"<p class='note'>{html.escape(empty)}</p>"
    return frame.to_html(index=False, escape=True, na_rep="—", border=0, classes="data",
                         float_format=lambda v: f"{v:.4g}")


def render_html(study: Study, drawn: Figures) -> str:
    """The whole page: plotly.js once in the head, then settings, summary, every figure and the notes."""
    fixed, varied = settings_tables(study.trials)
    title = f"{study.name}: {study.kind} study"
    toc = ["<li><a href='#summary'>Summary</a></li>", "<li><a href='#settings'>Settings and provenance</a></li>"]
    sections = []
    for name, (spec, fig) in drawn.drawn.items():
        toc.append(f"<li><a href='#sec-{name}'>{html.escape(spec.title)}</a></li>")
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                          config={"responsive": True, "displaylogo": False})
        sections.append(f"<section id='sec-{name}'><h2>{html.escape(spec.title)}</h2>"
                        f"<p class='shows'>{html.escape(spec.shows)}</p>{div}</section>")
    if drawn.left_out:
        toc.append("<li><a href='#left-out'>Figures left out</a></li>")
        notes = "".join(f"<li><b>{html.escape(spec.title)}</b>: {html.escape(reason)}</li>"
                        for spec, reason in drawn.left_out)
        sections.append(f"<section id='left-out'><h2>Figures left out</h2><ul class='note'>{notes}</ul></section>")
    over = "seeds" if study.kind == "ablation" else "the variant's completed trials"
    descriptive = ", descriptive" if study.kind == "ablation" else ""
    summary = [f"<h3>Per variant (accuracies in %, mean ± 95% t-interval over {over}{descriptive})</h3>"
               f"{_table_html(variant_summary_table(study.trials, study.masking))}"]
    if study.kind == "ablation":
        summary.insert(0, plan_html(study))
        summary.append(f"<h3>Difference from the full Adv-DPNP, descriptive ({html.escape(stats.PAIRED_TEST_NAME)})</h3>"
                       f"<p class='note'>p (Holm): {html.escape(stats.CORRECTION_NAME)}; read a difference as "
                       "significant at level a only where p (Holm) &lt;= a.</p>"
                       + _table_html(differences_table(study.trials),
                                     "no comparison: needs a variant named 'full' or 'adv_dpnp' and another variant"))
    effects = factorial_table(study) if study.kind == "ablation" else None
    if effects is not None:
        from analysis import factorial

        summary.append(f"<h3>Factorial effects</h3><p class='note'>{html.escape(FACTORIAL_NOTE)}</p>"
                       + _table_html(factorial.effects_rows(effects)))
    if study.kind == "search":
        summary.append("<h3>Pareto-optimal trials (pareto.parquet)</h3>"
                       + _table_html(pareto_trials_table(study), "pareto.parquet not in the study directory"))
    summary.append("<h3>Trials that did not complete</h3>" + _table_html(failed_trials_table(study.trials)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="result"><b>Result.</b> {html.escape(result_line(study))}</p>
<p>{len(drawn.drawn)} figures from <code>{html.escape(str(study.directory))}</code>.</p>
<nav><ul>{''.join(toc)}</ul></nav>
<section id="summary"><h2>Summary</h2>{''.join(summary)}</section>
<section id="settings"><h2>Settings and provenance</h2>
{_table_html(provenance_table(study))}
<h3>Config fields that vary between trials</h3>{_table_html(varied)}
<details><summary>Config fields shared by every trial ({len(fixed)})</summary>{_table_html(fixed)}</details>
{recipe_html(study.recipe)}
</section>
{''.join(sections)}
</body></html>
"""


def plan_html(study: Study) -> str:
    """The "Plan and verdicts" section of an ablation: the plan, one row per comparison x primary endpoint, and
    the note that the rest of the report is descriptive (analysis/verdicts.py)."""
    from analysis import verdicts

    plan, table = study.planned_verdicts
    lines = "".join(f"<p>{html.escape(text)}</p>" for text in verdicts.plan_text(plan))
    if table.empty:
        body = f"<p class='note'>No verdicts: the reference {html.escape(plan.reference)!s} has no completed trial.</p>"
    else:
        body = (f"<p class='note'>{html.escape(verdicts.interval_note(table, verdicts.test_split_size(study)))}</p>"
                + _table_html(verdicts.verdict_rows(table, plan)))
    return (f"<h3 id='plan'>Plan and verdicts</h3>{lines}{body}"
            f"<p class='note'>{html.escape(verdicts.DESCRIPTIVE_NOTE)}</p>")


def recipe_html(recipe: str | None) -> str:
    """The study's command line and its study.yaml (what reruns it), or a note that it has none."""
    if recipe is None:
        return f"<p class='note'>no {STUDY_FILE} in the study directory (studies/*.py write one)</p>"
    import yaml

    try:
        command = (yaml.safe_load(recipe) or {}).get("command")
    except (yaml.YAMLError, AttributeError):
        command = None
    shown = f"<p>Command: <code>{html.escape(str(command))}</code></p>" if command else ""
    return (f"<h3>Study definition ({STUDY_FILE})</h3>{shown}<details><summary>The resolved study: defaults, "
            f"--config file and flags (rerun it with --config {STUDY_FILE})</summary>"
            f"<pre class='recipe'>{html.escape(recipe)}</pre></details>")


# ------------------------------------------------------------------ PNG export


def find_browser(environ: dict[str, str] | None = None) -> str | None:
    """The Chrome/Chromium kaleido will use: $BROWSER_PATH if executable, else the first on PATH."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("BROWSER_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((path for name in BROWSER_NAMES if (path := shutil.which(name, path=environ.get("PATH")))), None)


def export_pngs(drawn: Figures, directory: Path, log: Callable[[str], None] = print) -> list[Path]:
    """One PNG per figure with kaleido (one browser session for all); [] with a message when it cannot run."""
    try:
        import kaleido  # noqa: F401  (plotly calls it; import here only to say clearly when it is missing)
    except ImportError:
        log("PNG export skipped: kaleido is not installed (pip install 'kaleido>=1'); the HTML report is complete")
        return []
    if find_browser() is None:
        log("PNG export skipped: no Chrome/Chromium found for kaleido (apt-get install chromium, or set "
            "BROWSER_PATH=/path/to/chrome); the HTML report is complete")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png" for name in drawn.drawn]
    figs = [fig for _, fig in drawn.drawn.values()]
    # kaleido draws at its default 700x500 unless told: keep the height each figure asks for
    pio.write_images(figs, paths, width=1200, height=[fig.layout.height or 550 for fig in figs])
    return paths


# ------------------------------------------------------------------ entry points


def build_report(directory: str | Path, out_path: str | Path | None = None, png: bool = False,
                 log: Callable[[str], None] | None = print, optuna_storage: str | None = None) -> Path:
    """Write the report of the study in `directory` to out_path (default <directory>/report.html) and return it.

    With png=True also writes <out stem>_png/<figure>.png when kaleido and a browser are available.
    A search's Optuna views read its journal (<directory>/optuna.journal, or `optuna_storage`).
    Raises ResultsError when the directory is not a study or a file is not of the results schema.
    """
    log = log or (lambda message: None)
    study = load_study(directory, optuna_storage)
    drawn = make_figures(study)
    out_path = Path(out_path) if out_path is not None else study.directory / "report.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(render_html(study, drawn), encoding="utf-8")
    os.replace(tmp, out_path)
    log(f"wrote {out_path}: {len(drawn.drawn)} figures, {len(drawn.left_out)} left out"
        + "".join(f"\n  left out {spec.name}: {reason}" for spec, reason in drawn.left_out))
    if png:
        paths = export_pngs(drawn, out_path.with_name(f"{out_path.stem}_png"), log)
        if paths:
            log(f"wrote {len(paths)} PNGs to {paths[0].parent}")
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Figures and one self-contained HTML report of a dpnp_ray study.")
    parser.add_argument("directory", help="a study directory (holding trials.parquet, ...)")
    parser.add_argument("--out", help="the HTML file to write (default: <directory>/report.html)")
    parser.add_argument("--png", action="store_true", help="also write a PNG per figure (kaleido + Chrome/Chromium)")
    parser.add_argument("--optuna-storage", help="a search's Optuna storage (journal file or RDB URL) when it is not "
                                                 "<directory>/optuna.journal")
    args = parser.parse_args(argv)
    optuna_study.optuna.logging.set_verbosity(optuna_study.optuna.logging.WARNING)  # no "study created" lines
    try:
        build_report(args.directory, args.out, png=args.png, optuna_storage=args.optuna_storage)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
