"""What every figure of a study shares: NoData, how columns are named, the percent axis, the variant order and
colours, and the checks of the frames a figure is given.

Accuracies are fractions in [0, 1] and are shown as percentages.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
from plotly.colors import qualitative

from . import stats


class NoData(ValueError):
    """The frames hold nothing this figure can show; the message says what is missing."""


#: trials.parquet accuracy columns and how figures name them
ACCURACY_LABELS = {
    "clean_acc": "clean", "fgsm_acc": "FGSM", "pgd_acc": "PGD", "cw_acc": "CW-inf", "aa_acc": "AutoAttack",
    "worst_case_acc": "worst case", "corruption_acc": "corruptions",
}
CURVE_LABELS = {
    "loss_total": "total loss", "loss_ce": "CE loss (clean)", "loss_ppa": "PPA loss (clean)",
    "loss_npr": "NPR loss", "loss_ce_adv": "CE loss (adversarial)", "loss_ppa_adv": "PPA loss (adversarial)",
    "loss_cons": "consistency loss", "loss_trades_kl": "TRADES KL", "train_clean_acc": "train clean accuracy",
    "train_adv_acc": "train adversarial accuracy", "val_clean_acc": "val clean accuracy",
    "val_robust_acc": "val robust accuracy", "eps": "training eps", "lr": "learning rate",
}
PERCENT_AXIS = dict(tickformat=".3~%")  # 97.25%: ticks 0.25 points apart stay distinct (".0%" repeated 97% 97% 98%)


def label(column: str) -> str:
    """How a figure names a column: its accuracy or curve label, else the column without cfg_ and underscores."""
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


def require_table(frame: pd.DataFrame | None, name: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """The study's table `name` itself, or NoData saying that it is absent, empty or lacks one of `columns`."""
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


def figure_title(text: str, missing: Sequence[str] = ()) -> dict:
    """A plotly title: `text`, and a line naming the `missing` columns when there are any."""
    if missing:
        text += f"<br><sup>not recorded in this study: {', '.join(label(c) for c in missing)}</sup>"
    return dict(text=text)


def none_if_nan(values) -> list:
    """The values with NaN as None, which plotly leaves out (no bar, no error bar) instead of drawing."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
