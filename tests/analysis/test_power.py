"""analysis/power.py and the dry run's power lines: known answers, hand-computed cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import power
from analysis.t_test_power import minimal_detectable_effect, seeds_needed

from ..support import REPO, run_script


def test_test_set_floor_is_the_normal_paired_bound():
    # (z_0.975 + z_0.8) sqrt(q / n) with z_0.975 = 1.959964, z_0.8 = 0.841621
    assert power.test_set_floor(400, 0.1) == pytest.approx((1.959964 + 0.841621) * math.sqrt(0.1 / 400), rel=1e-6)
    # Holm's first step over 4 comparisons: z_{1 - 0.0125 / 2} = 2.497705
    assert power.test_set_floor(400, 0.1, alpha=0.0125) == pytest.approx((2.497705 + 0.841621) * 0.0158114, rel=1e-5)


def test_seed_sd_is_pooled_over_variants_each_about_its_own_mean():
    rows = []
    for seed, (full, a, b) in enumerate([(0.80, 0.82, 0.70), (0.81, 0.84, 0.72), (0.79, 0.80, 0.71)]):
        rows += [{"variant": "full", "seed": seed, "aa_acc": full, "status": "completed"},
                 {"variant": "a", "seed": seed, "aa_acc": a, "status": "completed"},
                 {"variant": "b", "seed": seed, "aa_acc": b, "status": "completed"}]
    rows.append({"variant": "a", "seed": 9, "aa_acc": 0.0, "status": "failed"})  # not a result
    sd, metric, count = power.seed_sd_from(pd.DataFrame(rows))
    da, db = [0.02, 0.03, 0.01], [-0.10, -0.09, -0.08]  # per-seed differences, means 0.02 and -0.09
    ss = sum((x - 0.02) ** 2 for x in da) + sum((x + 0.09) ** 2 for x in db)
    assert metric == "aa_acc" and count == 6
    assert sd == pytest.approx(math.sqrt(ss / (6 - 2)), abs=1e-12)


def test_discordance_counts_disagreeing_pairs_on_matched_seed_and_image():
    def pts(variant, seed, flags):
        return [{"variant": variant, "seed": seed, "index": i, "attack": "worst_case", "eps": 0.1, "correct": f}
                for i, f in enumerate(flags)]
    frame = pd.DataFrame(pts("full", 0, [1, 1, 0, 0]) + pts("a", 0, [1, 0, 0, 1]) + pts("full", 1, [1, 1, 1, 1])
                         + pts("a", 1, [1, 1, 1, 0]))
    frame["correct"] = frame["correct"].astype(bool)
    assert power.discordance_from(frame, "worst_case") == pytest.approx(3 / 8)


def test_power_lines_agree_with_the_stats_functions():
    plan = power.PowerPlan(seeds=5, n_test=359, comparisons=7, seed_sd=0.01, seed_sd_source="x",
                           discordance=0.05, difference=0.02)
    text = "\n".join(plan.lines())
    level = 0.05 / 7
    assert f"{minimal_detectable_effect(0.01, 5, level) * 100:.2g} points" in text
    assert f"needs {seeds_needed(0.02, 0.01, level)} seeds" in text
    assert f"below {power.test_set_floor(359, 0.05, level) * 100:.2g} points" in text
    assert "cannot go below p = 0.0625" in text
    unknown = "\n".join(power.PowerPlan(seeds=3, n_test=100, comparisons=1).lines())
    assert "--power-from" in unknown and "p = 0.5" in unknown


def test_dry_run_prints_power_from_an_earlier_study():
    proc = run_script("ablation.py", "--variants", "full", "pgd_at", "--seeds", "0", "1", "2", "--dry-run",
                      "--power-from", str(REPO / "docs" / "data" / "ablation_digits"), "--power-difference", "2")
    assert "power: 1 planned comparison(s)" in proc.stdout
    assert "seeds: 3 seeds detect" in proc.stdout and "a difference of 2 points needs" in proc.stdout
