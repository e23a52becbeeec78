"""How the claim audit compares variants (analysis/audit.py): each (variant, reference) pair through
verdicts.compare with Holm over the claim's pairs and a one-sided non-inferiority test against the margin, and
how those comparisons are written (one sentence of numbers, a display table, the numbers the figure draws)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import pandas as pd
from scipy import stats as scipy_stats

from analysis import figures, stats, verdicts
from analysis.study import Study


def pp_text(value: float, signed: bool = True) -> str:
    return "—" if value is None or not math.isfinite(value) else (f"{value:+.2f}" if signed else f"{value:.2f}")


def mde_span(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "no MDE (too few seeds or no spread)"
    lo, hi = min(finite), max(finite)
    return f"MDE {lo:.2f} pp" if f"{lo:.2f}" == f"{hi:.2f}" else f"MDE {lo:.2f}-{hi:.2f} pp"


def compare_pairs(study: Study, endpoint: str, pairs: list[tuple[str, str]], plan) -> pd.DataFrame:
    """verdicts.compare for each (variant, reference), Holm over them, plus the one-sided non-inferiority p
    (variant not worse than reference by more than the margin) and its Holm adjustment."""
    family = replace(plan, comparisons=tuple(v for v, _ in pairs))
    rows = [verdicts.compare(study.trials, study.points, endpoint, v, r, family, n_boot=200) for v, r in pairs]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["p_holm"] = stats.holm_planned(frame["p_value"])
    ni = [float(scipy_stats.t.sf((d / 100 + plan.margin_fraction) / (se / 100), df))
          if math.isfinite(se) and se > 0 else math.nan
          for d, se, df in zip(frame["difference"], frame["se"], frame["df"])]
    frame["noninferiority_p"] = ni
    frame["noninferiority_holm"] = stats.holm_planned(ni)
    return frame


def comparison_labels(frame: pd.DataFrame) -> list[str]:
    """'full − pgd_at' for each row of a comparisons frame (variant minus reference)."""
    return [f"{v} − {r}" for v, r in zip(frame["variant"], frame["reference"])]


def drawn_estimates(frame: pd.DataFrame, comparison: Sequence[str] | str | None = None,
                    estimate: str = "difference") -> pd.DataFrame:
    """The numbers a claim's figure draws (audit_figure.py), from a comparisons frame (labelled by
    `comparison_labels`) or a factorial-effects frame (labelled `comparison`)."""
    comparison = comparison_labels(frame) if comparison is None else comparison
    return pd.DataFrame({"comparison": comparison, "endpoint": [figures.label(e) for e in frame["endpoint"]],
                         "estimate": frame[estimate], "low": frame["low"], "high": frame["high"]})


def numbers_text(frame: pd.DataFrame, label: str = "reference") -> str:
    """'`pgd_at` +1.39 pp [+0.58, +2.20], p (Holm) 0.009; ...' for each row of a comparisons frame."""
    parts = []
    for row in frame.itertuples():
        p = f", p (Holm) {row.p_holm:.2g}" if math.isfinite(row.p_holm) else ", no test"
        where = f" on {figures.label(row.endpoint)}" if label == "endpoint" else ""
        name = f"`{getattr(row, label)}`" if label != "endpoint" else ""
        parts.append(f"{name}{where} {pp_text(row.difference)} pp [{pp_text(row.low)}, {pp_text(row.high)}]{p}".strip())
    return "; ".join(parts)


def display_table(frame: pd.DataFrame, plan, noninferiority: bool = False) -> pd.DataFrame:
    if frame.empty:
        return frame
    shown = pd.DataFrame({
        "comparison": comparison_labels(frame),
        "endpoint": [figures.label(e) for e in frame["endpoint"]],
        "seeds × images": [f"{s} × {i}" if i else f"{s}" for s, i in zip(frame["n_seeds"], frame["n_images"])],
        "difference (pp)": [pp_text(d) for d in frame["difference"]],
        f"{100 * (1 - plan.alpha):g}% interval (pp)": [f"[{pp_text(lo)}, {pp_text(hi)}]" for lo, hi in
                                                      zip(frame["low"], frame["high"])],
        "interval": frame["interval"],
        "p (Holm)": [f"{p:.3g}" if math.isfinite(p) else "—" for p in frame["p_holm"]],
        "MDE (pp)": [pp_text(m, signed=False) for m in frame["mde"]],
    })
    if noninferiority:
        shown[f"non-inferiority p (Holm, −{plan.margin:g} pp)"] = [
            f"{p:.3g}" if math.isfinite(p) else "—" for p in frame["noninferiority_holm"]]
    return shown
