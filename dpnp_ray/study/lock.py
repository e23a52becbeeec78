"""One driver per study: `<study>/driver.lock`, held from just before the first trial until the tables are written.

The lock is a small JSON object (host, pid, start time, a random token, the command) created atomically:
on a local or shared file system with a hard link from a complete temporary file (fails if the lock
exists, never leaves a half-written lock); on object storage, where pyarrow offers no conditional create,
best effort: the driver writes its lock only where none is, then reads it back and keeps it only if the
token is its own (two drivers starting within one round trip of each other can both pass the first
look; the read-back catches the later writer in all but that window).

A lock is stale, and taken over, when its holder ran on this host and that process is gone (a killed
driver: `--resume` is never blocked by it). A lock of another host cannot be checked from here: the
error says which host and process hold it and how to remove it once that driver is known to be gone.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..provenance import redact
from .settings import StudyError

LOCK_FILE = "driver.lock"


@dataclass
class StudyLock:
    """A held lock; `release` removes it if it is still this driver's."""

    location: str
    token: str

    def release(self) -> None:
        holder = read_lock(self.location)
        if holder is not None and holder.get("token") == self.token:
            storage.delete(self.location)


def read_lock(location: str) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None if there is none. An unreadable lock is held by 'unknown'."""
    try:
        data = json.loads(storage.read_bytes(location))
    except (FileNotFoundError, OSError):
        return None
    except ValueError:  # a lock cut short: its holder is not known
        return {"host": "unknown", "pid": None}
    return data if isinstance(data, dict) else {"host": "unknown", "pid": None}


def is_stale(holder: dict[str, Any], host: str | None = None) -> bool:
    """Whether a lock's holder is known to be gone: it ran on this host and its process does not exist."""
    if holder.get("host") != (host or socket.gethostname()) or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def acquire(study_dir: str) -> StudyLock:
    """Take the study's lock, or raise StudyError naming who holds it."""
    location = storage.join(study_dir, LOCK_FILE)
    token = secrets.token_hex(16)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "token": token,
            "command": redact(" ".join([Path(sys.executable).name, *sys.argv]))}
    holder = read_lock(location)
    if holder is not None:
        if not is_stale(holder):
            raise _held(location, holder)
        storage.delete(location)  # its driver was killed
    data = json.dumps(mine).encode()
    if storage.is_uri(location):
        storage.write_bytes_atomic(location, data)
        holder = read_lock(location)
        if holder is None or holder.get("token") != token:
            raise _held(location, holder or {"host": "unknown", "pid": None})
    else:
        _create_exclusive(storage.local_path(location), data, lambda: _held(location, read_lock(location) or {}))
    return StudyLock(location, token)


def _create_exclusive(path: Path, data: bytes, error) -> None:
    """Write path with data only if it does not exist (os.link of a complete temporary file is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise error() from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _held(location: str, holder: dict[str, Any]) -> StudyError:
    host, pid = holder.get("host", "unknown"), holder.get("pid")
    since = holder.get("started_at")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else ""
    here = host == socket.gethostname()
    how = ("wait for it to end, or stop it" if here else
           f"if no driver of this study runs on {host} any more, remove {redact(location)} and run again")
    return StudyError(f"--name: another driver (host {host}, pid {pid}{when}) is running this study and holds "
                      f"{redact(location)}; {how}; or use another --name")
