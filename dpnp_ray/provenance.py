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


SECRET_NAMES = ("access_key", "secret_key", "secret_access_key", "secret", "client_secret", "password", "passwd",
                "token", "access_token", "refresh_token", "id_token", "auth_token", "session_token", "security_token",
                "api_key", "apikey", "key", "private_key", "credential", "credentials", "sig", "signature",
                "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
                "x-goog-credential")
"""Names of query parameters and key=value settings whose values are secrets (matched whole, any case)."""

_URI = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<rest>[^\s'\"`<>]*)")
_SECRET_VALUE = re.compile(r"(?i)(?<![\w-])(" + "|".join(re.escape(n) for n in SECRET_NAMES)
                           + r")(=|%3D)[^&\s'\"`<>]*")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20)[\w\-.~+/]+=*")


def _redact_userinfo(match: re.Match) -> str:
    """`scheme://user:password@host/...` -> `scheme://***@host/...`. The password may hold '/' or '@':
    the user info runs to the last '@' before the query; an '@' after a '/' with no ':' before it is a
    path's (s3://bucket/a@b), not a credential's."""
    rest = match["rest"]
    authority_and_path = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = authority_and_path.rfind("@")
    if at < 0:
        return match[0]
    userinfo = authority_and_path[:at]
    if "/" in userinfo and ":" not in userinfo:
        return match[0]
    return f"{match['scheme']}***@{rest[at + 1:]}"


def redact(text: str) -> str:
    """The one redaction of every location or message the project prints, logs or records: user:password@
    in URIs, the values of secret query parameters and key=value settings (SECRET_NAMES), `Bearer <token>`,
    and the home directory (-> ~)."""
    text = _URI.sub(_redact_userinfo, str(text))
    text = _SECRET_VALUE.sub(r"\1\2***", text)
    text = _BEARER.sub(r"\1\2***", text)
    home = os.path.expanduser("~")
    if home and home != "/":
        text = text.replace(home, "~")
    return text


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), redacted."""
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


def provenance(device: str | None = None) -> dict[str, str]:
    return {"code_version": code_version(), "hardware": hardware(device), **package_versions(),
            "platform": platform.platform(), "python_executable": redact(sys.executable)}
