"""Figures, statistics and the HTML report of a dpnp_ray study's Parquet results.

    from analysis import figures, stats
    from analysis.report import build_report
    from analysis.study import load_study
    from analysis.figure_registry import make_figures

Each figure is a function of DataFrames returning a plotly Figure (figures.py, robustness_figures.py,
optuna_study.py); study.py reads a study directory, figure_registry.py lists the report's figures,
report_tables.py and report_html.py make its tables and page, and report.py writes one self-contained HTML file.
The statistics: stats.py (over seeds), crossed_design.py (seeds x test images), t_test_power.py and power.py
(what a study can detect), verdicts.py and factorial.py (the planned comparisons and effects); the claim audit:
audit.py (the claims and their rules), claim_comparisons.py (its comparisons), audit_figure.py (its picture);
markdown.py writes the pages of record.
"""
