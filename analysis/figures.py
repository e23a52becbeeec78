"""Figures of one study: each a function of results DataFrames (dpnp_ray/results.py schema) returning a plotly Figure.

A builder raises `NoData` (with a reason a person can act on) when the frames it is given hold nothing
to draw, so the report can leave the figure out with a note instead of drawing it empty.
Accuracies are fractions in [0, 1] and are shown as percentages.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dpnp_ray.results import KEY_COLUMNS

from . import stats


class NoData(ValueError):
    """The frames hold nothing this figure can show; the message says what is missing."""


#: trials.parquet accuracy columns and how figures name them
ACCURACY_LABELS = {
    "clean_acc": "clean", "fgsm_acc": "FGSM", "pgd_acc": "PGD", "cw_acc": "CW-inf", "aa_acc": "AutoAttack",
    "worst_case_acc": "worst case", "corruption_acc": "corruptions",
}
ABLATION_METRICS = ("clean_acc", "pgd_acc", "cw_acc", "aa_acc", "worst_case_acc", "corruption_acc")
SEARCH_OBJECTIVES = ("val_clean_acc", "val_robust_acc")

LOSS_TERMS = ("loss_total", "loss_ce", "loss_ppa", "loss_npr", "loss_ce_adv", "loss_ppa_adv", "loss_cons",
              "loss_trades_kl")
CURVE_QUANTITIES = LOSS_TERMS + ("train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc", "eps", "lr")
CURVE_LABELS = {
    "loss_total": "total loss", "loss_ce": "CE loss (clean)", "loss_ppa": "PPA loss (clean)",
    "loss_npr": "NPR loss", "loss_ce_adv": "CE loss (adversarial)", "loss_ppa_adv": "PPA loss (adversarial)",
    "loss_cons": "consistency loss", "loss_trades_kl": "TRADES KL", "train_clean_acc": "train clean accuracy",
    "train_adv_acc": "train adversarial accuracy", "val_clean_acc": "val clean accuracy",
    "val_robust_acc": "val robust accuracy", "eps": "training eps", "lr": "learning rate",
}
EPS_CURVE_ATTACKS = ("pgd_eps_curve", "apgd_eps_curve")  # the second (the `full` suite's) drawn dashed
PERCENT_AXIS = dict(tickformat=".3~%")  # 97.25%: ticks 0.25 points apart stay distinct (".0%" repeated 97% 97% 98%)
NONNEGATIVE = ("eps", "lr")  # quantities that cannot be below 0: their axes start at 0 (NPR losses can)


def epoch_axis(max_epoch: float) -> dict:
    """An epoch axis with ticks on whole epochs only (about 10 of them at most), from epoch 0."""
    return dict(tick0=0, dtick=max(1, math.ceil((max_epoch + 1) / 10)), tickformat="d")


def label(column: str) -> str:
    return ACCURACY_LABELS.get(column) or CURVE_LABELS.get(column) or column.removeprefix("cfg_").replace("_", " ")


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose metrics count: status 'completed' (failed and stopped trials have none or partial ones)."""
    return trials[trials["status"] == "completed"] if "status" in trials.columns else trials


def variant_order(variants: Sequence[str]) -> list[str]:
    """Variants in order of appearance, the reference (full Adv-DPNP) first."""
    seen = list(dict.fromkeys(str(v) for v in variants))
    reference = stats.reference_variant(seen)
    return ([reference] if reference else []) + [v for v in seen if v != reference]


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """The same colour for a variant in every figure of a report."""
    palette = qualitative.Plotly + qualitative.D3 + qualitative.Safe
    return {v: palette[i % len(palette)] for i, v in enumerate(variant_order(variants))}


