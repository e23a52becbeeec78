"""Tests for dpnp_ray.data: loaders read tiny files written in the released formats (no downloads)."""

from __future__ import annotations

import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from dpnp_ray import data
from dpnp_ray.data import (
    AUGMENTATIONS,
    DATASETS,
    DataError,
    DatasetInfo,
    Split,
    augment,
    dataset_info,
    load_dataset,
    register_dataset,
    stratified_split,
    to_float,
)
from .support import REPO
from .support.pickles import REFUSED, py2_pickle



# ---------------------------------------------------------------- writers of the released formats


def cifar_pixel(i: int, c: int, h: int, w: int) -> int:
    """The known pattern written into example i: distinct enough to catch any axis mix-up."""
    return (i * 37 + c * 101 + h * 7 + w * 3) % 256


def cifar_rows(offset: int, n: int) -> np.ndarray:
    """(n, 3072) uint8 laid out as documented: 1024 red, 1024 green, 1024 blue, each row-major."""
    c, rest = np.divmod(np.arange(3072), 1024)
    h, w = np.divmod(rest, 32)
    i = np.arange(offset, offset + n)[:, None]
    return cifar_pixel(i, c, h, w).astype(np.uint8)


def cifar_image(i: int) -> torch.Tensor:
    """Example i as (C, H, W), built pixel by pixel from the pattern, independently of any reshape."""
    return torch.tensor([[[cifar_pixel(i, c, h, w) for w in range(32)] for h in range(32)] for c in range(3)],
                        dtype=torch.uint8)


def dump(obj, path: Path, protocol: int | str) -> None:
    """protocol "py2": the byte-level format of the released files (only for dicts of arrays and lists)."""
    if protocol == "py2":
        assert pickle.loads(py2_pickle(obj), encoding="bytes").keys() == obj.keys()  # the writer is sound
        path.write_bytes(py2_pickle(obj))
        return
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 3, protocol: int | str = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        batch = {b"data": cifar_rows(b * per_batch, per_batch), b"labels": labels}
        dump(batch, folder / f"data_batch_{b + 1}", protocol)
    test = {b"data": cifar_rows(1000, n_test), b"labels": [9 - i for i in range(n_test)]}
    dump(test, folder / "test_batch", protocol)
    dump({b"label_names": [b"c%d" % k for k in range(10)], b"num_vis": 3072}, folder / "batches.meta", 2)
    return folder


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    dump({b"data": cifar_rows(0, n_train), b"fine_labels": [99 - i for i in range(n_train)],
          b"coarse_labels": [0] * n_train}, folder / "train", 4)
    dump({b"data": cifar_rows(500, n_test), b"fine_labels": [42] * n_test, b"coarse_labels": [0] * n_test},
         folder / "test", 4)
    dump({b"fine_label_names": [b"f%d" % k for k in range(100)], b"coarse_label_names": [b"c"] * 20},
         folder / "meta", 4)
    return folder


def svhn_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as released
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 meaning digit 0
    return x, y


