"""The factorial ablation: its cells, their configs, the Yates effects (recovered exactly from a known model,
blocked by seed), the crossed interval from per-point results, and the dry run's power line."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis import factorial
from analysis.power import factorial_lines
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.study.variants import ABLATION_VARIANTS, LISTED_VARIANTS, variant_overrides
from dpnp_ray.study.factorial import FACTORS, cell_levels, design_factors, expand_variants, factorial_cells


def test_cells_are_every_combination_full_first_and_their_configs_switch_exactly_their_factors():
    cells = factorial_cells(["ppa", "npr", "cleanupd"])
    assert len(cells) == len(set(cells)) == 8 and cells[0] == "full"
    assert {tuple(cell_levels(c)[f] for f in ("ppa", "npr", "cleanupd")) for c in cells} == \
        set(itertools.product([True, False], repeat=3))
    overrides = variant_overrides()
    for cell in cells[1:]:
        levels = cell_levels(cell)
        assert cell in ABLATION_VARIANTS and cell not in LISTED_VARIANTS  # registered, not in --help's list
        expected = {FACTORS[f].field: FACTORS[f].on if on else FACTORS[f].off for f, on in levels.items()}
        assert overrides[cell] == expected
        ExperimentConfig.from_dict(expected)  # a valid config
    assert expand_variants(["pgd_at", "factorial:ppa,npr", "full"]) == ["pgd_at", *factorial_cells(["ppa", "npr"])]
    assert design_factors(expand_variants(["factorial:npr,cons", "pgd_at"])) == ["npr", "cons"]
    with pytest.raises(ValueError, match="distinct factors among ppa"):
        factorial_cells(["ppa", "ppa"])


def _trials(effects: dict[tuple[str, ...], float], seeds=(0, 1, 2, 3, 4), factors=("ppa", "npr", "cons"), noise=0.0):
    """A 2^k study whose endpoint follows y = 0.6 + seed shift + sum_E (effect_E / 2) prod s_f (+ noise)."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        shift = 0.05 * seed  # a block effect: every cell of the seed moves by it
        for cell in factorial_cells(list(factors)):
            s = {f: 1.0 if on else -1.0 for f, on in cell_levels(cell).items()}
            y = 0.6 + shift + sum(e / 2 * np.prod([s[f] for f in E]) for E, e in effects.items())
            rows.append({"trial_id": f"{cell}-s{seed}", "variant": cell, "seed": seed, "status": "completed",
                         "aa_acc": y + noise * rng.normal()})
    return pd.DataFrame(rows)


def test_yates_effects_are_recovered_exactly_and_the_seed_blocks_cancel():
    truth = {("ppa",): 0.04, ("npr",): -0.01, ("cons",): 0.0, ("ppa", "npr"): 0.02}
    table = factorial.effects_table(_trials(truth), None, ["aa_acc"]).set_index("effect")
    assert list(table.index) == ["ppa", "npr", "cons", "ppa x npr", "ppa x cons", "npr x cons"]
    for effect, row in table.iterrows():
        expected = 100 * truth.get(tuple(effect.split(" x ")), 0.0)
        assert row["estimate"] == pytest.approx(expected, abs=1e-9)  # sums of a few fp64 terms
        assert row["interval"] == "seed-only t" and row["n_seeds"] == 5
    # with noise, intervals are t over the 5 per-seed contrasts and Holm runs over the 6 effects
    noisy = factorial.effects_table(_trials(truth, noise=0.002), None, ["aa_acc"]).set_index("effect")
    assert noisy.loc["ppa", "decided"] and not noisy.loc["cons", "decided"]
    assert (noisy["p_holm"] >= noisy["p_value"] - 1e-15).all()
    sentence = factorial.effects_sentence(noisy.reset_index())
    assert sentence.startswith("Factorial effects on AutoAttack: ppa +4.") and "undecided" in sentence


def test_an_incomplete_design_has_no_effects():
    trials = _trials({("ppa",): 0.04})
    assert factorial.effects_table(trials[trials["variant"] != "full"], None, ["aa_acc"]).empty
    assert factorial.design(trials.assign(variant="pgd_at")) == ([], [])


def test_with_points_the_contrast_is_taken_image_by_image_and_its_mean_is_the_trial_level_effect():
    trials = _trials({("ppa",): 0.04}, factors=("ppa", "npr"), noise=0.01)
    trials["cfg_eval_eps"] = 0.1
    rng = np.random.default_rng(2)
    rows = []
    for t in trials.itertuples():
        correct = rng.random(40) < 0.7
        trials.loc[trials["trial_id"] == t.trial_id, "aa_acc"] = correct.mean()
        rows += [{"trial_id": t.trial_id, "attack": "autoattack", "split": "test", "suite": "quick", "loss": "ce",
                  "eps": 0.1, "steps": 100, "restarts": 1, "index": i, "correct": bool(c)} for i, c in enumerate(correct)]
    points = pd.DataFrame(rows)
    crossed = factorial.effects_table(trials, points, ["aa_acc"]).set_index("effect")
    seed_only = factorial.effects_table(trials, None, ["aa_acc"]).set_index("effect")
    assert (crossed["interval"] == "seeds x test images").all() and (crossed["n_images"] == 40).all()
    assert np.allclose(crossed["estimate"], seed_only["estimate"], atol=1e-9)  # a linear contrast of the means


def test_the_dry_run_states_the_design_and_each_effects_mde():
    lines = factorial_lines(3, 5, 0.05, cell_sd=0.01, source="test")
    assert "3 factors, 8 cells x 5 seed(s)" in lines[0] and "Holm over the 6" in lines[0]
    mde = factorial.effect_mde(0.01, 3, 5, 0.05)
    assert f"{100 * mde:.2f} points" in lines[1]
    # a seed's contrast has SD 2 sigma / sqrt(8): quadrupling the cells halves it
    assert factorial.effect_mde(0.01, 5, 5, 0.05, tests=6) == pytest.approx(factorial.effect_mde(0.01, 3, 5, 0.05) / 2)
    assert "unknown" in factorial_lines(3, 5)[1]
    assert math.isfinite(mde)
