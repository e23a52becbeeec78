"""The Optuna storage of a search: opening it (a journal file or an RDB URL), checking it before Ray
starts, and where a search's journal lives (beside the study, or on this machine while the study directory
is on object storage). The one place the rest of the study layer gets an Optuna storage from."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import optuna

from .. import storage
from ..provenance import redact
from .settings import StudySettings


def make_storage(location: str):
    """An Optuna storage from a journal file path or an RDB URL (sqlite:///..., postgresql://...)."""
    if "://" in location and not location.startswith("file://"):
        return optuna.storages.RDBStorage(location)
    from optuna.storages.journal import JournalFileBackend

    path = storage.local_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def optuna_storage_problems(location: str) -> tuple[list[str], Any]:
    """([], the opened storage) or ([the line saying why it cannot be used], None)."""
    try:
        return [], make_storage(location)
    except ImportError as exc:  # the URL's DB driver (psycopg2, pymysql, ...) is not installed
        reason = f"its database driver is not installed ({exc})"
    except OSError as exc:
        reason = f"the journal file cannot be written ({exc})"
    except Exception as exc:  # SQLAlchemy: an unknown dialect, an unparseable URL, a database it cannot open
        reason = f"cannot be opened ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''})"
    return [f"--optuna-storage {redact(location)!r}: {redact(reason)}; allowed: a journal file path, or an RDB URL "
            "whose driver is installed (sqlite:///study.db, postgresql+psycopg2://host/db, ...)"], None


def journal_locations(settings: StudySettings, optuna_storage: str | None,
                      restore: bool | None = None) -> tuple[str, str | None]:
    """(the Optuna storage the search uses, where a copy of its journal goes when the study ends).

    By default the journal is <study dir>/optuna.journal. A study directory on object storage
    (s3://...) cannot hold a file that is appended to, so the journal is kept on this machine at a
    path fixed by the study directory (a restored searcher reopens that path) and copied to
    <study dir>/optuna.journal when the study ends or stops; `restore` (default: --resume; also a search
    that grows) first copies it back.
    """
    restore = settings.resume if restore is None else restore
    if optuna_storage:
        return optuna_storage, None
    journal = storage.join(settings.directory, "optuna.journal")
    if not storage.is_uri(settings.directory):
        return journal, None
    digest = hashlib.sha256(settings.directory.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "dpnp_ray_optuna" / f"{settings.name}-{digest}.journal"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.unlink(missing_ok=True)  # a fresh study starts empty; a resumed one from the copy in storage
    if restore:
        try:
            local.write_bytes(storage.read_bytes(journal))
        except OSError:  # no copy yet: the study stopped before its first end
            pass
    return str(local), journal
