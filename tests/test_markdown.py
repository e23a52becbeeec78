"""analysis/markdown.py on a tiny synthetic study: every number on the page comes from its Parquet files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis import markdown  # noqa: E402
from analysis.report import load_study  # noqa: E402
from tests.test_analysis import ablation_tables, write_study  # noqa: E402


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
