"""The robustness evaluation suite every finished trial goes through.

`run_suite(net, data, cfg, env, precision)` returns a `SuiteResult`: rows for evals.parquet,
corruptions.parquet, geometry.parquet and masking.parquet (without the study/trial/variant/seed
key columns, which the caller adds) and flat scalars for trials.parquet. What runs is a
`SuiteLevel`, looked up by `cfg.eval_suite` in `SUITE_LEVELS`:

basic   clean, FGSM, PGD-k (cfg.eval_attack_steps / eval_step / eval_restarts) and CW-inf (PGD on
        the C&W margin) on cfg.eval_n test points (`_threat_model`).
quick   basic, plus on the "attack subset" (cfg.eval_aa_n points drawn from those eval_n):
        AutoAttack `apgd` (APGD-CE then APGD-T, 9 targets, 100 iterations, 1 restart: standard's
        settings for those two attacks) from the original code (`external.autoattack`), in fp32;
        the attacks that know the model (`subset_parts.subset_adaptive`): PGD-k on the prototype margin ("feature_margin",
        prototype heads only) and targeted PGD-k over the cfg.eval_rival_targets nearest rivals
        ("targeted_rivals"); a PGD-k accuracy-vs-eps curve ("pgd_eps_curve") at eps = m * cfg.eval_eps for m in
        cfg.eval_eps_curve and m = 1, step scaled with eps; PGD-2k ("pgd_steps_check"); PGD at
        eps = 1 ("pgd_unbounded"); a cheap black-box Square attack ("square"); the gradient-masking
        checks (`checks`); geometry (`geometry.geometry_rows`) of the clean ("test") and PGD-k
        ("test_pgd") features of the attack subset, against the prototypes (a linear head's weight
        rows for the baselines, prototype_source = "linear_weight"); common corruptions on
        cfg.eval_corruption_n points (`corruptions.corruption_plan`): the released files (source
        "cifar10-c" / "cifar100-c") when cfg.corruption_root is set and the dataset is cifar10 /
        cifar100, else the offline generator's 14 benchmark corruptions x 5 severities (source
        GENERATED_DATASET_NAME, fixed seed CORRUPTION_SEED), which needs 3x32x32 images (digits gets
        no corruption rows; summary says why); the per-point worst case over clean and every attack
        at eval_eps on the subset's points ("worst_case", `subset_parts.subset_worst_case`).
full    quick with AutoAttack `standard` (APGD-CE, APGD-T, FAB-T, Square 5000 queries: AutoAttack's
        cascade, the per-point worst case) instead of `apgd`, PGD-50 with 10 restarts on the eval_n
        points, and Square with 5000 queries on the whole attack subset; on the attack subset an
        APGD-CE + APGD-T accuracy-vs-eps curve ("apgd_eps_curve", AutoAttack `apgd` at eps = m *
        cfg.eval_eps for m in cfg.eval_aa_eps_curve) and the L2 threat model: AutoAttack `apgd` in the L2
        ball of radius cfg.eval_l2_eps ("autoattack" row with norm "L2"). Neither enters the worst case
        (other threat models than eval_eps L-inf).

Rows of evals.parquet carry suite = the level that ran; "autoattack" rows add `version` (apgd /
standard) and name the cascade in `loss`; every row has `norm` (Linf, or L2); "feature_margin" and
"targeted_rivals" rows add `scores` (prototype_distance / logits), targeted_rivals also `targets` (k); the
"worst_case" row lists its attacks in `loss`; "square" rows put the query budget in `steps`; eps-curve
and unbounded rows add `step_size`. The summary holds clean/fgsm/pgd/cw (via experiment.summary_metrics),
aa_acc, aa_version, aa_n, pgd_aa_gap (PGD-k CE minus AutoAttack on the attack subset), aa_warnings,
worst_case_acc, worst_case_n, worst_case_attacks (the attacks it is the worst case of), square_acc, corruption_acc (mean over corruptions x severities), corruption_clean_acc (same points),
corruption_source, masking_flags (count), any_masking_flag, masking_flagged_checks and seconds_<part>
(wall seconds on this rank).

Every attack and accuracy count here runs at the `precision` passed in (run_experiment passes
cfg.eval_precision, fp32 by default); AutoAttack and Square always run in fp32.

Sharding: every rank evaluates its slice of each point set (`accuracy.shard`) and per-point results
are gathered with `env.all_reduce_sum`, so every rank returns the same rows. AutoAttack and Square
run per rank on their slice: their random starts depend on the batch they see, so results can
differ in the last digits between world sizes (they are still the same attacks on the same points).

Modules: suite_levels (what each level runs), suite_context (what the parts share), suite_timing (seconds per part,
the time left), attack_subset (the points the expensive attacks run on), subset_parts (what runs on them); this one
runs them in order.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..attacks import eval_mode
from ..config import ExperimentConfig
from ..data import DatasetSplits, Split
from ..devices import Precision
from ..distributed import LocalEnvironment
from ..models import Classifier
from .accuracy import (EvalResult, PointFlags, correct_counts, correct_per_point, fgsm_attack, fraction, gather_flags,
                       local_points, pgd_attack, subsample, subsample_index)
from .attack_subset import draw_attack_subset
from .checks import check_fgsm_vs_pgd, check_steps_monotone
from .corruptions import corrupted_sets, corruption_plan, corruption_rows
from .subset_parts import (subset_adaptive, subset_autoattack, subset_diagnostics, subset_geometry,
                           subset_other_threat_models, subset_worst_case)
from .suite_context import SuiteContext, SuiteResult
from .suite_levels import SUITE_LEVELS, SuiteLevel, check_inputs
from .suite_timing import SuiteTimer, part_estimates

__all__ = ["SUITE_LEVELS", "SuiteLevel", "SuiteResult", "check_inputs", "part_estimates", "run_suite"]


def run_suite(net: Classifier, data: DatasetSplits, cfg: ExperimentConfig, env: LocalEnvironment,
              precision: Precision, *, level: SuiteLevel | None = None, log: Callable[[str], None] | None = None,
              estimates: dict[str, float] | None = None) -> SuiteResult:
    """Evaluate a trained model at `level` (default: cfg.eval_suite). The model runs in eval mode. With `log`, a
    progress line as each part starts (with the time left, from `estimates`: see part_estimates)."""
    cfg = cfg.resolved()
    level = level or SUITE_LEVELS.get(cfg.eval_suite)
    ctx = SuiteContext(net, cfg, env, precision, level, data.info, SuiteTimer(log, estimates))
    result = SuiteResult(summary={"eval_suite": level.name})
    test = subsample(data.test, cfg.eval_n)
    test_index = subsample_index(len(data.test), cfg.eval_n)  # positions of `test` in the test split
    with eval_mode(net):
        with ctx.timer("threat_model"):
            basic, test_flags = _threat_model(net, test, cfg, env, precision)
        for e in basic:
            result.add_eval(e.as_row(level.name), test_index, test_flags[e.attack])
        acc = {e.attack: e.accuracy for e in basic}
        if level.diagnostics:
            result.masking.append(check_fgsm_vs_pgd(acc["fgsm"], acc["pgd"], basic[0].n))
        if level.strong_pgd is not None:
            with ctx.timer("strong_pgd"):
                test_flags.update(_strong_pgd(ctx, test, test_index, acc["pgd"], result))
        if level.attack_subset:
            _attack_subset(ctx, test, test_index, test_flags, result)
        if level.corruptions:
            with ctx.timer("corruptions"):
                _corruptions(ctx, data, result)
    if level.diagnostics:
        flagged = [row["check"] for row in result.masking if row["flagged"]]
        result.summary.update(masking_flags=len(flagged), any_masking_flag=bool(flagged),
                              masking_flagged_checks=",".join(flagged))
    result.summary.update(ctx.timer.seconds)
    return result


def _threat_model(net: Classifier, test: Split, cfg: ExperimentConfig, env: LocalEnvironment, precision: Precision
                  ) -> tuple[list[EvalResult], dict[str, torch.Tensor]]:
    """Clean, FGSM, PGD-k (CE) and CW-inf (PGD on the C&W margin) at the threat model's eps (the basic level,
    and the first four rows of every level), and each attack's per-point results on the test points (all ranks)."""
    eps, step, k, restarts = cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps, cfg.eval_restarts
    attacks = [  # name, attack, eps, steps, restarts, loss
        ("clean", None, 0.0, 0, 0, "ce"),
        ("fgsm", fgsm_attack(eps, precision), eps, 1, 1, "ce"),
        ("pgd", pgd_attack(eps, step, k, precision, restarts=restarts), eps, k, restarts, "ce"),
        ("cw_inf", pgd_attack(eps, step, k, precision, restarts=restarts, loss="cw"), eps, k, restarts, "cw"),
    ]
    x, y = local_points(test, env)
    rows, flags = [], {}
    with eval_mode(net):
        for name, attack, attack_eps, steps, attack_restarts, loss in attacks:
            local, _ = correct_per_point(net, x, y, attack, env=env, batch_size=cfg.eval_batch_size,
                                         precision=precision, seed=cfg.seed)
            flags[name] = gather_flags(local, len(test), env)
            accuracy = int(flags[name].sum()) / max(len(test), 1)
            rows.append(EvalResult(name, attack_eps, steps, attack_restarts, len(test), accuracy, "test", loss))
    return rows, flags


