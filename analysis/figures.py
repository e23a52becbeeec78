"""Figures of one study: each a function of results DataFrames (dpnp_ray/results.py schema) returning a plotly Figure.

A builder raises `NoData` (with a reason a person can act on) when the frames it is given hold nothing
to draw, so the report can leave the figure out with a note instead of drawing it empty.
Accuracies are fractions in [0, 1] and are shown as percentages.

Here: the ablation, search, training and cost figures. What every figure shares is in figure_basics.py, the
robustness details (eps curves, corruptions, geometry, gradient masking) in robustness_figures.py; both are
re-exported, so `figures.X` names every figure and helper the report uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from . import stats
from .figure_basics import (ACCURACY_LABELS, PERCENT_AXIS, NoData, completed, figure_title, label, none_if_nan,
                            present_columns, require_table, variant_colors, variant_order)

ABLATION_METRICS = ("clean_acc", "pgd_acc", "cw_acc", "aa_acc", "worst_case_acc", "corruption_acc")
SEARCH_OBJECTIVES = ("val_clean_acc", "val_robust_acc")

LOSS_TERMS = ("loss_total", "loss_ce", "loss_ppa", "loss_npr", "loss_ce_adv", "loss_ppa_adv", "loss_cons",
              "loss_trades_kl")
CURVE_QUANTITIES = LOSS_TERMS + ("train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc", "eps", "lr")
NONNEGATIVE = ("eps", "lr")  # quantities that cannot be below 0: their axes start at 0 (NPR losses can)


def epoch_axis(max_epoch: float) -> dict:
    """An epoch axis with ticks on whole epochs only (about 10 of them at most), from epoch 0."""
    return dict(tick0=0, dtick=max(1, math.ceil((max_epoch + 1) / 10)), tickformat="d")


# ------------------------------------------------------------------ ablation


def ablation_bars(trials: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS,
                  confidence: float = 0.95) -> go.Figure:
    """Per variant, the mean of each accuracy over seeds with a t-interval (mean ± t·s/sqrt(n)) as error bars."""
    frame = completed(require_table(trials, "trials", ["variant"]))
    metrics, missing = present_columns(frame, metrics)
    if frame.empty or not metrics:
        raise NoData("no completed trial has any of " + ", ".join(ACCURACY_LABELS[m] for m in ABLATION_METRICS))
    order = variant_order(frame["variant"])
    fig = go.Figure()
    for metric in metrics:
        table = stats.t_intervals_by(frame, "variant", metric, confidence).set_index("variant").reindex(order)
        fig.add_trace(go.Bar(
            name=label(metric), x=order, y=none_if_nan(table["mean"]),
            error_y=dict(type="data", array=none_if_nan(table["half_width"]), visible=True),
            customdata=np.stack([table["n"].fillna(0), table["low"], table["high"]], axis=1),
            hovertemplate=(f"{label(metric)} %{{x}}: %{{y:.1%}}<br>{confidence:.0%} CI "
                           "[%{customdata[1]:.1%}, %{customdata[2]:.1%}]<br>n=%{customdata[0]} seeds<extra></extra>"),
        ))
    title = f"Accuracy per variant: mean over seeds, {confidence:.0%} t-interval"
    fig.update_layout(barmode="group", title=figure_title(title, missing),
                      xaxis_title="variant", yaxis_title="accuracy", yaxis=PERCENT_AXIS, legend_title="evaluation")
    return fig


def _p_text(row: pd.Series) -> str:
    """'p=0.012 (Holm 0.048)': the raw and the Holm-adjusted p, with † when fewer than MIN_PAIRS_FOR_POWER
    seeds pair up; or 'no test (n=1)' and why."""
    if not math.isfinite(row["p_value"]):
        reason = "identical differences" if row["n_pairs"] >= stats.MIN_PAIRS_FOR_TEST else f"n={row['n_pairs']}"
        return f"no test ({reason})"
    return (f"p={row['p_value']:.2g}" + ("†" if row["n_pairs"] < stats.MIN_PAIRS_FOR_POWER else "")
            + f" (Holm {row['p_adjusted']:.2g})")


def _padded_range(centres: pd.Series, half_widths: pd.Series) -> list[float]:
    """An axis range holding 0, every point and its interval, with room for the p-value text."""
    half_widths = half_widths.fillna(0.0)
    ends = pd.concat([centres - half_widths, centres + half_widths, pd.Series([0.0])]).dropna()
    lo, hi = float(ends.min()), float(ends.max())
    pad = 0.25 * (hi - lo) or 0.01
    return [lo - pad, hi + pad]


def ablation_differences(trials: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS,
                         reference: str | None = None, confidence: float = 0.95) -> go.Figure:
    """A forest plot, one panel per metric: each variant minus the full Adv-DPNP over matching seeds (the mean
    paired difference and its t-interval), with the paired t-test's raw and Holm-adjusted p-value (adjusted
    over every (variant, metric) test of the figure; or why there is no test) above it."""
    frame = completed(require_table(trials, "trials", ["variant", "seed"]))
    if frame.empty:
        raise NoData("no completed trials")
    metrics, missing = present_columns(frame, metrics)
    reference = reference or stats.reference_variant(frame["variant"])
    if reference is None:
        raise NoData(f"no reference variant: expected one named {' or '.join(map(repr, stats.REFERENCE_VARIANTS))} "
                     f"among {', '.join(variant_order(frame['variant']))}")
    if frame["variant"].nunique() < 2 or not metrics:
        raise NoData("needs completed trials of the reference and at least one other variant")
    table = stats.differences_from_reference(frame, metrics, reference, confidence)
    order = [v for v in variant_order(frame["variant"]) if v != reference]
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[label(m) for m in metrics])
    for i, metric in enumerate(metrics):
        rows = table[table["metric"] == metric].set_index("variant").reindex(order)
        fig.add_trace(go.Scatter(
            name=label(metric), x=none_if_nan(rows["mean_difference"]), y=order, mode="markers+text",
            marker=dict(size=10, color=qualitative.Plotly[i % 10]), showlegend=False,
            error_x=dict(type="data", array=none_if_nan(rows["ci_half_width"]), visible=True),
            text=[_p_text(r) for _, r in rows.iterrows()], textposition="top center", cliponaxis=False,
            customdata=np.stack([rows["n_pairs"], rows["p_value"], rows["statistic"], rows["p_adjusted"]], axis=1),
            hovertemplate=(f"{label(metric)}: %{{y}} − {reference}<br>mean difference %{{x:.2%}}<br>"
                           "t=%{customdata[2]:.3f}, p=%{customdata[1]:.3g}, Holm-adjusted p=%{customdata[3]:.3g}"
                           "<br>n=%{customdata[0]} matching seeds<extra></extra>"),
        ), row=1, col=i + 1)
        fig.add_vline(x=0, line_color="black", line_width=1, row=1, col=i + 1)
        fig.update_xaxes(title_text=f"variant − {reference}", tickformat=".1%", row=1, col=i + 1,
                         range=_padded_range(rows["mean_difference"], rows["ci_half_width"]))
    fig.update_yaxes(title_text="variant", autorange="reversed", row=1, col=1)
    fig.update_layout(
        title=figure_title(f"Difference from {reference!r} (variant − {reference}), {confidence:.0%} t-interval of "
                     f"the paired differences<br><sup>{stats.PAIRED_TEST_NAME}; Holm-adjusted p over the "
                     f"figure's {int(np.isfinite(table['p_value']).sum())} tests in brackets; † fewer than "
                     f"{stats.MIN_PAIRS_FOR_POWER} seed pairs (low power); no test with fewer than "
                     f"{stats.MIN_PAIRS_FOR_TEST}</sup>", missing),
        margin=dict(t=150 if missing else 120), height=max(350, 90 * len(order) + 200),
    )
    return fig


# ------------------------------------------------------------------ search


def varying_config_columns(trials: pd.DataFrame) -> list[str]:
    """cfg_* columns taking more than one value among these trials (the searched parameters, or the ablated ones)."""
    return [c for c in trials.columns if c.startswith("cfg_") and trials[c].astype(str).nunique(dropna=False) > 1]


def trial_hover(trials: pd.DataFrame, columns: Sequence[str] = ()) -> list[str]:
    """Hover text: the trial's identity, the given metric columns and its config fields that vary in the study."""
    config = varying_config_columns(trials)
    lines = []
    for _, row in trials.iterrows():
        parts = [f"trial {row['trial_id']} ({row.get('variant', '')}, seed {row.get('seed', '')})"]
        parts += [f"{label(c)}: {row[c]:.4g}" if isinstance(row[c], float) else f"{label(c)}: {row[c]}"
                  for c in columns if c in row]
        parts += [f"{c.removeprefix('cfg_')} = {row[c]}" for c in config]
        lines.append("<br>".join(parts))
    return lines


