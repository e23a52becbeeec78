"""Gradient-masking checks: arithmetic on accuracies the suite measured, one masking.parquet row each.

A row is (check, value, threshold, flagged = value > threshold, detail, n). "tol(n)" is
`noise_tolerance(n)`. All comparisons are on the same points, so only the attacks' randomness can
reorder them; tol is generous on purpose. The conventions behind the thresholds:
docs/evaluation.md#gradient-masking-checks.

fgsm_vs_pgd             acc(PGD-k) - acc(FGSM) on the eval_n points > tol(n)
eps_monotone            largest rise of PGD-k accuracy between consecutive eps of the curve > tol(n)
eps0_equals_clean       |acc(PGD, eps = 0) - clean acc| > 0 (PGD at eps 0 must not change any input)
steps_monotone          acc(PGD-2k) - acc(PGD-k) > tol(n); full adds steps_monotone_50x10 (eval_n points)
pgd_aa_gap              acc(PGD-k CE) - acc(strongest attack) > max(4 points, tol(n)), the strongest being
                        the per-point worst case over every attack on the attack subset (AutoAttack
                        included): sound evaluations show about 1.8 points PGD-CE vs AutoAttack,
                        hypersphere training 4-7, broken defenses far more
black_box_vs_white_box  acc(white-box, per point: survived every white-box attack) - acc(Square) > tol(m),
                        on the m points Square ran on
unbounded_eps           acc(PGD at eps = 1, `steps` steps of 2.5 / steps) > 2%: eps = 1 reaches every
                        image, so only hidden gradients leave points correct
zero_gradients          fraction of clean points whose fp32 CE input gradient is exactly 0 > 0
                        (AutoAttack's own check)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

#: flag a PGD-CE minus AutoAttack gap above 4 points: sound evaluations show about 1.8 points
#: (APGD-CE vs APGD-DLR for plain TRADES), hypersphere / prototype training 4-7 and defenses that
#: collapsed under AutoAttack far more (docs/evaluation.md#pitfalls).
PGD_AA_GAP_THRESHOLD = 0.04
#: flag when PGD at eps = 1 (any image in [0, 1]^d reachable) leaves more than 2% accuracy
UNBOUNDED_THRESHOLD = 0.02


def noise_tolerance(n: int) -> float:
    """Allowed violation of an ordering that should hold between two accuracies on the same n points.

    One binomial standard error at p = 1/2, 0.5 / sqrt(n) (1.6 points at n = 1000: the noise of
    1k-point subsets, docs/evaluation.md#pitfalls), and never less than one point (1 / n). Both
    accuracies are measured on the same points, so this is generous: the attacks' own randomness,
    not sampling noise, is all that can reorder them.
    """
    return max(0.5 / math.sqrt(max(n, 1)), 1.0 / max(n, 1))


def _row(name: str, value: float, threshold: float, flagged: bool, detail: str, n: int) -> dict[str, Any]:
    return {"check": name, "value": float(value), "threshold": float(threshold), "flagged": bool(flagged),
            "detail": detail, "n": int(n)}


def check_eps_monotone(eps: Sequence[float], accuracy: Sequence[float], n: int) -> dict[str, Any]:
    """PGD accuracy must not rise with eps: value = the largest rise between consecutive eps."""
    pairs = sorted(zip(eps, accuracy))
    rises = [(b[1] - a[1], a[0], b[0]) for a, b in zip(pairs, pairs[1:])]
    rise, lo, hi = max(rises, default=(0.0, float("nan"), float("nan")))
    tol = noise_tolerance(n)
    return _row("eps_monotone", rise, tol, rise > tol,
                f"largest accuracy rise {rise:+.4f} from eps {lo:.4g} to {hi:.4g}; curve "
                + ", ".join(f"{e:.4g}:{a:.4f}" for e, a in pairs), n)


def check_steps_monotone(name: str, few: tuple[str, float], many: tuple[str, float], n: int) -> dict[str, Any]:
    """A stronger PGD (more steps / restarts) must not give higher accuracy than a weaker one."""
    rise = many[1] - few[1]
    tol = noise_tolerance(n)
    return _row(name, rise, tol, rise > tol, f"{many[0]} {many[1]:.4f} vs {few[0]} {few[1]:.4f}", n)


def check_fgsm_vs_pgd(fgsm_accuracy: float, pgd_accuracy: float, n: int) -> dict[str, Any]:
    """Iterative PGD must be at least as strong as single-step FGSM."""
    return check_steps_monotone("fgsm_vs_pgd", ("FGSM", fgsm_accuracy), ("PGD", pgd_accuracy), n)


def check_eps0_equals_clean(eps0_accuracy: float, clean_accuracy: float, n: int) -> dict[str, Any]:
    """PGD with eps = 0 must leave every input unchanged: any difference is a bug or a random model."""
    diff = abs(eps0_accuracy - clean_accuracy)
    return _row("eps0_equals_clean", diff, 0.0, diff > 0,
                f"PGD eps=0 {eps0_accuracy:.4f} vs clean {clean_accuracy:.4f}", n)


def check_pgd_aa_gap(pgd_accuracy: float, strongest_accuracy: float, n: int, strongest: str) -> dict[str, Any]:
    """PGD-CE minus the strongest attack (the suite passes the per-point worst case, AutoAttack included)
    on the same points; flagged above PGD_AA_GAP_THRESHOLD (or the noise tolerance where n is so small
    that it exceeds that). `strongest` names that attack in the detail."""
    gap = pgd_accuracy - strongest_accuracy
    threshold = max(PGD_AA_GAP_THRESHOLD, noise_tolerance(n))
    return _row("pgd_aa_gap", gap, threshold, gap > threshold,
                f"PGD-CE {pgd_accuracy:.4f} vs {strongest} {strongest_accuracy:.4f}", n)


def check_black_box(square_accuracy: float, white_box_accuracy: float, n: int, queries: int) -> dict[str, Any]:
    """A black-box attack must not beat the white-box ones on the same points: value = white-box
    accuracy minus Square accuracy."""
    diff = white_box_accuracy - square_accuracy
    tol = noise_tolerance(n)
    return _row("black_box_vs_white_box", diff, tol, diff > tol,
                f"Square ({queries} queries) {square_accuracy:.4f} vs white-box (per-point worst case) "
                f"{white_box_accuracy:.4f}", n)


def check_unbounded(accuracy: float, n: int, steps: int) -> dict[str, Any]:
    """PGD at eps = 1 can reach any image, so accuracy must fall to about 0."""
    return _row("unbounded_eps", accuracy, UNBOUNDED_THRESHOLD, accuracy > UNBOUNDED_THRESHOLD,
                f"PGD-{steps} at eps=1.0 (step {2.5 / steps:.4g}) leaves accuracy {accuracy:.4f}", n)


def check_zero_gradients(fraction: float, n: int) -> dict[str, Any]:
    """Points whose fp32 input gradient of the CE loss is exactly zero (AutoAttack flags any)."""
    return _row("zero_gradients", fraction, 0.0, fraction > 0,
                f"{round(fraction * n)} of {n} clean points have an all-zero CE input gradient", n)
