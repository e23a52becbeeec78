"""analysis/verdicts.py: the declared plan applied to a study, against hand computations on small studies whose
differences are known (seed-only from trials.parquet, and seeds x test images from points.parquet)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from ..support import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from analysis import crossed_design, stats, t_test_power, verdicts  # noqa: E402
from analysis.study import load_study  # noqa: E402
from dpnp_ray.analysis_plan import concrete_plan, default_primary  # noqa: E402
from dpnp_ray.results import write_table  # noqa: E402

PROVENANCE = dict(error="", wall_seconds=1.0, num_workers=1, use_gpu=False, hardware="test", code_version="abc",
                  torch_version="2", ray_version="2", python_version="3.11", cfg_eval_eps=0.1)
SEEDS = [0, 1, 2, 3, 4]
# per-seed differences from `full` in accuracy fractions: clearly ahead, within +-0.3 points, and noisy
OFFSETS = {"full": [0.0] * 5,
           "ahead": [0.050, 0.040, 0.060, 0.045, 0.055],
           "same": [0.001, -0.002, 0.0015, -0.001, 0.0005],
           "noisy": [0.04, -0.03, 0.05, -0.02, 0.01]}


def trials_frame(offsets=OFFSETS, robust=True) -> pd.DataFrame:
    rows = []
    for variant, diffs in offsets.items():
        for seed, d in zip(SEEDS, diffs):
            base = 0.5 + 0.01 * seed  # a seed effect shared by every variant: pairing removes it
            row = {"study": "v", "trial_id": f"{variant}-s{seed}", "variant": variant, "seed": seed,
                   "status": "completed", "clean_acc": 0.9 + base / 10 + d / 10, "pgd_acc": base + d,
                   "aa_acc": base + d, **PROVENANCE}
            if robust:
                row["worst_case_acc"] = base + d - 0.01
            rows.append(row)
    return pd.DataFrame(rows)


def write(directory: Path, trials: pd.DataFrame, points: pd.DataFrame | None = None, recipe: str | None = None):
    write_table(directory, "trials", trials)
    if points is not None:
        write_table(directory, "points", points)
    if recipe is not None:
        (directory / "study.yaml").write_text(recipe)
    return load_study(directory)


def test_the_default_plan_and_a_declared_one(tmp_path):
    assert default_primary(["aa_acc", "worst_case_acc"]) == ("worst_case_acc", "clean_acc")
    assert default_primary(["aa_acc"]) == ("aa_acc", "clean_acc")
    study = write(tmp_path / "a", trials_frame(robust=False))
    plan = verdicts.study_plan(study)
    assert (plan.primary, plan.reference, plan.comparisons, plan.margin, plan.alpha, plan.declared) == (
        ("aa_acc", "clean_acc"), "full", ("ahead", "same", "noisy"), 1.0, 0.05, False)
    declared = write(tmp_path / "b", trials_frame(), recipe=(
        "kind: ablation\nvariants: [full, ahead, same, noisy]\n"
        "analysis: {primary: [aa_acc], reference: full, comparisons: [same, ahead], margin: 0.5, alpha: 0.1}\n"))
    plan = verdicts.study_plan(declared)
    assert (plan.primary, plan.comparisons, plan.margin, plan.alpha, plan.declared) == (
        ("aa_acc",), ("same", "ahead"), 0.5, 0.1, True)
    table = verdicts.verdicts(declared)
    assert list(table["variant"]) == ["same", "ahead"] and set(table["endpoint"]) == {"aa_acc"}
    with pytest.raises(ValueError, match="analysis.comparisons \\['nobody'\\]"):
        concrete_plan({"comparisons": ["nobody"]}, ["full", "ahead"], ["aa_acc"])


def test_seed_only_verdicts_equal_hand_computations(tmp_path):
    table = verdicts.verdicts(write(tmp_path, trials_frame()))
    assert list(table["endpoint"].unique()) == ["worst_case_acc", "clean_acc"]
    robust = table[table["endpoint"] == "worst_case_acc"].set_index("variant")
    assert (robust["interval"] == verdicts.SEED_ONLY).all() and (robust["n_images"] == 0).all()
    raw, raw_tost = [], []
    for variant in ("ahead", "same", "noisy"):
        d = 100 * np.array(OFFSETS[variant])  # points
        row = robust.loc[variant]
        n, sd = len(d), d.std(ddof=1)
        t = scipy.stats.t.ppf(0.975, n - 1)
        assert row["difference"] == pytest.approx(d.mean())
        assert (row["low"], row["high"]) == pytest.approx((d.mean() - t * sd / math.sqrt(n), d.mean() + t * sd / math.sqrt(n)))
        assert row["se"] == pytest.approx(sd / math.sqrt(n)) and row["df"] == n - 1
        p = scipy.stats.ttest_1samp(d, 0).pvalue
        assert row["p_value"] == pytest.approx(p)
        raw.append(p)
        # TOST within +-1 point: the two one-sided t-tests
        lower = scipy.stats.ttest_1samp(d, -1.0, alternative="greater").pvalue
        upper = scipy.stats.ttest_1samp(d, 1.0, alternative="less").pvalue
        raw_tost.append(max(lower, upper))
        assert row["mde"] == pytest.approx(t_test_power.minimal_detectable_effect(sd, n, 0.05 / 3))
        assert math.isnan(row["cmh_p"]) and math.isnan(row["bootstrap_low"])
    # Holm by hand over the three planned comparisons of this endpoint only (not the six rows of the table), for
    # the difference test and for TOST alike
    def holm_by_hand(ps):
        adjusted, running = np.empty(len(ps)), 0.0
        for rank, i in enumerate(np.argsort(ps)):
            running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
            adjusted[i] = running
        return list(adjusted)

    assert list(robust["p_holm"]) == pytest.approx(holm_by_hand(raw))
    assert list(robust["tost_p"]) == pytest.approx(holm_by_hand(raw_tost))
    assert robust.loc["ahead", "sign_flip_p"] == pytest.approx(2 / 32)  # same sign on 5 of 5 seeds: the floor
    assert robust["verdict"].to_dict() == {"ahead": "better", "same": "equivalent", "noisy": "inconclusive"}
    worse = verdicts.verdicts(write(tmp_path / "w", trials_frame(
        {"full": OFFSETS["ahead"], "behind": OFFSETS["full"]})))
    assert set(worse["verdict"]) == {"worse"} and (worse["difference"] < 0).all()


def points_frame(matrices: dict[str, np.ndarray], attack: str, eps: float, indices) -> pd.DataFrame:
    rows = []
    for variant, ok in matrices.items():
        for seed, flags in zip(SEEDS, ok):
            rows += [{"study": "v", "trial_id": f"{variant}-s{seed}", "variant": variant, "seed": seed,
                      "suite": "quick", "split": "test", "attack": attack, "loss": "ce", "eps": eps, "steps": 0,
                      "restarts": 0, "index": int(i), "correct": bool(c)} for i, c in zip(indices, flags)]
    return pd.DataFrame(rows)


def test_crossed_verdicts_read_the_endpoints_points_at_the_evaluation_eps(tmp_path):
    rng = np.random.default_rng(3)
    images = 400
    easy = rng.random(images)  # image difficulty, shared by every seed and variant
    full = rng.random((5, images)) < 0.3 + 0.5 * easy
    ahead = full | (rng.random((5, images)) < 0.15)  # flips some wrong points right: ahead by ~ 5 points
    same = full.copy()
    swap = rng.choice(images, 6, replace=False)
    same[:, swap] = ~same[:, swap]
    at_eps = points_frame({"full": full, "ahead": ahead, "same": same}, "worst_case", 0.1, range(images))
    # distractors the verdict must not read: another eps, another attack, the validation split
    other_eps = points_frame({"full": ~full, "ahead": full, "same": ~full}, "worst_case", 0.2, range(images))
    other_attack = points_frame({"full": ~full, "ahead": full, "same": full}, "pgd", 0.1, range(images))
    validation = points_frame({"full": ~full, "ahead": full, "same": full}, "worst_case", 0.1, range(images)
                              ).assign(split="val")
    clean = points_frame({"full": full, "ahead": full, "same": full}, "clean", 0.0, range(0, 2 * images, 2))
    trials = trials_frame({k: OFFSETS[k] for k in ("full", "ahead", "same")})
    study = write(tmp_path, trials, pd.concat([at_eps, other_eps, other_attack, validation, clean]))
    table = verdicts.verdicts(study, n_boot=400)
    robust = table[table["endpoint"] == "worst_case_acc"].set_index("variant")
    def crossed_tost(ok):
        c = crossed_design.crossed_variance(ok.astype(float) - full.astype(float))
        return stats.tost(c.mean, c.se, c.df, 0.01).p_value

    raw_tost = {"ahead": crossed_tost(ahead), "same": crossed_tost(same)}
    tost_holm = dict(zip(raw_tost, stats.holm_adjust(list(raw_tost.values()))))  # the family of the two
    for variant, ok in (("ahead", ahead), ("same", same)):
        row = robust.loc[variant]
        d = ok.astype(float) - full.astype(float)
        crossed = crossed_design.crossed_variance(d)
        assert row["interval"] == verdicts.CROSSED and (row["n_seeds"], row["n_images"]) == (5, images)
        assert row["difference"] == pytest.approx(100 * d.mean())
        assert (row["low"], row["high"]) == pytest.approx((100 * crossed.low, 100 * crossed.high))
        assert row["p_value"] == pytest.approx(2 * scipy.stats.t.sf(abs(crossed.mean) / crossed.se, crossed.df))
        assert row["cmh_p"] == pytest.approx(crossed_design.mcnemar_cmh(ok, full).p_value)
        assert row["sign_flip_p"] == pytest.approx(stats.sign_flip_p(d.mean(axis=1)))
        assert row["tost_p"] == pytest.approx(tost_holm[variant])
        assert row["mde"] == pytest.approx(100 * t_test_power.detectable_effect(crossed.se, crossed.df, 0.05 / 2))
        assert row["bootstrap_low"] < row["difference"] < row["bootstrap_high"]
    assert robust.loc["ahead", "verdict"] == "better"
    # clean: identical correctness on every point, so a zero difference; the trials' clean_acc (which differs)
    # is not what the crossed interval reads
    clean_rows = table[table["endpoint"] == "clean_acc"]
    assert (clean_rows["interval"] == verdicts.CROSSED).all() and (clean_rows["difference"] == 0).all()


def test_points_on_a_subset_pair_on_common_images_and_a_missing_seed_means_seed_only(tmp_path):
    rng = np.random.default_rng(0)
    full, ahead = rng.random((5, 50)) < 0.5, rng.random((5, 50)) < 0.7
    points = pd.concat([points_frame({"full": full}, "autoattack", 0.1, range(50)),
                        points_frame({"ahead": ahead}, "autoattack", 0.1, range(10, 60))])
    trials = trials_frame({k: OFFSETS[k] for k in ("full", "ahead")}, robust=False)
    table = verdicts.verdicts(write(tmp_path / "a", trials, points), n_boot=200).set_index("endpoint")
    common = (ahead[:, :40].astype(float) - full[:, 10:].astype(float))
    assert table.loc["aa_acc", "n_images"] == 40
    assert table.loc["aa_acc", "difference"] == pytest.approx(100 * common.mean())
    assert table.loc["clean_acc", "interval"] == verdicts.SEED_ONLY  # no clean points in this study
    without_seed = points[~((points["variant"] == "ahead") & (points["seed"] == 4))]
    table = verdicts.verdicts(write(tmp_path / "b", trials, without_seed), n_boot=200).set_index("endpoint")
    assert table.loc["aa_acc", "interval"] == verdicts.SEED_ONLY
    assert table.loc["aa_acc", "difference"] == pytest.approx(100 * np.mean(OFFSETS["ahead"]))


def test_detectable_effect_is_the_paired_t_mde_at_se_and_df():
    for sd, n in ((0.65, 5), (1.3, 10), (2.0, 3)):
        assert t_test_power.detectable_effect(sd / math.sqrt(n), n - 1) == pytest.approx(
            t_test_power.minimal_detectable_effect(sd, n), rel=1e-8)
    se, df = 0.4, 37.5
    effect = t_test_power.detectable_effect(se, df, 0.01)
    assert t_test_power.t_power(effect, se, df, 0.01) == pytest.approx(0.8)
    # a simulation: t = (effect + se * z) / (se * sqrt(chi2_df / df)) rejects about 80% of the time
    rng = np.random.default_rng(1)
    z, chi = rng.standard_normal(20000), rng.chisquare(df, 20000)
    t = (effect / se + z) / np.sqrt(chi / df)
    assert np.mean(np.abs(t) > scipy.stats.t.ppf(0.995, df)) == pytest.approx(0.8, abs=0.015)


def test_the_page_and_the_report_show_the_plan_and_verdicts_before_the_descriptive_tables(tmp_path):
    from analysis import markdown
    from analysis.figure_registry import make_figures
    from analysis.report_html import render_html

    trials = trials_frame().assign(study_kind="ablation")
    study = write(tmp_path / "s", trials)
    page = markdown.study_markdown(study)
    section = page[page.index("### Plan and verdicts"):page.index("### Per variant (descriptive)")]
    assert "Plan: the default plan (the study recorded no `analysis:`)" in section
    assert "every interval, p and MDE is seed-only: t over seeds (conditional on this one test split" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and " − full |" in line]
    assert len(rows) == 3 * 2  # comparisons x primary endpoints
    ahead = [r for r in rows if r.startswith("| ahead − full | worst case |")]
    assert len(ahead) == 1 and "**better**" in ahead[0], rows
    assert verdicts.DESCRIPTIVE_NOTE in section
    html = render_html(study, make_figures(study, ()))
    assert html.index("Plan and verdicts") < html.index("Per variant (accuracies")
    table = verdicts.verdicts(study)
    for verdict in verdicts.VERDICTS:
        assert html.count(f"<td>{verdict}</td>") == (table["verdict"] == verdict).sum(), verdict


def test_the_result_sentence_says_what_the_verdicts_say_and_no_more():
    import math

    import pandas as pd

    from dpnp_ray.results import points_measured
    from analysis.verdicts import result_sentence
    from dpnp_ray.analysis_plan import AnalysisPlan

    plan = AnalysisPlan(primary=("aa_acc",), reference="full", comparisons=("pgd_at", "no_npr", "no_ppa"), margin=1.0,
                        alpha=0.05, declared=True)
    table = pd.DataFrame({"variant": ["pgd_at", "no_npr", "no_ppa"], "reference": "full", "endpoint": "aa_acc",
                          "n_seeds": 5, "n_images": 100, "difference": [-2.5, 0.1, 0.7], "low": [-3.9, -0.4, -1.2],
                          "high": [-1.1, 0.6, 2.6], "mde": [1.5, 0.6, 2.25], "verdict": ["worse", "equivalent",
                                                                                        "inconclusive"]})
    sentence = result_sentence(table, plan)
    assert sentence == ("On AutoAttack (5 seeds x 100 test images): `pgd_at` worse than `full` by 2.50 pp (interval "
                        "[-3.90, -1.10]); `no_npr` equivalent to `full` within ±1 pp; 1 of 3 comparisons inconclusive "
                        "(`no_ppa`; this study detects differences of 2.25 pp with power 0.8).")
    assert "better" not in sentence
    empty = result_sentence(table.iloc[0:0], plan)
    assert empty == "No verdicts: the reference `full` has no completed trial."
    # an inconclusive comparison without a spread (no MDE) says nothing about detectable differences
    table.loc[2, "mde"] = math.nan
    assert result_sentence(table, plan).endswith("1 of 3 comparisons inconclusive (`no_ppa`).")

    trials = pd.DataFrame({"status": "completed", "eval_n": [359, 359, 200], "aa_n": [100, 100, 100]})
    assert points_measured(trials, "clean_acc") == "200-359 test points"
    assert points_measured(trials, "aa_acc") == "100 test points"
    assert points_measured(trials, "worst_case_acc") == ""  # no worst_case_n column: nothing claimed
    assert points_measured(trials, "val_robust_acc") == "the validation split"  # not the test points
