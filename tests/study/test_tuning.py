"""Equal-budget tuning of the compared methods (`studies/search.py --methods`) and the comparison at the chosen
points (`studies/ablation.py --tuned-from`): each method's space holds exactly what its loss reads, one rule
chooses every method's point, and the ablation's trials run at those points. The Ray end-to-end run is marked
`ray`."""

from __future__ import annotations

import math
import subprocess

import optuna
import pytest
import torch
import yaml

from dpnp_ray import results, storage
from dpnp_ray.config import TEST_SUITE_FIELDS, ExperimentConfig, config_fields
from dpnp_ray.steps import BranchOutputs, method_loss
from dpnp_ray.methods import METHODS, WEIGHT_SWITCHES, loss_weights
from dpnp_ray.study import SearchSpec, plan
from dpnp_ray.study.search_space import SHARED_PARAMS, SearchSpace
from dpnp_ray.study.best_configs import chosen_record, comparison_layer, method_study_dir, write_chosen_points
from dpnp_ray.study.study_file import STUDY_FILE
from dpnp_ray.study.records import write_record
from dpnp_ray.study.settings import StudyError, StudySettings

from ..support import PYTHON, REPO, run_script, study_env
from ..support.studies import STUB, resolve

#: every loss weight some method reads
ALL_WEIGHTS = sorted({w for m in METHODS for w in METHODS.get(m).weights})


def _cfg(method: str, **fields) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"dataset": "digits", "method": method, **fields})


def _outputs(method: str, seed: int = 0) -> BranchOutputs:
    """Random branch outputs of the shape `method`'s forward produces (absent branches None)."""
    spec, g = METHODS.get(method), torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    clean, adv = spec.clean_branch, spec.adversarial
    return BranchOutputs(z=t(8, 4) if clean else None, logits=t(8, 10) if clean else None,
                         z_adv=t(8, 4) if adv else None, logits_adv=t(8, 10) if adv else None,
                         prototypes=t(10, 4) if spec.prototype_head else None)


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("off", [None, *WEIGHT_SWITCHES.values()])
def test_a_methods_weights_are_exactly_those_its_loss_reads(method, off):
    """Doubling a weight changes the method's loss if and only if loss_weights lists it."""
    switches = {} if off is None else {off: False}
    cfg, out, y = _cfg(method, **switches), _outputs(method), torch.arange(8) % 10
    loss, _ = method_loss(out, y, cfg)
    read = {w for w in ALL_WEIGHTS if not torch.equal(method_loss(out, y, cfg.replace(**{w: 2 * getattr(cfg, w)}))[0],
                                                        loss)}
    assert read == set(loss_weights(method, cfg.to_dict())), (method, off)


def _distributions(space: SearchSpace, cfg: ExperimentConfig, n: int = 12) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: space.sample_method(trial, cfg) or 0.0, n_trials=n)
    return study.trials


def test_every_method_searches_the_shared_fields_in_the_same_ranges_and_its_own_weights_only():
    space = SearchSpace()
    trials = {m: _distributions(space, _cfg(m)) for m in METHODS.names()}
    reference = trials["pgd_at"][0].distributions
    for method, sampled in trials.items():
        cfg = _cfg(method)
        own = set(loss_weights(method))
        expected = set(SHARED_PARAMS) | own | ({"eps"} if cfg.is_adversarial else set())
        for trial in sampled:  # the same fields in every trial: nothing switched on and off
            assert set(trial.distributions) == expected, method
            for name, value in trial.params.items():  # inside the ranges, and a valid config
                dist = trial.distributions[name]
                assert dist.low <= value <= dist.high
            cfg.replace(**trial.params)
        for name in expected - own:  # shared: the same distribution (range, scale) for every method
            assert sampled[0].distributions[name] == reference[name], (method, name)
        assert own <= set(config_fields())
    assert trials["trades"][0].distributions.keys() - reference.keys() == {"trades_beta"}
    assert trials["mart"][0].distributions.keys() - reference.keys() == {"mart_beta"}
    assert "eps" not in trials["dpnp"][0].distributions  # clean training has no training eps to tune
    assert (reference["eps"].low, reference["eps"].high) == pytest.approx((0.05, 0.1))  # 0.5 .. 1 x eval_eps
    assert reference["lr"].log and not trials["adv_dpnp"][0].distributions["beta_adv"].log
    # a term switched off in the base config is not searched
    no_npr = _distributions(space, _cfg("adv_dpnp", use_npr=False), n=1)[0]
    assert "lambda_npr" not in no_npr.distributions and "lambda_ppa" in no_npr.distributions


