"""Datasets as tensors: a registry of loaders, a stratified train/val split, batched augmentation.

Images are stored un-normalized (uint8, or float32 in [0, 1]) because the threat model
(L-inf eps) is defined on [0, 1] pixels; normalization lives in the model (see `DatasetInfo`).
The types live in `data_types`; the released files are read by `data_files`, so nothing here
unpickles arbitrary objects.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data_files import _digits_table, _ensure_files, _fashion_mnist_split, _idx_path, _load_cifar, _svhn_split
from .data_types import DataError, DatasetInfo, DatasetSplits, Split
from .registry import Registry


Loader = Callable[[Path, bool], tuple[Split, Split]]


@dataclass(frozen=True)
class RegisteredDataset:
    info: DatasetInfo
    loader: Loader  # loader(root, download) returns (official train, official test)


DATASETS: Registry[RegisteredDataset] = Registry("dataset", error=DataError)


def register_dataset(info: DatasetInfo) -> Callable[[Loader], Loader]:
    """Decorator: register `fn(root, download) -> (train, test)` under `info.name`."""

    def decorator(fn: Loader) -> Loader:
        if info.augmentation not in AUGMENTATIONS:
            raise DataError(
                f"dataset {info.name!r}: augmentation {info.augmentation!r} is unknown; "
                f"known: {', '.join(AUGMENTATIONS.names())}"
            )
        DATASETS.register(info.name)(RegisteredDataset(info, fn))
        return fn

    return decorator


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name).info


def load_dataset(
    name: str,
    root: str | Path = "data",
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = False,
    train_subset: int = 0,
) -> DatasetSplits:
    """Official train minus a stratified val part (chosen by `split_seed`), and the official test set.

    `train_subset` > 0 then keeps a stratified subset of that many training images (drawn by
    `split_seed` too, after the validation part is taken, so val and test never change with it).
    """
    entry = DATASETS.get(name)
    info = entry.info
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    train, test = entry.loader(Path(root).expanduser(), download)
    for part, split in (("train", train), ("test", test)):
        if tuple(split.images.shape[1:]) != info.image_shape:
            raise DataError(
                f"dataset {name!r}: {part} images have shape {tuple(split.images.shape[1:])}, "
                f"expected {info.image_shape}; the files under {root} are not this dataset"
            )
    keep, held = stratified_split(train.labels, val_fraction, split_seed)
    if isinstance(train_subset, bool) or not isinstance(train_subset, numbers.Integral) or train_subset < 0:
        raise DataError(f"train_subset must be an integer >= 0 (0: the whole training split), got {train_subset!r}")
    if train_subset:
        if train_subset > len(keep):
            raise DataError(
                f"train_subset={train_subset} exceeds the {len(keep)} training images of {name!r} left after "
                f"holding out val_fraction={val_fraction}; use at most {len(keep)}, or 0 for all of them"
            )
        keep = keep[stratified_subset(train.labels[keep], train_subset, split_seed)]
    return DatasetSplits(
        info=info,
        train=Split(train.images[keep], train.labels[keep]),
        val=Split(train.images[held], train.labels[held]),
        test=test,
    )


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held), both sorted, with round(fraction * n_c) of each class c held out.

    Every class with at least two examples lands in both parts; a singleton class stays in `keep`.
    Depends only on (labels, fraction, seed), never on the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    held = []
    for c in torch.unique(labels).tolist():  # sorted, so the draw order is fixed
        members = torch.nonzero(labels == c).flatten()
        n = len(members)
        k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        held.append(members[torch.randperm(n, generator=generator)[:k]])
    held_idx = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of exactly `n` examples, each class drawn in proportion to its count.

    Class c gets floor(n * n_c / N); the n - sum(floors) left over go one each to the classes with
    the largest remainders (ties: the smaller label). Depends only on (labels, n, seed).
    """
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)  # sorted, so the draw order is fixed
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise DataError(f"stratified_subset: n must lie in 0..{total}, got {n}")
    quota = [n * int(c) // total for c in counts]
    remainders = [n * int(c) % total for c in counts]
    for i in sorted(range(len(quota)), key=lambda i: -remainders[i])[: n - sum(quota)]:
        quota[i] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes.tolist(), quota):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.int64)


