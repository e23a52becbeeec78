"""Storage locations, local paths and URIs alike (s3://, gs://, hdfs:// through pyarrow filesystems): the one
URI-aware join, the directory of a file, reading and writing bytes (atomically), existence checks, listing.
Knows nothing of what the files hold (the results schema: results.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .provenance import error_line, redact


class ResultsError(ValueError):
    """A results location cannot be opened, or a results file is missing, unreadable or of the wrong schema;
    names it. Raised here for a location pyarrow cannot open, by results.py for its tables."""


def is_uri(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> Path:
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def split_query(location: str | Path) -> tuple[str, str]:
    """(the location without its query string, "?<query>" or ""); only URIs have a query string."""
    text = str(location)
    if is_uri(text) and "?" in text:
        base, query = text.split("?", 1)
        return base, "?" + query
    return text, ""


def join(location: str | Path, *parts: str) -> str:
    """The one join of a storage location and path parts: local paths and URIs alike, a URI's query string
    (s3://bucket/x?endpoint_override=host:9000&scheme=http) kept at the end, its user info untouched."""
    base, query = split_query(location)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + query


def parent(location: str | Path) -> str:
    """The directory holding a file (local or URI, query string kept): Path(...).parent, which would collapse
    s3:// into s3:/, for storage locations."""
    base, query = split_query(location)
    return base.rstrip("/").rsplit("/", 1)[0] + query


def filesystem(location: str | Path):
    """(pyarrow filesystem, path in it) of a URI. A URI pyarrow cannot open is a one-line ResultsError without
    its credentials (pyarrow's own message repeats the URI)."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(str(location))
    except (ValueError, OSError, TypeError) as exc:  # ArrowInvalid is a ValueError
        raise ResultsError(f"{redact(str(location))}: not a storage location that can be opened "
                           f"({type(exc).__name__}: {error_line(exc)}); allowed: a local path, or an s3://, gs:// or "
                           "hdfs:// URI (an S3-compatible endpoint via AWS_ENDPOINT_URL or ?endpoint_override=)"
                           ) from None


def write_bytes_atomic(location: str, data: bytes) -> None:
    """Never leave a half-written file: local files go through a temporary file and os.replace;
    object stores (s3://, gs://) publish an object only when its upload completes."""
    if is_uri(location):
        fs, path = filesystem(location)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    target = local_path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def delete(location: str) -> None:
    """Remove a file (local or URI); nothing if it is not there."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            fs.delete_file(path)
    else:
        local_path(location).unlink(missing_ok=True)


def list_names(location: str | Path, prefix: str) -> list[str]:
    """Names (not paths) of the files and directories directly under a directory (local or URI) that start
    with prefix, sorted; [] if the directory does not exist."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.base_name.startswith(prefix))
    folder = local_path(location)
    return sorted(p.name for p in folder.glob(f"{prefix}*")) if folder.is_dir() else []


def list_files(location: str | Path, suffix: str) -> list[str]:
    """Files directly under a directory (local or URI, the URI's credentials and query kept) whose names end
    with suffix, sorted."""
    if is_uri(location):
        return [join(location, name) for name in list_names(location, "") if name.endswith(suffix)]
    folder = local_path(location)
    return sorted(str(p) for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def exists(location: str) -> bool:
    """Whether a file (local or URI) exists."""
    if is_uri(location):
        import pyarrow.fs

        fs, path = filesystem(location)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    return local_path(location).exists()


def read_bytes(location: str) -> bytes:
    if is_uri(location):
        fs, path = filesystem(location)
        with fs.open_input_stream(path) as stream:
            return stream.read()
    return local_path(location).read_bytes()
