"""Study files: a study's whole definition as YAML, its record, its growth on --resume, and its best configs.

A study file (`studies/ablation.py --config study.yaml`) holds what the scripts' flags hold; every key
is optional:

    kind: ablation                    # or search; must match the script
    name: ablation                    # results go to <storage>/<name>/ (--name, --storage)
    storage: results
    smoke: false                      # --smoke: the study's small preset under everything else
    variants: [full, no_npr, pgd_at]  # ablation: --variants
    seeds: [0, 1, 2]                  # ablation: --seeds
    analysis:                         # ablation: the declared analysis plan (dpnp_ray/analysis_plan.py);
      primary: null                   #   null: worst_case_acc (else aa_acc) and clean_acc
      reference: full
      comparisons: null               #   null: every other variant against the reference
      margin: 1.0                     #   equivalence margin, accuracy points
      alpha: 0.05
    trials: 20                        # search: --trials, --sampler, --seed, --objective, --scheduler,
    sampler: tpe                      #   --optuna-storage
    sampler_seed: 0
    objective: multi
    scheduler: asha
    optuna_storage: null
    space: {lambda_ppa: [0.001, 1.0], eps_fraction: [0.5, 1.0], search_switches: true}  # search: bounds
    methods: [adv_dpnp, pgd_at, trades, mart]  # search: --methods, one equal-budget search each (see below)
    tuned: {tuned_pgd_at: {method: pgd_at, lr: 0.03}}  # ablation: --tuned-from <comparison>, its chosen points
    tuned_from: results/tuned                          #   (and where they came from)
    scaling: {workers: 1, cpus_per_worker: 1.0, gpus_per_worker: 0.0, runner: null}   # runner null: the default
    max_concurrent: 0
    max_failures: 2
    log_to: [tensorboard, mlflow]     # --log-to: the trackers every trial is logged to
    mlflow_tracking_uri: null         # --mlflow-tracking-uri
    config: {dataset: cifar10, model: resnet18, epochs: 30, lr: 0.1}    # base config fields (--set ...)

Resolution, later layers winning: the flags' defaults, the script's defaults (its --smoke preset when
asked), the file, the flags given on the command line. With --resume the recorded `<study>/study.yaml`
replaces the defaults, and the result must equal the record except for run keys (RUN_KEYS) and growth:
more `seeds` or `variants` for an ablation, a larger `trials` for a search. Anything else is refused
with the differing keys listed. The resolved study and the exact command line are written to
`<study>/study.yaml` (`Recipe.record`) before anything trains; `--config <study>/study.yaml` runs it again
(under another name: a directory that holds a study takes another only with --resume, docs/storage.md).

After a study, `write_best_configs` writes `<study>/best/<trial_id>.yaml` (per variant for an ablation,
the Pareto front for a search): `python -m dpnp_ray --config best/<trial_id>.yaml` retrains one.

An equal-budget comparison (`studies/search.py --methods ...`) searches each method in a search of its own,
`<study>/<name>-<method>/` (the same trials, epochs, sampler and seed, objective, scheduler and shared ranges),
and writes each method's chosen point to `<study>/best/<method>.yaml` by one rule (`write_chosen_points`).
`studies/ablation.py --tuned-from <study>` then starts from the comparison's base config at Adv-DPNP's point
(so `full` and its switches run there) and runs each other method at its point as the variant `tuned_<method>`
(`comparison_layer`; study.yaml records the points under `tuned`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .. import results
from ..analysis_plan import DEFAULT_ANALYSIS, analysis_problems, full_analysis
from ..config import SEED_MAX, TEST_SUITE_FIELDS, ConfigError, ExperimentConfig, parse_assignments
from ..methods import METHODS
from ..provenance import error_line, redact
from .records import checked_id, read_records
from .settings import RAY_FOLDER, StudyError, name_problem
from .trackers import parse_log_to

STUDY_FILE = "study.yaml"
BEST_DIR = "best"
KINDS = ("ablation", "search")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "ablation": ("variants", "seeds", "analysis", "tuned", "tuned_from"),
    "search": ("trials", "sampler", "sampler_seed", "objective", "scheduler", "optuna_storage", "space", "methods"),
}
COMMON_KEYS = ("name", "storage", "smoke", "scaling", "max_concurrent", "max_failures", "log_to",
               "mlflow_tracking_uri", "config")
SCALING_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker", "runner")
RUN_KEYS = ("command", "name", "storage", "max_concurrent", "max_failures", "log_to", "mlflow_tracking_uri",
            "tuned_from")
"""Keys that may change on --resume: where the study is (and the comparison it took its points from), how many
trials run or retry at once, and where they are logged."""

FLAG_KEYS: dict[str, str] = {
    "name": "name", "storage": "storage", "smoke": "smoke", "max_concurrent": "max_concurrent",
    "max_failures": "max_failures", "workers": "scaling.workers", "cpus_per_worker": "scaling.cpus_per_worker",
    "gpus_per_worker": "scaling.gpus_per_worker", "runner": "scaling.runner", "dataset": "config.dataset", "model": "config.model",
    "epochs": "config.epochs", "data_root": "config.data_root", "eval_suite": "config.eval_suite",
    "variants": "variants", "seeds": "seeds", "trials": "trials", "sampler": "sampler", "seed": "sampler_seed",
    "objective": "objective", "scheduler": "scheduler", "optuna_storage": "optuna_storage", "methods": "methods",
    "log_to": "log_to", "mlflow_tracking_uri": "mlflow_tracking_uri",
}
"""Flag (argparse dest) -> the study key it sets; `--set` sets config.<field>, `--no-switches` space.search_switches,
`--tuned-from DIR` what `comparison_layer` reads from DIR."""
TUNED_PREFIX = "tuned_"
"""`--tuned-from`: method m at its chosen point is the ablation variant tuned_<m>."""


# ------------------------------------------------------------------------------------ YAML


class _Dumper(yaml.SafeDumper):
    """Keys in insertion order, block mappings, lists of scalars on one line ([0, 1, 2])."""


def _represent_list(dumper: yaml.SafeDumper, data: Sequence) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list, tuple)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def dump_yaml(data: Any, header: str = "") -> str:
    """YAML text of plain data, with `header` as # comment lines on top."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def read_yaml(location: str, what: str, *, missing_ok: bool = False) -> Any:
    """The YAML at location (local path or URI); StudyError naming `what` and the file when it cannot be read."""
    try:
        text = results.read_bytes(location)
    except (FileNotFoundError, OSError) as exc:
        if missing_ok:
            return None
        raise StudyError(f"{what} {redact(location)}: cannot read it ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyError(f"{what} {redact(location)}: not valid YAML ({exc})") from None


def config_from_file(location: str) -> dict[str, Any]:
    """The config fields of a config file: its `config:` mapping (best/<trial_id>.yaml, study.yaml), or the
    whole file as a mapping of fields. ConfigError when it is neither."""
    try:
        data = read_yaml(location, "config file")
    except StudyError as exc:
        raise ConfigError([str(exc)]) from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError([f"config file {location}: expected a mapping of config fields (or a `config:` mapping "
                           f"of them), got {type(data).__name__}"])
    return data


# ------------------------------------------------------------------------------- resolution


@dataclass
class Recipe:
    """A resolved study: what study.yaml holds, the flags rewritten to match it (for cli.study_settings),
    and, on --resume, what grew."""

    kind: str
    study: dict[str, Any]
    args: argparse.Namespace
    command: str
    grown: tuple[str, ...] = ()  # keys that grew on --resume: variants, seeds, trials
    trials_done: int = 0  # a growing search: trials that ended in the earlier runs
    _lock: Any = dataclasses.field(default=None, init=False, repr=False)  # lock.StudyLock once record() ran

    def __enter__(self) -> "Recipe":
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def config(self) -> dict[str, Any]:
        """The base config: every field, dataset-dependent ones (eps, eval_eps) None unless set."""
        return self.study["config"]

    @property
    def trials_to_run(self) -> int:
        """Trials this run adds: all of them, or on growth the difference to what already ran."""
        return self.study["trials"] - self.trials_done

    def search_space(self):
        """The search's optuna_search.SearchSpace."""
        return _search_space(self.study["space"])

    def record(self) -> str:
        """Take the study's driver lock (lock.py), then write <study>/study.yaml (secrets redacted); returns its
        location. Call before anything trains, inside `with recipe:` (which releases the lock)."""
        from .cluster import absolute_storage, check_storage_writable
        from .lock import acquire

        storage = absolute_storage(self.study["storage"])
        check_storage_writable(storage)
        if self._lock is None:
            self._lock = acquire(results.join(storage, self.study["name"]))
        location = results.join(storage, self.study["name"], STUDY_FILE)
        header = (f"The resolved {self.kind} study (defaults + --config file + flags), written before it trained.\n"
                  f"Run it again: python studies/{self.kind}.py --config {STUDY_FILE} (flags override the file).")
        document = {"kind": self.kind, "command": self.command, **self.study}
        results.write_bytes_atomic(location, dump_yaml(_redacted(_ordered(document, self.kind)), header).encode())
        return location


def resolve_study(parser: argparse.ArgumentParser, kind: str, *, defaults: dict[str, Any],
                  smoke: dict[str, Any], argv: Sequence[str] | None = None) -> Recipe:
    """Parse the command line and resolve the study (see the module docstring). `defaults` and `smoke` are the
    script's defaults and --smoke preset as partial studies. Raises StudyError / ConfigError on bad input and
    on a --resume that changes the recorded study."""
    if kind not in KINDS:
        raise ValueError(f"study kind {kind!r}: allowed {', '.join(KINDS)}")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    flag_defaults = _from_flags(args, [d for d in vars(args) if d not in given])
    flags = _from_flags(args, [d for d in vars(args) if d in given])
    file = read_study_file(args.config, kind) if getattr(args, "config", None) else {}
    if kind == "ablation":
        _refuse_config_seed(flags, file, getattr(args, "config", None))
    # --tuned-from: the comparison's base config under the file and the flags; Adv-DPNP's chosen point over the
    # file (the comparison's own study file would otherwise undo what the tuning chose), under the flags
    tuned: dict[str, Any] = {}
    point: dict[str, Any] = {}
    if getattr(args, "tuned_from", None):
        tuned = comparison_layer(args.tuned_from)
        point = {"config": tuned.pop("point")}
        points = tuned.pop("tuned")  # ... and its points as variants, after those of --variants
        # no --variants: Adv-DPNP at its point against the baselines at theirs
        asked = flags.get("variants") or file.get("variants") or ["full"]
        flags.update(tuned=points, tuned_from=tuned.pop("tuned_from"), variants=[*asked, *points])
    wants_smoke = bool(flags.get("smoke", file.get("smoke", False)))
    defaults = dataset_defaults(defaults, flag_defaults, smoke if wants_smoke else {}, tuned, file, point, flags)
    fresh = _merge(flag_defaults, defaults, smoke if wants_smoke else {}, tuned, file, point, flags)
    fresh["smoke"] = wants_smoke

    from .cluster import absolute_storage
    from .preflight import PreflightError, credential_problems

    if credential_problems(fresh["storage"]):  # before any look at the storage
        raise PreflightError(credential_problems(fresh["storage"]))
    if name_problem("--name", fresh["name"]):  # `..` would make the study directory the storage's parent
        raise StudyError(name_problem("--name", fresh["name"]))
    directory = results.join(absolute_storage(fresh["storage"]), fresh["name"])
    location = results.join(directory, STUDY_FILE)
    recorded = None
    if args.resume:
        recorded = read_yaml(location, "recorded study", missing_ok=True)
        if recorded is None:
            raise StudyError(f"--resume: {redact(directory)} holds no recorded study ({STUDY_FILE}): nothing to "
                             "resume; drop --resume to start it, or check --storage and --name")
        recorded = _check_recorded(recorded, kind, location)
    study = fresh
    if recorded is not None:  # the record is the base; where it lies is where the study is, moved or not
        study = _merge(flag_defaults, defaults, recorded, tuned, file, point, flags,
                       {k: fresh[k] for k in ("name", "storage")})
    study["config"] = _full_config(study.get("config") or {})
    study["log_to"] = list(parse_log_to(study.get("log_to")))  # one form in study.yaml: a list of names
    if kind == "ablation" and isinstance(study.get("analysis"), (dict, type(None))):
        study["analysis"] = full_analysis(study.get("analysis"))  # every key of the plan, defaults filled
    scaling = study.get("scaling")
    if recorded is None and isinstance(scaling, dict) and scaling.get("runner") is None \
            and _is_int(scaling.get("workers")):
        # the default runner, decided now and recorded: a --resume (with or without --cluster) keeps it, since a
        # trial resumes from its own runner's checkpoints
        from ..ray_train import default_runner

        on_cluster = bool(getattr(args, "cluster", False) or getattr(args, "address", None))
        scaling["runner"] = default_runner(scaling["workers"], on_cluster)
    if kind == "ablation" and isinstance(study.get("variants"), list):
        from .factorial import expand_variants

        try:  # `factorial:ppa,npr` stands for its cells: study.yaml records the cells
            study["variants"] = expand_variants(study["variants"])
        except ValueError as exc:
            raise StudyError(f"--variants {exc}") from None
    study = _ordered(study, kind)
    _check(study, kind)

    if not args.resume and not getattr(args, "dry_run", False):
        _check_unclaimed(directory, study, kind)
    grown: tuple[str, ...] = ()
    trials_done = 0
    if recorded is not None:
        grown = _compare(recorded, study, location)
        if "trials" in grown:
            trials_done = _finished_trials(study, recorded, location)
    if grown:  # a new Tune run over the grown study; finished trials are not run again
        args.resume = False
    for dest, key in FLAG_KEYS.items():
        if dest in vars(args):
            setattr(args, dest, _get(study, key))
    if "set" in vars(args):
        args.set = []
    if "no_switches" in vars(args):
        args.no_switches = not study["space"]["search_switches"]
    command = redact(shlex.join([Path(sys.executable).name, sys.argv[0], *argv]))
    return Recipe(kind, study, args, command, grown, trials_done)


def _refuse_config_seed(flags: dict[str, Any], file: dict[str, Any], location: str | None) -> None:
    """An ablation's trials take their seeds from `seeds` (--seeds), each overriding config.seed: a seed set with
    --set (any value), or other than the default in a study file's config, would be ignored yet recorded."""
    from ..config import ExperimentConfig

    if "seed" in (flags.get("config") or {}):
        seed = flags["config"]["seed"]
        raise StudyError(f"--set seed={seed}: an ablation trains every variant at each seed of --seeds, which "
                         f"replaces the config's seed; give --seeds {seed} instead")
    seed = (file.get("config") or {}).get("seed", ExperimentConfig.seed)
    if seed != ExperimentConfig.seed:
        raise StudyError(f"study file {redact(str(location))}: config.seed {seed!r}: an ablation trains every variant "
                         f"at each seed of its `seeds` (--seeds), which replaces the config's seed; give seeds: [{seed}] "
                         f"(or --seeds {seed}) instead")


STUDY_CONTENT = (STUDY_FILE, "trials", "optuna.journal", RAY_FOLDER, "tuner.pkl")
"""What makes a directory a study's: any of these there means a study ran (or started) in it (`tuner.pkl` at
the top: a study written before Ray's files moved into RAY_FOLDER)."""


def _check_unclaimed(directory: str, study: dict[str, Any], kind: str) -> None:
    """A study without --resume goes into a directory no study has used: one that holds a study is refused,
    whether it is another study or this same one (its trials would be taken as done, a search would add to
    its Optuna study), in one line naming --resume and --name. Nothing is written."""
    try:
        found = [name for name in results.list_names(directory, "") if name in STUDY_CONTENT]
    except OSError as exc:
        raise StudyError(f"--storage: cannot look into {redact(directory)} ({error_line(exc)})") from None
    if not found:
        return
    recorded = read_yaml(results.join(directory, STUDY_FILE), "recorded study", missing_ok=True)
    if isinstance(recorded, dict) and recorded.get("kind") == kind:
        before, after = _comparable(recorded), _comparable({"kind": kind, **study})
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        what = (f"a different {kind} study ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''} "
                "differ)" if changed else f"this same {kind} study")
    elif isinstance(recorded, dict):
        what = f"a {recorded.get('kind')!r} study"
    else:
        what = f"a study's results ({', '.join(found)})"
    raise StudyError(f"{redact(directory)} already holds {what}; continue it with --resume, or start a new study "
                     "under another --name (or --storage)")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the flags on the command line (one given with its default value counts as given)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(list(argv))))
    finally:
        for action, default in saved:
            action.default = default