def write_svhn(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "svhn"
    folder.mkdir(parents=True)
    arrays = {"train": svhn_arrays(n_train, 0), "test": svhn_arrays(n_test, 1)}
    for split, (x, y) in arrays.items():
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
    return arrays


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file as released: magic 0x0000080<ndim> (unsigned bytes), big-endian dims, the data."""
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def fashion_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_fashion_mnist(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = True,
                        folder: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files in torchvision's layout <root>/FashionMNIST/raw/ (or in `folder`)."""
    import gzip

    folder = folder or root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": fashion_arrays(n_train, 0), "test": fashion_arrays(n_test, 1)}
    for part, stems in data.FASHION_MNIST_FILES.items():
        for stem, array in zip(stems, arrays[part]):
            raw = idx_bytes(array)
            if gz:
                with gzip.open(folder / f"{stem}.gz", "wb") as f:
                    f.write(raw)
            else:
                (folder / stem).write_bytes(raw)
    return arrays


# ---------------------------------------------------------------- registry


def test_registry_lists_the_datasets_and_their_threat_models():
    assert DATASETS.names() == ("cifar10", "cifar100", "digits", "fashion_mnist", "svhn")
    assert dataset_info("fashion_mnist").default_eps == 0.1 and dataset_info("fashion_mnist").augmentation == "none"
    assert dataset_info("cifar10").default_eps == pytest.approx(8 / 255)
    assert dataset_info("svhn").augmentation == "crop"
    assert dataset_info("cifar100").augmentation == "crop_flip"
    assert dataset_info("digits").augmentation == "none" and dataset_info("digits").default_eps == 0.1
    for name in DATASETS.names():
        info = dataset_info(name)
        assert info.name == name and info.augmentation in AUGMENTATIONS
        assert len(info.mean) == len(info.std) == info.image_shape[0]


#: dataset -> a writer of tiny files in its released layout under a root (digits ships with scikit-learn)
WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn, "digits": lambda root: None,
           "fashion_mnist": write_fashion_mnist}


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_loads_in_its_declared_shape(tmp_path, name):
    assert name in WRITERS, f"add a writer of {name!r}'s released files to WRITERS"
    WRITERS[name](tmp_path)
    splits = load_dataset(name, tmp_path, val_fraction=0.5)
    info = dataset_info(name)
    assert splits.info == info and len(splits.train) > 0 and len(splits.test) > 0
    for split in (splits.train, splits.val, splits.test):
        assert tuple(split.images.shape[1:]) == info.image_shape
        assert split.labels.numel() == 0 or 0 <= split.labels.min() <= split.labels.max() < info.num_classes
    x = to_float(splits.train.images[:2])
    assert augment(x, info.augmentation, torch.Generator().manual_seed(0)).shape == x.shape


def test_unknown_dataset_name_lists_known_names():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    msg = str(err.value)
    assert msg == f"unknown dataset 'imagenet'; known: {', '.join(DATASETS.names())}"
    assert isinstance(err.value, ValueError)
    with pytest.raises(DataError, match="imagenet"):
        dataset_info("imagenet")


def test_registering_a_dataset_makes_it_loadable_and_names_are_unique(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", DATASETS.copy())
    info = DatasetInfo("toy", 2, (1, 2, 2), (0.5,), (0.5,), 0.1, "none")

    @register_dataset(info)
    def load_toy(root, download):
        labels = torch.arange(20) % 2
        return Split(torch.rand(20, 1, 2, 2), labels), Split(torch.rand(4, 1, 2, 2), labels[:4])

    splits = load_dataset("toy", val_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
    with pytest.raises(DataError, match="toy"):
        register_dataset(info)(load_toy)
    with pytest.raises(DataError, match="augmentation 'cutout' is unknown; known: " + ", ".join(AUGMENTATIONS)):
        register_dataset(DatasetInfo("toy2", 2, (1, 2, 2), (0.5,), (0.5,), 0.1, "cutout"))(load_toy)
    assert "toy" not in DATASETS and "toy2" not in data.DATASETS  # the module's registry is a copy


# ---------------------------------------------------------------- digits and the validation split


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split_seed=0)


def test_digits_shapes_dtypes_and_value_range(digits):
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    for split in (digits.train, digits.val, digits.test):
        assert split.images.dtype == torch.float32 and split.images.shape[1:] == (1, 8, 8)
        assert split.labels.dtype == torch.int64
        assert 0 <= split.images.min() and split.images.max() <= 1
        assert torch.equal(split.images * 16, (split.images * 16).round())  # 17 grey levels
        assert set(split.labels.tolist()) == set(range(10))
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(digits.val) == pytest.approx(0.1 * (len(digits.train) + len(digits.val)), abs=10)


def test_digits_test_split_is_fixed_while_val_follows_split_seed(digits):
    other = load_dataset("digits", split_seed=1)
    assert torch.equal(other.test.images, digits.test.images)
    assert torch.equal(other.test.labels, digits.test.labels)
    assert not torch.equal(other.val.images, digits.val.images)
    again = load_dataset("digits", split_seed=0)
    assert torch.equal(again.val.images, digits.val.images)


def test_digits_parts_partition_the_dataset(digits):
    from sklearn.datasets import load_digits

    def rows(images: torch.Tensor) -> Counter:
        levels = (images.reshape(len(images), -1) * 16).round().to(torch.uint8).numpy()
        return Counter(row.tobytes() for row in levels)

    everything = torch.from_numpy(load_digits().images.astype(np.float32) / 16).unsqueeze(1)
    # Equal multisets of rows: no example is reused or lost (digits has duplicate images, so not sets).
    assert rows(digits.train.images) + rows(digits.val.images) + rows(digits.test.images) == rows(everything)


def test_val_is_stratified(digits):
    train_counts = torch.bincount(digits.train.labels, minlength=10)
    val_counts = torch.bincount(digits.val.labels, minlength=10)
    for n_val, n_total in zip(val_counts.tolist(), (train_counts + val_counts).tolist()):
        assert n_val == round(0.1 * n_total)


def test_digits_mean_std_match_the_train_images(digits):
    pixels = torch.cat([digits.train.images, digits.val.images])
    info = dataset_info("digits")
    assert info.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert info.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-4)


