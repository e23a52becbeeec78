"""The suite's parts that run on the attack subset, each adding its evals rows, summary entries and masking
checks to the `SuiteResult`: AutoAttack (`subset_autoattack`), the other threat models
(`subset_other_threat_models`), the attacks that know the model (`subset_adaptive`), the diagnostics and their
gradient-masking checks (`subset_diagnostics`, Square among them), the per-point worst case
(`subset_worst_case`) and the latent geometry (`subset_geometry`). suite.py runs them in that order."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split
from .accuracy import (Attack, PointFlags, fraction, gather, gather_flags, local_points, prototype_margin_attack,
                       targeted_rivals_attack, worst_case)
from .attack_subset import AttackSubset
from .checks import (check_black_box, check_eps0_equals_clean, check_eps_monotone, check_pgd_aa_gap,
                     check_steps_monotone, check_unbounded, check_zero_gradients)
from .external import AUTOATTACK_ITERATIONS, AUTOATTACK_VERSIONS, autoattack, autoattack_code_version, square
from .geometry import geometry_rows, prototypes_of
from .suite_context import SuiteContext, SuiteResult


def subset_autoattack(ctx: SuiteContext, subset: AttackSubset, result: SuiteResult) -> torch.Tensor:
    """AutoAttack at the level's version on the subset; returns per point: did the point survive it?"""
    eps, version = ctx.cfg.eval_eps, ctx.level.autoattack
    with ctx.timer("autoattack"):
        aa_ok, warnings = _run_autoattack(ctx, subset, eps=eps, version=version, norm="Linf")
    n, aa_acc, pgd_acc = subset.n, fraction(aa_ok), fraction(subset.pgd_ok)
    result.add_eval(ctx.row("autoattack", eps=eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n, accuracy=aa_acc,
                            loss="+".join(AUTOATTACK_VERSIONS[version]), version=version), subset.split_index, aa_ok)
    result.summary.update(aa_acc=aa_acc, aa_version=version, aa_n=n, pgd_aa_gap=pgd_acc - aa_acc,
                          aa_code=autoattack_code_version(), aa_warnings=" | ".join(dict.fromkeys(warnings)))
    return aa_ok


def _run_autoattack(ctx: SuiteContext, subset: AttackSubset, *, eps: float, version: str, norm: str
                    ) -> tuple[torch.Tensor, list[str]]:
    """AutoAttack `version` in the `norm` ball of radius eps on this rank's share of the subset, its output
    checked to lie in the threat model; returns (per point of the whole subset: survived?, its warnings)."""
    cfg, env, x = ctx.cfg, ctx.env, subset.x
    local = torch.zeros(0, dtype=torch.bool, device=env.device)
    warnings: list[str] = []
    if len(x):
        x_adv, local, warnings = autoattack(ctx.net, x, subset.y, eps=eps, version=version, seed=cfg.seed,
                                            batch_size=cfg.eval_batch_size, num_classes=ctx.info.num_classes,
                                            norm=norm)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax() if norm == "Linf" else delta.norm(dim=1).amax()
        excess = float(size) - eps
        if excess > 1e-5 or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
            raise RuntimeError(f"AutoAttack returned points outside the threat model ({norm} excess "
                               f"{excess:.2e}, range [{float(x_adv.min())}, {float(x_adv.max())}])")
    return gather_flags(local, subset.n, env), warnings


def subset_other_threat_models(ctx: SuiteContext, subset: AttackSubset, result: SuiteResult) -> None:
    """APGD-CE + APGD-T (AutoAttack `apgd`) on the subset at other budgets than the threat model's: the L-inf
    curve at eps = m * eval_eps (m in cfg.eval_aa_eps_curve; m = 0 is clean accuracy, no attack) and the L2
    ball of radius cfg.eval_l2_eps. Summary: aa_l2_acc, aa_l2_eps."""
    cfg, n, version = ctx.cfg, subset.n, "apgd"
    loss = "+".join(AUTOATTACK_VERSIONS[version])
    if ctx.level.aa_eps_curve:
        for m in sorted(set(cfg.eval_aa_eps_curve)):
            eps = m * cfg.eval_eps
            ok = subset.clean_ok if eps == 0 else _run_autoattack(ctx, subset, eps=eps, version=version,
                                                                  norm="Linf")[0]
            result.add_eval(ctx.row("apgd_eps_curve", eps=eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n,
                                    accuracy=fraction(ok), loss=loss, version=version), subset.split_index, ok)
    if ctx.level.l2:
        ok = subset.clean_ok if cfg.eval_l2_eps == 0 else _run_autoattack(ctx, subset, eps=cfg.eval_l2_eps,
                                                                         version=version, norm="L2")[0]
        result.add_eval(ctx.row("autoattack", eps=cfg.eval_l2_eps, steps=AUTOATTACK_ITERATIONS, restarts=1, n=n,
                                accuracy=fraction(ok), loss=loss, version=version, norm="L2"), subset.split_index, ok)
        result.summary.update(aa_l2_acc=fraction(ok), aa_l2_eps=cfg.eval_l2_eps)