def read_study_file(location: str, kind: str) -> dict[str, Any]:
    """A study file's keys (`command` dropped), checked against what a `kind` study holds."""
    data = read_yaml(location, "study file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StudyError(f"study file {location}: expected a mapping of study keys, got {type(data).__name__}")
    allowed = ("kind", "command", *COMMON_KEYS, *KIND_KEYS[kind])
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise StudyError(f"study file {location}: unknown key(s) {', '.join(map(str, unknown))}; a {kind} study "
                         f"file holds {', '.join(allowed)}")
    if data.get("kind", kind) != kind:
        raise StudyError(f"study file {location}: kind {data['kind']!r}, but this is studies/{kind}.py")
    for key in ("config", "scaling", "space", "analysis"):
        if key in data and not isinstance(data[key], dict):
            raise StudyError(f"study file {location}: {key!r} must be a mapping, got {data[key]!r}")
    return {k: v for k, v in data.items() if k not in ("kind", "command")}


def _check_recorded(recorded: Any, kind: str, location: str) -> dict[str, Any]:
    if not isinstance(recorded, dict) or recorded.get("kind") != kind:
        found = recorded.get("kind") if isinstance(recorded, dict) else type(recorded).__name__
        raise StudyError(f"--resume: {redact(location)} records a study of kind {found!r}, not a {kind} study; "
                         "check --storage and --name")
    return {k: v for k, v in recorded.items() if k not in ("kind", "command")}


def _from_flags(args: argparse.Namespace, dests: Sequence[str]) -> dict[str, Any]:
    """The partial study the given flags (argparse dests) set; flags whose value is None set nothing."""
    study: dict[str, Any] = {}
    for dest in dests:
        value = getattr(args, dest)
        if dest in FLAG_KEYS and value is not None:
            _set(study, FLAG_KEYS[dest], value)
        elif dest == "set":
            for field, field_value in parse_assignments(value).items():
                _set(study, f"config.{field}", field_value)
        elif dest == "no_switches":
            _set(study, "space.search_switches", not value)
    return study


def _full_config(values: dict[str, Any]) -> dict[str, Any]:
    """Every config field: the given values over the defaults, checked; dataset-dependent ones stay None
    (resolved per trial), so the study can be rerun on another dataset."""
    ExperimentConfig.from_dict(values)  # every check, naming the field
    return _plain(ExperimentConfig(**values).to_dict())


def _check(study: dict[str, Any], kind: str) -> None:
    """Check the resolved study's own keys; the config was checked by _full_config."""
    problems = []
    unknown = [k for k in study.get("scaling", {}) if k not in SCALING_KEYS]
    if unknown:
        problems.append(f"scaling: unknown key(s) {', '.join(unknown)}; allowed {', '.join(SCALING_KEYS)}")
    if kind == "ablation":
        from .ablation_grid import ABLATION_VARIANTS, LISTED_VARIANTS
        from .factorial import FACTORIAL_PREFIX, FACTORS

        variants, seeds, tuned = study["variants"], study["seeds"], study.get("tuned") or {}
        if not isinstance(tuned, dict) or not all(isinstance(k, str) and k.startswith(TUNED_PREFIX)
                                                  and isinstance(v, dict) for k, v in tuned.items()):
            problems.append(f"tuned {tuned!r}: a mapping of {TUNED_PREFIX}<method> -> config overrides "
                            "(--tuned-from writes it)")
            tuned = {}
        known = (*ABLATION_VARIANTS.names(), *tuned)
        allowed = (f"{', '.join([*LISTED_VARIANTS, *tuned])}, or {FACTORIAL_PREFIX}<factors> with factors among "
                   f"{', '.join(FACTORS)}")
        if not isinstance(variants, list) or not variants:
            problems.append(f"variants {variants!r}: a non-empty list of {allowed}")
        elif any(v not in known for v in variants):
            problems.append(f"variants: unknown variant(s) {[v for v in variants if v not in known]}; known: {allowed}")
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and 0 <= s <= SEED_MAX for s in seeds):
            problems.append(f"seeds {seeds!r}: a non-empty list of integers in [0, {SEED_MAX}] (--seeds)")
        problems += analysis_problems(study.get("analysis", DEFAULT_ANALYSIS),
                                      variants if isinstance(variants, list) else None, known)
        if problems:
            raise StudyError("invalid study:\n  - " + "\n  - ".join(problems))
        return  # every trial's config is checked by run_ablation's preflight, with the other inputs
    from .optuna_search import SearchSpace

    # trials, sampler, objective, scheduler and sampler_seed are checked with the other inputs by
    # run_search's preflight, which names the flag and reports every problem at once.
    if study["optuna_storage"] is not None and not isinstance(study["optuna_storage"], str):
        problems.append(f"optuna_storage {study['optuna_storage']!r}: a journal path, an RDB URL or null")
    methods = study.get("methods")
    if methods is not None:
        if (not isinstance(methods, list) or not methods or len(set(map(str, methods))) != len(methods)
                or any(m not in METHODS for m in methods)):
            problems.append(f"methods {methods!r} (--methods): a non-empty list without repeats of "
                            f"{', '.join(METHODS.names())}")
        if study["optuna_storage"] is not None:
            problems.append(f"optuna_storage {redact(str(study['optuna_storage']))!r} with methods (--optuna-storage "
                            "with --methods): each method's search keeps its own journal in its directory; drop it")
    bounds = {f.name for f in dataclasses.fields(SearchSpace)} - {"search_switches"}
    for key, value in study["space"].items():
        if key == "search_switches":
            if not isinstance(value, bool):
                problems.append(f"space.search_switches {value!r}: true or false")
        elif key not in bounds:
            problems.append(f"space.{key}: unknown; the space has {', '.join(sorted(bounds))}, search_switches")
        elif not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                  and 0 < value[0] <= value[1]):
            problems.append(f"space.{key} {value!r}: [low, high] with 0 < low <= high")
    if problems:
        raise StudyError("invalid study:\n  - " + "\n  - ".join(problems))
    # the configs of the search (base and its default point) are checked by run_search's preflight


