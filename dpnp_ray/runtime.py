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