def subset_adaptive(ctx: SuiteContext, subset: AttackSubset, result: SuiteResult) -> dict[str, torch.Tensor]:
    """The attacks that know the model, on the subset, with PGD-k's eps, step, steps and restarts: the
    prototype-margin PGD (prototype heads only: a linear head's weights do not decide by distance) and
    the targeted PGD over the cfg.eval_rival_targets nearest rivals. Returns their per-point results."""
    cfg, n = ctx.cfg, subset.n
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    scores = "prototype_distance" if ctx.net.has_prototypes else "logits"
    flags = {}
    if ctx.net.has_prototypes:
        flags["feature_margin"] = ctx.correct_all(
            subset.x, subset.y, prototype_margin_attack(eps, step, k, ctx.precision, restarts=restarts), n)
        result.add_eval(ctx.row("feature_margin", eps=eps, steps=k, restarts=restarts, n=n,
                                accuracy=fraction(flags["feature_margin"]), loss="prototype_margin", scores=scores),
                        subset.split_index, flags["feature_margin"])
    rivals = min(cfg.eval_rival_targets, ctx.info.num_classes - 1)
    flags["targeted_rivals"] = ctx.correct_all(
        subset.x, subset.y, targeted_rivals_attack(eps, step, k, ctx.precision, rivals=rivals, restarts=restarts), n)
    result.add_eval(ctx.row("targeted_rivals", eps=eps, steps=k, restarts=restarts, n=n,
                            accuracy=fraction(flags["targeted_rivals"]), loss="targeted", scores=scores,
                            targets=rivals), subset.split_index, flags["targeted_rivals"])
    return flags


def subset_worst_case(ctx: SuiteContext, subset: AttackSubset, flags: dict[str, PointFlags],
                      result: SuiteResult) -> None:
    """The per-point worst case over `flags` (clean and every attack at eval_eps on the subset's points):
    an evals row, worst_case_acc in the summary, and the PGD-vs-strongest-attack masking check."""
    n, eps = subset.n, ctx.cfg.eval_eps
    worst_ok = worst_case(flags, n)
    worst = fraction(worst_ok)
    names = ",".join(flags)
    result.add_eval(ctx.row("worst_case", eps=eps, steps=0, restarts=0, n=n, accuracy=worst, loss=names),
                    subset.split_index, worst_ok)
    result.summary.update(worst_case_acc=worst, worst_case_n=n, worst_case_attacks=names)
    if ctx.level.autoattack is not None:
        result.masking.append(check_pgd_aa_gap(fraction(subset.pgd_ok), worst, n,
                                               f"per-point worst case of {len(flags)} attacks"))


