"""analysis/markdown.py on a tiny synthetic study: every number on the page comes from its Parquet files."""

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

from analysis import markdown  # noqa: E402
from analysis.study import load_study  # noqa: E402

from ..support.study_tables import ablation_tables, write_study  # noqa: E402


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    tables = ablation_tables()
    geometry = tables["geometry"]
    tables["geometry"] = geometry.assign(split=geometry["split"].replace({"clean": "test"}),
                                         mean_angle_deg=90.0 + geometry["seed"], simplex_angle_deg=96.38)
    return write_study(tmp_path_factory.mktemp("md") / "abl", tables)


def test_markdown_table_escapes_pipes_and_shows_nan_as_dash():
    frame = pd.DataFrame({"a|b": ["x|y", None], "v": [1 / 3, math.nan]})
    assert markdown.markdown_table(frame).splitlines() == [
        "| a\\|b | v |", "|---|---|", "| x\\|y | 0.3333 |", "| — | — |"]
    assert markdown.markdown_table(None, "nothing") == "_nothing_"


def test_page_numbers_are_the_study_files_numbers(study_dir):
    study = load_study(study_dir)
    page = markdown.study_markdown(study, commands=["python studies/ablation.py --name abl"])
    assert "```bash\npython studies/ablation.py --name abl\n```" in page
    trials = study.trials[study.trials["status"] == "completed"]
    clean = trials[trials["variant"] == "no_ppa"]["clean_acc"]  # three seeds
    t = scipy.stats.t.ppf(0.975, len(clean) - 1)
    half = t * clean.std(ddof=1) / math.sqrt(len(clean))
    assert f"{100 * clean.mean():.1f} ± {100 * half:.1f} (n=3)" in page
    full = trials[trials["variant"] == "full"].set_index("seed")["pgd_acc"]
    no_ppa = trials[trials["variant"] == "no_ppa"].set_index("seed")["pgd_acc"]
    p = scipy.stats.ttest_rel(no_ppa.sort_index(), full.sort_index()).pvalue
    assert f"{p:.3g}" in page
    assert "pgd_at" in page and "no test" in page  # one seed: no paired test, and it says so
    # geometry: mean ± sd over the seeds of the clean test split only
    angles = 90.0 + np.array([0.0, 1.0, 2.0])
    assert f"| full | {angles.mean():.4g} ± {angles.std(ddof=1):.2g} | 96.38 ± 0 |" in page
    # last-epoch losses: the synthetic loss_ce is 1.5 - 0.4 * 2 at epoch 2 on every seed
    assert "| full | 0.7 ± " in page and "| pgd_at | 0.7 | 0.3 | 0.1 |" in page  # one seed: no sd


def test_cli_writes_a_page_then_replaces_only_the_marked_region(study_dir, tmp_path):
    out = tmp_path / "docs" / "abl.md"
    assert markdown.main([str(study_dir), "--out", str(out), "--title", "Ablation", "--command", "cmd one"]) == 0
    text = out.read_text()
    assert text.startswith("# Ablation\n\n" + markdown.BEGIN) and text.rstrip().endswith(markdown.END)
    out.write_text("# Hand-written\n\nThe question.\n\n" + text[text.index(markdown.BEGIN):] + "\nThe decision.\n")
    assert markdown.main([str(study_dir), "--out", str(out), "--command", "cmd two"]) == 0
    text = out.read_text()
    assert text.startswith("# Hand-written\n\nThe question.\n\n" + markdown.BEGIN)
    assert text.rstrip().endswith(markdown.END + "\n\nThe decision.")
    assert "cmd two" in text and "cmd one" not in text and text.count(markdown.BEGIN) == 1


def test_figures_are_linked_relative_to_the_page(study_dir, tmp_path):
    pngs = tmp_path / "docs" / "abl_png"
    pngs.mkdir(parents=True)
    (pngs / "ablation_bars.png").write_bytes(b"\x89PNG")
    page = markdown.study_markdown(load_study(study_dir), figure_dir=pngs, relative_to=tmp_path / "docs")
    assert "![ablation bars](abl_png/ablation_bars.png)" in page