def test_stratified_split_partitions_each_class():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 2 + [3])
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(len(labels)))
    assert torch.bincount(labels[held], minlength=4).tolist() == [10, 1, 1, 0]  # singleton stays in keep
    assert set(labels[keep].tolist()) == {0, 1, 2, 3}
    assert torch.equal(stratified_split(labels, 0.2, seed=3)[1], held)
    assert not torch.equal(stratified_split(labels, 0.2, seed=4)[1], held)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "0.1", True])
def test_val_fraction_outside_unit_interval_is_refused(bad):
    with pytest.raises(DataError, match="val_fraction") as err:
        load_dataset("digits", val_fraction=bad)
    assert repr(bad) in str(err.value)


# ---------------------------------------------------------------- CIFAR and SVHN from released-format files


# "py2": the release's own byte format; 0-5: files re-pickled by Python 3 (5 takes numpy's _frombuffer path).
@pytest.mark.parametrize("protocol", ["py2", 0, 2, 4, 5])
def test_cifar10_reads_released_layout(tmp_path, protocol):
    write_cifar10(tmp_path, per_batch=4, n_test=3, protocol=protocol)
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.5, split_seed=0)
    assert len(splits.train) + len(splits.val) == 20 and len(splits.test) == 3
    test = splits.test
    assert test.images.dtype == torch.uint8 and test.images.shape == (3, 3, 32, 32)
    assert test.labels.tolist() == [9, 8, 7]
    for i in range(3):
        assert torch.equal(test.images[i], cifar_image(1000 + i))
    # Train example j carries label j % 10 and pattern j; each must arrive intact in train or val, once.
    seen = []
    for split in (splits.train, splits.val):
        for image, label in zip(split.images, split.labels):
            j = {cifar_pixel(j, 0, 0, 0): j for j in range(20)}[int(image[0, 0, 0])]  # 37 j mod 256 is unique
            assert torch.equal(image, cifar_image(j)) and label == j % 10
            seen.append(j)
    assert sorted(seen) == list(range(20))


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    splits = load_dataset("cifar100", tmp_path, val_fraction=0.5)
    assert splits.info.num_classes == 100
    assert sorted(splits.train.labels.tolist() + splits.val.labels.tolist()) == [94, 95, 96, 97, 98, 99]
    assert splits.test.labels.tolist() == [42, 42]
    assert splits.test.images[1, 1, 2, 3] == cifar_pixel(501, 1, 2, 3)
    assert splits.test.images[0, 2, 31, 30] == cifar_pixel(500, 2, 31, 30)