def test_each_methods_first_point_is_the_base_config_clamped_into_its_space():
    space = SearchSpace(lr=(0.01, 0.04))
    base = _cfg("trades", lr=0.05, weight_decay=5e-4, trades_beta=6.0, eps=0.02)
    assert space.method_default_point(base) == {"lr": 0.04, "weight_decay": 5e-4, "trades_beta": 6.0,
                                                "eps": pytest.approx(0.05)}


def test_the_dry_run_states_each_methods_budget(tmp_path):
    methods = ["adv_dpnp", "pgd_at", "trades", "mart"]
    settings, base = StudySettings("cmp", local_cpus=1), {"dataset": "digits", "epochs": 8}
    p = plan.plan_search(SearchSpec(base, 5, scheduler="asha"), settings, calibration=STUB, methods=methods)
    one = plan.plan_search(SearchSpec(base, 5, scheduler="asha"), settings, calibration=STUB)
    assert [t.cfg.method for t in p.trials] == [m for m in methods for _ in range(5)]
    assert len({t.epochs for t in p.trials}) == 1  # the same expected epochs for every trial
    text = p.format()
    for method in methods:
        line = next(line for line in text.splitlines() if line.startswith(f"note: budget of {method}:"))
        assert "5 trial(s) of 8 epochs" in line and "lr [0.01, 0.2] log" in line and "eps [0.05, 0.1]" in line
        assert all(w in line for w in loss_weights(method))
    assert "(4 Tune runs)" in text and p.study_seconds == pytest.approx(4 * one.study_seconds)


def _record(directory: str, number: int, status: str, clean: float, robust: float, method: str = "pgd_at",
            **params):
    write_record(directory, {"study": directory.rsplit("/", 1)[-1], "trial_id": f"optuna-{number:04d}",
                             "variant": "search", "status": status, "optuna_trial": number,
                             "config": {"method": method, "lr": 0.05, **params}, "params": params,
                             "summary": {"val_clean_acc": clean, "val_robust_acc": robust, "best_epoch": 0}})


def test_one_rule_on_the_validation_split_chooses_every_methods_point(tmp_path):
    rows = [(0, "completed", 0.90, 0.50), (1, "completed", 0.80, 0.60), (2, "completed", 0.95, 0.60),
            (3, "stopped", 0.99, 0.99), (4, "failed", math.nan, math.nan), (5, "completed", 0.95, 0.60),
            (6, "completed", 0.99, math.nan)]
    folder = str(tmp_path / "s")
    for number, status, clean, robust in rows:
        _record(folder, number, status, clean, robust, lr=0.01 * (number + 1))
    from dpnp_ray.study.records import read_records

    records = read_records(folder)
    # most robust completed trial; a tie by clean accuracy; a tie on both: the earliest; never a stopped one
    assert chosen_record(records, "multi")["trial_id"] == "optuna-0002"
    assert chosen_record(records, "robust")["trial_id"] == "optuna-0002"
    assert chosen_record(records, "clean")["trial_id"] == "optuna-0006"  # NaN robust only breaks ties
    assert chosen_record([r for r in records if r["status"] != "completed"], "multi") is None