def _search_space(space: dict[str, Any]):
    from .optuna_search import SearchSpace

    return SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()})


def _compare(recorded: dict[str, Any], study: dict[str, Any], location: str) -> tuple[str, ...]:
    """The keys that grew; StudyError listing every key that changed otherwise."""
    before, after = _comparable(recorded), _comparable(study)
    # a config field newer than the record, at its default, is no change: the record predates the field
    # ... and so is an analysis plan at its defaults in a record older than the `analysis:` key, or a search
    # space bound newer than the record at its default
    defaults = _comparable({"config": _plain({f.name: f.default for f in dataclasses.fields(ExperimentConfig)}),
                            "analysis": DEFAULT_ANALYSIS})
    if "space" in study:
        from .optuna_search import SearchSpace

        defaults.update(_comparable({"space": _plain(dataclasses.asdict(SearchSpace()))}))
    grown, changed = [], []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if old == new or (key not in before and key in defaults and new == defaults[key]):
            continue
        if key not in before and new is None:  # a key newer than the record (scaling.runner), left to its default
            continue
        if key in ("variants", "seeds") and isinstance(old, list) and isinstance(new, list) and set(new) >= set(old):
            if set(new) > set(old):
                grown.append(key)
            continue
        if key == "trials" and _is_int(old) and _is_int(new) and new > old:
            grown.append(key)
            continue
        changed.append(f"{key}: recorded {old!r}, now {new!r}")
    if changed:
        raise StudyError(f"--resume: the study differs from the one recorded in {redact(location)}:\n  - "
                         + "\n  - ".join(changed) + "\nresume with the recorded values (or give none of these "
                         "flags), or start a new study under another --name. A study may only grow on --resume: "
                         "more --seeds or --variants (ablation), a larger --trials (search).")
    return tuple(grown)


