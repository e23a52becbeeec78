"""Study files without Ray: resolution (defaults < file < flags), study.yaml round trip, --resume refusal
and growth, best configs."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import yaml

from dpnp_ray import results, storage
from dpnp_ray.config import ConfigError, ExperimentConfig
from dpnp_ray.study.best_configs import write_best_configs
from dpnp_ray.study.cli import study_settings
from dpnp_ray.study.study_file import STUDY_FILE, config_from_file, read_yaml
from dpnp_ray.study.records import write_record
from dpnp_ray.study.settings import StudyError

from ..support.studies import record, resolve


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_values_tuned_on_digits_never_reach_another_data_set(ablation, tmp_path, dataset):
    """The digits search's loss weights and training eps (0.0997) are the ablation's defaults for digits only: a
    CIFAR-10 study trained at eps 0.0997 while evaluated at 8/255 before this."""
    recipe = resolve(ablation, "ablation", "--storage", str(tmp_path), "--dataset", dataset)
    library = ExperimentConfig()
    assert recipe.config["eps"] is None  # the data set's threat model, resolved per trial
    for field in ("lambda_ppa", "lambda_npr", "lambda_cons", "beta_adv", "prototype_radius"):
        assert recipe.config[field] == getattr(library, field), field
    assert recipe.config["lr"] == 0.05  # the script's dataset-independent defaults still apply
    from_file = tmp_path / "study.yaml"
    from_file.write_text(f"config: {{dataset: {dataset}}}\n")
    assert resolve(ablation, "ablation", "--storage", str(tmp_path), "--config", str(from_file)).config["eps"] is None


def test_defaults_and_smoke_preset(ablation, tmp_path):
    recipe = resolve(ablation, "ablation", "--storage", str(tmp_path))
    assert recipe.study["variants"] == list(ablation.DEFAULTS["variants"]) and recipe.study["seeds"] == [0, 1, 2]
    assert recipe.config["epochs"] == 8 and recipe.config["eval_eps"] is None  # dataset-dependent: resolved per trial
    assert recipe.config["eps"] == ablation.DEFAULTS["config_for"]["digits"]["eps"]  # the study's own defaults reach it
    assert recipe.study["smoke"] is False
    smoke = resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path))
    assert smoke.study["variants"] == ["full", "pgd_at"] and smoke.study["seeds"] == [0]
    assert smoke.config["epochs"] == 2 and smoke.config["lr"] == 0.05 and smoke.study["smoke"] is True
    # every config field is there, so the file states every value the trials start from
    assert set(recipe.config) == set(ExperimentConfig().to_dict())


def test_study_yaml_round_trip(ablation, tmp_path):
    recipe = resolve(ablation, "ablation", "--smoke", "--storage", str(tmp_path), "--name", "rt", "--seeds", "4", "5",
                     "--workers", "2", "--set", "lr=0.2", "lr_milestones=[0.4,0.9]")
    with recipe:
        location = recipe.record()
    assert location == storage.join(str(tmp_path), "rt", STUDY_FILE)
    recorded = read_yaml(location, "test")
    assert recorded["kind"] == "ablation" and "--seeds 4 5" in recorded["command"]
    assert {k: v for k, v in recorded.items() if k not in ("kind", "command")} == recipe.study
    assert recorded["config"]["lr_milestones"] == [0.4, 0.9] and recorded["scaling"]["workers"] == 2
    # the recorded file as a study file gives the same study; into the same directory only with --resume
    with pytest.raises(StudyError, match="already holds this same ablation study; continue it with --resume"):
        resolve(ablation, "ablation", "--config", location)
    again = resolve(ablation, "ablation", "--config", location, "--name", "rt2")
    assert again.study == {**recipe.study, "name": "rt2"}
    assert study_settings(again.args) == dataclasses.replace(study_settings(recipe.args), name="rt2")


def test_flags_override_the_file(search, tmp_path):
    file = tmp_path / "study.yaml"
    file.write_text(yaml.safe_dump({
        "kind": "search", "name": "from_file", "storage": str(tmp_path), "trials": 7, "sampler": "random",
        "space": {"lambda_ppa": [0.01, 0.5], "search_switches": False},
        "scaling": {"workers": 2, "cpus_per_worker": 0.5}, "config": {"epochs": 5, "lr": 0.3, "dataset": "digits"}}))
    recipe = resolve(search, "search", "--config", str(file), "--trials", "3", "--epochs", "2", "--set", "lr=0.01",
                     "--cpus-per-worker", "1")
    study = recipe.study
    assert study["trials"] == 3 and study["config"]["epochs"] == 2 and study["config"]["lr"] == 0.01  # flags win
    assert study["sampler"] == "random" and study["name"] == "from_file" and study["scaling"]["workers"] == 2
    assert study["scaling"]["cpus_per_worker"] == 1.0
    assert study["config"]["batch_size"] == 64  # the script's default, under the file
    space = recipe.search_space()
    assert space.lambda_ppa == (0.01, 0.5) and not space.search_switches and space.lambda_npr == (1e-3, 1.0)
    settings = study_settings(recipe.args)
    assert settings.name == "from_file" and settings.scaling.num_workers == 2 and settings.scaling.cpus_per_worker == 1
    assert resolve(search, "search", "--config", str(file), "--no-switches").study["space"]["search_switches"] is False


@pytest.mark.parametrize("content, message", [
    ({"kind": "search"}, "kind 'search', but this is studies/ablation.py"),
    ({"variant": ["full"]}, "unknown key(s) variant"),
    ({"variants": ["full", "nope"]}, "variants: unknown variant(s) ['nope']"),
    ({"seeds": [0, -1]}, "seeds [0, -1]"),
    ({"config": "epochs=3"}, "'config' must be a mapping"),
    ({"scaling": {"worker": 2}}, "scaling: unknown key(s) worker"),
])
def test_bad_study_file_is_refused_naming_the_key(ablation, tmp_path, content, message):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(content))
    with pytest.raises(StudyError) as error:
        resolve(ablation, "ablation", "--config", str(file), "--storage", str(tmp_path))
    assert message in str(error.value)


def test_bad_config_field_in_file_names_it(ablation, tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump({"config": {"lambda_ppa": -1}}))
    with pytest.raises(ConfigError, match="lambda_ppa"):
        resolve(ablation, "ablation", "--config", str(file), "--storage", str(tmp_path))


def test_bad_search_space_is_refused(search, tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump({"space": {"lambda_ppa": [1.0, 0.1], "beta": [0, 1]}}))
    with pytest.raises(StudyError) as error:
        resolve(search, "search", "--config", str(file), "--storage", str(tmp_path))
    for part in ("space.lambda_ppa [1.0, 0.1]", "space.beta: unknown"):
        assert part in str(error.value)
    # sampler, trials, seeds, objective and scheduler (from a file or a flag) are checked by run_search's
    # preflight with every other input: tests/study/test_reliability.py


def test_resume_with_a_changed_study_is_refused_listing_the_keys(ablation, tmp_path):
    common = ("--storage", str(tmp_path), "--name", "r")
    resolve(ablation, "ablation", "--smoke", *common).record()
    with pytest.raises(StudyError) as error:
        resolve(ablation, "ablation", *common, "--resume", "--set", "lr=0.2", "--epochs", "3", "--workers", "2")
    message = str(error.value)
    for key in ("config.lr: recorded 0.05, now 0.2", "config.epochs: recorded 2, now 3", "scaling.workers"):
        assert key in message
    assert "config.dataset" not in message and "name:" not in message
    with pytest.raises(StudyError, match="smoke: recorded True, now False"):
        file = tmp_path / "nosmoke.yaml"
        file.write_text("smoke: false\n")
        resolve(ablation, "ablation", *common, "--resume", "--config", str(file))
    # the same study, or one that only changes run keys, resumes: the record is the base, not the defaults
    same = resolve(ablation, "ablation", *common, "--resume", "--max-concurrent", "1")
    assert same.grown == () and same.args.resume and same.config["epochs"] == 2
    assert resolve(ablation, "ablation", *common, "--resume", "--smoke").grown == ()
    # a trial resumes from its own runner's checkpoints: the runner is part of the study
    with pytest.raises(StudyError, match="scaling.runner: recorded 'tune', now 'train'"):  # the default, recorded
        resolve(ablation, "ablation", *common, "--resume", "--runner", "train")
    # nor re-decided: resumed on a cluster, the study keeps the runner its checkpoints belong to
    assert resolve(ablation, "ablation", *common, "--resume", "--address", "127.0.0.1:1").args.runner == "tune"
    pinned = ("--storage", str(tmp_path), "--name", "pinned")
    resolve(ablation, "ablation", "--smoke", *pinned, "--runner", "train").record()
    assert resolve(ablation, "ablation", *pinned, "--resume").args.runner == "train"  # kept from the record


def test_resume_growth_of_an_ablation(ablation, tmp_path):
    common = ("--smoke", "--storage", str(tmp_path), "--name", "g")
    resolve(ablation, "ablation", *common).record()
    grown = resolve(ablation, "ablation", *common, "--resume", "--seeds", "0", "1", "--variants", "full", "pgd_at",
                    "no_npr")
    assert grown.grown == ("seeds", "variants") and grown.study["seeds"] == [0, 1]
    assert not grown.args.resume  # a new Tune run over the grown grid; finished trials are not run again
    with pytest.raises(StudyError, match=r"seeds: recorded \[0\], now \[1\]"):
        resolve(ablation, "ablation", *common, "--resume", "--seeds", "1")


def test_resume_growth_of_a_search(search, tmp_path):
    common = ("--smoke", "--storage", str(tmp_path), "--name", "s")
    resolve(search, "search", *common, "--trials", "2").record()
    directory = str(tmp_path / "s")
    write_record(directory, {"trial_id": "a", "status": "completed"})
    with pytest.raises(StudyError, match="only 1 of the 2 trials"):
        resolve(search, "search", *common, "--resume", "--trials", "3")
    write_record(directory, {"trial_id": "b", "status": "stopped"})
    grown = resolve(search, "search", *common, "--resume", "--trials", "5")
    assert grown.grown == ("trials",) and grown.trials_to_run == 3 and not grown.args.resume
    with pytest.raises(StudyError, match="trials: recorded 2, now 1"):
        resolve(search, "search", *common, "--resume", "--trials", "1")


def test_best_configs_per_variant_are_runnable(tmp_path):
    directory = str(tmp_path)
    record(directory, "full-s0", "full", 0, 0.5)
    best = record(directory, "full-s1", "full", 1, 0.6, lr=0.02)
    record(directory, "full-s2", "full", 2, 0.9, status="failed")
    pgd = record(directory, "pgd_at-s0", "pgd_at", 0, 0.4, method="pgd_at")
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "old-s9.yaml").write_text("config: {}\n")  # from an earlier export: removed
    location = write_best_configs(directory, "ablation")
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["full-s1.yaml", "pgd_at-s0.yaml"]
    for name, cfg in (("full-s1", best), ("pgd_at-s0", pgd)):
        path = storage.join(location, f"{name}.yaml")
        assert ExperimentConfig.from_dict(config_from_file(path)) == ExperimentConfig.from_dict(cfg)
        document = read_yaml(path, "test")
        assert document["trial"]["trial_id"] == name and "python -m dpnp_ray --config" in open(path).read()


def test_best_configs_of_a_search_are_its_pareto_front(tmp_path):
    directory = str(tmp_path)
    for trial_id, clean, robust in (("a", 0.9, 0.5), ("b", 0.8, 0.6), ("c", 0.7, 0.4)):
        record(directory, trial_id, "search", 0, robust, clean)
    write_best_configs(directory, "search")
    assert sorted(p.stem for p in (tmp_path / "best").iterdir()) == ["a", "b"]
    # with a pareto.parquet (the search's own objectives), that is the front
    results.write_table(directory, "pareto", pd.DataFrame({"study": ["b"], "trial_id": ["c"]}))
    write_best_configs(directory, "search")
    assert [p.stem for p in (tmp_path / "best").iterdir()] == ["c"]


def test_config_file_forms(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("epochs: 3\nlr_milestones: [0.3, 0.6]\n")
    assert config_from_file(str(flat)) == {"epochs": 3, "lr_milestones": [0.3, 0.6]}
    nested = tmp_path / "nested.yaml"
    nested.write_text(json.dumps({"trial": {"trial_id": "x"}, "config": {"epochs": 4}}))
    assert config_from_file(str(nested)) == {"epochs": 4}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_file(str(tmp_path / "list.yaml"))
    with pytest.raises(ConfigError, match="cannot read"):
        config_from_file(str(tmp_path / "missing.yaml"))


def test_report_shows_the_study_file_and_command(ablation, tmp_path):
    import analysis.study
    from analysis.report import build_report

    from ..support.study_tables import ablation_tables, write_study

    assert analysis.study.STUDY_FILE == STUDY_FILE
    recipe = resolve(ablation, "ablation", "--storage", str(tmp_path), "--name", "abl", "--set", "lr=0.125")
    write_study(tmp_path / "abl", ablation_tables(), only=("trials",))
    html = build_report(tmp_path / "abl", log=None).read_text()
    assert "no study.yaml in the study directory" in html
    recipe.record()
    html = build_report(tmp_path / "abl", log=None).read_text()
    assert "Study definition (study.yaml)" in html and "lr: 0.125" in html
    assert "--set lr=0.125" in html  # the command line, as given


def test_the_analysis_plan_is_recorded_checked_and_fixed_on_resume(ablation, tmp_path):
    """`analysis:` of a study file: defaults filled into study.yaml in its place, one-line errors naming the
    field, its value and what is allowed, and a --resume that changes it is refused like any study key."""
    common = ("--smoke", "--storage", str(tmp_path), "--name", "plan")
    file = tmp_path / "plan.yaml"
    file.write_text("variants: [full, pgd_at, no_npr]\nanalysis: {comparisons: [pgd_at], margin: 0.5}\n")
    recipe = resolve(ablation, "ablation", *common, "--config", str(file))
    assert recipe.study["analysis"] == {"primary": None, "reference": "full", "comparisons": ["pgd_at"],
                                        "margin": 0.5, "alpha": 0.05}
    recorded = yaml.safe_load(open(recipe.record()))
    keys = list(recorded)
    assert keys.index("seeds") < keys.index("analysis") < keys.index("scaling")
    assert recorded["analysis"] == recipe.study["analysis"]
    changed = tmp_path / "changed.yaml"
    changed.write_text("analysis: {margin: 2.0}\n")
    with pytest.raises(StudyError, match=r"analysis.margin: recorded 0.5, now 2.0"):
        resolve(ablation, "ablation", *common, "--resume", "--config", str(changed))
    assert resolve(ablation, "ablation", *common, "--resume").study["analysis"]["comparisons"] == ["pgd_at"]

    for text, part in [("analysis: {margin: 0}", "analysis.margin 0: a number of accuracy points, 0 < margin < 100"),
                       ("analysis: {alpha: 1.5}", "analysis.alpha 1.5: a number, 0 < alpha < 1"),
                       ("analysis: {primary: [robust]}", "analysis.primary ['robust']: null (the default) or"),
                       ("analysis: {reference: nobody}", "analysis.reference 'nobody': one of "),
                       ("analysis: {comparisons: [trades]}", "analysis.comparisons ['trades']: null (every other"),
                       ("analysis: {comparisons: [full]}", "analysis.comparisons ['full']"),
                       ("analysis: {power: 0.8}", "analysis.power: unknown; allowed primary, reference")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"variants: [full, pgd_at]\n{text}\n")
        with pytest.raises(StudyError) as error:
            resolve(ablation, "ablation", "--storage", str(tmp_path), "--name", "bad", "--config", str(bad))
        assert part in str(error.value), (text, str(error.value))
    bad.write_text("analysis: [margin]\n")
    with pytest.raises(StudyError, match="'analysis' must be a mapping"):
        resolve(ablation, "ablation", "--storage", str(tmp_path), "--name", "bad", "--config", str(bad))


def test_a_record_older_than_the_analysis_plan_resumes_with_the_default_plan(ablation, tmp_path):
    common = ("--smoke", "--storage", str(tmp_path), "--name", "old")
    location = resolve(ablation, "ablation", *common).record()
    old = yaml.safe_load(open(location))
    del old["analysis"]
    with open(location, "w") as handle:
        yaml.safe_dump(old, handle)
    resumed = resolve(ablation, "ablation", *common, "--resume")
    assert resumed.grown == () and resumed.study["analysis"]["reference"] == "full"
    file = tmp_path / "margin.yaml"
    file.write_text("analysis: {margin: 2.0}\n")
    with pytest.raises(StudyError, match=r"analysis.margin: recorded '\(absent\)', now 2.0"):
        resolve(ablation, "ablation", *common, "--resume", "--config", str(file))


def test_given_flags_are_those_on_the_command_line_even_at_their_default_values(ablation, search):
    from dpnp_ray.study.recipe import given_flags

    parser = ablation.build_parser()
    before = vars(parser.parse_args([]))
    assert given_flags(parser, []) == set()
    assert before["max_failures"] == 2
    assert given_flags(parser, ["--seeds", "0", "--smoke", "--max-failures", "2"]) == {"seeds", "smoke", "max_failures"}
    assert given_flags(parser, ["--set", "lr=0.1", "--epochs", "3"]) == {"set", "epochs"}
    assert vars(parser.parse_args([])) == before  # the parser's defaults are untouched
    assert given_flags(search.build_parser(), ["--methods"]) == {"methods"}  # a custom action