def clean_robust_scatter(trials: pd.DataFrame, pareto: pd.DataFrame | None = None, *,
                         x: str = "val_clean_acc", y: str = "val_robust_acc", front: bool = True) -> go.Figure:
    """Every completed trial as a point (clean vs robust accuracy, one colour per variant), the Pareto front
    highlighted: the trials in pareto.parquet when given, else the non-dominated trials on (x, y).
    Hovering a point shows the trial's varying config fields."""
    frame = completed(require_table(trials, "trials", ["trial_id", "variant", x, y]))
    frame = frame[pd.to_numeric(frame[x], errors="coerce").notna() & pd.to_numeric(frame[y], errors="coerce").notna()]
    if frame.empty:
        raise NoData(f"no completed trial has both {x} and {y}")
    colors = variant_colors(frame["variant"])
    hover = pd.Series(trial_hover(frame, [x, y]), index=frame.index)
    fig = go.Figure()
    for variant in variant_order(frame["variant"]):
        rows = frame[frame["variant"] == variant]
        fig.add_trace(go.Scatter(name=variant, x=rows[x], y=rows[y], mode="markers", hovertext=hover[rows.index],
                                 hoverinfo="text", marker=dict(color=colors[variant], size=9, opacity=0.75)))
    subtitle = ""
    if front:
        if pareto is not None and "trial_id" in pareto.columns and len(pareto):
            on_front = frame["trial_id"].isin(pareto["trial_id"])
            subtitle = "front: trials in pareto.parquet"
        else:
            on_front = pd.Series(stats.pareto_mask(frame[[x, y]].to_numpy(float)), index=frame.index)
            subtitle = f"front: non-dominated on ({label(x)}, {label(y)}), computed here"
        best = frame[on_front].sort_values(x)
        fig.add_trace(go.Scatter(name="Pareto front", x=best[x], y=best[y], mode="lines+markers",
                                 hovertext=hover[best.index], hoverinfo="text", line=dict(color="black", shape="hv"),
                                 marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1))))
    fig.update_layout(title=figure_title(f"{label(x)} vs {label(y)}, all completed trials"
                                   + (f"<br><sup>{subtitle}</sup>" if subtitle else "")),
                      xaxis_title=label(x), yaxis_title=label(y), xaxis=PERCENT_AXIS, yaxis=PERCENT_AXIS,
                      legend_title="variant")
    return fig


