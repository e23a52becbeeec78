"""The declared analysis plan of an ablation study: which endpoints and comparisons decide, and at what level.

A study file's `analysis:` mapping (recorded in study.yaml; a --resume may not change it):

    analysis:
      primary: [worst_case_acc, clean_acc]  # endpoint metrics (trials.parquet columns); null: the default
      reference: full                       # the variant every comparison is made against
      comparisons: [pgd_at, no_npr]         # variants compared with the reference; null: every other variant
      margin: 1.0                           # equivalence margin, accuracy points (TOST within +-margin)
      alpha: 0.05                           # level of the Holm-adjusted tests and of TOST

The default primary endpoints are the worst-case robust accuracy at the threat model (`worst_case_acc` when the
study has it, else `aa_acc`) and `clean_acc` as co-primary. Every other metric is descriptive. Pure Python
(no torch, no pandas): the study scripts check it, analysis/verdicts.py applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

ANALYSIS_KEYS = ("primary", "reference", "comparisons", "margin", "alpha")
#: the trials.parquet metrics a plan may name as endpoints
ENDPOINTS = ("clean_acc", "pgd_acc", "cw_acc", "aa_acc", "worst_case_acc", "corruption_acc")
DEFAULT_ANALYSIS: dict[str, Any] = {"primary": None, "reference": "full", "comparisons": None, "margin": 1.0,
                                    "alpha": 0.05}


def analysis_problems(analysis: Any, variants: Sequence[str] | None = None,
                      known_variants: Iterable[str] | None = None) -> list[str]:
    """One line per problem of an `analysis:` mapping, naming the field, its value and what is allowed.
    `variants`: the study's variants (comparisons must be among them); `known_variants`: every variant name."""
    if not isinstance(analysis, dict):
        return [f"analysis {analysis!r}: a mapping of {', '.join(ANALYSIS_KEYS)}"]
    problems = [f"analysis.{k}: unknown; allowed {', '.join(ANALYSIS_KEYS)}" for k in analysis
                if k not in ANALYSIS_KEYS]
    known = set(known_variants) if known_variants is not None else None
    primary = analysis.get("primary")
    if primary is not None and not (isinstance(primary, list) and primary and len(set(primary)) == len(primary)
                                    and all(p in ENDPOINTS for p in primary)):
        problems.append(f"analysis.primary {primary!r}: null (the default) or a non-empty list without repeats "
                        f"of {', '.join(ENDPOINTS)}")
    reference = analysis.get("reference", DEFAULT_ANALYSIS["reference"])
    if not isinstance(reference, str) or (known is not None and reference not in known):
        allowed = ", ".join(sorted(known)) if known is not None else "a variant name"
        problems.append(f"analysis.reference {reference!r}: one of {allowed}")
    comparisons = analysis.get("comparisons")
    if comparisons is not None:
        ok = (isinstance(comparisons, list) and comparisons and len(set(comparisons)) == len(comparisons)
              and all(isinstance(c, str) and c != reference for c in comparisons)
              and (variants is None or all(c in variants for c in comparisons)))
        if not ok:
            among = f" among the study's variants ({', '.join(variants)})" if variants is not None else ""
            problems.append(f"analysis.comparisons {comparisons!r}: null (every other variant) or a non-empty list "
                            f"without repeats of variants other than the reference {reference!r}{among}")
    margin = analysis.get("margin", DEFAULT_ANALYSIS["margin"])
    if not (_is_number(margin) and 0 < margin < 100):
        problems.append(f"analysis.margin {margin!r}: a number of accuracy points, 0 < margin < 100")
    alpha = analysis.get("alpha", DEFAULT_ANALYSIS["alpha"])
    if not (_is_number(alpha) and 0 < alpha < 1):
        problems.append(f"analysis.alpha {alpha!r}: a number, 0 < alpha < 1")
    return problems


def full_analysis(analysis: dict[str, Any] | None) -> dict[str, Any]:
    """Every key of the plan, the given ones over DEFAULT_ANALYSIS, in ANALYSIS_KEYS order (unknown keys kept
    for analysis_problems to name)."""
    given = dict(analysis or {})
    return {**{k: given.get(k, DEFAULT_ANALYSIS[k]) for k in ANALYSIS_KEYS},
            **{k: v for k, v in given.items() if k not in ANALYSIS_KEYS}}


@dataclass(frozen=True)
class AnalysisPlan:
    """A plan made concrete for one study: endpoints and comparisons named."""

    primary: tuple[str, ...]
    reference: str
    comparisons: tuple[str, ...]
    margin: float  # accuracy points
    alpha: float
    declared: bool  # False: the study recorded no `analysis:` (the defaults apply)

    @property
    def margin_fraction(self) -> float:
        return self.margin / 100


def default_primary(metrics: Iterable[str]) -> tuple[str, ...]:
    """worst_case_acc when the study has it, else aa_acc; and clean_acc as co-primary."""
    present = set(metrics)
    robust = "worst_case_acc" if "worst_case_acc" in present else "aa_acc"
    return (robust, "clean_acc")


def concrete_plan(analysis: dict[str, Any] | None, variants: Sequence[str], metrics: Iterable[str]) -> AnalysisPlan:
    """The plan for a study with these variants (in study order) and trials.parquet metric columns.
    ValueError (the problems' lines) when the mapping is not a valid plan."""
    full = full_analysis(analysis)
    declared = analysis is not None and full != full_analysis(None)  # study.yaml records the defaults in full
    problems = analysis_problems(full, list(variants))
    if problems:
        raise ValueError("invalid analysis plan:\n  - " + "\n  - ".join(problems))
    reference = full["reference"]
    comparisons = tuple(full["comparisons"] or [v for v in variants if v != reference])
    primary = tuple(full["primary"] or default_primary(metrics))
    return AnalysisPlan(primary, reference, comparisons, float(full["margin"]), float(full["alpha"]), declared)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