def _finished_trials(study: dict[str, Any], recorded: dict[str, Any], location: str) -> int:
    """A growing search: how many trials already ended; all the recorded ones must have."""
    from .cluster import absolute_storage

    directory = results.join(absolute_storage(study["storage"]), study["name"])
    counts = {len(read_records(method_study_dir(directory, study["name"], m))) for m in study.get("methods") or []}
    if len(counts) > 1:
        raise StudyError(f"--resume --trials {study['trials']}: the methods' searches in {redact(directory)} ended "
                         f"different numbers of trials ({sorted(counts)}); finish them first (--resume --trials "
                         f"{recorded['trials']}), then grow the study")
    done = counts.pop() if counts else len(read_records(directory))
    if done < recorded["trials"]:
        raise StudyError(f"--resume --trials {study['trials']}: only {done} of the {recorded['trials']} trials "
                         f"recorded in {redact(location)} have ended; finish them first (--resume --trials "
                         f"{recorded['trials']}), then grow the study")
    if done >= study["trials"]:
        raise StudyError(f"--resume --trials {study['trials']}: the study already has {done} trials")
    return done


def _comparable(study: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> value, as study.yaml would hold it (redacted, YAML types), without RUN_KEYS."""
    plain = yaml.safe_load(dump_yaml(_redacted(study)))
    return {k: v for k, v in _flatten(plain).items() if k.split(".")[0] not in RUN_KEYS + ("kind",)}


# ------------------------------------------------------------------------------ best configs


def write_best_configs(study_dir: str, kind: str) -> str:
    """<study>/best/<trial_id>.yaml for the best completed trial of each variant (ablation: by validation
    robust accuracy, then clean) or every trial on the Pareto front (search: pareto.parquet, the search's
    validation objectives). Files of trials no longer chosen are removed. Returns the directory."""
    done = [r for r in read_records(study_dir) if r.get("status") == "completed"]
    if kind == "ablation":
        best: dict[Any, dict] = {}
        for record in done:
            current = best.get(record.get("variant"))
            if current is None or _selection_key(record) > _selection_key(current):
                best[record.get("variant")] = record
        chosen = list(best.values())
        reason = "the best seed of its variant by validation robust accuracy (then clean accuracy)"
    else:
        front = results.read_table(study_dir, "pareto", required=False)
        if front is not None:
            ids = set(front["trial_id"])
            chosen = [r for r in done if r["trial_id"] in ids]
        else:
            values = [[_metric(r, "val_clean_acc"), _metric(r, "val_robust_acc")] for r in done]
            chosen = [r for r, keep in zip(done, results.pareto_mask(values) if done else []) if keep]
        reason = "on the Pareto front of the search's validation objectives"
    directory = results.join(study_dir, BEST_DIR)
    names = set()
    for record in chosen:
        name = f"{checked_id(record['trial_id'])}.yaml"  # read_records left out ids that are no file name
        names.add(name)
        results.write_bytes_atomic(results.join(directory, name), best_config_yaml(record, kind, reason).encode())
    for stale in results.list_files(directory, ".yaml"):
        if stale.rsplit("/", 1)[-1] not in names:
            results.delete(stale)
    return directory


# ------------------------------------------------------------------ equal-budget comparison of methods


def method_study_dir(study_dir: str, name: str, method: str) -> str:
    """Where `method`'s search of the comparison `name` lies: the study <study>/<name>-<method>/, whose name (in
    its tables, Optuna and the trackers) says both."""
    return results.join(study_dir, method_study_name(name, method))


def method_study_name(name: str, method: str) -> str:
    return f"{name}-{method}"


CHOICE_RULES: dict[str, tuple[str, ...]] = {"multi": ("val_robust_acc", "val_clean_acc"),
                                            "robust": ("val_robust_acc", "val_clean_acc"),
                                            "clean": ("val_clean_acc", "val_robust_acc")}
"""A comparison's objective -> the validation metrics that choose each method's point, highest first (the most
robust point of the Pareto front for `multi`); the earliest trial wins a tie."""


def chosen_record(records: Sequence[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The completed trial CHOICE_RULES[objective] chooses among `records` (trial_id order); None if none."""
    done = [r for r in records if r.get("status") == "completed"]
    return max(done, key=lambda r: tuple(_metric(r, m) for m in CHOICE_RULES[objective]), default=None)