def _strong_pgd(ctx: SuiteContext, test: Split, test_index: torch.Tensor, pgd_k_accuracy: float,
                result: SuiteResult) -> dict[str, torch.Tensor]:
    """The level's extra PGD (steps x restarts) on the eval_n points, checked against PGD-k; returns its
    per-point results under the name pgd_<steps>x<restarts> (nothing when it is PGD-k itself)."""
    cfg = ctx.cfg
    steps, restarts = ctx.level.strong_pgd
    if (steps, restarts) == (cfg.eval_attack_steps, cfg.eval_restarts):
        return {}
    x, y = local_points(test, ctx.env)
    ok = ctx.correct_all(x, y, ctx.pgd(cfg.eval_eps, cfg.eval_step, steps, restarts), len(test))
    row = EvalResult("pgd", cfg.eval_eps, steps, restarts, len(test), int(ok.sum()) / max(len(test), 1))
    result.add_eval(row.as_row(ctx.level.name), test_index, ok)
    result.summary[f"pgd{steps}x{restarts}_acc"] = row.accuracy
    result.masking.append(check_steps_monotone(
        f"steps_monotone_{steps}x{restarts}", (f"PGD-{cfg.eval_attack_steps}", pgd_k_accuracy),
        (f"PGD-{steps}x{restarts}", row.accuracy), row.n))
    return {f"pgd_{steps}x{restarts}": ok}


