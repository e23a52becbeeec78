"""Device and numeric precision: where tensors live and how forwards are autocast."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for 'cuda' without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype for a device (None: full fp32) and whether a grad scaler is needed."""

    dtype: torch.dtype | None
    device_type: str

    @classmethod
    def choose(cls, name: str, device: torch.device) -> "Precision":
        """'auto': bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
        if name == "auto":
            if device.type != "cuda":
                name = "fp32"
            else:
                name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        return cls(dtype, device.type)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
        if self.dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None


def configure_backend(device: torch.device, *, benchmark: bool = True) -> None:
    """Process-wide kernel settings for a training or evaluation process on `device`.

    cudnn.benchmark times the convolution algorithms once per input shape and keeps the fastest;
    the shapes of a training run are fixed (drop_last batches), so it pays off after a few steps.
    It does not change results beyond fp32 rounding. CPU runs are left alone.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark


#: a split is kept on a GPU when its tensors take at most this fraction of the device's memory
RESIDENT_FRACTION = 0.125


def fits_on_device(nbytes: int, device: torch.device, fraction: float = RESIDENT_FRACTION) -> bool:
    """Whether `nbytes` of data should live on the device (CUDA only: on the CPU it already does)."""
    if device.type != "cuda":
        return False
    return nbytes <= fraction * torch.cuda.get_device_properties(device).total_memory


class DeviceLoader:
    """Batches of (images, labels) indexed on the device, in the order of `sampler`.

    A stand-in for DataLoader(TensorDataset(images, labels), batch_size, sampler=sampler,
    drop_last=drop_last) that yields exactly the same batches, but keeps the tensors on `device`
    (uint8 CIFAR-10 is 150 MB) so a batch is one gather there: no worker, no host-to-device copy.
    The sampler's order is computed on the host once per epoch and copied over in one transfer;
    `sampler.set_epoch` works as with a DataLoader.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, sampler, batch_size: int,
                 drop_last: bool, device: torch.device):
        if batch_size < 1:
            raise ValueError(f"DeviceLoader: batch_size={batch_size}; must be >= 1")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.device = device

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.images.index_select(0, index), self.labels.index_select(0, index)