def write_chosen_points(study_dir: str, name: str, methods: Sequence[str], objective: str) -> str:
    """<study>/best/<method>.yaml: each method's chosen point (`chosen_record`) from its search. StudyError naming
    the methods whose search has no completed trial (after writing the others). Returns the directory."""
    directory, empty = results.join(study_dir, BEST_DIR), []
    rule = f"chosen by the validation split's {', then '.join(CHOICE_RULES[objective])} (objective {objective})"
    for method in methods:
        sub = method_study_dir(study_dir, name, method)
        record = chosen_record(read_records(sub), objective)
        if record is None:
            empty.append(method)
            continue
        text = best_config_yaml(record, "search", rule, retrain=results.join(BEST_DIR, f"{method}.yaml"),
                                model=results.join(method_study_name(name, method), "models", record["trial_id"]))
        results.write_bytes_atomic(results.join(directory, f"{method}.yaml"), text.encode())
    if empty:
        raise StudyError(f"no completed trial in the search of {', '.join(empty)} in {redact(study_dir)}: no chosen "
                         f"point for {'it' if len(empty) == 1 else 'them'}")
    return directory


def comparison_layer(comparison_dir: str) -> dict[str, Any]:
    """`--tuned-from DIR`: what an ablation takes from the equal-budget comparison in DIR: its base config less the
    test suite's own fields (TEST_SUITE_FIELDS), the seed and the method (the ablation's own), with Adv-DPNP's
    chosen parameters as `point` when it was tuned (the caller lays it over the study file, which may be the very
    file the comparison started from); `tuned` (tuned_<method> -> every other method and its chosen parameters,
    from best/<method>.yaml) and `tuned_from`. StudyError when DIR holds no finished comparison."""
    where = redact(comparison_dir)
    study = read_yaml(results.join(comparison_dir, STUDY_FILE), "--tuned-from: the comparison's study file")
    methods = study.get("methods") if isinstance(study, dict) and study.get("kind") == "search" else None
    if not methods or not isinstance(study.get("config"), dict):
        raise StudyError(f"--tuned-from {where}: not an equal-budget comparison (its {STUDY_FILE} records no search "
                         "with `methods`); run studies/search.py --methods first")
    tuned = {}
    for method in methods:
        chosen = read_yaml(results.join(comparison_dir, BEST_DIR, f"{method}.yaml"),
                           f"--tuned-from {where}: {method}'s chosen point", missing_ok=True)
        params = chosen.get("params") if isinstance(chosen, dict) else None
        if not isinstance(params, dict) or (chosen.get("config") or {}).get("method") != method:
            raise StudyError(f"--tuned-from {where}: no chosen point of {method} ({BEST_DIR}/{method}.yaml); finish "
                             f"the comparison first (studies/search.py --resume --storage ... --name "
                             f"{study.get('name')})")
        tuned[f"{TUNED_PREFIX}{method}"] = {"method": method, **params}
    config = {k: v for k, v in study["config"].items() if k not in (*TEST_SUITE_FIELDS, "seed", "method")}
    # Adv-DPNP's point: `full`, its single switches and factorial cells all run at it
    point = {k: v for k, v in tuned.pop(f"{TUNED_PREFIX}adv_dpnp", {}).items() if k != "method"}
    return {"config": config, "point": point, "tuned": tuned, "tuned_from": comparison_dir}


