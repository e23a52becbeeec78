"""Figures, statistics and the HTML report of a dpnp_ray study's Parquet results.

    from analysis import figures, stats
    from analysis.report import build_report
    from analysis.study import load_study
    from analysis.figure_registry import make_figures

Each figure is a function of DataFrames returning a plotly Figure (figures.py, robustness_figures.py,
optuna_study.py); study.py reads a study directory, figure_registry.py lists the report's figures,
report_tables.py and report_html.py make its tables and page, and report.py writes one self-contained HTML file.
"""
