"""The experiment config: one frozen dataclass, built from a flat dict, validated once.

Every field is flat so that Ray Tune / Optuna search spaces and Parquet columns map onto
it one to one. Defaults follow docs/method.md#defaults; where the paper gives no value
the default is this project's choice and says so in docs/method.md ("Defaults and open choices").
Fields that name a registered thing (dataset, model, method, optimizer, schedules) accept
exactly the names in that registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .methods import METHODS


SEED_MAX = 2 ** 32 - 1
"""The largest seed (seed, split_seed, a study's --seeds and --seed): numpy's generators take no larger one, and
the seeds derived from it (per rank and stream, training_loop.py) stay within torch's 64-bit generator seeds."""


class ConfigError(ValueError):
    """Invalid configuration. Lists every problem: field, value, what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  - " + "\n  - ".join(problems))


def _choices(*values: str) -> dict:
    return {"choices": values}


def _registry_choices(module: str, registry: str) -> dict:
    """Allowed values: the names in dpnp_ray.<module>.<registry>, imported when first needed
    (most registries hold torch objects; importing the config must not import torch)."""
    return {"registry": (module, registry)}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


def _allowed_values(metadata: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The values a field accepts, if it has a fixed set (a registry's names are read now)."""
    if "registry" in metadata:
        module, registry = metadata["registry"]
        return getattr(importlib.import_module(f"{__package__}.{module}"), registry).names()
    return metadata.get("choices")


@dataclass(frozen=True)
class ExperimentConfig:
    # --- data
    dataset: str = field(default="digits", metadata=_registry_choices("data", "DATASETS"))
    data_root: str = "data"
    download: bool = False
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9, lo_open=True))
    split_seed: int = field(default=0, metadata=_range(0, SEED_MAX))
    # > 0: a stratified subset of this many training images, drawn by split_seed after the val hold-out
    train_subset: int = field(default=0, metadata=_range(0))
    # --- model
    model: str = field(default="small_cnn", metadata=_registry_choices("models", "BACKBONES"))
    feature_dim: int = field(default=0, metadata=_range(0))  # 0: the backbone's own width
    # linear: signed features, chosen by an ablation on digits (docs/feature_head.md); none: ReLU then pool
    feature_head: str = field(default="linear", metadata=_registry_choices("models", "FEATURE_HEADS"))
    method: str = field(default="adv_dpnp", metadata=_registry_choices("methods", "METHODS"))
    prototype_radius: float = field(default=3.0, metadata=_range(0.0, lo_open=True))
    prototype_constraint: str = field(default="normalize", metadata=_choices("normalize", "project"))
    # learned: trained prototypes; fixed_simplex: a regular simplex of radius prototype_radius, never trained
    prototype_mode: str = field(default="learned", metadata=_choices("learned", "fixed_simplex"))
    logit_form: str = field(default="dot", metadata=_choices("dot", "cosine"))
    logit_scale: float = field(default=10.0, metadata=_range(0.0, lo_open=True))
    # --- loss
    ppa_form: str = field(default="sqeuclidean", metadata=_choices("sqeuclidean", "cosine"))
    npr_form: str = field(default="prototype", metadata=_choices("prototype", "sample"))
    lambda_ppa: float = field(default=0.1, metadata=_range(0.0))
    lambda_npr: float = field(default=0.1, metadata=_range(0.0))
    lambda_cons: float = field(default=1.0, metadata=_range(0.0))
    beta_adv: float = field(default=1.0, metadata=_range(0.0))
    use_ppa: bool = True
    use_npr: bool = True
    use_consistency: bool = True
    prototype_update: str = field(default="clean", metadata=_choices("clean", "adversarial", "both"))
    consistency_direction: str = field(
        default="clean_to_adv", metadata=_choices("clean_to_adv", "adv_to_clean", "symmetric")
    )
    consistency_detach_clean: bool = True
    trades_beta: float = field(default=6.0, metadata=_range(0.0))
    mart_beta: float = field(default=6.0, metadata=_range(0.0))
    # --- training attack and its epsilon schedule
    eps: float | None = field(default=None, metadata=_range(0.0, 1.0))  # None: the dataset's threat model
    eps_schedule: str = field(default="constant", metadata=_registry_choices("schedules", "EPS_SCHEDULES"))
    eps_warmup_epochs: float = field(default=0.0, metadata=_range(0.0))
    eps_start: float = field(default=0.0, metadata=_range(0.0, 1.0))
    train_attack_steps: int = field(default=10, metadata=_range(1))
    train_attack_step_size: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))
    train_attack_loss: str = field(default="ce", metadata=_choices("ce", "cw"))
    train_attack_random_start: bool = True
    attack_bn_mode: str = field(default="eval", metadata=_choices("eval", "train"))
    # --- optimisation
    optimizer: str = field(default="sgd", metadata=_registry_choices("optimizers", "OPTIMIZERS"))
    lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    # clip the global gradient L2 norm to this before each step; 0: never (docs/method.md#gradient-clipping)
    grad_clip_norm: float = field(default=10.0, metadata=_range(0.0))
    lr_schedule: str = field(default="step", metadata=_registry_choices("schedules", "LR_SCHEDULES"))
    lr_milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata=_range(0.0, 1.0))
    lr_gamma: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    epochs: int = field(default=10, metadata=_range(1))
    batch_size: int = field(default=128, metadata=_range(1))
    seed: int = field(default=0, metadata=_range(0, SEED_MAX))
    # --- model selection on the validation split (never the test set)
    select_metric: str = field(default="val_robust", metadata=_choices("val_robust", "val_clean", "last"))
    early_stop_patience: int = field(default=0, metadata=_range(0))  # 0: never stop early
    val_attack_steps: int = field(default=10, metadata=_range(1))
    # --- evaluation threat model (validation and test): fixed, whatever the training eps schedule does
    eval_eps: float | None = field(default=None, metadata=_range(0.0, 1.0))  # None: the dataset's threat model
    # --- test-set evaluation
    eval_attack_steps: int = field(default=20, metadata=_range(1))
    eval_step_size: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))
    eval_restarts: int = field(default=1, metadata=_range(1))
    eval_n: int = field(default=0, metadata=_range(0))  # 0: the whole test set
    eval_batch_size: int = field(default=500, metadata=_range(1))
    # the targeted attack of quick / full attacks each point towards its k nearest rival prototypes (top-k
    # rival logits for a linear head) and keeps the per-point worst target
    eval_rival_targets: int = field(default=3, metadata=_range(1))
    # basic: clean, FGSM, PGD-k, CW-inf. quick (per search/ablation trial): + AutoAttack `apgd`
    # (APGD-CE + APGD-T) on eval_aa_n points, PGD accuracy-vs-eps, masking checks, geometry,
    # corruptions on eval_corruption_n points. full (final models): + AutoAttack `standard`, PGD-50x10.
    eval_suite: str = field(default="quick", metadata=_choices("basic", "quick", "full"))
    eval_aa_n: int = field(default=1000, metadata=_range(0))  # 0: the whole (eval_n) test set
    eval_eps_curve: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0), metadata=_range(0.0, 4.0))
    # full: APGD-CE + APGD-T accuracy at eps = m * eval_eps for these m (docs/evaluation.md#robustness-curves)
    eval_aa_eps_curve: tuple[float, ...] = field(default=(0.5, 1.0, 1.5, 2.0), metadata=_range(0.0, 4.0))
    # full: the L2 threat model's radius on [0, 1] pixels; None: L2_EPS_AT_CIFAR scaled to the dataset
    # (eval_l2_default: 0.5 on CIFAR-10 at 8/255; docs/evaluation.md#l2-threat-model)
    eval_l2_eps: float | None = field(default=None, metadata=_range(0.0))
    eval_corruption_n: int = field(default=1000, metadata=_range(0))
    corruption_root: str = ""  # a directory of released CIFAR-10-C / CIFAR-100-C .npy files, if you have them
    # --- execution
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "bf16", "fp16"))
    # every evaluation attack and accuracy count (validation included); training keeps `precision`
    eval_precision: str = field(default="fp32", metadata=_choices("fp32", "bf16", "fp16", "auto"))
    channels_last: bool = True
    compile: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, *, resolve: bool = True,
                  **overrides: Any) -> "ExperimentConfig":
        """Build and validate a config from a flat dict (Tune / Optuna / CLI output); with `resolve`, the
        dataset-dependent defaults filled (`resolved`), else left None (a study's base config).

        Raises ConfigError listing every unknown key, wrong type and out-of-range value.
        """
        merged = {**(values or {}), **overrides}
        problems: list[str] = []
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        coerced: dict[str, Any] = {}
        for key, value in merged.items():
            if key not in known:
                problems.append(f"unknown field {key!r} (value {value!r}); known fields: {', '.join(known)}")
                continue
            try:
                coerced[key] = _coerce(key, value, hints[key], known[key].metadata)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError(problems)
        config = cls(**coerced)
        return config.resolved() if resolve else config

    def __post_init__(self) -> None:
        # The one entrance of every construction (from_dict, direct, dataclasses.replace): the per-field
        # checks, then the combinations of fields.
        hints = typing.get_type_hints(type(self))
        problems = []
        for f in dataclasses.fields(self):
            try:
                object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name], f.metadata))
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError(problems)
        self._check_combinations()

    def _check_combinations(self) -> None:
        problems = []
        if self.use_npr and self.npr_form == "sample" and self.uses_prototypes:
            # -||z - c_r||^2 is unbounded below unless PPA's +||z - c_y||^2 dominates it.
            if not (self.use_ppa and self.ppa_form == "sqeuclidean" and self.lambda_ppa > self.lambda_npr):
                problems.append(
                    "npr_form='sample' is only bounded below when use_ppa=True, ppa_form='sqeuclidean' "
                    f"and lambda_ppa > lambda_npr (got use_ppa={self.use_ppa}, ppa_form={self.ppa_form!r}, "
                    f"lambda_ppa={self.lambda_ppa}, lambda_npr={self.lambda_npr}); "
                    "raise lambda_ppa, lower lambda_npr, or use npr_form='prototype'"
                )
        if self.prototype_mode == "fixed_simplex" and self.feature_dim and self.uses_prototypes:
            from .data import dataset_info

            classes = dataset_info(self.dataset).num_classes
            if self.feature_dim < classes - 1:
                problems.append(f"prototype_mode='fixed_simplex' needs feature_dim >= {classes - 1} (the {classes} "
                                f"classes of {self.dataset!r} minus one; got feature_dim={self.feature_dim})")
        if self.eps is not None and self.eps_start > self.eps:
            problems.append(f"eps_start={self.eps_start} exceeds eps={self.eps}; the schedule ramps up to eps")
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            problems.append(f"lr_milestones={self.lr_milestones} must be increasing fractions of the epochs")
        if self.eps_schedule != "constant" and self.eps_warmup_epochs <= 0:
            problems.append(
                f"eps_schedule={self.eps_schedule!r} needs eps_warmup_epochs > 0 (got {self.eps_warmup_epochs})"
            )
        if problems:
            raise ConfigError(problems)

    def resolved(self) -> "ExperimentConfig":
        """Fill the dataset-dependent defaults (eps, eval_eps, eval_l2_eps) so the config states every value used."""
        if self.eps is not None and self.eval_eps is not None and self.eval_l2_eps is not None:
            return self
        from .data import dataset_info

        info = dataset_info(self.dataset)
        threat = float(info.default_eps)
        eval_eps = threat if self.eval_eps is None else self.eval_eps
        l2 = eval_l2_default(eval_eps, info.image_shape) if self.eval_l2_eps is None else self.eval_l2_eps
        return dataclasses.replace(self, eps=threat if self.eps is None else self.eps, eval_eps=eval_eps,
                                   eval_l2_eps=l2)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A validated copy with some fields changed."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ derived values
    @property
    def uses_prototypes(self) -> bool:
        """The method trains a DPNP prototype head (methods.Method.prototype_head)."""
        return METHODS.get(self.method).prototype_head

    @property
    def is_adversarial(self) -> bool:
        """The method trains on adversarial examples (methods.Method.adversarial)."""
        return METHODS.get(self.method).adversarial

    @property
    def train_step_size(self) -> float:
        """PGD step for training: eps/4 unless set (2/255 at eps 8/255)."""
        assert self.eps is not None, "call resolved() first"
        return self.train_attack_step_size if self.train_attack_step_size is not None else self.eps / 4

    @property
    def eval_step(self) -> float:
        """PGD step for validation/test attacks: eval_eps/4 unless set."""
        assert self.eval_eps is not None, "call resolved() first"
        return self.eval_step_size if self.eval_step_size is not None else self.eval_eps / 4