def test_cifar_meta_of_the_other_dataset_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)
    dump({b"label_names": [b"a", b"b"]}, folder / "batches.meta", 2)
    with pytest.raises(DataError, match="batches.meta"):
        load_dataset("cifar10", tmp_path)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    arrays = write_svhn(tmp_path)
    splits = load_dataset("svhn", tmp_path, val_fraction=0.5)
    x, y = arrays["test"]
    test = splits.test
    assert test.images.dtype == torch.uint8 and test.images.shape == (5, 3, 32, 32)
    assert test.labels.tolist() == [1, 2, 3, 4, 5]
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 5, 17), (4, 1, 31, 0), (3, 0, 0, 31)]:
        assert test.images[n, c, h, w] == x[h, w, c, n]
    train_labels = torch.cat([splits.train.labels, splits.val.labels])
    assert sorted(train_labels.tolist()) == sorted([1, 2, 3, 4, 5, 6, 7, 8, 9, 0] + [1, 2])
    assert train_labels.dtype == torch.int64


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                          ("svhn", "svhn")])
def test_missing_files_without_download_name_the_path(tmp_path, name, folder):
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path)
    assert str(tmp_path / folder) in str(err.value) and "download=True" in str(err.value)


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)


@pytest.fixture
def no_system_fashion(tmp_path, monkeypatch):
    """Debian's directory replaced by an empty one, so a test sees only the files it writes."""
    system = tmp_path / "system"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system)
    return system


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_torchvision_layout_gzipped_or_not(tmp_path, no_system_fashion, gz):
    arrays = write_fashion_mnist(tmp_path / "root", gz=gz)
    splits = load_dataset("fashion_mnist", tmp_path / "root", val_fraction=0.5)
    images = torch.cat([splits.train.images, splits.val.images])
    labels = torch.cat([splits.train.labels, splits.val.labels])
    order = torch.cat([data.stratified_split(torch.from_numpy(arrays["train"][1].astype(np.int64)), 0.5, 0)[i]
                       for i in (0, 1)])
    assert torch.equal(images[:, 0], torch.from_numpy(arrays["train"][0])[order])
    assert torch.equal(labels, torch.from_numpy(arrays["train"][1].astype(np.int64))[order])
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["test"][0]))
    assert splits.test.images.dtype == torch.uint8 and splits.test.labels.dtype == torch.int64


def test_fashion_mnist_prefers_data_root_then_the_system_files(tmp_path, no_system_fashion):
    write_fashion_mnist(tmp_path, n_train=30, n_test=7, folder=no_system_fashion)
    splits = load_dataset("fashion_mnist", tmp_path / "empty")  # data_root holds nothing
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (30, 7)
    write_fashion_mnist(tmp_path / "root", n_train=20, n_test=10)
    splits = load_dataset("fashion_mnist", tmp_path / "root")
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (20, 10)


def test_fashion_mnist_partial_data_root_is_an_error_not_a_silent_fallback(tmp_path, no_system_fashion):
    write_fashion_mnist(tmp_path, folder=no_system_fashion)
    write_fashion_mnist(tmp_path / "root")
    (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path / "root")
    msg = str(err.value)
    assert "\n" not in msg and "t10k-labels-idx1-ubyte[.gz]" in msg and "t10k-images" not in msg


def test_fashion_mnist_missing_everywhere_names_the_three_ways(tmp_path, no_system_fashion):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "dataset-fashion-mnist" in msg and "download=True" in msg


