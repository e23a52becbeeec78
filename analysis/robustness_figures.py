"""What a study's evaluation measured beyond the headline accuracies, one figure each: accuracy against the
attack's eps (PGD, APGD), accuracy per corruption and severity, the prototype geometry of clean and attacked
features, and the gradient-masking checks.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dpnp_ray.results import KEY_COLUMNS

from . import stats
from .figure_basics import (PERCENT_AXIS, NoData, label, none_if_nan, present_columns, require_table, variant_colors,
                            variant_order)

EPS_CURVE_ATTACKS = ("pgd_eps_curve", "apgd_eps_curve")  # the second (the `full` suite's) drawn dashed


def eps_curves(evals: pd.DataFrame, confidence: float = 0.95) -> go.Figure:
    """Accuracy under PGD (and, where the `full` suite ran, APGD-CE + APGD-T: dashed, "<variant> (APGD)")
    against the L-inf attack budget eps, per variant: mean over seeds with t-intervals."""
    frame = require_table(evals, "evals", ["variant", "attack", "eps", "accuracy"])
    frame = frame[frame["attack"].isin(EPS_CURVE_ATTACKS)]
    if frame.empty:
        raise NoData(f"no {' / '.join(EPS_CURVE_ATTACKS)} rows in evals.parquet (eval_suite 'basic' records none)")
    if "split" in frame.columns and (frame["split"] == "test").any():
        frame = frame[frame["split"] == "test"]
    per_trial = frame.groupby(["variant", "attack", "trial_id", "eps"], as_index=False)["accuracy"].mean()
    colors = variant_colors(frame["variant"])
    fig = go.Figure()
    for variant, attack in [(v, a) for a in EPS_CURVE_ATTACKS for v in variant_order(frame["variant"])]:
        mine = per_trial[(per_trial["variant"] == variant) & (per_trial["attack"] == attack)]
        if mine.empty:
            continue
        table = stats.t_intervals_by(mine, "eps", "accuracy", confidence).sort_values("eps")
        apgd = attack == "apgd_eps_curve"
        fig.add_trace(go.Scatter(
            name=f"{variant} (APGD)" if apgd else variant, x=table["eps"], y=table["mean"], mode="lines+markers",
            line=dict(color=colors[variant], dash="dash" if apgd else "solid"),
            error_y=dict(type="data", array=none_if_nan(table["half_width"]), visible=True),
            customdata=np.stack([table["n"], table["eps"] * 255], axis=1),
            hovertemplate=(f"{variant} {'APGD' if apgd else 'PGD'}<br>eps %{{x:.4g}} (%{{customdata[1]:.2f}}/255)"
                           "<br>accuracy %{y:.1%}<br>n=%{customdata[0]} seeds<extra></extra>"),
        ))
    fig.update_layout(title=f"Accuracy vs attack eps (PGD; dashed: APGD-CE + APGD-T): mean over seeds, "
                            f"{confidence:.0%} t-interval",
                      xaxis_title="eps (L-inf, as recorded in evals.parquet)", yaxis_title="accuracy",
                      xaxis=dict(rangemode="tozero"), yaxis=PERCENT_AXIS, legend_title="variant")
    return fig


def corruption_heatmap(corruptions: pd.DataFrame) -> go.Figure:
    """Accuracy per corruption (rows) and severity (columns), mean over a variant's trials; one panel per
    (variant, source). The panel title gives the mean over all its cells (the CIFAR-10-C metric)."""
    frame = require_table(corruptions, "corruptions", ["variant", "source", "corruption", "severity", "accuracy"])
    frame = frame[frame["accuracy"].notna()]
    if frame.empty:
        raise NoData("corruptions.parquet has no accuracy values")
    means = frame.groupby(["variant", "source", "corruption", "severity"], as_index=False)["accuracy"].mean()
    panels = [(v, s) for v in variant_order(means["variant"]) for s in sorted(means["source"].unique())
              if ((means["variant"] == v) & (means["source"] == s)).any()]
    corruption_names = sorted(means["corruption"].unique())
    severities = sorted(int(s) for s in means["severity"].unique())
    titles = [f"{v} ({s}): mean {means[(means['variant'] == v) & (means['source'] == s)]['accuracy'].mean():.1%}"
              for v, s in panels]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.12,
                        vertical_spacing=0.3 / rows)
    for i, (variant, source) in enumerate(panels):
        cells = means[(means["variant"] == variant) & (means["source"] == source)]
        grid = cells.pivot(index="corruption", columns="severity", values="accuracy").reindex(
            index=corruption_names, columns=severities)
        row, col = divmod(i, columns)
        fig.add_trace(go.Heatmap(name=f"{variant} ({source})", z=grid.to_numpy(), x=severities, y=corruption_names,
                                 coloraxis="coloraxis", texttemplate="%{z:.0%}",
                                 hovertemplate=(f"{variant} ({source})<br>%{{y}}, severity %{{x}}<br>"
                                                "accuracy %{z:.1%}<extra></extra>")),
                      row=row + 1, col=col + 1)
        fig.update_xaxes(title_text="severity", dtick=1, row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="corruption", row=row + 1, col=col + 1)
    fig.update_layout(title="Corruption accuracy by corruption and severity",
                      coloraxis=dict(colorscale="Viridis", colorbar=dict(title="accuracy", tickformat=".0%")),
                      height=max(400, 28 * len(corruption_names)) * rows + 120)
    return fig


#: numeric geometry columns that describe the feature set (how many points, which attack), not its geometry
GEOMETRY_DESCRIPTORS = ("n", "eps", "steps", "restarts", "accuracy")


def geometry_metric_columns(geometry: pd.DataFrame) -> list[str]:
    """The prototype-geometry metrics: every numeric column that is not a key, the split, the schema version
    or a descriptor of the feature set (GEOMETRY_DESCRIPTORS)."""
    skip = set(KEY_COLUMNS) | {"split", "schema_version"} | set(GEOMETRY_DESCRIPTORS)
    return [c for c in geometry.columns if c not in skip and pd.api.types.is_numeric_dtype(geometry[c])
            and not pd.api.types.is_bool_dtype(geometry[c])]


def geometry_bars(geometry: pd.DataFrame, confidence: float = 0.95, columns: int = 3) -> go.Figure:
    """One panel per geometry metric (angles, compactness, separation, margins), bars per variant for the
    clean and adversarial features: mean over seeds with t-intervals."""
    frame = require_table(geometry, "geometry", ["variant", "split"])
    metrics, _ = present_columns(frame, geometry_metric_columns(frame))
    if not metrics:
        raise NoData("geometry.parquet has no numeric metric columns")
    order = variant_order(frame["variant"])
    splits = list(dict.fromkeys(frame["split"]))
    rows = math.ceil(len(metrics) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[label(m) for m in metrics],
                        horizontal_spacing=0.08, vertical_spacing=0.5 / rows)
    palette = {"test": "#4C78A8", "test_pgd": "#E45756"}  # the clean and the PGD-attacked test features
    for i, metric in enumerate(metrics):
        row, col = divmod(i, columns)
        for j, split in enumerate(splits):
            table = stats.t_intervals_by(frame[frame["split"] == split], "variant", metric, confidence)
            table = table.set_index("variant").reindex(order)
            fig.add_trace(go.Bar(name=split, legendgroup=split, showlegend=i == 0, x=order,
                                 y=none_if_nan(table["mean"]),
                                 marker_color=palette.get(split, qualitative.Plotly[j % 10]),
                                 error_y=dict(type="data", array=none_if_nan(table["half_width"]), visible=True),
                                 hovertemplate=f"{split} %{{x}}<br>{label(metric)} %{{y:.4g}}<extra></extra>"),
                          row=row + 1, col=col + 1)
        fig.update_xaxes(title_text="variant", row=row + 1, col=col + 1)
        fig.update_yaxes(title_text=label(metric), row=row + 1, col=col + 1)
    fig.update_layout(barmode="group", height=320 * rows + 120, legend_title="features",
                      title=f"Prototype geometry per variant: mean over seeds, {confidence:.0%} t-interval")
    return fig


MASKING_COLUMNS = ("variant", "seed", "trial_id", "check", "value", "threshold", "flagged", "detail")


def masking_table(masking: pd.DataFrame) -> go.Figure:
    """The gradient-masking checks of every trial as a table, flagged rows first and shaded."""
    frame = require_table(masking, "masking", ["check", "flagged"])
    frame = frame.assign(flagged=frame["flagged"].astype(bool)).sort_values(
        ["flagged", "variant", "seed", "check"], ascending=[False, True, True, True])
    shown = [c for c in MASKING_COLUMNS if c in frame.columns]
    # plotly renders a subset of HTML in cells: escape so a detail reads as written
    cells = [[html.escape(f"{v:.4g}" if isinstance(v, float) else str(v)) for v in frame[c]] for c in shown]
    shade = ["#f8d7da" if f else "white" for f in frame["flagged"]]
    widths = [{"detail": 3, "check": 2, "trial_id": 1.5}.get(c, 1) for c in shown]
    fig = go.Figure(go.Table(header=dict(values=[f"<b>{c}</b>" for c in shown], fill_color="#e9ecef", align="left"),
                             cells=dict(values=cells, fill_color=[shade] * len(shown), align="left"),
                             columnwidth=widths))
    flagged = int(frame["flagged"].sum())
    fig.update_layout(title=f"Gradient-masking checks: {flagged} of {len(frame)} flagged",
                      height=min(1200, 160 + 32 * (len(frame) + 1)))
    return fig
