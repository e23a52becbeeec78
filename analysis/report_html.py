"""The report's HTML page: one self-contained file, plotly.js embedded once in its head, then the result in
words, the summary tables, settings and provenance, the study definition and every drawn figure."""

from __future__ import annotations

import html

import pandas as pd
import plotly
import plotly.io as pio

from analysis import stats
from analysis.figure_registry import Figures
from analysis.report_tables import (FACTORIAL_NOTE, differences_table, factorial_table, failed_trials_table,
                                    pareto_trials_table, provenance_table, result_line, settings_tables,
                                    variant_summary_table)
from analysis.study import STUDY_FILE, Study

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