def test_fashion_mnist_download_goes_through_torchvision(tmp_path, no_system_fashion, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeFashionMNIST:  # torchvision's class downloads into <root>/FashionMNIST/raw
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_fashion_mnist(Path(root), n_test=4)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(DataError):
        load_dataset("fashion_mnist", tmp_path)  # download is off by default
    assert calls == []
    assert len(load_dataset("fashion_mnist", tmp_path, download=True).test) == 4
    assert calls == [(str(tmp_path), True, True)]


def _corrupt(folder: Path, stem: str, raw: bytes) -> None:
    import gzip

    with gzip.open(folder / f"{stem}.gz", "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("case, stem, expected", [
    ("truncated data", "train-images-idx3-ubyte", "holds 15679"),  # one byte short of 20 x 28 x 28
    ("longer than its header", "t10k-labels-idx1-ubyte", "holds more"),
    ("wrong magic", "train-labels-idx1-ubyte", "magic number is 0x00000803"),
    ("short header", "t10k-images-idx3-ubyte", "truncated IDX header"),
    ("wrong image size", "train-images-idx3-ubyte", "must be (N, 28, 28)"),
    ("label count", "train-labels-idx1-ubyte", "the 19 labels"),
    ("label range", "t10k-labels-idx1-ubyte", "labels must lie in 0..9, got 0..10"),
    ("not gzip", "t10k-images-idx3-ubyte", "not a readable IDX file"),
    ("cut gzip stream", "train-images-idx3-ubyte", "not a readable IDX file"),
])
def test_fashion_mnist_bad_files_get_one_line_errors_naming_the_file(tmp_path, no_system_fashion, case, stem,
                                                                      expected):
    import gzip

    arrays = write_fashion_mnist(tmp_path)
    folder = tmp_path / "FashionMNIST" / "raw"
    good = {"train-images-idx3-ubyte": arrays["train"][0], "train-labels-idx1-ubyte": arrays["train"][1],
            "t10k-images-idx3-ubyte": arrays["test"][0], "t10k-labels-idx1-ubyte": arrays["test"][1]}[stem]
    raw = idx_bytes(good)
    if case == "truncated data":
        _corrupt(folder, stem, raw[:-1])
    elif case == "longer than its header":
        _corrupt(folder, stem, raw + b"\x00")
    elif case == "wrong magic":
        _corrupt(folder, stem, idx_bytes(good, magic=0x803))
    elif case == "short header":
        _corrupt(folder, stem, raw[:10])
    elif case == "wrong image size":
        _corrupt(folder, stem, idx_bytes(np.zeros((20, 32, 32), np.uint8)))
    elif case == "label count":
        _corrupt(folder, stem, idx_bytes(good[:19]))
    elif case == "label range":
        _corrupt(folder, stem, idx_bytes(np.append(good[:-1], 10)))
    elif case == "not gzip":
        (folder / f"{stem}.gz").write_bytes(raw)
    elif case == "cut gzip stream":
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and stem in msg


# ---------------------------------------------------------------- training subset


def test_stratified_subset_is_exact_proportional_seeded_and_sorted():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    chosen = data.stratified_subset(labels, 10, seed=3)
    assert torch.equal(chosen, chosen.sort().values) and len(set(chosen.tolist())) == 10
    assert torch.bincount(labels[chosen]).tolist() == [5, 3, 2]
    assert torch.equal(chosen, data.stratified_subset(labels, 10, seed=3))
    assert not torch.equal(chosen, data.stratified_subset(labels, 10, seed=4))
    # 7 of 100: floors 3, 2, 1 (remainders 50, 10, 40) and the one left goes to class 0
    assert torch.bincount(labels[data.stratified_subset(labels, 7, 0)], minlength=3).tolist() == [4, 2, 1]
    assert len(data.stratified_subset(labels, 100, 0)) == 100 and len(data.stratified_subset(labels, 0, 0)) == 0
    with pytest.raises(DataError, match="n must lie in 0..100, got 101"):
        data.stratified_subset(labels, 101, 0)


def test_train_subset_draws_from_train_only_and_leaves_val_and_test_unchanged(tmp_path, no_system_fashion):
    write_fashion_mnist(tmp_path, n_train=200, n_test=10)
    whole = load_dataset("fashion_mnist", tmp_path, split_seed=1)
    sub = load_dataset("fashion_mnist", tmp_path, split_seed=1, train_subset=50)
    assert torch.equal(sub.val.images, whole.val.images) and torch.equal(sub.test.images, whole.test.images)
    assert len(sub.train) == 50 and torch.bincount(sub.train.labels).tolist() == [5] * 10
    rows = {tuple(x.flatten().tolist()) for x in whole.train.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in sub.train.images)
    again = load_dataset("fashion_mnist", tmp_path, split_seed=1, train_subset=50)
    assert torch.equal(again.train.images, sub.train.images)
    other = load_dataset("fashion_mnist", tmp_path, split_seed=2, train_subset=50)
    assert not torch.equal(other.train.images, sub.train.images)


