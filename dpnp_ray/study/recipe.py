"""Resolving a study: the layers of defaults, study file and flags; its record; its growth on --resume.

Resolution, later layers winning: the flags' defaults, the script's defaults (its --smoke preset when
asked), the file, the flags given on the command line. With --resume the recorded `<study>/study.yaml`
replaces the defaults, and the result must equal the record except for run keys (RUN_KEYS) and growth:
more `seeds` or `variants` for an ablation, a larger `trials` for a search. Anything else is refused
with the differing keys listed. The resolved study and the exact command line are written to
`<study>/study.yaml` (`Recipe.record`) before anything trains; `--config <study>/study.yaml` runs it again
(under another name: a directory that holds a study takes another only with --resume, docs/storage.md).

The study file format: study_file.py; best configs and chosen points: best_configs.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .. import storage
from ..analysis_plan import DEFAULT_ANALYSIS, full_analysis
from ..config import ExperimentConfig, parse_assignments
from ..provenance import error_line, redact
from .best_configs import comparison_layer, method_study_dir
from .records import read_records
from .settings import RAY_FOLDER, StudyError, name_problem
from .study_file import (KIND_KEYS, KINDS, RUN_KEYS, STUDY_FILE, check_study, dump_yaml, flatten, get_dotted, is_int,
                         merge_layers, plain, read_study_file, read_yaml, redacted, set_dotted)
from .trackers import parse_log_to


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
        """The search's search_space.SearchSpace."""
        return _search_space(self.study["space"])

    def spec(self):
        """What this run runs, typed (spec.AblationSpec or spec.SearchSpec): the resolved study, checked by the
        spec's problems() before Ray starts."""
        from .spec import AblationSpec, SearchSpec

        study = self.study
        if self.kind == "ablation":
            return AblationSpec(self.config, study["variants"], study["seeds"], study.get("tuned") or {})
        return SearchSpec(self.config, self.trials_to_run, self.search_space(), sampler=study["sampler"],
                          objective=study["objective"], scheduler=study["scheduler"], seed=study["sampler_seed"],
                          optuna_storage=study["optuna_storage"], extend="trials" in self.grown)

    def record(self) -> str:
        """Take the study's driver lock (lock.py), then write <study>/study.yaml (secrets redacted); returns its
        location. Call before anything trains, inside `with recipe:` (which releases the lock)."""
        from .cluster import absolute_storage, check_storage_writable
        from .lock import acquire

        root = absolute_storage(self.study["storage"])
        check_storage_writable(root)
        if self._lock is None:
            self._lock = acquire(storage.join(root, self.study["name"]))
        location = storage.join(root, self.study["name"], STUDY_FILE)
        header = (f"The resolved {self.kind} study (defaults + --config file + flags), written before it trained.\n"
                  f"Run it again: python studies/{self.kind}.py --config {STUDY_FILE} (flags override the file).")
        document = {"kind": self.kind, "command": self.command, **self.study}
        storage.write_bytes_atomic(location, dump_yaml(redacted(_ordered(document, self.kind)), header).encode())
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
    fresh = merge_layers(flag_defaults, defaults, smoke if wants_smoke else {}, tuned, file, point, flags)
    fresh["smoke"] = wants_smoke

    from .cluster import absolute_storage
    from .preflight import PreflightError, credential_problems

    if credential_problems(fresh["storage"]):  # before any look at the storage
        raise PreflightError(credential_problems(fresh["storage"]))
    if name_problem("--name", fresh["name"]):  # `..` would make the study directory the storage's parent
        raise StudyError(name_problem("--name", fresh["name"]))
    directory = storage.join(absolute_storage(fresh["storage"]), fresh["name"])
    location = storage.join(directory, STUDY_FILE)
    recorded = None
    if args.resume:
        recorded = read_yaml(location, "recorded study", missing_ok=True)
        if recorded is None:
            raise StudyError(f"--resume: {redact(directory)} holds no recorded study ({STUDY_FILE}): nothing to "
                             "resume; drop --resume to start it, or check --storage and --name")
        recorded = _check_recorded(recorded, kind, location)
    study = fresh
    if recorded is not None:  # the record is the base; where it lies is where the study is, moved or not
        study = merge_layers(flag_defaults, defaults, recorded, tuned, file, point, flags,
                       {k: fresh[k] for k in ("name", "storage")})
    study["config"] = _full_config(study.get("config") or {})
    study["log_to"] = list(parse_log_to(study.get("log_to")))  # one form in study.yaml: a list of names
    if kind == "ablation" and isinstance(study.get("analysis"), (dict, type(None))):
        study["analysis"] = full_analysis(study.get("analysis"))  # every key of the plan, defaults filled
    scaling = study.get("scaling")
    if recorded is None and isinstance(scaling, dict) and scaling.get("runner") is None \
            and is_int(scaling.get("workers")):
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
    check_study(study, kind)

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
            setattr(args, dest, get_dotted(study, key))
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
        found = [name for name in storage.list_names(directory, "") if name in STUDY_CONTENT]
    except OSError as exc:
        raise StudyError(f"--storage: cannot look into {redact(directory)} ({error_line(exc)})") from None
    if not found:
        return
    recorded = read_yaml(storage.join(directory, STUDY_FILE), "recorded study", missing_ok=True)
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


