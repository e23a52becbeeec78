"""Tests for analysis/: statistics against hand computations and scipy, figure builders on small frames,
the report on synthetic study directories (written with results.write_table), and the report in headless Chromium."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from ..support import REPO

if str(REPO) not in sys.path:  # analysis/ is a directory of scripts next to dpnp_ray, not an installed package
    sys.path.insert(0, str(REPO))

from analysis import figures, optuna_study, robustness_figures, stats  # noqa: E402
from analysis.figure_registry import export_pngs, find_browser, make_figures  # noqa: E402
from analysis.report import build_report, main  # noqa: E402
from analysis.study import load_study  # noqa: E402
from dpnp_ray.results import ResultsError  # noqa: E402

from ..support.study_tables import ablation_tables, detail_tables, search_tables, write_study  # noqa: E402

T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # t_{0.975, df} from a t table


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """An ablation and a search study, each with its report (built once for the module)."""
    base = tmp_path_factory.mktemp("studies")
    ablation = write_study(base / "ablation", ablation_tables())
    search = write_study(base / "search", search_tables())
    return {"ablation": ablation, "search": search,
            "ablation_html": build_report(ablation, log=None),
            "search_html": build_report(search, base / "out" / "search.html", log=None)}


# ---------------------------------------------------------------- statistics


def test_t_interval_matches_hand_computation():
    values = [0.50, 0.60, 0.70, 0.65]
    mean = sum(values) / 4
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    ci = stats.t_interval(values)
    assert ci.n == 4 and ci.mean == pytest.approx(mean)
    assert ci.half_width == pytest.approx(T_975[3] * s / math.sqrt(4), rel=1e-9)
    assert (ci.low, ci.high) == pytest.approx((mean - ci.half_width, mean + ci.half_width))
    single = stats.t_interval([0.4, float("nan"), None])
    assert single.n == 1 and single.mean == 0.4 and math.isnan(single.half_width)
    assert stats.t_interval([]).n == 0


def test_paired_difference_p_value_equals_scipy_and_notes_low_power():
    frame = pd.DataFrame({"variant": ["full"] * 3 + ["no_ppa"] * 3 + ["lone"], "seed": [0, 1, 2, 2, 0, 1, 0],
                          "pgd_acc": [0.50, 0.52, 0.49, 0.45, 0.48, 0.49, 0.3]})
    result = stats.paired_difference(frame, "pgd_acc", "no_ppa", "full")
    full, ablated = np.array([0.50, 0.52, 0.49]), np.array([0.48, 0.49, 0.45])  # paired by seed 0, 1, 2
    expected = scipy.stats.ttest_rel(ablated, full)
    assert result.n_pairs == 3
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    d = ablated - full
    assert result.mean_difference == pytest.approx(d.mean())
    assert result.ci_half_width == pytest.approx(T_975[2] * d.std(ddof=1) / math.sqrt(3))
    assert "low power" in result.note and "ttest_rel" in result.test

    lone = stats.paired_difference(frame, "pgd_acc", "lone", "full")
    assert lone.n_pairs == 1 and math.isnan(lone.p_value) and lone.note.startswith("no test: 1 matching seed")


def test_holm_adjustment_by_hand():
    p = [0.01, float("nan"), 0.04, 0.03, 0.005]
    # the m = 4 finite p sorted: 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06,
    # max(0.06, 1 * 0.04) = 0.06 (adjusted p never decrease along the sorted order); NaN: no test, not counted
    assert stats.holm_adjust(p) == pytest.approx([0.03, math.nan, 0.06, 0.06, 0.02], nan_ok=True)
    assert stats.holm_adjust([0.5, 0.6]).tolist() == [1.0, 1.0]  # 2 * 0.5 = 1, capped at 1, then monotone
    assert stats.holm_adjust([0.2]).tolist() == [0.2] and stats.holm_adjust([]).size == 0
    # a planned family: the comparison without a test counts as p = 1 (m = 5: 5 * 0.005 = 0.025, 4 * 0.01 = 0.04,
    # 3 * 0.03 = 0.09, max(0.09, 2 * 0.04) = 0.09, then the 1) and keeps NaN as its own adjusted p
    assert stats.holm_planned(p) == pytest.approx([0.04, math.nan, 0.09, 0.09, 0.025], nan_ok=True)
    assert [math.isnan(a) for a in stats.holm_planned([math.nan, 0.2])] == [True, False]


def test_differences_table_adjusts_over_every_test_of_the_table():
    frame = pd.DataFrame({"variant": ["full"] * 3 + ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 3,
                          "pgd_acc": [0.50, 0.52, 0.49, 0.45, 0.48, 0.46, 0.50, 0.51, 0.50],
                          "clean_acc": [0.90, 0.91, 0.92, 0.88, 0.91, 0.90, 0.90, 0.91, 0.92]})
    table = stats.differences_from_reference(frame, ["pgd_acc", "clean_acc"])
    raw = {(r.variant, r.metric): r.p_value for r in table.itertuples()}
    assert math.isnan(raw[("b", "clean_acc")])  # identical on every seed: no test, outside the family
    finite = sorted(p for p in raw.values() if math.isfinite(p))
    assert len(finite) == 3
    by_hand = {finite[0]: 3 * finite[0]}
    by_hand[finite[1]] = max(by_hand[finite[0]], 2 * finite[1])
    by_hand[finite[2]] = max(by_hand[finite[1]], finite[2])
    for r in table.itertuples():
        expected = min(1.0, by_hand[r.p_value]) if math.isfinite(r.p_value) else math.nan
        assert r.p_adjusted == pytest.approx(expected, rel=1e-12, nan_ok=True)


def test_pareto_mask_keeps_exactly_the_non_dominated_rows():
    values = np.array([[0.9, 0.1], [0.5, 0.5], [0.4, 0.4], [0.1, 0.9], [0.5, 0.5], [np.nan, 1.0]])
    assert stats.pareto_mask(values).tolist() == [True, True, False, True, True, False]


# ---------------------------------------------------------------- figure builders


def test_ablation_bars_traces_axes_and_intervals():
    trials = ablation_tables()["trials"]
    fig = figures.ablation_bars(trials)
    assert [t.name for t in fig.data] == ["clean", "PGD", "CW-inf", "AutoAttack", "worst case", "corruptions"]
    pgd = fig.data[1]
    assert list(pgd.x) == ["full", "no_ppa", "no_npr", "pgd_at"]  # the reference first
    assert fig.layout.xaxis.title.text == "variant" and fig.layout.yaxis.title.text == "accuracy"
    done = trials[trials["status"] == "completed"]  # the failed no_npr seed does not count
    for i, variant in enumerate(pgd.x):
        values = done.loc[done["variant"] == variant, "pgd_acc"].to_numpy()
        assert pgd.y[i] == pytest.approx(values.mean())
        if len(values) == 1:
            assert pgd.error_y.array[i] is None  # one seed: no interval drawn
        else:
            assert pgd.error_y.array[i] == pytest.approx(T_975[2] * values.std(ddof=1) / math.sqrt(3))


def test_ablation_bars_say_which_metrics_are_missing():
    trials = ablation_tables()["trials"].drop(columns=["aa_acc"]).assign(corruption_acc=np.nan)
    fig = figures.ablation_bars(trials)
    assert [t.name for t in fig.data] == ["clean", "PGD", "CW-inf", "worst case"]
    assert "not recorded in this study: AutoAttack, corruptions" in fig.layout.title.text


def test_ablation_differences_show_paired_test_and_too_few_seeds():
    trials = ablation_tables()["trials"]
    fig = figures.ablation_differences(trials, metrics=["clean_acc", "pgd_acc"])
    assert [t.name for t in fig.data] == ["clean", "PGD"]  # one forest panel per metric
    pgd = fig.data[1]
    assert list(pgd.y) == ["no_ppa", "no_npr", "pgd_at"]
    assert "ttest_rel" in fig.layout.title.text and fig.layout.xaxis2.title.text == "variant − full"
    assert fig.layout.yaxis.title.text == "variant"
    done = trials[trials["status"] == "completed"].set_index(["variant", "seed"])["pgd_acc"]
    d = (done["no_ppa"] - done["full"]).to_numpy()
    expected = scipy.stats.ttest_rel(done["no_ppa"].sort_index(), done["full"].sort_index()).pvalue
    assert pgd.x[0] == pytest.approx(d.mean())
    assert pgd.error_x.array[0] == pytest.approx(T_975[2] * d.std(ddof=1) / math.sqrt(3))
    assert pgd.customdata[0][1] == pytest.approx(expected, rel=1e-12)
    adjusted = pgd.customdata[0][3]  # Holm over the figure's tests: never below the raw p
    assert expected <= adjusted <= 1
    assert pgd.text[0] == f"p={expected:.2g}† (Holm {adjusted:.2g})"  # three seed pairs: low power
    assert pgd.text[2] == "no test (n=1)" and pgd.x[2] is not None  # pgd_at ran one seed
    assert "† fewer than 5 seed pairs (low power)" in fig.layout.title.text

    with pytest.raises(figures.NoData, match="no reference variant"):
        figures.ablation_differences(trials.replace({"variant": {"full": "base"}}))


def test_clean_robust_scatter_highlights_the_front_and_hovers_the_config():
    trials = search_tables()["trials"]
    pareto = trials[trials["trial_id"].isin(["t001", "t004"])]
    fig = figures.clean_robust_scatter(trials, pareto)
    points, front = fig.data
    assert points.name == "search" and front.name == "Pareto front"
    assert len(points.x) == 12  # the stopped trial is not drawn
    assert sorted(front.x) == sorted(pareto["val_clean_acc"])
    assert fig.layout.xaxis.title.text == "val clean accuracy" and fig.layout.yaxis.title.text == "val robust accuracy"
    lr = trials.loc[trials["trial_id"] == "t001", "cfg_lr"].item()
    assert any(f"lr = {lr}" in h and "trial t001" in h for h in points.hovertext)
    assert not any("data_root" in h for h in points.hovertext)  # only the fields that vary

    computed = figures.clean_robust_scatter(trials)  # no pareto table: the front is computed
    done = trials[trials["status"] == "completed"]
    mask = stats.pareto_mask(done[["val_clean_acc", "val_robust_acc"]].to_numpy())
    assert sorted(computed.data[-1].x) == sorted(done.loc[mask, "val_clean_acc"])


def test_rebuilt_optuna_study_infers_the_space_and_draws_every_view():
    trials = search_tables()["trials"]
    space = optuna_study.search_space(trials[trials["status"] == "completed"])
    assert set(space) == {"lr", "lambda_ppa", "ppa_form", "use_npr", "epochs"}  # seed is never a parameter
    assert space["lr"].log and not space["lambda_ppa"].log
    assert type(space["epochs"]).__name__ == "IntDistribution"
    assert set(space["ppa_form"].choices) == {"cosine", "sqeuclidean"}
    assert set(space["use_npr"].choices) == {False, True}
    study = optuna_study.rebuild_study(trials)
    assert len(study.trials) == 12 and study.metric_names == ["val clean accuracy", "val robust accuracy"]
    assert study.trials[3].values == [trials["val_clean_acc"][3], trials["val_robust_acc"][3]]
    history = optuna_study.optimization_history(study, 1)
    assert history.layout.yaxis.title.text == "val robust accuracy" and len(history.data[0].y) == 12
    assert len(optuna_study.parameter_importances(study).data) == 2  # one bar trace per objective
    parallel = optuna_study.parallel_coordinates(study, 0)
    assert "val clean accuracy" in str(parallel) and len(parallel.data) > 0  # its axis label (plotly 5 and 6)
    assert len(optuna_study.slices(study, 0).data) >= 5


def test_learning_curves_eps_corruption_geometry_masking_and_cost():
    trials = ablation_tables()["trials"]
    tables = detail_tables(trials)
    curves = figures.learning_curves(tables["epochs"])
    titles = [a.text for a in curves.layout.annotations]
    assert titles[:4] == ["total loss", "CE loss (clean)", "PPA loss (clean)", "consistency loss"]
    assert "learning rate" in titles and "loss_npr" not in str(titles)  # terms never recorded are left out
    assert curves.layout.xaxis.title.text == "epoch" and curves.layout.yaxis.title.text == "total loss"
    full_total = [t for t in curves.data if t.name == "full" and t.yaxis == "y"][0]
    assert list(full_total.y) == pytest.approx([2.0, 1.5, 1.0])  # mean over seeds per epoch
    # ticks where values can be: whole epochs from 0, the learning rate / eps from 0, distinct percentages
    assert (curves.layout.xaxis.tick0, curves.layout.xaxis.dtick, curves.layout.xaxis.tickformat) == (0, 1, "d")
    assert figures.epoch_axis(99)["dtick"] == 10 and figures.epoch_axis(0)["dtick"] == 1
    lr_axis = curves.layout[f"yaxis{titles.index('learning rate') + 1}"]
    assert lr_axis.type == "log" or lr_axis.rangemode == "tozero"
    assert figures.PERCENT_AXIS["tickformat"] == ".3~%"

    eps = robustness_figures.eps_curves(tables["evals"])
    assert [t.name for t in eps.data] == ["full", "no_ppa", "no_npr", "pgd_at"] and len(eps.data[0].x) == 5
    assert eps.layout.xaxis.rangemode == "tozero"
    heat = robustness_figures.corruption_heatmap(tables["corruptions"])
    assert len(heat.data) == 4 and list(heat.data[0].x) == [1, 2, 3, 4, 5]
    assert heat.layout.xaxis.title.text == "severity"
    geometry = robustness_figures.geometry_bars(tables["geometry"])
    assert {t.name for t in geometry.data} == {"clean", "adversarial"}
    assert [a.text for a in geometry.layout.annotations] == [  # descriptors (n, eps, accuracy) are not metrics
        "min angle deg", "intra class compactness", "inter class separation", "positive margin fraction"]
    table = robustness_figures.masking_table(tables["masking"])
    assert "1 of 20 flagged" in table.layout.title.text  # 10 completed trials x 2 checks; pgd_at flagged once
    assert table.data[0].cells.values[6][0] == "True"  # flagged rows first
    cost = figures.cost_bars(trials)
    assert cost.layout.yaxis.title.text == "wall seconds" and cost.layout.yaxis2.title.text == "images / s"

    with pytest.raises(figures.NoData, match="pgd_eps_curve"):
        robustness_figures.eps_curves(tables["evals"][tables["evals"]["attack"] != "pgd_eps_curve"])
    with pytest.raises(figures.NoData, match="epochs.parquet not in the study directory"):
        figures.learning_curves(None)


# ---------------------------------------------------------------- the report


def figure_ids(html: str) -> list[str]:
    return re.findall(r'id="fig-([a-z_]+)"', html)


def test_ablation_report_holds_every_figure_and_plotly_once(reports):
    html = reports["ablation_html"].read_text()
    assert figure_ids(html) == ["ablation_bars", "ablation_differences", "clean_robust_test", "learning_curves",
                                "eps_curves", "corruption_heatmap", "geometry_bars", "masking_table", "cost_bars"]
    assert html.split("</head>", 1)[1].count("Plotly.newPlot") == 9  # one call per figure (plotly.js mentions it too)
    assert html.count("plotly.js v") == 1 and not re.search(r"<script[^>]*\ssrc=", html)  # offline: no CDN
    assert "abc1234" in html and "2 CPU (test)" in html  # provenance
    assert "scipy.stats.ttest_rel" in html and "no test: 1 matching seed" in html
    assert "p (raw)" in html and "p (Holm)" in html and "Holm step-down" in html
    assert "CUDA out of memory &lt;oom&gt;" in html  # failed trials listed, escaped
    assert "Figures left out" not in html


def test_search_report_has_optuna_views_and_pareto_trials(reports):
    html = reports["search_html"].read_text()
    ids = figure_ids(html)
    for name in ["clean_robust", "optuna_importances", "optuna_history_val_robust_acc",
                 "optuna_parallel_val_clean_acc", "optuna_slice_val_robust_acc", "learning_curves", "masking_table"]:
        assert name in ids
    assert "ablation_bars" not in ids
    assert "Pareto-optimal trials" in html and "Pareto front" in html
    for missing in ["evals.parquet not in the study directory", "corruptions.parquet not in the study directory",
                    "geometry.parquet not in the study directory"]:
        assert missing in html


def test_missing_tables_are_left_out_with_notes(tmp_path):
    write_study(tmp_path, ablation_tables(), only=("trials",))
    drawn = make_figures(load_study(tmp_path))
    assert list(drawn.drawn) == ["ablation_bars", "ablation_differences", "clean_robust_test", "cost_bars"]
    notes = {spec.name: reason for spec, reason in drawn.left_out}
    assert notes["learning_curves"] == "epochs.parquet not in the study directory"
    assert notes["masking_table"] == "masking.parquet not in the study directory"
    html = build_report(tmp_path, log=None).read_text()
    assert "Figures left out" in html and "geometry.parquet not in the study directory" in html


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "trials.parquet: not found; is .* a dpnp_ray study directory"),
    (lambda d: write_study(d / "abl", ablation_tables(), ("trials",)), "holds studies abl; pass one of them"),
    (lambda d: (d / "trials.parquet").write_bytes(b"PAR1 not really parquet"), "not a readable Parquet file"),
    (lambda d: pd.DataFrame({"a": [1]}).to_parquet(d / "trials.parquet"), r"missing columns \['study'"),
    (lambda d: (write_study(d, ablation_tables(), ("trials",)), (d / "epochs.parquet").write_bytes(b"\x00" * 64)),
     "epochs.parquet: not a readable Parquet file"),
])
def test_not_a_study_or_corrupted_files_give_a_clear_error(tmp_path, capsys, setup, message):
    setup(tmp_path)
    with pytest.raises(ResultsError, match=message):
        build_report(tmp_path, log=None)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_cli_runs_as_a_script_and_rejects_a_missing_directory(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: not a directory; "
                                                  "pass a study directory holding trials.parquet"]


def test_png_export_says_why_when_no_browser(reports, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    assert find_browser() is None
    messages = []
    drawn = make_figures(load_study(reports["ablation"]))
    assert export_pngs(drawn, reports["ablation"] / "png", messages.append) == []
    assert "no Chrome/Chromium found" in messages[0] and "apt-get install chromium" in messages[0]


def kaleido_missing() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(find_browser() is None or kaleido_missing(),
                    reason="PNG export needs kaleido>=1 and Chrome/Chromium "
                           "(pip install kaleido; apt-get install chromium)")
def test_png_export_writes_one_png_per_figure(reports, tmp_path):
    drawn = make_figures(load_study(reports["ablation"]))
    drawn.drawn = {name: drawn.drawn[name] for name in ("ablation_differences", "learning_curves")}
    paths = export_pngs(drawn, tmp_path / "png", print)
    assert [p.name for p in paths] == ["ablation_differences.png", "learning_curves.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    height = int.from_bytes(paths[1].read_bytes()[20:24], "big")  # IHDR: the figure's own (tall) height
    assert height == drawn.drawn["learning_curves"][1].layout.height


# ---------------------------------------------------------------- the report in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render_in_chromium(html: Path, tmp: Path) -> tuple[str, str, Path]:
    """(DOM after scripts ran, browser log, screenshot) of the page in headless Chromium."""
    screenshot = tmp / "page.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1280,2000",
         f"--screenshot={screenshot}", "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr, screenshot


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium)")
@pytest.mark.parametrize("which", ["ablation_html", "search_html"])
def test_report_renders_in_headless_chromium(reports, tmp_path, which):
    html = reports[which]
    dom, log, screenshot = render_in_chromium(html, tmp_path)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == [], "the page logged to the console:\n" + "\n".join(console)
    expected = figure_ids(html.read_text())
    sections = dict(re.findall(r'<section id="sec-([a-z_]+)">(.*?)</section>', dom, flags=re.S))
    assert list(sections) == expected
    not_drawn = [name for name, body in sections.items() if 'class="main-svg"' not in body]
    assert not_drawn == [], f"plotly drew no SVG for {not_drawn}"
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