# ------------------------------------------------------------------ training


def learning_curves(epochs: pd.DataFrame, quantities: Sequence[str] = CURVE_QUANTITIES, columns: int = 3) -> go.Figure:
    """One panel per recorded quantity (loss terms, train/val accuracies, eps, LR) against the epoch,
    one line per variant: the mean over its seeds."""
    frame = require_table(epochs, "epochs", ["variant", "epoch"])
    quantities, _ = present_columns(frame, quantities)
    if not quantities:
        raise NoData("epochs.parquet records none of " + ", ".join(CURVE_QUANTITIES))
    means = frame.groupby(["variant", "epoch"], sort=True)[quantities].mean(numeric_only=True).reset_index()
    means[quantities] = means[quantities].round(12)  # a constant's mean, 0.1000000000000000555, breaks autorange
    rows = math.ceil(len(quantities) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[label(q) for q in quantities],
                        horizontal_spacing=0.08, vertical_spacing=0.5 / rows)
    colors = variant_colors(frame["variant"])
    for i, quantity in enumerate(quantities):
        row, col = divmod(i, columns)
        for variant in variant_order(frame["variant"]):
            curve = means[means["variant"] == variant].dropna(subset=[quantity])
            fig.add_trace(go.Scatter(name=variant, legendgroup=variant, showlegend=i == 0, x=curve["epoch"],
                                     y=curve[quantity], mode="lines+markers", line=dict(color=colors[variant]),
                                     hovertemplate=f"{variant}<br>epoch %{{x}}<br>{label(quantity)} %{{y:.4g}}"
                                                   "<extra></extra>"),
                          row=row + 1, col=col + 1)
        fig.update_xaxes(title_text="epoch", row=row + 1, col=col + 1, **epoch_axis(means["epoch"].max()))
        log_axis = quantity == "lr" and (means[quantity] > 0).all()
        fig.update_yaxes(title_text=label(quantity), row=row + 1, col=col + 1, tickformat=".3~g",
                         type="log" if log_axis else None,
                         rangemode="tozero" if quantity in NONNEGATIVE and not log_axis else None)
    fig.update_layout(title="Learning curves: mean over seeds per variant", height=300 * rows + 120,
                      legend_title="variant")
    return fig


