"""Tensor functions in Rust on torch tensors (CPU; CUDA when a GPU is present)."""

from __future__ import annotations

import pytest
import torch
from asearcher.exceptions import TensorError
from asearcher.ops import group_advantages


def reference(rewards: torch.Tensor, g: int, normalize_std: bool, eps: float) -> torch.Tensor:
    r = rewards.double().view(-1, g)
    adv = r - r.mean(dim=1, keepdim=True)
    if normalize_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize_std", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(device, normalize_std, dtype):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(16 * 8, generator=gen, dtype=dtype).to(device)
    out = group_advantages(rewards, 16, normalize_std=normalize_std, eps=1e-6)
    assert out.dtype == dtype and out.device == rewards.device
    expected = reference(rewards.cpu(), 16, normalize_std, 1e-6).to(dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert rewards.sum() != 0  # inputs untouched (not zeros)


def test_non_contiguous_input_is_handled():
    base = torch.rand(8, 4)
    strided = base[:, 1]  # stride 4
    out = group_advantages(strided, 4)
    torch.testing.assert_close(out, reference(strided, 4, False, 1e-6).float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_result_stays_on_device():
    r = torch.rand(64, device="cuda")
    assert group_advantages(r, 8).is_cuda


def test_bad_inputs_raise_tensor_errors():
    with pytest.raises(TensorError, match="not a multiple"):
        group_advantages(torch.rand(10), 4)
    with pytest.raises(TensorError, match="1-D"):
        group_advantages(torch.rand(4, 4), 4)
    with pytest.raises(TensorError, match="unsupported dtype"):
        group_advantages(torch.zeros(4, dtype=torch.complex64), 2)
    with pytest.raises(TensorError, match="torch.Tensor"):
        group_advantages([1.0, 2.0], 2)