def best_config_yaml(record: dict[str, Any], kind: str, reason: str, *, retrain: str | None = None,
                     model: str | None = None) -> str:
    """A trial's config as a runnable file (`python -m dpnp_ray --config`), with where it came from. `retrain`,
    `model`: where the file and the trial's model lie in the study (default best/<trial_id>.yaml, models/<trial_id>)."""
    summary = record.get("summary") or {}
    trial_id = record["trial_id"]
    header = (f"Trial {trial_id} of the {kind} study {record.get('study')!r}: {reason}.\n"
              f"Retrain it: python -m dpnp_ray --config <study>/{retrain or f'{BEST_DIR}/{trial_id}.yaml'}\n"
              f"Its trained model: <study>/{model or f'models/{trial_id}'}/ (dpnp_ray.load_model)")
    document = {
        "trial": {k: record.get(k) for k in ("study", "trial_id", "variant", "seed")},
        "validation": {k: summary.get(k) for k in ("val_clean_acc", "val_robust_acc", "best_epoch")},
        "test": {k: summary[k] for k in ("clean_acc", "pgd_acc", "cw_acc", "aa_acc") if k in summary},
        "params": _plain(record.get("params") or {}),  # what the searcher chose (empty in an ablation)
        "config": _plain(record.get("config") or {}),
    }
    return dump_yaml(_redacted(document), header)