def _require(frame: pd.DataFrame | None, name: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    if frame is None:
        raise NoData(f"{name}.parquet not in the study directory")
    if frame.empty:
        raise NoData(f"{name}.parquet has no rows")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise NoData(f"{name}.parquet has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}")
    return frame


def present_columns(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns with at least one finite value, columns absent or all NaN)."""
    have = [c for c in columns if c in frame.columns and pd.to_numeric(frame[c], errors="coerce").notna().any()]
    return have, [c for c in columns if c not in have]


def _title(text: str, missing: Sequence[str] = ()) -> dict:
    if missing:
        text += f"<br><sup>not recorded in this study: {', '.join(label(c) for c in missing)}</sup>"
    return dict(text=text)


def _none_if_nan(values) -> list:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


# ------------------------------------------------------------------ ablation


def ablation_bars(trials: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS,
                  confidence: float = 0.95) -> go.Figure:
    """Per variant, the mean of each accuracy over seeds with a t-interval (mean ± t·s/sqrt(n)) as error bars."""
    frame = completed(_require(trials, "trials", ["variant"]))
    metrics, missing = present_columns(frame, metrics)
    if frame.empty or not metrics:
        raise NoData("no completed trial has any of " + ", ".join(ACCURACY_LABELS[m] for m in ABLATION_METRICS))
    order = variant_order(frame["variant"])
    fig = go.Figure()
    for metric in metrics:
        table = stats.t_intervals_by(frame, "variant", metric, confidence).set_index("variant").reindex(order)
        fig.add_trace(go.Bar(
            name=label(metric), x=order, y=_none_if_nan(table["mean"]),
            error_y=dict(type="data", array=_none_if_nan(table["half_width"]), visible=True),
            customdata=np.stack([table["n"].fillna(0), table["low"], table["high"]], axis=1),
            hovertemplate=(f"{label(metric)} %{{x}}: %{{y:.1%}}<br>{confidence:.0%} CI "
                           "[%{customdata[1]:.1%}, %{customdata[2]:.1%}]<br>n=%{customdata[0]} seeds<extra></extra>"),
        ))
    title = f"Accuracy per variant: mean over seeds, {confidence:.0%} t-interval"
    fig.update_layout(barmode="group", title=_title(title, missing),
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
    frame = completed(_require(trials, "trials", ["variant", "seed"]))
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
            name=label(metric), x=_none_if_nan(rows["mean_difference"]), y=order, mode="markers+text",
            marker=dict(size=10, color=qualitative.Plotly[i % 10]), showlegend=False,
            error_x=dict(type="data", array=_none_if_nan(rows["ci_half_width"]), visible=True),
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
        title=_title(f"Difference from {reference!r} (variant − {reference}), {confidence:.0%} t-interval of "
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
    frame = completed(_require(trials, "trials", ["trial_id", "variant", x, y]))
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
    fig.update_layout(title=_title(f"{label(x)} vs {label(y)}, all completed trials"
                                   + (f"<br><sup>{subtitle}</sup>" if subtitle else "")),
                      xaxis_title=label(x), yaxis_title=label(y), xaxis=PERCENT_AXIS, yaxis=PERCENT_AXIS,
                      legend_title="variant")
    return fig


# ------------------------------------------------------------------ training


def learning_curves(epochs: pd.DataFrame, quantities: Sequence[str] = CURVE_QUANTITIES, columns: int = 3) -> go.Figure:
    """One panel per recorded quantity (loss terms, train/val accuracies, eps, LR) against the epoch,
    one line per variant: the mean over its seeds."""
    frame = _require(epochs, "epochs", ["variant", "epoch"])
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


# ------------------------------------------------------------------ robustness details


def eps_curves(evals: pd.DataFrame, confidence: float = 0.95) -> go.Figure:
    """Accuracy under PGD (and, where the `full` suite ran, APGD-CE + APGD-T: dashed, "<variant> (APGD)")
    against the L-inf attack budget eps, per variant: mean over seeds with t-intervals."""
    frame = _require(evals, "evals", ["variant", "attack", "eps", "accuracy"])
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
            error_y=dict(type="data", array=_none_if_nan(table["half_width"]), visible=True),
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
    frame = _require(corruptions, "corruptions", ["variant", "source", "corruption", "severity", "accuracy"])
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
    frame = _require(geometry, "geometry", ["variant", "split"])
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
                                 y=_none_if_nan(table["mean"]),
                                 marker_color=palette.get(split, qualitative.Plotly[j % 10]),
                                 error_y=dict(type="data", array=_none_if_nan(table["half_width"]), visible=True),
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
    frame = _require(masking, "masking", ["check", "flagged"])
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


# ------------------------------------------------------------------ cost


def cost_bars(trials: pd.DataFrame, epochs: pd.DataFrame | None = None) -> go.Figure:
    """Wall-clock seconds and training throughput (images/s, mean over epochs) of every trial, by variant.
    Throughput comes from trials.parquet, or from epochs.parquet when the trials table lacks it."""
    frame = _require(trials, "trials", ["trial_id", "variant", "wall_seconds"]).copy()
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