def _comparison(search, tmp_path, methods=("adv_dpnp", "pgd_at"), *extra):
    """A recorded comparison study with two completed trials per method and its chosen points."""
    recipe = resolve(search, "search", "--methods", *methods, "--trials", "2", "--storage", str(tmp_path),
                     "--name", "cmp", "--set", "prototype_radius=2.5", *extra)
    with recipe:
        recipe.record()
    directory = str(tmp_path / "cmp")
    for method in methods:
        sub = method_study_dir(directory, "cmp", method)
        _record(sub, 0, "completed", 0.9, 0.4, method, lr=0.02, eps=0.07)
        _record(sub, 1, "completed", 0.8, 0.5, method, lr=0.03 if method == "adv_dpnp" else 0.04, eps=0.08)
    write_chosen_points(directory, "cmp", list(methods), "multi")
    return directory


def test_the_comparison_runs_every_method_at_its_chosen_point(search, ablation, tmp_path):
    directory = _comparison(search, tmp_path)
    chosen = yaml.safe_load(open(f"{directory}/best/pgd_at.yaml"))
    assert chosen["trial"]["trial_id"] == "optuna-0001" and chosen["params"] == {"lr": 0.04, "eps": 0.08}
    assert "best/pgd_at.yaml" in open(f"{directory}/best/pgd_at.yaml").read()  # its header says how to rerun it
    recipe = resolve(ablation, "ablation", "--tuned-from", directory, "--variants", "full", "--seeds", "0", "1",
                     "--storage", str(tmp_path), "--name", "final")
    study = recipe.study
    assert study["variants"] == ["full", "tuned_pgd_at"]
    assert study["tuned"] == {"tuned_pgd_at": {"method": "pgd_at", "lr": 0.04, "eps": 0.08}}
    assert study.get("analysis", {}).get("reference", "full") == "full"
    # Adv-DPNP's chosen point is the base config: `full` (and every switch of it) runs there
    assert (recipe.config["lr"], recipe.config["eps"]) == (0.03, 0.08)
    spec = recipe.spec()
    assert spec.trial({"variant": "full", "seed": 0}).cfg.lr == 0.03
    # the base config is the comparison's (its --set, not the ablation's digits defaults), its test suite fields
    # the ablation's own (the search's `basic` suite does not carry over)
    searched = yaml.safe_load(open(f"{directory}/{STUDY_FILE}"))["config"]
    assert recipe.config["prototype_radius"] == 2.5 and recipe.config["epochs"] == searched["epochs"]
    assert searched["eval_suite"] == "basic" and recipe.config["eval_suite"] == ExperimentConfig.eval_suite
    config, library = ExperimentConfig(**recipe.config), ExperimentConfig()
    assert all(getattr(config, f) == getattr(library, f) for f in TEST_SUITE_FIELDS)
    for method in ("pgd_at",):  # each baseline trial's config: the method at its own point, at every seed
        for seed in (0, 1):
            trial = spec.trial({"variant": f"tuned_{method}", "seed": seed})
            assert trial.cfg.method == method and trial.cfg.seed == seed
            assert (trial.cfg.lr, trial.cfg.eps) == tuple(study["tuned"][f"tuned_{method}"][k] for k in ("lr", "eps"))
    with recipe:
        recipe.record()  # study.yaml records the points: a --resume needs no --tuned-from
    again = resolve(ablation, "ablation", "--resume", "--storage", str(tmp_path), "--name", "final")
    assert again.study["tuned"] == study["tuned"] and again.grown == ()
    grown = resolve(ablation, "ablation", "--resume", "--seeds", "0", "1", "2", "--storage", str(tmp_path),
                    "--name", "final")
    assert grown.grown == ("seeds",) and grown.study["variants"] == study["variants"]