TEST_SUITE_FIELDS = ("eval_attack_steps", "eval_restarts", "eval_n", "eval_rival_targets", "eval_suite", "eval_aa_n",
                     "eval_eps_curve", "eval_aa_eps_curve", "eval_l2_eps", "eval_corruption_n", "corruption_root")
"""The fields only the test suite reads: training and validation (the model selection) never depend on them."""


L2_EPS_AT_CIFAR = 0.5
"""The L2 radius of the standard CIFAR-10 L2 threat model (RobustBench), paired there with L-inf 8/255."""


def eval_l2_default(eval_eps: float, image_shape: tuple[int, ...]) -> float:
    """The default L2 radius: CIFAR-10's 0.5, scaled as the L2 radius of the L-inf ball's corners
    (eval_eps * sqrt(pixels)) scales from CIFAR-10 (8/255, 3x32x32) to this threat model and image size,
    so that it is 0.5 at CIFAR-10's threat model: 0.230 on digits (0.1, 1x8x8)."""
    return L2_EPS_AT_CIFAR * (eval_eps / (8 / 255)) * math.sqrt(math.prod(image_shape) / 3072)


def _coerce(name: str, value: Any, annotation: Any, metadata: Mapping[str, Any]) -> Any:
    """Check one field's type and bounds; returns the value in its canonical Python type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"field {name!r} = {value!r}: expected a list of numbers")
        return tuple(_coerce(name, v, float, metadata) for v in value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / torch scalars
        value = value.item()
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"field {name!r} = {value!r}: expected true or false")
    elif annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"field {name!r} = {value!r}: expected an integer")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"field {name!r} = {value!r}: expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"field {name!r} = {value!r}: expected a finite number")
    elif annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} = {value!r}: expected a string")
    choices = _allowed_values(metadata)
    if choices is not None and value not in choices:
        raise ValueError(f"field {name!r} = {value!r}: allowed values are {', '.join(map(repr, choices))}")
    if "range" in metadata:
        lo, hi, lo_open = metadata["range"]
        if lo is not None and (value < lo or (lo_open and value == lo)):
            bound = f"> {lo}" if lo_open else f">= {lo}"
            raise ValueError(f"field {name!r} = {value!r}: must be {bound}" + (f" and <= {hi}" if hi is not None else ""))
        if hi is not None and value > hi:
            raise ValueError(f"field {name!r} = {value!r}: must be <= {hi}" + (f" and >= {lo}" if lo is not None else ""))
    return value


def config_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def field_choices() -> dict[str, tuple[str, ...]]:
    """Each field with a fixed set of allowed values -> those values, registries included."""
    allowed = {f.name: _allowed_values(f.metadata) for f in dataclasses.fields(ExperimentConfig)}
    return {name: values for name, values in allowed.items() if values is not None}


HELP_WIDTH = 100
"""Columns of every --help line and of the console's notes (`wrap_help`)."""