def _attack_subset(ctx: SuiteContext, test: Split, test_index: torch.Tensor, test_flags: dict[str, torch.Tensor],
                   result: SuiteResult) -> None:
    """Everything that runs on the cfg.eval_aa_n attack subset, with per-point results gathered, and the
    per-point worst case over every attack at eval_eps that ran on its points (`subset_worst_case`).

    `test_flags`: per-point results of the attacks that ran on all test points (the subset is drawn
    from them); `result.subset_flags` collects every attack's results on the subset's points."""
    subset = draw_attack_subset(ctx, test, test_index)
    index, n, everywhere = subset.index, subset.n, torch.arange(subset.n, device=ctx.env.device)
    result.summary.update(attack_subset_n=n, pgd_acc_subset=fraction(subset.pgd_ok),
                          clean_acc_subset=fraction(subset.clean_ok))
    flags = result.subset_flags
    flags.update({name: PointFlags(everywhere, ok[index.to(ok.device)]) for name, ok in test_flags.items()})
    flags["pgd_subset"] = PointFlags(everywhere, subset.pgd_ok)  # PGD-k again: other random starts on these points
    if ctx.level.autoattack is not None:
        flags["autoattack"] = PointFlags(everywhere, subset_autoattack(ctx, subset, result))
    if ctx.level.aa_eps_curve or ctx.level.l2:
        with ctx.timer("other_threat_models"):
            subset_other_threat_models(ctx, subset, result)
    if ctx.level.adaptive:
        with ctx.timer("adaptive"):
            flags.update({name: PointFlags(everywhere, ok)
                          for name, ok in subset_adaptive(ctx, subset, result).items()})
    if ctx.level.diagnostics:
        subset_diagnostics(ctx, subset, flags, result)
    subset_worst_case(ctx, subset, flags, result)
    if ctx.level.geometry:
        with ctx.timer("geometry"):
            result.geometry = subset_geometry(ctx, subset)


def _corruptions(ctx: SuiteContext, data: DatasetSplits, result: SuiteResult) -> None:
    """corruptions.parquet rows and the corruption summary (mean accuracy, clean accuracy, source)."""
    cfg, env = ctx.cfg, ctx.env
    source, note = corruption_plan(cfg, data.info)
    result.summary.update(corruption_source=source or "none", corruption_note=note)
    if source is None:
        return
    clean, sets = corrupted_sets(cfg, data, source)
    rows = corruption_rows(ctx.net, sets, source=source, env=env, batch_size=cfg.eval_batch_size,
                           precision=ctx.precision, clean_labels=clean.labels)
    correct, total = correct_counts(ctx.net, clean, None, env=env, batch_size=cfg.eval_batch_size,
                                    precision=ctx.precision)
    result.corruptions = rows
    result.summary.update(
        corruption_acc=sum(r["accuracy"] for r in rows) / len(rows) if rows else float("nan"),
        corruption_clean_acc=correct / max(total, 1), corruption_n=total,
        corruption_count=len({r["corruption"] for r in rows}),
        corruption_label_agreement=min((r["label_agreement"] for r in rows), default=float("nan")))
