"""Trained models as self-describing directories, and loading them back.

A model directory (`<study>/models/<trial_id>/`, or `python -m dpnp_ray --out DIR`) holds

    weights.pt   the classifier's state dict: tensors only, saved with torch.save and read back with
                 torch.load(weights_only=True), so loading never runs code from the file
    model.json   format and version, the weights' SHA-256, the full config, the dataset's description
                 (classes, image shape, normalisation), the trial's identity and final metrics, provenance

`load_model(path)` checks the format and the checksum, rebuilds the classifier from the config and
returns it in eval mode: it takes images in [0, 1] (normalisation is inside) and returns logits.
Locations may be local paths or URIs (s3://...), as everywhere in storage.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import time
from typing import Any

import torch
from torch import nn

from . import storage
from .config import ConfigError, ExperimentConfig
from .data import DatasetInfo
from .provenance import provenance, redact

MODEL_FORMAT = "dpnp_ray.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "model.json"


class ModelFileError(ValueError):
    """A model directory is missing, foreign, of another format version, or was modified after export."""


def export_model(directory: str, net: nn.Module, cfg: ExperimentConfig, info: DatasetInfo, *,
                 metrics: dict[str, Any] | None = None, trial: dict[str, Any] | None = None) -> str:
    """Write `net` (a models.Classifier) with everything needed to rebuild and judge it; returns the directory.

    The weights are written first and model.json last, so a directory with a model.json is complete.
    """
    state = {_plain_key(k): v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    device = next(net.parameters()).device
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        # Paths in the config (data_root, corruption_root) must not reveal a home directory or credentials;
        # a redacted home directory stays usable ("~/data" is expanded when data is loaded).
        "config": {k: redact(v) if isinstance(v, str) else v for k, v in cfg.resolved().to_dict().items()},
        "dataset": dataclasses.asdict(info),
        "trial": trial or {},
        "metrics": {k: v for k, v in (metrics or {}).items() if not isinstance(v, (dict, list))},
        "provenance": provenance(str(device)),
        "exported_at": time.time(),
    }
    storage.write_bytes_atomic(storage.join(directory, WEIGHTS_FILE), weights)
    storage.write_bytes_atomic(storage.join(directory, METADATA_FILE),
                               json.dumps(json_safe(metadata), indent=1).encode())
    return directory


def read_model_metadata(path: str) -> dict[str, Any]:
    """model.json of a model directory (or of the directory holding `path`), checked to be this format."""
    directory = _model_directory(path)
    location = storage.join(directory, METADATA_FILE)
    try:
        metadata = json.loads(storage.read_bytes(location))
    except (FileNotFoundError, OSError):
        raise ModelFileError(f"{redact(directory)}: no {METADATA_FILE}; not a dpnp_ray model directory (models are "
                             "written to <study>/models/<trial_id>/ and by `python -m dpnp_ray --out DIR`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{redact(location)}: not JSON ({exc}); not a dpnp_ray model") from None
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ModelFileError(f"{redact(location)}: format {found!r}, expected {MODEL_FORMAT!r}; not a dpnp_ray model")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{redact(location)}: format version {metadata.get('format_version')!r}; this code "
                             f"reads version {FORMAT_VERSION}")
    for key, what in (("config", "of config fields"), ("dataset", "of dataset facts"), ("trial", "of its keys")):
        value = metadata.get(key)
        if not isinstance(value, dict) and not (key == "trial" and value is None):
            found = "it is missing" if key not in metadata else f"got a {type(value).__name__}"
            raise ModelFileError(f"{redact(location)}: {key!r} must be a mapping {what} as export_model writes it, "
                                 f"{found}; not a model this code can build")
    return metadata


def load_model(path: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """The exported classifier in eval mode: [0, 1] images in, logits out.

    Raises ModelFileError when the directory is not a dpnp_ray model, the weights do not match the
    checksum recorded at export (modified or corrupted), or the file holds anything but tensors.
    """
    from .factory import model_from_config

    directory = _model_directory(path)
    metadata = read_model_metadata(directory)
    location = storage.join(directory, WEIGHTS_FILE)
    try:
        weights = storage.read_bytes(location)
    except (FileNotFoundError, OSError) as exc:
        raise ModelFileError(f"{redact(location)}: cannot read the weights ({exc})") from None
    if hashlib.sha256(weights).hexdigest() != metadata.get("weights_sha256"):
        raise ModelFileError(f"{redact(location)}: SHA-256 differs from the one recorded in {METADATA_FILE}; the "
                             "weights were modified or corrupted after export, refusing to load them")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as exc:
        raise ModelFileError(f"{redact(location)}: not a plain tensor state dict; torch.load(weights_only=True) "
                             f"refused it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        cfg = ExperimentConfig.from_dict(metadata["config"])
        info = DatasetInfo(**{**metadata["dataset"], "image_shape": tuple(metadata["dataset"]["image_shape"]),
                              "mean": tuple(metadata["dataset"]["mean"]), "std": tuple(metadata["dataset"]["std"])})
    except (ConfigError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{redact(directory)}: {METADATA_FILE} does not describe a model this code can "
                             f"build ({exc})") from None
    net = model_from_config(cfg, info)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{redact(location)}: the weights do not fit the model its config describes "
                             f"({str(exc).splitlines()[0]})") from None
    return net.to(device).eval()


def _model_directory(path: str) -> str:
    """A model directory from itself or from one of its two files."""
    text, query = storage.split_query(path)  # s3://bucket/models/x?endpoint_override=...: the query stays last
    text = text.rstrip("/")
    for name in (METADATA_FILE, WEIGHTS_FILE):
        if text.endswith("/" + name):
            return text[: -len(name) - 1] + query
    return text + query


def _plain_key(key: str) -> str:
    """State-dict keys without torch.compile's wrapper (compile=true trains `backbone._orig_mod.*`)."""
    return key.replace("_orig_mod.", "")


def json_safe(value: Any) -> Any:
    """Tuples as lists, numpy/torch scalars as Python numbers, non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
