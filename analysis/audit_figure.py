"""The claim audit as one picture: each comparison of claims 1-4 as its difference with its interval,
coloured by the claim's verdict, beside zero and the non-inferiority margin.

    python -m analysis.audit docs/data/audit_digits_eps02 --out docs/audit_digits_eps02.md \
        --figure docs/audit_digits_eps02_png/claims.png
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis.figure_registry import Figures, FigureSpec, export_pngs

VERDICT_COLORS = {"supported": "#1a9850", "contradicted": "#d73027", "inconclusive": "#7f7f7f",
                  "refused": "#984ea3"}
DRAWN_CLAIMS = ("1", "2", "3a", "3b", "3c", "4")


def claim_rows(results: Sequence) -> pd.DataFrame:
    """One row per drawn comparison: claim, verdict, its label, estimate and interval (accuracy points)."""
    frames = [r.estimates.assign(claim=str(r.number), verdict=r.verdict, text=r.claim) for r in results
              if str(r.number) in DRAWN_CLAIMS and not r.estimates.empty]
    if not frames:
        return pd.DataFrame(columns=["claim", "verdict", "text", "comparison", "endpoint", "estimate", "low", "high"])
    rows = pd.concat(frames, ignore_index=True)
    rows["label"] = [f"{c}. {comparison} · {endpoint}" for c, comparison, endpoint in
                     zip(rows["claim"], rows["comparison"], rows["endpoint"])]
    return rows


def claims_figure(results: Sequence, margin: float, confidence: float, study_name: str) -> go.Figure:
    """A forest plot of claims 1-4 (audit.audit's results): top to bottom in claim order."""
    rows = claim_rows(results)
    fig = go.Figure()
    for verdict, group in rows.groupby("verdict", sort=False):
        fig.add_trace(go.Scatter(
            x=group["estimate"], y=group["label"], mode="markers", name=verdict,
            marker={"color": VERDICT_COLORS.get(verdict, "#000000"), "size": 9},
            error_x={"type": "data", "symmetric": False, "array": group["high"] - group["estimate"],
                     "arrayminus": group["estimate"] - group["low"]},
            hovertext=group["text"]))
    fig.add_vline(x=0, line={"color": "black", "width": 1})
    fig.add_vline(x=-margin, line={"color": "black", "width": 1, "dash": "dash"},
                  annotation_text=f"−{margin:g} pp: non-inferiority margin (claim 2)", annotation_position="top left")
    fig.update_yaxes(categoryorder="array", categoryarray=list(rows["label"])[::-1], automargin=True)
    fig.update_xaxes(title=f"difference in accuracy, percentage points ({100 * confidence:g}% interval over seeds "
                           "and test images)", zeroline=False)
    fig.update_layout(title=f"Claim audit of {study_name}: 1 clean accuracy and 2 AutoAttack vs tuned baselines, "
                            "3 loss terms, 4 clean-only prototype updates",
                      height=140 + 34 * len(rows), legend={"title": "verdict of the claim"}, template="plotly_white")
    return fig


def write_claims_png(results: Sequence, plan, study_name: str, path: Path) -> int:
    """The figure of an audit's `results` (under its analysis `plan`) as a PNG at `path`; 0 when written,
    1 when it could not be (kaleido or a browser missing: the message says which)."""
    figure = claims_figure(results, plan.margin, 1 - plan.alpha, study_name)
    spec = FigureSpec(path.stem, "Claim audit", "Claims 1-4 with their intervals", lambda s: figure)
    written = export_pngs(Figures(drawn={path.stem: (spec, figure)}), path.parent, done="the audit page is written",
                          log=lambda line: print(line, file=sys.stderr))
    if not written:
        return 1
    print(f"wrote {path}")
    return 0