def _selection_key(record: dict[str, Any]) -> tuple[float, float, float]:
    return _metric(record, "val_robust_acc"), _metric(record, "val_clean_acc"), -float(record.get("seed") or 0)


def _metric(record: dict[str, Any], name: str) -> float:
    value = (record.get("summary") or {}).get(name)
    return float(value) if _is_number(value) and math.isfinite(value) else float("-inf")


# ------------------------------------------------------------------------------ small helpers


def _ordered(study: dict[str, Any], kind: str) -> dict[str, Any]:
    """The study's keys in the order study.yaml shows them."""
    order = ("kind", "command", "name", "storage", "smoke", *KIND_KEYS[kind], "scaling", "max_concurrent",
             "max_failures", "log_to", "mlflow_tracking_uri", "config")
    return {k: study[k] for k in order if k in study}


def dataset_defaults(defaults: dict[str, Any], *layers: dict[str, Any] | None) -> dict[str, Any]:
    """A script's defaults with `defaults["config_for"][<dataset>]` merged into its config when the study's
    dataset (as `layers` and the defaults resolve it) is that one: values tuned on one data set (the digits
    search's loss weights and training eps) never reach a study of another."""
    base = {k: v for k, v in defaults.items() if k != "config_for"}
    dataset = (_merge(*layers[:1], base, *layers[1:]).get("config") or {}).get("dataset")
    tuned = (defaults.get("config_for") or {}).get(dataset)
    return _merge(base, {"config": tuned}) if tuned else base


def _merge(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Nested dicts merged key by key, later layers winning; other values replaced whole (lists too)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def _set(study: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        study = study.setdefault(part, {})
    study[last] = value


def _get(study: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        study = study.get(part) if isinstance(study, dict) else None
    return study


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any, leaf: Callable[[Any], Any] = lambda v: v) -> Any:
    """Tuples as lists, recursively (what YAML and JSON hold), with `leaf` applied to every other value."""
    if isinstance(value, dict):
        return {k: _plain(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, leaf) for v in value]
    return leaf(value)


def _redacted(value: Any) -> Any:
    """_plain, with strings stripped of credentials and the home directory (provenance.redact)."""
    return _plain(value, lambda v: redact(v) if isinstance(v, str) else v)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
