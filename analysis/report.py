"""One study's Parquet results -> one self-contained HTML report (and optionally a PNG per figure).

    python analysis/report.py results/ablation [--out report.html] [--png]

The report works offline: plotly.js is embedded once in the page head. Figures a study has no data for
are left out with a note. PNGs need kaleido>=1 and a Chrome/Chromium binary (BROWSER_PATH or on PATH);
without them the HTML report is still written and a message says why there are no PNGs.

This is the command line; the parts: study.py (reading a study directory), figure_registry.py (the figures and
their PNGs), report_tables.py (the tables), report_html.py (the page).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: `analysis` lives in the repository root, next to dpnp_ray
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import optuna_study
from analysis.figure_registry import export_pngs, make_figures
from analysis.report_html import render_html
from analysis.study import load_study
from dpnp_ray.results import ResultsError


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
