"""Tensor functions implemented in Rust on libtorch, applied to ``torch.Tensor`` (CPU or CUDA).

Tensors cross into Rust by data pointer, shape, strides, dtype and device, with no copy; the
Rust side never keeps them past the call.
"""

from __future__ import annotations

import torch

from . import _core
from .exceptions import TensorError


def _view(t: torch.Tensor) -> tuple:
    dev = t.device
    return (t.data_ptr(), list(t.shape), list(t.stride()), str(t.dtype), dev.type, dev.index)


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative (GRPO) advantages: each reward minus its group's mean, optionally divided
    by the group's std (+ eps). ``rewards`` is 1-D, groups are consecutive runs of ``group_size``.
    Returns a new tensor of the same dtype and device."""
    if not isinstance(rewards, torch.Tensor):
        raise TensorError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.requires_grad:
        raise TensorError("rewards must not require grad (advantages are constants)")
    rewards = rewards.contiguous()
    out = torch.empty_like(rewards)
    _core.group_advantages_into(
        _view(rewards), _view(out), group_size, normalize_std=normalize_std, eps=eps
    )
    return out


__all__ = ["group_advantages"]
