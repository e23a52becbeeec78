"""Which figures a report shows, how each is drawn from a study, and their PNG export.

FIGURES lists every figure in report order (FigureSpec: name, title, one sentence, how to build it, the study
kinds it belongs to); make_figures draws those a study has data for and notes why the others are left out.
PNGs need kaleido>=1 and a Chrome/Chromium binary (BROWSER_PATH or on PATH).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from analysis import figures, optuna_study, robustness_figures, stats
from analysis.study import Study

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report and how to draw it from a Study."""

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
               lambda s: robustness_figures.eps_curves(s.evals)),
    FigureSpec("corruption_heatmap", "Corruption accuracy",
               "Accuracy per corruption and severity, mean over each variant's trials.",
               lambda s: robustness_figures.corruption_heatmap(s.corruptions)),
    FigureSpec("geometry_bars", "Prototype geometry",
               "Angles, compactness, separation and margins of clean and adversarial features per variant.",
               lambda s: robustness_figures.geometry_bars(s.geometry)),
    FigureSpec("masking_table", "Gradient-masking checks",
               "Every sanity check of every trial; flagged checks first and shaded.",
               lambda s: robustness_figures.masking_table(s.masking)),
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


# ------------------------------------------------------------------ PNG export


def find_browser(environ: dict[str, str] | None = None) -> str | None:
    """The Chrome/Chromium kaleido will use: $BROWSER_PATH if executable, else the first on PATH."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("BROWSER_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return next((path for name in BROWSER_NAMES if (path := shutil.which(name, path=environ.get("PATH")))), None)


def export_pngs(drawn: Figures, directory: Path, log: Callable[[str], None] = print,
                done: str = "the HTML report is complete") -> list[Path]:
    """One PNG per figure with kaleido (one browser session for all); [] with a message (ending in `done`:
    what was written without them) when it cannot run."""
    try:
        import kaleido  # noqa: F401  (plotly calls it; import here only to say clearly when it is missing)
    except ImportError:
        log(f"PNG export skipped: kaleido is not installed (pip install 'kaleido>=1'); {done}")
        return []
    if find_browser() is None:
        log("PNG export skipped: no Chrome/Chromium found for kaleido (apt-get install chromium, or set "
            f"BROWSER_PATH=/path/to/chrome); {done}")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png" for name in drawn.drawn]
    figs = [fig for _, fig in drawn.drawn.values()]
    # kaleido draws at its default 700x500 unless told: keep the height each figure asks for
    pio.write_images(figs, paths, width=1200, height=[fig.layout.height or 550 for fig in figs])
    return paths

