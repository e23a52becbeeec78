"""Study files: a study's whole definition as YAML, their keys, reading and writing them.

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
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

import yaml

from .. import storage
from ..analysis_plan import DEFAULT_ANALYSIS, analysis_problems
from ..config import SEED_MAX, ConfigError
from ..methods import METHODS
from ..provenance import redact
from .settings import StudyError

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
TUNED_PREFIX = "tuned_"
"""`--tuned-from`: method m at its chosen point is the ablation variant tuned_<m>."""


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
        text = storage.read_bytes(location)
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


def plain(value: Any, leaf: Callable[[Any], Any] = lambda v: v) -> Any:
    """Tuples as lists, recursively (what YAML and JSON hold), with `leaf` applied to every other value."""
    if isinstance(value, dict):
        return {k: plain(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, leaf) for v in value]
    return leaf(value)


def redacted(value: Any) -> Any:
    """plain, with strings stripped of credentials and the home directory (provenance.redact)."""
    return plain(value, lambda v: redact(v) if isinstance(v, str) else v)


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


def check_study(study: dict[str, Any], kind: str) -> None:
    """Check a resolved study's own keys (StudyError listing every problem); its configs are checked with the
    other inputs by the study's preflight."""
    problems = []
    unknown = [k for k in study.get("scaling", {}) if k not in SCALING_KEYS]
    if unknown:
        problems.append(f"scaling: unknown key(s) {', '.join(unknown)}; allowed {', '.join(SCALING_KEYS)}")
    if kind == "ablation":
        from .variants import ABLATION_VARIANTS, LISTED_VARIANTS
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
        if not isinstance(seeds, list) or not seeds or not all(is_int(s) and 0 <= s <= SEED_MAX for s in seeds):
            problems.append(f"seeds {seeds!r}: a non-empty list of integers in [0, {SEED_MAX}] (--seeds)")
        problems += analysis_problems(study.get("analysis", DEFAULT_ANALYSIS),
                                      variants if isinstance(variants, list) else None, known)
        if problems:
            raise StudyError("invalid study:\n  - " + "\n  - ".join(problems))
        return  # every trial's config is checked by run_ablation's preflight, with the other inputs
    from .search_space import SearchSpace

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
        elif not (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)
                  and 0 < value[0] <= value[1]):
            problems.append(f"space.{key} {value!r}: [low, high] with 0 < low <= high")
    if problems:
        raise StudyError("invalid study:\n  - " + "\n  - ".join(problems))
    # the configs of the search (base and its default point) are checked by run_search's preflight


def merge_layers(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Nested dicts merged key by key, later layers winning; other values replaced whole (lists too)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_layers(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(study: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        study = study.setdefault(part, {})
    study[last] = value


def get_dotted(study: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        study = study.get(part) if isinstance(study, dict) else None
    return study


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
