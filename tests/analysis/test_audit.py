"""The claim audit (analysis/audit.py): each claim's verdict follows its rule, untuned baselines cannot support
a claim about tuned ones, and the anchor gate refuses verdicts when PGD-AT is off the published numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import pandas as pd
import yaml

from analysis import audit
from analysis.study import Study
from dpnp_ray.study.factorial import factorial_cells

from ..support import REPO


def _study(means: dict[str, tuple[float, float]], tuned: bool = True, seeds=range(6), noise=0.002, **cfg):
    """A study whose variants have (clean, AutoAttack) means, a small seed noise, and its study.yaml; `tuned`:
    from `--tuned-from`, so its baselines are named tuned_<method>."""
    if tuned:
        means = {f"tuned_{v}" if v in audit.BASELINES else v: m for v, m in means.items()}
    rng = np.random.default_rng(0)
    rows = []
    for variant, (clean, robust) in means.items():
        for seed in seeds:
            rows.append({"study": "s", "trial_id": f"{variant}-s{seed}", "variant": variant, "seed": seed,
                         "status": "completed", "clean_acc": clean + noise * rng.normal(),
                         "aa_acc": robust + noise * rng.normal(), "cfg_dataset": cfg.get("dataset", "digits"),
                         "cfg_model": cfg.get("model", "small_cnn"), "cfg_eval_eps": cfg.get("eps", 0.1),
                         "cfg_epochs": 2, "cfg_eval_suite": "quick"})
    recipe = {"kind": "ablation", "variants": list(means), "analysis": {"primary": ["aa_acc", "clean_acc"]}}
    if tuned:
        recipe["tuned_from"] = "results/tuning"
    return Study(Path("."), pd.DataFrame(rows), recipe=yaml.safe_dump(recipe))


def _verdicts(study) -> dict[str, str]:
    results, _, _ = audit.audit(study)
    return {str(r.number): r.verdict for r in results}


def test_clean_and_robust_claims_follow_their_rules():
    better = _study({"full": (0.90, 0.50), "pgd_at": (0.85, 0.50), "trades": (0.86, 0.505)})
    found = _verdicts(better)
    assert found["1"] == "supported"  # clean: higher than both, decided
    assert found["2"] == "supported"  # AutoAttack: -0.5 pp against TRADES is within the 1 pp margin, shown
    worse = _study({"full": (0.80, 0.45), "pgd_at": (0.85, 0.50), "mart": (0.84, 0.49)})
    found = _verdicts(worse)
    assert found["1"] == "contradicted" and found["2"] == "contradicted"  # 4-5 pp below, far past the margin
    untuned = _study({"full": (0.90, 0.50), "pgd_at": (0.85, 0.50)}, tuned=False)
    found = _verdicts(untuned)
    assert found["1"] == "inconclusive" and found["2"] == "inconclusive"  # cannot support a claim about tuned ones
    assert _verdicts(_study({"full": (0.80, 0.45), "pgd_at": (0.85, 0.50)}, tuned=False))["1"] == "contradicted"


def test_a_component_is_supported_contradicted_or_inconclusive_by_its_effect():
    study = _study({"full": (0.90, 0.55), "no_ppa": (0.90, 0.50), "no_npr": (0.90, 0.5502),
                    "no_consistency": (0.90, 0.56)})
    found = _verdicts(study)
    assert found["3a"] == "supported"  # removing PPA costs 5 pp of AutoAttack
    assert found["3b"] == "contradicted"  # NPR's effect lies within ±1 pp of zero on both endpoints
    assert found["3c"] == "contradicted"  # removing consistency helps AutoAttack by 1 pp, decided
    assert found["4"] == "not measured" and found["5"] == "not measured" and found["6"] == "not measured"
    noisy = _study({"full": (0.90, 0.55), "no_ppa": (0.90, 0.54)}, noise=0.03, seeds=range(3))
    result = next(r for r in audit.audit(noisy)[0] if r.number == "3a")
    assert result.verdict == "inconclusive" and "MDE" in result.reason


def test_a_factorial_answers_the_component_claims_with_its_main_effects():
    means = {}
    for cell in factorial_cells(["ppa", "npr"]):
        ppa, npr = "ppa1" in cell or cell == "full", "npr1" in cell or cell == "full"
        means[cell] = (0.9, 0.50 + 0.03 * ppa + 0.0 * npr)
    result = {str(r.number): r for r in audit.audit(_study(means))[0]}
    assert result["3a"].verdict == "supported" and "factorial main effect of `ppa`" in result["3a"].reason
    assert result["3b"].verdict == "contradicted" and "factorial main effect of `npr`" in result["3b"].reason


def test_the_anchor_gate_refuses_verdicts_when_pgd_at_is_off_the_published_numbers():
    off = _study({"full": (0.86, 0.48), "pgd_at": (0.70, 0.40)}, dataset="cifar10", model="resnet18", eps=8 / 255)
    results, refused, _ = audit.audit(off)
    assert refused and "clean 69.9% (published 82-85%)" in refused and "AutoAttack 40.0% (published 47-49.5%)" in refused
    assert {r.verdict for r in results} == {"refused"}
    within = _study({"full": (0.86, 0.48), "pgd_at": (0.83, 0.48)}, dataset="cifar10", model="resnet18", eps=8 / 255)
    assert audit.anchor_gate(within) is None
    assert audit.anchor_gate(_study({"full": (0.9, 0.5), "pgd_at": (0.5, 0.2)})) is None  # no anchors for digits
    page = audit.audit_markdown(off, ["python studies/ablation.py ..."])
    assert "**No verdicts**" in page and "| 1. higher clean accuracy than adversarial training | **refused** |" in page


def test_the_audit_compares_the_tuned_baselines_and_calls_only_them_tuned():
    both = _study({"full": (0.90, 0.50), "pgd_at": (0.80, 0.45), "tuned_pgd_at": (0.95, 0.55)}, tuned=False)
    recipe = yaml.safe_dump({"kind": "ablation", "tuned_from": "results/tuning",
                             "analysis": {"primary": ["aa_acc", "clean_acc"]}})
    both = dataclasses.replace(both, recipe=recipe)
    assert audit.baseline_variants(both) == ["tuned_pgd_at"] and audit.baselines_tuned(both)
    assert _verdicts(both)["1"] == "contradicted"  # judged against the tuned PGD-AT (0.95), not the untuned one
    untuned = _study({"full": (0.90, 0.50), "pgd_at": (0.85, 0.50)}, tuned=False)
    untuned = dataclasses.replace(untuned, recipe=recipe)  # tuned_from recorded, but the baseline it compares ran at the base config
    assert audit.baseline_variants(untuned) == ["pgd_at"] and not audit.baselines_tuned(untuned)


def test_the_claims_figure_draws_each_comparison_at_its_numbers_in_its_claims_colour():
    from analysis.audit_figure import VERDICT_COLORS, claim_rows, claims_figure

    study = _study({"full": (0.90, 0.55), "pgd_at": (0.85, 0.50), "trades": (0.86, 0.505), "no_ppa": (0.90, 0.50)})
    results, _, _ = audit.audit(study)
    rows = claim_rows(results)
    assert list(dict.fromkeys(rows["claim"])) == ["1", "2", "3a"]  # only what the study measured, in claim order
    done = study.trials
    for reference, claim, endpoint, column in [("tuned_pgd_at", "1", "clean", "clean_acc"),
                                               ("tuned_trades", "2", "AutoAttack", "aa_acc"),
                                               ("no_ppa", "3a", "AutoAttack", "aa_acc")]:
        row = rows[(rows["comparison"] == f"full − {reference}") & (rows["claim"] == claim)
                   & rows["endpoint"].str.contains(endpoint)].iloc[0]
        expected = 100 * (done.loc[done["variant"] == "full", column].mean()
                          - done.loc[done["variant"] == reference, column].mean())
        assert row["estimate"] == pytest.approx(expected, abs=1e-9)  # paired over the same seeds: means differ
        assert row["low"] < row["estimate"] < row["high"]
    figure = claims_figure(results, margin=1.0, confidence=0.95, study_name="s")
    by_verdict = {trace.name: trace for trace in figure.data}
    verdicts = {str(r.number): r.verdict for r in results}
    assert set(by_verdict) == {verdicts[c] for c in ("1", "2", "3a")}
    for name, trace in by_verdict.items():
        assert trace.marker.color == VERDICT_COLORS[name]
        drawn = rows[rows["verdict"] == name]
        assert list(trace.x) == list(drawn["estimate"]) and list(trace.y) == list(drawn["label"])
        assert np.allclose(np.asarray(trace.error_x.array) + trace.x, drawn["high"])
    assert sorted(shape.x0 for shape in figure.layout.shapes) == [-1.0, 0.0]  # the margin and zero


def test_the_audit_page_is_written_when_its_figure_cannot_be(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))
    directory = REPO / "docs" / "data" / "audit_digits_eps02"
    page, figure = tmp_path / "audit.md", tmp_path / "png" / "claims.png"
    assert audit.main([str(directory), "--out", str(page), "--figure", str(figure)]) == 1
    assert "### Verdicts" in page.read_text() and not figure.exists()
    err = capsys.readouterr().err
    assert "PNG export skipped" in err and "the audit page is written" in err