@pytest.mark.parametrize("bad, expected", [(181, "train_subset=181 exceeds the 180 training images"),
                                           (-1, "train_subset must be an integer >= 0"),
                                           (2.5, "train_subset must be an integer >= 0")])
def test_train_subset_out_of_range_is_refused(tmp_path, no_system_fashion, bad, expected):
    write_fashion_mnist(tmp_path, n_train=200)
    with pytest.raises(DataError, match=expected):
        load_dataset("fashion_mnist", tmp_path, train_subset=bad)


def test_train_subset_is_a_config_field_recorded_as_a_cfg_column():
    from dpnp_ray.config import ConfigError, ExperimentConfig
    from dpnp_ray.results import config_columns

    cfg = ExperimentConfig.from_dict({"train_subset": 500})
    assert cfg.train_subset == 500 and ExperimentConfig().train_subset == 0
    assert config_columns(cfg.to_dict())["cfg_train_subset"] == 500
    with pytest.raises(ConfigError, match="'train_subset' = -5: must be >= 0"):
        ExperimentConfig.from_dict({"train_subset": -5})


# ---------------------------------------------------------------- digits at eps 0.2


def test_linf_separation_equals_brute_force():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((37, 1, 2, 3)))  # float64, as the function computes
    y = torch.from_numpy(rng.integers(0, 3, 37))
    brute = min(float((x[i] - x[j]).abs().max()) for i in range(37) for j in range(37) if y[i] != y[j])
    assert data.linf_class_separation(x, y, chunk=5) == pytest.approx(brute, abs=0)


def test_digits_classes_are_0_4375_apart_so_eps_0_2_is_a_valid_threat_model():
    """The smallest L-inf distance between differently labelled digits over all 1,797 images is
    7/16 (pixels are k/16): no point can be moved into another class's image within 2 x 0.2."""
    train, test = data.load_digits(Path("."), False)
    images, labels = torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])
    assert len(labels) == 1797
    separation = data.linf_class_separation(images, labels)
    assert separation == 7 / 16 and 2 * 0.2 < separation


def test_download_fetches_the_official_archive(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename, md5))
        write_cifar10(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    splits = load_dataset("cifar10", tmp_path, download=True)
    assert calls == [(tvd.CIFAR10.url, tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)]
    assert len(splits.test) == 3


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("nest", [False, True])
def test_tampered_pickle_is_refused_without_running_it(tmp_path, nest):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = _RunsShell(marker)
    evil = {b"data": cifar_rows(0, 1), b"labels": [payload]} if nest else payload
    dump(evil, folder / "data_batch_1", 2)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "data_batch_1") in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_corrupt_pickle_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(DataError, match="test_batch.*truncated"):
        load_dataset("cifar10", tmp_path)


# Cases of tests/support/pickles.py (tested in tests/test_safe_pickle.py): a dtype state saying "object" (a crash under pickle), a real object array,
# a call of os.system, a cut-off file.
@pytest.mark.parametrize("case", ["dtype state with object flags", "object array, protocol 2", "os.system",
                                  "truncated batch"])
def test_crafted_pickles_are_refused_naming_the_file(tmp_path, case):
    data, found = REFUSED[case]
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(data)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{folder / 'data_batch_2'}: ") and found in msg and "download again" in msg


def test_labels_that_are_not_ints_name_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    dump({b"data": cifar_rows(0, 1), b"labels": [b"cat"]}, folder / "test_batch", 2)
    with pytest.raises(DataError, match="test_batch: field 'labels' must be a list of int labels"):
        load_dataset("cifar10", tmp_path)


# ---------------------------------------------------------------- to_float and augment