def wrap_help(text: str, first: str = "", rest: str = "") -> str:
    """`text` in lines of at most HELP_WIDTH columns (`first`/`rest`: the indents), never broken inside a word
    or at a hyphen, so that every FIELD=VALUE and name stays whole."""
    return textwrap.fill(text, width=HELP_WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)


def as_assignment(value: Any) -> str:
    """A value written the way FIELD=VALUE takes it (JSON for booleans and lists; None is `auto`)."""
    if value is None:
        return "auto"
    if isinstance(value, (bool, list, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))
    return str(value)


def fields_help(defaults: Mapping[str, Any] | None = None) -> str:
    """Every config field as FIELD=DEFAULT (`defaults` override the config's own), wrapped."""
    base, defaults = ExperimentConfig(), defaults or {}
    items = [f"{name}={as_assignment(defaults.get(name, getattr(base, name)))}" for name in config_fields()]
    return wrap_help("  ".join(items), first="  ", rest="  ")


def choices_help() -> str:
    """Each field with a fixed set of allowed values, its values wrapped."""
    return "\n".join(wrap_help(", ".join(values), first=f"  {name}: ", rest="      ")
                     for name, values in field_choices().items())


def parse_assignments(arguments: list[str]) -> dict:
    """['lr=0.1', 'use_npr=false', 'method=pgd_at'] -> {'lr': 0.1, 'use_npr': False, 'method': 'pgd_at'}."""
    values = {}
    for argument in arguments:
        key, sep, raw = argument.partition("=")
        if not sep:
            raise ConfigError([f"argument {argument!r} is not key=value; fields: {', '.join(config_fields())}"])
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values
