"""Where a training loop runs: device, rank, world size, and how models and sums are shared.

The training loop (training_loop.py) only talks to an Environment. `LocalEnvironment` is one process;
ray_train.py supplies the Ray Train (DDP) one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LocalEnvironment:
    """A single process on one device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    def wrap_model(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DistributedEnvironment(LocalEnvironment):
    """A torch.distributed process group (initialised by the caller, e.g. Ray Train)."""

    def __init__(self, device: torch.device, rank: int, world_size: int, wrap=None):
        super().__init__(device, rank, world_size)
        self._wrap = wrap

    def wrap_model(self, module: nn.Module) -> nn.Module:
        if self._wrap is not None:
            return self._wrap(module)
        module = module.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
