"""What produced a result: code version, package versions, hardware. Secrets redacted."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "pyarrow", "pyautoattack")
_REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<git sha>` (+ `-dirty` when the tree has uncommitted changes), or the package version outside git."""
    try:
        sha = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "dpnp_ray-" + _version("dpnp_ray")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def package_versions() -> dict[str, str]:
    versions = {f"{p}_version": _version(p) for p in PACKAGES}
    versions["python_version"] = platform.python_version()
    return versions


def hardware(device: str | None = None) -> str:
    """A short description of where a process runs: CPU model and count, GPU name when used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()}x {cpu}"
    if device and device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            text += f"; {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return text


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:access_key|secret|secret_key|token|password|sig|signature|"
                           r"x-amz-security-token|x-amz-signature)=)[^&\s]+")


def redact(text: str) -> str:
    """Remove credentials from URIs (user:password@, secret query parameters) and the home directory."""
    text = _CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    home = os.path.expanduser("~")
    if home and home != "/":
        text = text.replace(home, "~")
    return text


def provenance(device: str | None = None) -> dict[str, str]:
    return {"code_version": code_version(), "hardware": hardware(device), **package_versions(),
            "platform": platform.platform(), "python_executable": redact(sys.executable)}
