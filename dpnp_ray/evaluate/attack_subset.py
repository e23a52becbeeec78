"""The attack subset: the cfg.eval_aa_n of the eval_n test points that the expensive attacks run on, drawn once
per evaluation, with the clean and PGD-k results every part on it compares against (`draw_attack_subset`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Split
from .accuracy import gather_flags, local_points, subsample_index
from .suite_context import SuiteContext


@dataclass(frozen=True)
class AttackSubset:
    """The attack subset with its clean and PGD-k results: per point over all ranks (`*_ok`) and
    this rank's shard on the device (x, y, and the features geometry needs)."""

    points: Split
    index: torch.Tensor  # the positions of `points` among the eval_n test points
    split_index: torch.Tensor  # the positions of `points` in the test split
    x: torch.Tensor
    y: torch.Tensor
    clean_ok: torch.Tensor
    pgd_ok: torch.Tensor
    z_clean: torch.Tensor | None
    z_pgd: torch.Tensor | None

    @property
    def n(self) -> int:
        return len(self.points)


def draw_attack_subset(ctx: SuiteContext, test: Split, test_index: torch.Tensor) -> AttackSubset:
    """The cfg.eval_aa_n attack subset of the `test` points (`test_index`: their positions in the test split),
    with the clean and PGD-k correctness of each of its points (and this rank's features for geometry)."""
    cfg, env = ctx.cfg, ctx.env
    index = subsample_index(len(test), cfg.eval_aa_n)
    points = Split(test.images[index], test.labels[index])
    n = len(points)
    x, y = local_points(points, env)
    with ctx.timer("pgd_subset"):
        clean_local, z_clean = ctx.correct(x, y, None, features=ctx.level.geometry)
        pgd_local, z_pgd = ctx.correct(x, y, ctx.pgd(cfg.eval_eps, cfg.eval_step, cfg.eval_attack_steps,
                                                     cfg.eval_restarts), features=ctx.level.geometry)
        clean_ok, pgd_ok = gather_flags(clean_local, n, env), gather_flags(pgd_local, n, env)
    return AttackSubset(points, index, test_index[index], x, y, clean_ok, pgd_ok, z_clean, z_pgd)