def test_to_float_scales_uint8_and_passes_floats():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 0.2, 1.0]))
    assert to_float(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(DataError, match="int64"):
        to_float(torch.tensor([1]))


def ramp(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0: value w + 1 at column w, so a crop reveals its offset and a flip reverses the ramp."""
    x = torch.ones(n, 2, size, size)
    x[:, 0] = torch.arange(1, size + 1, dtype=torch.float32)
    return x


@pytest.mark.parametrize("kind", AUGMENTATIONS.names())
def test_augment_keeps_shape_dtype_and_is_deterministic(kind):
    x = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    state = torch.get_rng_state()
    a = augment(x, kind, torch.Generator().manual_seed(1))
    b = augment(x, kind, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    if kind == "none":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(augment(x, kind, torch.Generator().manual_seed(2)), a)


def test_crop_flip_outputs_are_shifted_or_mirrored_crops():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment(x, "crop_flip", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for image, src in zip(out, padded):
        candidates = [crop for dy in range(9) for dx in range(9)
                      for crop in (src[:, dy:dy + 8, dx:dx + 8], src[:, dy:dy + 8, dx:dx + 8].flip(-1))]
        assert any(torch.equal(image, crop) for crop in candidates)


def test_crop_of_ones_leaves_a_zero_border_at_most_4_wide():
    out = augment(torch.ones(500, 1, 32, 32), "crop_flip", torch.Generator().manual_seed(0))
    ones = out[:, 0] == 1
    assert torch.all((out == 0) | (out == 1))
    rows, cols = ones.any(2), ones.any(1)  # which rows / columns hold image pixels
    assert torch.equal(ones, rows[:, :, None] & cols[:, None, :])  # a rectangle of ones
    assert rows.sum(1).min() >= 28 and cols.sum(1).min() >= 28
    assert (rows.sum(1) < 32).any() and (cols.sum(1) < 32).any()  # the border does appear


def test_crop_flip_flips_about_half_and_crop_never_flips():
    x = ramp(4000)
    center = slice(12, 20)  # inside the image for any offset up to 4
    flips = lambda out: out[:, 0, 16, center].diff(dim=-1).lt(0).all(-1)  # noqa: E731
    flipped = flips(augment(x, "crop_flip", torch.Generator().manual_seed(0)))
    assert 0.45 < flipped.float().mean().item() < 0.55
    out = augment(x, "crop", torch.Generator().manual_seed(0))
    assert not flips(out).any()
    dx = out[:, 0, 16, 16] - 17 + 4  # row 16 is never padding; column 16 shows source column 16 + dx - 4
    assert set(dx.long().tolist()) == set(range(9))


def test_augment_refuses_unknown_kind_and_unbatched_input():
    with pytest.raises(DataError, match=f"unknown augmentation 'cutout'; known: {', '.join(AUGMENTATIONS)}"):
        augment(torch.zeros(1, 1, 4, 4), "cutout")
    with pytest.raises(DataError, match="N, C, H, W"):
        augment(torch.zeros(1, 4, 4), "crop")


def test_the_digits_eps_0_2_recipe_trains_and_evaluates_at_0_2():
    """studies/recipes/digits_eps02.yaml: one named choice sets training and evaluation eps together, inside
    the separation bound (2 eps < 7/16); its PGD step follows eps (eps / 4)."""
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.study.study_file import config_from_file

    cfg = ExperimentConfig.from_dict(config_from_file(str(REPO / "studies" / "recipes" / "digits_eps02.yaml")))
    assert (cfg.dataset, cfg.eps, cfg.eval_eps) == ("digits", 0.2, 0.2)
    assert 2 * cfg.eval_eps < 7 / 16
    assert cfg.train_step_size == pytest.approx(0.05) and cfg.eval_step == pytest.approx(0.05)


@pytest.mark.parametrize("recipe", sorted((REPO / "studies" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_in_the_repository_is_a_valid_config(recipe):
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.study.study_file import config_from_file

    cfg = ExperimentConfig.from_dict(config_from_file(str(recipe)))
    if cfg.dataset == "fashion_mnist":
        assert cfg.eps == cfg.eval_eps == pytest.approx(0.1)
