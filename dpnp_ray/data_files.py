"""Readers of the released dataset files, each checking what it reads and saying what to do when a file is wrong.

CIFAR-10/100 pickled batches (read by `safe_pickle`, which interprets their opcodes itself and builds only
plain numeric arrays, never calling anything a pickle names), SVHN's .mat files, Fashion-MNIST's IDX files
(gzipped or not) and scikit-learn's digits table; `_ensure_files` downloads missing files when asked to.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import safe_pickle
from .data_types import DataError, DatasetInfo, Split


# ---------------------------------------------------------------- pickles (CIFAR)

def _unpickle(path: Path) -> dict[str, object]:
    """A released CIFAR file as a dict with str keys (the files' keys are Python 2 byte strings)."""
    try:
        obj = safe_pickle.loads(path.read_bytes())
    except safe_pickle.RefusedPickle as e:
        raise DataError(
            f"{path}: {e}; refusing to load it (the file is corrupt or tampered with; delete it and download again)"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(batch: dict[str, object], key: str, path: Path) -> object:
    if key not in batch:
        raise DataError(f"{path}: missing field {key!r}; found {sorted(batch)}")
    return batch[key]


def _cifar_split(paths: list[Path], label_key: str, num_classes: int) -> Split:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(_field(batch, "data", path))
        try:
            y = np.asarray(_field(batch, label_key, path), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{path}: field {label_key!r} must be a list of int labels") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(y) != len(data):
            raise DataError(
                f"{path}: field 'data' must be uint8 (N, 3072) with N = len({label_key!r}) = {len(y)}, "
                f"got {data.dtype} {data.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each row-major
        labels.append(y)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _ensure_files(name: str, folder: Path, files: list[str], download: bool, fetch: Callable[[], None]) -> None:
    missing = [folder / f for f in files if not (folder / f).is_file()]
    if missing and download:
        fetch()
        missing = [p for p in missing if not p.is_file()]
    if missing:
        raise DataError(
            f"dataset {name!r}: missing {', '.join(map(str, missing))}; pass download=True (needs internet) "
            f"or place the released files in {folder}"
        )


def _load_cifar(root: Path, download: bool, info: DatasetInfo, tv_class: str, train_files: list[str],
                test_file: str, label_key: str, names_key: str) -> tuple[Split, Split]:
    import torchvision.datasets as tvd  # deferred: torchvision is slow to import and only needed here

    spec = getattr(tvd, tv_class)  # the official URL and md5 live on torchvision's class
    folder = root / spec.base_folder

    def fetch() -> None:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(spec.url, str(root), filename=spec.filename, md5=spec.tgz_md5)

    meta_file = "batches.meta" if tv_class == "CIFAR10" else "meta"
    _ensure_files(info.name, folder, [*train_files, test_file, meta_file], download, fetch)
    # The meta file tells CIFAR-10 from CIFAR-100, so a mixed-up root fails here, not in training.
    names = _field(_unpickle(folder / meta_file), names_key, folder / meta_file)
    if len(names) != info.num_classes:
        raise DataError(
            f"{folder / meta_file}: {names_key!r} lists {len(names)} classes, {info.name} has {info.num_classes}"
        )
    train = _cifar_split([folder / f for f in train_files], label_key, info.num_classes)
    test = _cifar_split([folder / test_file], label_key, info.num_classes)
    return train, test


# ---------------------------------------------------------------- SVHN

def _svhn_split(path: Path) -> Split:
    from scipy.io import loadmat

    mat = loadmat(str(path))
    for key in ("X", "y"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{path}: missing variable {key!r}; found {found}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3) or x.ndim != 4 or x.shape[3] != len(y):
        raise DataError(
            f"{path}: 'X' must be uint8 (32, 32, 3, N) with N = len(y) = {len(y)}, got {x.dtype} {x.shape}"
        )
    y[y == 10] = 0  # SVHN stores the digit 0 as class 10
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must lie in 1..10, got {y.min()}..{y.max()} after mapping 10 -> 0")
    # (H, W, C, N) -> (N, C, H, W); copy so the tensor owns contiguous memory.
    return Split(torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y))


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, then the number of dimensions


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions (gzipped when it ends in .gz), checked
    against its header: the magic number, and exactly prod(dims) bytes of data after it."""
    opener = gzip.open if path.suffix == ".gz" else open
    header_size = 4 + 4 * ndim
    try:
        with opener(path, "rb") as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise DataError(f"{path}: truncated IDX header ({len(header)} of {header_size} bytes)")
            magic = int.from_bytes(header[:4], "big")
            if magic != _IDX_MAGIC[ndim]:
                raise DataError(f"{path}: IDX magic number is {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
                                f"(unsigned bytes, {ndim} dimension(s)); the file is not this part of the dataset")
            dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
            expected = int(np.prod(dims, dtype=np.int64))
            payload = f.read(expected + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError: a truncated stream
        raise DataError(f"{path}: not a readable IDX file ({e}); replace it with the released file") from e
    if len(payload) != expected:
        raise DataError(f"{path}: header says {dims} = {expected} bytes of data, the file holds "
                        f"{'more' if len(payload) > expected else len(payload)}; the file is truncated or corrupt")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem.gz` in folder (torchvision keeps both; the plain one is read first)."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _fashion_mnist_split(folder: Path, images_stem: str, labels_stem: str) -> Split:
    images_path, labels_path = _idx_path(folder, images_stem), _idx_path(folder, labels_stem)
    x, y = _read_idx(images_path, 3), _read_idx(labels_path, 1).astype(np.int64)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataError(f"{images_path}: images must be (N, 28, 28) with N = the {len(y)} labels of "
                        f"{labels_path.name}, got {x.shape}")
    if len(y) and y.max() > 9:
        raise DataError(f"{labels_path}: labels must lie in 0..9, got {y.min()}..{y.max()}")
    return Split(torch.from_numpy(x.reshape(-1, 1, 28, 28).copy()), torch.from_numpy(y))


# ---------------------------------------------------------------- scikit-learn digits

def _digits_table() -> np.ndarray:
    """The rows of scikit-learn's digits.csv.gz (64 pixels, then the label), read as
    sklearn.datasets.load_digits reads them but without importing scikit-learn, which pulls in
    scipy.stats and joblib: seconds of start-up in every trial's worker."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' needs scikit-learn (pip install scikit-learn): its data file ships with it")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():  # a scikit-learn that keeps the file elsewhere: let it find it
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return np.column_stack([bunch.data, bunch.target])
    return np.loadtxt(path, delimiter=",")
