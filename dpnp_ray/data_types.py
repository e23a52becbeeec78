"""What a loaded data set is: its `DatasetInfo`, its `Split`s (`DatasetSplits`), and `DataError`.

A `Split` holds images un-normalized (uint8, or float32 in [0, 1]), as the threat model is defined
on [0, 1] pixels; `DatasetInfo` carries the per-channel statistics of the in-model normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(ValueError):
    """A dataset cannot be loaded or an argument is invalid; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, for the in-model Normalize layer
    std: tuple[float, ...]
    default_eps: float  # L-inf radius on [0, 1] pixels
    augmentation: str  # a name in AUGMENTATIONS


# eq=False: the generated __eq__ would compare tensors, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W) or float32 in [0, 1]; never normalized
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"Split labels must be int64 of shape (N,), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.images.dim() != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"Split images must be (N, C, H, W) with N = len(labels) = {self.labels.shape[0]}, "
                f"got {tuple(self.images.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    info: DatasetInfo
    train: Split
    val: Split  # held out from the official train set, never from test
    test: Split