class _NotGiven(list):
    """What a dest holds before parsing in `given_flags` (a list, so that an `append` action copies it)."""


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the flags on the command line (one given with its default value counts as given): parsed
    into a namespace that already holds a marker for every dest, which argparse fills no default over."""
    marker = _NotGiven()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), marker))
    return {dest for dest, value in vars(parser.parse_args(list(argv), namespace=namespace)).items()
            if value is not marker}


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
            set_dotted(study, FLAG_KEYS[dest], value)
        elif dest == "set":
            for field, field_value in parse_assignments(value).items():
                set_dotted(study, f"config.{field}", field_value)
        elif dest == "no_switches":
            set_dotted(study, "space.search_switches", not value)
    return study


def _full_config(values: dict[str, Any]) -> dict[str, Any]:
    """Every config field: the given values over the defaults, checked; dataset-dependent ones stay None
    (resolved per trial), so the study can be rerun on another dataset."""
    return plain(ExperimentConfig.from_dict(values, resolve=False).to_dict())  # every check, naming the field


def _search_space(space: dict[str, Any]):
    from .search_space import SearchSpace

    return SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in space.items()})


def _compare(recorded: dict[str, Any], study: dict[str, Any], location: str) -> tuple[str, ...]:
    """The keys that grew; StudyError listing every key that changed otherwise."""
    before, after = _comparable(recorded), _comparable(study)
    # a config field newer than the record, at its default, is no change: the record predates the field
    # ... and so is an analysis plan at its defaults in a record older than the `analysis:` key, or a search
    # space bound newer than the record at its default
    defaults = _comparable({"config": plain({f.name: f.default for f in dataclasses.fields(ExperimentConfig)}),
                            "analysis": DEFAULT_ANALYSIS})
    if "space" in study:
        from .search_space import SearchSpace

        defaults.update(_comparable({"space": plain(dataclasses.asdict(SearchSpace()))}))
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
        if key == "trials" and is_int(old) and is_int(new) and new > old:
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

    directory = storage.join(absolute_storage(study["storage"]), study["name"])
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
    plain = yaml.safe_load(dump_yaml(redacted(study)))
    return {k: v for k, v in flatten(plain).items() if k.split(".")[0] not in RUN_KEYS + ("kind",)}


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
    dataset = (merge_layers(*layers[:1], base, *layers[1:]).get("config") or {}).get("dataset")
    tuned = (defaults.get("config_for") or {}).get(dataset)
    return merge_layers(base, {"config": tuned}) if tuned else base