def test_cli_rejects_a_directory_that_is_not_a_study(tmp_path, capsys):
    assert markdown.main([str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    assert "trials.parquet" in capsys.readouterr().err


def test_rule_takes_the_most_robust_front_point_within_the_clean_tolerance():
    front = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "val_clean_acc": [0.99, 0.985, 0.975, 0.96],
                          "val_robust_acc": [0.80, 0.84, 0.88, 0.90]})
    assert markdown.choose_from_front(front, 0.01)["trial_id"] == "b"  # c is 1.5 points below the best clean
    assert markdown.choose_from_front(front, 0.02)["trial_id"] == "c"
    assert markdown.choose_from_front(front, 0.0)["trial_id"] == "a"
    with pytest.raises(ValueError, match="empty Pareto front"):
        markdown.choose_from_front(front.iloc[:0])


def test_search_page_shows_the_front_and_the_chosen_trial(tmp_path):
    from ..support.study_tables import search_tables

    tables = search_tables()
    tables["trials"] = tables["trials"].assign(param_lr=tables["trials"]["cfg_lr"],
                                               param_lambda_ppa=tables["trials"]["cfg_lambda_ppa"])
    study = load_study(write_study(tmp_path / "search", tables))
    page = markdown.study_markdown(study)
    front = tables["pareto"]
    chosen = markdown.choose_from_front(front)
    assert f"{len(front)} non-dominated of 12 completed trials" in page
    section = page[page.index("### Chosen by the rule"):]
    assert f"| {chosen['trial_id']} | {chosen['val_clean_acc']:.4g} | {chosen['val_robust_acc']:.4g} |" in section
    assert "### Per variant" not in page


def test_importances_come_from_the_journal_and_sum_to_one_per_objective(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("a", 0, 1), -t.suggest_float("b", 0, 1) + 0.01 * t.params["a"]),
                   n_trials=12)
    table = markdown.journal_importances(journal)
    assert set(table["parameter"]) == {"a", "b"}
    for column in ("importance for val_clean_acc", "importance for val_robust_acc"):
        assert table[column].sum() == pytest.approx(1.0)
    clean = table.set_index("parameter")["importance for val_clean_acc"]
    assert clean["a"] > clean["b"]  # the first objective is a itself


def test_autoattack_standard_rows_are_shown_with_the_study_numbers_and_paired(tmp_path):
    from dpnp_ray import results

    tables = ablation_tables()
    directory = write_study(tmp_path / "abl", tables)
    done = tables["trials"].query("status == 'completed' and variant in ['full', 'no_ppa']")
    for row in done.to_dict("records"):  # as `python -m dpnp_ray.evaluate <study> --suite full` writes them
        results.write_table(directory / "evaluations" / row["trial_id"], "evals", [{
            "study": row["study"], "trial_id": row["trial_id"], "variant": row["variant"], "seed": row["seed"],
            "attack": "autoattack", "version": "standard", "eps": 0.1, "steps": 100, "restarts": 1, "n": 359,
            "accuracy": row["aa_acc"] - 0.02, "split": "test", "loss": "apgd-ce+apgd-t+fab-t+square",
            "suite": "full", "norm": "Linf"}])
        (directory / "evaluations" / row["trial_id"] / "evaluation-full.json").write_text(
            '{"aa_code": "pyautoattack 0.2.0"}')
    page = markdown.study_markdown(load_study(directory))
    section = page[page.index("### AutoAttack standard"):]
    full = done.query("variant == 'full'")
    assert "(6 trials, n = 359 test points, pyautoattack 0.2.0;" in section
    assert f"| full | 3 | {report_ci(full['clean_acc'])} | {report_ci(full['aa_acc'] - 0.02)} |" in section
    assert "| no_ppa | full | aa_standard_acc | 3 |" in section


def report_ci(values: pd.Series) -> str:
    from analysis.report_tables import ci_text

    return ci_text(values)