# ------------------------------------------------------------------ cost


def cost_bars(trials: pd.DataFrame, epochs: pd.DataFrame | None = None) -> go.Figure:
    """Wall-clock seconds and training throughput (images/s, mean over epochs) of every trial, by variant.
    Throughput comes from trials.parquet, or from epochs.parquet when the trials table lacks it."""
    frame = require_table(trials, "trials", ["trial_id", "variant", "wall_seconds"]).copy()
    if "images_per_s" not in frame.columns and epochs is not None and "images_per_s" in epochs.columns:
        frame = frame.merge(epochs.groupby("trial_id", as_index=False)["images_per_s"].mean(), on="trial_id",
                            how="left")
    quantities, _ = present_columns(frame, ["wall_seconds", "images_per_s"])
    if not quantities:
        raise NoData("no trial records wall_seconds or images_per_s")
    fig = make_subplots(rows=1, cols=len(quantities), horizontal_spacing=0.1,
                        subplot_titles=[{"wall_seconds": "wall-clock time per trial",
                                         "images_per_s": "training throughput per trial"}[q] for q in quantities])
    colors = variant_colors(frame["variant"])
    status = frame["status"] if "status" in frame.columns else pd.Series("", index=frame.index)
    for i, quantity in enumerate(quantities):
        for variant in variant_order(frame["variant"]):
            rows = frame[frame["variant"] == variant]
            fig.add_trace(go.Bar(name=variant, legendgroup=variant, showlegend=i == 0, x=rows["trial_id"].astype(str),
                                 y=rows[quantity], marker_color=colors[variant], customdata=status[rows.index],
                                 hovertemplate=f"trial %{{x}} ({variant}, %{{customdata}})<br>{quantity} %{{y:.4g}}"
                                               "<extra></extra>"),
                          row=1, col=i + 1)
        fig.update_xaxes(title_text="trial", type="category", row=1, col=i + 1)
        fig.update_yaxes(title_text={"wall_seconds": "wall seconds", "images_per_s": "images / s"}[quantity],
                         row=1, col=i + 1)
    fig.update_layout(title="Cost per trial", legend_title="variant")
    return fig