def test_the_comparisons_own_study_file_does_not_undo_the_chosen_point(search, ablation, tmp_path):
    """The audit of record tuned from a study file that sets eps and then ran the ablation from the same file:
    the file's eps must not replace the eps Adv-DPNP's tuning chose (flags given on the command line still win)."""
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"config": {"eps": 0.1, "eval_eps": 0.1}}))
    directory = _comparison(search, tmp_path, ("adv_dpnp", "pgd_at"), "--config", str(recipe_file))
    recipe = resolve(ablation, "ablation", "--config", str(recipe_file), "--tuned-from", directory, "--seeds", "0",
                     "--storage", str(tmp_path), "--name", "final")
    assert (recipe.config["lr"], recipe.config["eps"], recipe.config["eval_eps"]) == (0.03, 0.08, 0.1)
    assert recipe.study["tuned"]["tuned_pgd_at"]["eps"] == 0.08
    forced = resolve(ablation, "ablation", "--config", str(recipe_file), "--tuned-from", directory, "--seeds", "0",
                     "--set", "eps=0.09", "--storage", str(tmp_path), "--name", "forced")
    assert forced.config["eps"] == 0.09


def test_test_suite_fields_change_neither_training_nor_validation():
    """What --tuned-from leaves to the ablation never changes the trained model or the chosen epoch."""
    from dpnp_ray.distributed import LocalEnvironment
    from dpnp_ray.training_loop import train

    base = _cfg("adv_dpnp", epochs=2, batch_size=64, train_subset=128, train_attack_steps=1, val_attack_steps=2,
                device="cpu")
    changed = base.replace(eval_attack_steps=3, eval_restarts=2, eval_n=17, eval_rival_targets=1, eval_suite="full",
                           eval_aa_n=5, eval_eps_curve=[0.5], eval_aa_eps_curve=[1.0], eval_l2_eps=0.1,
                           eval_corruption_n=3, corruption_root="/nowhere")
    assert {f for f in TEST_SUITE_FIELDS if getattr(base, f) != getattr(changed, f)} == set(TEST_SUITE_FIELDS)
    runs = [train(cfg, env=LocalEnvironment(torch.device("cpu")), log=None) for cfg in (base, changed)]
    first, second = (r.net.state_dict() for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    timing = ("images_per_s", "epoch_seconds", "seconds")
    history = [[{k: v for k, v in row.items() if not any(t in k for t in timing)} for row in r.history] for r in runs]
    assert history[0] == history[1] and runs[0].best_epoch == runs[1].best_epoch


def _script(script: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    ray_temp = tmp_path / "ray-temp"  # where a Ray instance started by the script would put its session
    proc = subprocess.run([PYTHON, str(REPO / "studies" / script), *args, "--storage", str(tmp_path / "out")],
                          cwd=REPO, env=study_env(RAY_TMPDIR=str(ray_temp)), capture_output=True, text=True,
                          timeout=120)
    assert not ray_temp.exists() and not (tmp_path / "out").exists()  # refused before Ray, nothing written
    return proc


def test_bad_tuning_input_is_one_line_before_ray_starts(search, tmp_path):
    proc = _script("search.py", "--methods", "pgd_at", "nonsense", tmp_path=tmp_path)
    assert proc.returncode == 2 and "argument --methods: invalid choice: 'nonsense'" in proc.stderr
    assert "Traceback" not in proc.stderr
    cases = [("methods: [pgd_at, pgd_at]\n", "methods ['pgd_at', 'pgd_at'] (--methods): a non-empty list without "
                                             "repeats of adv_dpnp"),
             ("methods: []\n", "methods [] (--methods)"),
             ("methods: [pgd_at]\noptuna_storage: sqlite:///x.db\n", "--optuna-storage with --methods")]
    for content, message in cases:
        (tmp_path / "study.yaml").write_text(content)
        proc = _script("search.py", "--config", str(tmp_path / "study.yaml"), tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert [line for line in proc.stderr.splitlines() if message in line], (message, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_tuned_from_refuses_what_is_no_finished_comparison(search, ablation, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / STUDY_FILE).write_text(yaml.safe_dump({"kind": "search", "config": {}}))
    with pytest.raises(StudyError, match="plain: not an equal-budget comparison"):
        comparison_layer(str(tmp_path / "plain"))
    directory = _comparison(search, tmp_path)
    storage.delete(f"{directory}/best/pgd_at.yaml")
    with pytest.raises(StudyError, match="no chosen point of pgd_at .*--resume"):
        resolve(ablation, "ablation", "--tuned-from", directory, "--storage", str(tmp_path))
    proc = _script("ablation.py", "--tuned-from", str(tmp_path / "nowhere"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "--tuned-from: the comparison's study file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_method_without_a_completed_trial_has_no_chosen_point(tmp_path):
    directory = str(tmp_path / "cmp")
    _record(method_study_dir(directory, "cmp", "pgd_at"), 0, "completed", 0.9, 0.4, lr=0.02)
    _record(method_study_dir(directory, "cmp", "mart"), 0, "failed", math.nan, math.nan, lr=0.02)
    with pytest.raises(StudyError, match="no completed trial in the search of mart"):
        write_chosen_points(directory, "cmp", ["pgd_at", "mart"], "multi")
    assert (tmp_path / "cmp" / "best" / "pgd_at.yaml").exists()  # the others are written all the same


def test_growing_a_comparison_needs_every_method_at_the_same_count(search, tmp_path):
    directory = _comparison(search, tmp_path)
    grown = resolve(search, "search", "--resume", "--trials", "3", "--storage", str(tmp_path), "--name", "cmp")
    assert grown.grown == ("trials",) and grown.trials_to_run == 1
    _record(method_study_dir(directory, "cmp", "pgd_at"), 2, "completed", 0.9, 0.4, "pgd_at", lr=0.02)
    with pytest.raises(StudyError, match="different numbers of trials"):
        resolve(search, "search", "--resume", "--trials", "4", "--storage", str(tmp_path), "--name", "cmp")


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_equal_budget_tuning_then_the_comparison_at_the_chosen_points(tmp_path):
    tiny = ["--epochs", "1", "--set", "train_attack_steps=1", "val_attack_steps=2", "eval_attack_steps=2",
            "eval_n=50", "train_subset=256", "--local-cpus", "2", "--storage", str(tmp_path)]
    run_script("search.py", "--methods", "adv_dpnp", "pgd_at", "--trials", "2", "--name", "tuned", *tiny,
               timeout=600)
    directory = tmp_path / "tuned"
    chosen = {}
    for method in ("adv_dpnp", "pgd_at"):
        trials = results.read_table(method_study_dir(str(directory), "tuned", method), "trials")
        assert len(trials) == 2 and (trials["cfg_method"] == method).all() and (trials["cfg_epochs"] == 1).all()
        best = yaml.safe_load((directory / "best" / f"{method}.yaml").read_text())
        done = trials[trials["status"] == "completed"]
        top = done.sort_values(["val_robust_acc", "val_clean_acc"], ascending=False, kind="stable").iloc[0]
        assert best["trial"]["trial_id"] == top["trial_id"] and best["config"]["method"] == method
        assert set(best["params"]) == {*SHARED_PARAMS, "eps", *loss_weights(method)}
        chosen[method] = best["params"]
    run_script("ablation.py", "--tuned-from", str(directory), "--seeds", "0", "--name", "final", "--eval-suite",
               "basic", *tiny, timeout=600)
    trials = results.read_table(tmp_path / "final", "trials").set_index("variant")
    assert sorted(trials.index) == ["full", "tuned_pgd_at"]
    for method, params in chosen.items():  # each method trained at its own chosen point (Adv-DPNP: `full`)
        row = trials.loc["full" if method == "adv_dpnp" else f"tuned_{method}"]
        assert row["cfg_method"] == method and row["status"] == "completed"
        for name, value in params.items():
            assert row[f"cfg_{name}"] == pytest.approx(value, rel=1e-12), (method, name)