# ---------------------------------------------------------------- tensors on the device


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]; floating point passes through as float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise DataError(f"to_float: images have dtype {images.dtype}; expected uint8 (0..255) or float in [0, 1]")


CROP_PADDING = 4


def _random_crop(x: torch.Tensor, generator: torch.Generator | None, flip: bool) -> torch.Tensor:
    """Crop each image from its zero-padded copy at a random offset, optionally mirrored.

    One gather for the whole batch: output[n, c, i, j] = padded[n, c, dy_n + i, dx_n + col_n(j)],
    where col_n(j) = j, or W - 1 - j for images that are flipped.
    """
    n, c, h, w = x.shape
    p = CROP_PADDING
    # Draw on the generator's device (a CPU generator cannot sample CUDA tensors), then move.
    rng_device = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=rng_device).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=rng_device).to(x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip:
        flipped = (torch.rand(n, generator=generator, device=rng_device) < 0.5).to(x.device)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + cols  # (N, W)
    padded = F.pad(x, (p, p, p, p))
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


Augmentation = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation", error=DataError)
"""name -> f(x, generator): a batch (N, C, H, W) in, the augmented batch out."""


@AUGMENTATIONS.register("none")
def no_augmentation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return x


@AUGMENTATIONS.register("crop")
def random_crop(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pad by CROP_PADDING zeros and crop back at a random offset."""
    return _random_crop(x, generator, flip=False)


@AUGMENTATIONS.register("crop_flip")
def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """`crop`, then mirror each image with probability 1/2."""
    return _random_crop(x, generator, flip=True)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch (N, C, H, W) on its own device; with a generator the global RNG is untouched."""
    fn = AUGMENTATIONS.get(kind)
    if x.dim() != 4:
        raise DataError(f"augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    return fn(x, generator)



CIFAR10 = DatasetInfo(
    name="cifar10",
    num_classes=10,
    image_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
    default_eps=8 / 255,
    augmentation="crop_flip",
)
CIFAR100 = DatasetInfo(
    name="cifar100",
    num_classes=100,
    image_shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    default_eps=8 / 255,
    augmentation="crop_flip",
)


@register_dataset(CIFAR10)
def load_cifar10(root: Path, download: bool) -> tuple[Split, Split]:
    """`<root>/cifar-10-batches-py/`: data_batch_1..5, test_batch, batches.meta."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    return _load_cifar(root, download, CIFAR10, "CIFAR10", train_files, "test_batch", "labels", "label_names")


@register_dataset(CIFAR100)
def load_cifar100(root: Path, download: bool) -> tuple[Split, Split]:
    """`<root>/cifar-100-python/`: train, test, meta; the 100 fine labels."""
    return _load_cifar(root, download, CIFAR100, "CIFAR100", ["train"], "test", "fine_labels", "fine_label_names")


# ---------------------------------------------------------------- SVHN

SVHN = DatasetInfo(
    name="svhn",
    num_classes=10,
    image_shape=(3, 32, 32),
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    default_eps=8 / 255,
    augmentation="crop",  # a mirrored digit is a different (or no) digit
)



@register_dataset(SVHN)
def load_svhn(root: Path, download: bool) -> tuple[Split, Split]:
    """`<root>/svhn/`: train_32x32.mat, test_32x32.mat (the 'extra' set is not used)."""
    import torchvision.datasets as tvd

    folder = root / "svhn"
    parts = {split: tvd.SVHN.split_list[split] for split in ("train", "test")}  # [url, filename, md5]

    def fetch() -> None:
        from torchvision.datasets.utils import download_url

        for url, filename, md5 in parts.values():
            download_url(url, str(folder), filename=filename, md5=md5)

    _ensure_files("svhn", folder, [p[1] for p in parts.values()], download, fetch)
    return _svhn_split(folder / parts["train"][1]), _svhn_split(folder / parts["test"][1])


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

FASHION_MNIST = DatasetInfo(
    name="fashion_mnist",
    num_classes=10,
    image_shape=(1, 28, 28),
    # Pixel mean/std over the 60,000 official training images, rounded to 4 digits; tests recompute them.
    mean=(0.2860,),
    std=(0.3530,),
    default_eps=0.1,  # the L-inf radius of the Fashion-MNIST robustness literature (docs/datasets.md)
    augmentation="none",  # as the MNIST-family adversarial-training references (docs/datasets.md)
)

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package `dataset-fashion-mnist` puts the four gzipped files (`dpkg -L`)."""


@register_dataset(FASHION_MNIST)
def load_fashion_mnist(root: Path, download: bool) -> tuple[Split, Split]:
    """torchvision's layout `<root>/FashionMNIST/raw/` ({train,t10k}-{images-idx3,labels-idx1}-ubyte,
    gzipped or not); when that folder holds none of them, Debian's `dataset-fashion-mnist` files;
    else, with download=True, torchvision downloads them into `<root>`."""
    folder = root / "FashionMNIST" / "raw"
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]

    def missing_in(where: Path) -> list[str]:
        return [stem for stem in stems if _idx_path(where, stem) is None]

    if len(missing_in(folder)) == len(stems):
        if not missing_in(FASHION_MNIST_SYSTEM_DIR):
            folder = FASHION_MNIST_SYSTEM_DIR
        elif download:
            import torchvision.datasets as tvd  # deferred: slow to import; it checks each file's md5

            tvd.FashionMNIST(str(root), train=True, download=True)
    missing = missing_in(folder)
    if missing:
        raise DataError(
            f"dataset 'fashion_mnist': missing {', '.join(str(folder / s) + '[.gz]' for s in missing)}; install "
            f"Debian's dataset-fashion-mnist (files in {FASHION_MNIST_SYSTEM_DIR}), pass download=True (needs "
            f"internet), or place the released files in {folder}"
        )
    return tuple(_fashion_mnist_split(folder, *FASHION_MNIST_FILES[part]) for part in ("train", "test"))


# ---------------------------------------------------------------- scikit-learn digits

# digits has no official test set: this fixed seed draws one that never changes between
# experiments, whatever split_seed picks for validation.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20240101

DIGITS = DatasetInfo(
    name="digits",
    num_classes=10,
    image_shape=(1, 8, 8),
    # Pixel mean/std over the fixed digits train part (load_dataset("digits") train + val),
    # rounded to 4 digits; tests recompute them.
    mean=(0.3051,),
    std=(0.3759,),
    default_eps=0.1,  # pixels take 17 grey levels (k/16), so 8/255 would be below one level
    augmentation="none",
)


@register_dataset(DIGITS)
def load_digits(root: Path, download: bool) -> tuple[Split, Split]:
    """scikit-learn's 1797 8x8 digits (shipped with the package; `root` and `download` are unused)."""
    table = _digits_table()
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)  # values 0..16
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    train, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return Split(images[train], labels[train]), Split(images[test], labels[test])



def linf_class_separation(images: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> float:
    """The smallest L-inf distance between two images of different labels, over all pairs.

    An L-inf threat model of radius eps cannot turn an image into another class's image while
    2 eps stays below this (docs/evaluation.md#digits-at-eps-02). Exact, in chunks of `chunk` rows.
    """
    x = (images.double() / 255.0 if images.dtype == torch.uint8 else images.double()).flatten(1)  # exact for k/16
    labels = labels.cpu()
    best = math.inf
    for start in range(0, len(x), chunk):
        block = (x[start:start + chunk, None, :] - x[None, :, :]).abs().amax(dim=2)  # (chunk, N)
        block[labels[start:start + chunk, None] == labels[None, :]] = math.inf
        best = min(best, float(block.min()))
    return best