def subset_diagnostics(ctx: SuiteContext, subset: AttackSubset, flags: dict[str, PointFlags],
                       result: SuiteResult) -> None:
    """The eps curve, PGD-(factor k), PGD at eps = 1, zero gradients and Square, and their checks; adds the
    attacks at eval_eps (PGD-(factor k), Square) to `flags`."""
    cfg, env, level, n = ctx.cfg, ctx.env, ctx.level, subset.n
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    pgd_acc, clean_acc = fraction(subset.pgd_ok), fraction(subset.clean_ok)

    def correct(attack: Attack) -> torch.Tensor:
        return ctx.correct_all(subset.x, subset.y, attack, n)

    with ctx.timer("eps_curve"):
        curve = {}
        for m in sorted(set(cfg.eval_eps_curve) | {1.0}):  # always through the threat model's eps
            # step scaled with eps (the eps / step ratio of the threat-model PGD); m = 1 is that PGD
            ok = subset.pgd_ok if m == 1.0 else correct(ctx.pgd(m * eps, m * step, k, restarts))
            curve[m] = fraction(ok)
            result.add_eval(ctx.row("pgd_eps_curve", eps=m * eps, steps=k, restarts=restarts, n=n,
                                    accuracy=curve[m], step_size=m * step), subset.split_index, ok)
    result.masking.append(check_eps_monotone([m * eps for m in curve], list(curve.values()), n))
    if 0.0 in curve:
        result.masking.append(check_eps0_equals_clean(curve[0.0], clean_acc, n))

    with ctx.timer("steps_check"):
        many = level.steps_factor * k
        many_ok = ctx.correct_all(subset.x, subset.y, ctx.pgd(eps, step, many, restarts), n)
        flags["pgd_steps_check"] = PointFlags(torch.arange(n, device=env.device), many_ok)
        acc_many = fraction(many_ok)
    result.add_eval(ctx.row("pgd_steps_check", eps=eps, steps=many, restarts=restarts, n=n, accuracy=acc_many),
                    subset.split_index, many_ok)
    result.masking.append(check_steps_monotone("steps_monotone", (f"PGD-{k}", pgd_acc), (f"PGD-{many}", acc_many), n))

    with ctx.timer("unbounded"):
        u = level.unbounded_steps
        unbounded_ok = correct(ctx.pgd(1.0, 2.5 / u, u))
        acc_unbounded = fraction(unbounded_ok)
    result.add_eval(ctx.row("pgd_unbounded", eps=1.0, steps=u, restarts=1, n=n, accuracy=acc_unbounded,
                            step_size=2.5 / u), subset.split_index, unbounded_ok)
    result.masking.append(check_unbounded(acc_unbounded, n, u))

    zero = gather_flags(_zero_gradient(ctx.net, subset.x, subset.y, cfg.eval_batch_size), n, env)
    result.masking.append(check_zero_gradients(fraction(zero) if n else 0.0, n))

    if level.square_queries > 0:
        _square(ctx, subset, flags, result)


def _zero_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per point: is the fp32 input gradient of the CE loss exactly zero (AutoAttack's own check)?"""
    out = []
    for lo in range(0, len(x), batch_size):
        xb = x[lo:lo + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(net(xb).float(), y[lo:lo + batch_size], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
        out.append(grad.flatten(1).abs().sum(1) == 0)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _square(ctx: SuiteContext, subset: AttackSubset, flags: dict[str, PointFlags], result: SuiteResult) -> None:
    """Black-box Square on level.square_n points of the subset, against the per-point worst case of the
    white-box attacks in `flags` on them; adds Square's results to `flags`."""
    cfg, env, level, n = ctx.cfg, ctx.env, ctx.level, subset.n
    white_box_ok = worst_case(flags, n)
    with ctx.timer("square"):
        m = level.square_n if 0 < level.square_n < n else n
        index = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:m].sort().values
        xs, ys = local_points(Split(subset.points.images[index], subset.points.labels[index]), env)
        local = torch.zeros(0, dtype=torch.bool, device=env.device)
        if len(xs):
            x_sq = square(ctx.net, xs, ys, eps=cfg.eval_eps, queries=level.square_queries, seed=cfg.seed,
                          batch_size=cfg.eval_batch_size, rescale_schedule=level.square_rescale_schedule)
            local, _ = ctx.correct(x_sq, ys, None)
        square_ok = gather_flags(local, m, env)
    flags["square"] = PointFlags(index.to(env.device), square_ok)
    square_acc = fraction(square_ok)
    white_box = fraction(white_box_ok[index.to(white_box_ok.device)])
    result.add_eval(ctx.row("square", eps=cfg.eval_eps, steps=level.square_queries, restarts=1, n=m,
                            accuracy=square_acc, loss="margin"), subset.split_index[index], square_ok)
    result.summary.update(square_acc=square_acc, square_n=m, square_queries=level.square_queries,
                          white_box_acc_square_subset=white_box)
    result.masking.append(check_black_box(square_acc, white_box, m, level.square_queries))


def subset_geometry(ctx: SuiteContext, subset: AttackSubset) -> list[dict[str, Any]]:
    """Geometry rows of the clean and PGD-k features of the subset (gathered from every rank)."""
    env, n = ctx.env, subset.n
    empty = torch.zeros(0, prototypes_of(ctx.net)[0].shape[1], device=env.device)
    features = {"test": gather(subset.z_clean if subset.z_clean is not None else empty, n, env),
                "test_pgd": gather(subset.z_pgd if subset.z_pgd is not None else empty, n, env)}
    attrs = {"test": {"attack": "none", "eps": 0.0, "steps": 0, "accuracy": fraction(subset.clean_ok)},
             "test_pgd": {"attack": "pgd", "eps": float(ctx.cfg.eval_eps), "steps": ctx.cfg.eval_attack_steps,
                          "accuracy": fraction(subset.pgd_ok)}}
    return geometry_rows(features, subset.points.labels.to(env.device), ctx.net, ctx.info.num_classes, attrs)
