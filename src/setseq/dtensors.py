"""Parameters that may be sharded (FSDP2 DTensors) seen as plain tensors: this process's shard, the whole
tensor, or a whole tensor laid out like a parameter. A leaf, so the LoRA layer, the memory estimate and the
checkpoints use it without importing the training engine."""

from __future__ import annotations

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter or gradient (a DTensor's local shard; a plain tensor as is)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered: every process must call this, in the same order); a plain
    tensor as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def as_param_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor (e.g. read from a checkpoint) laid out like `param`: this process's shard of it when
    `param` is a DTensor (no communication: every process holds the same whole tensor), else itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or tuple(value.shape) != tuple(param.shape):
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
