"""Figures, statistics and the HTML report of a dpnp_ray study's Parquet results.

    from analysis import figures, stats
    from analysis.report import build_report, load_study, make_figures

Each figure is a function of DataFrames returning a plotly Figure (figures.py, robustness_figures.py, optuna_study.py);
report.py reads a study directory and writes one self-contained HTML file.
"""
