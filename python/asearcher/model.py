"""The Qwen2 / Qwen3 causal LM of the Rust core (tch), usable from Python with torch tensors.

Inputs cross into Rust as views (data pointer, shape, strides, dtype, device; no copy); outputs
are allocated here and filled by Rust. The model lives on one device in one dtype.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from os import PathLike
from typing import Any

import torch

from . import _core
from .exceptions import TensorError
from .ops import _view

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ids(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TensorError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64 or t.dim() != 2:
        raise TensorError(
            f"tensor `{name}`: expected a 2-D int64 tensor [batch, seq], "
            f"got {t.dtype} {list(t.shape)}"
        )
    return t.detach().contiguous()


def _mask(mask: object, input_ids: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TensorError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != input_ids.shape:
        raise TensorError(
            f"tensor `attention_mask`: shape {list(mask.shape)} differs from input_ids "
            f"{list(input_ids.shape)}"
        )
    return mask.detach().to(torch.int64).contiguous()


class QwenModel:
    """A Qwen2 / Qwen2.5 / Qwen3 model loaded from a Hugging Face checkpoint directory.

    ``QwenModel.load(path, device="cpu", dtype="float32")``; ``dtype`` is ``"float32"``,
    ``"bfloat16"`` or ``"float16"``, ``device`` ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    def __init__(self, native: _core.QwenModel) -> None:
        self._native = native

    @classmethod
    def load(
        cls, path: str | PathLike[str], device: str = "cpu", dtype: str | torch.dtype = "float32"
    ) -> QwenModel:
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        return cls(_core.QwenModel.load(path, device=str(device), dtype=dtype))

    @classmethod
    def init_random(
        cls,
        path: str | PathLike[str],
        config: dict[str, Any],
        seed: int = 0,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> QwenModel:
        """Writes ``config`` (a Qwen config.json as a dict) and seeded random weights (normal with
        ``initializer_range``, default 0.02; norms 1) to ``path`` in HF layout, then loads it."""
        _core.write_random_checkpoint(os.fspath(path), json.dumps(config), seed)
        return cls.load(path, device=device, dtype=dtype)

    @cached_property
    def config(self) -> dict[str, Any]:
        """config.json as read."""
        return json.loads(self._native.config_json())

    @property
    def device(self) -> torch.device:
        return torch.device(self._native.device)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self._native.dtype]

    @property
    def eos_token_ids(self) -> list[int]:
        return self._native.eos_token_ids()

    def parameter_names(self) -> list[str]:
        """HF names of the parameters (a tied LM head is not listed separately)."""
        return [name for name, _ in self._native.parameter_shapes()]

    def num_parameters(self) -> int:
        return self._native.num_parameters()

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, width: int, fn: Any
    ) -> torch.Tensor:
        ids = _ids("input_ids", input_ids)
        mask = _mask(attention_mask, ids)
        out = torch.empty((*ids.shape, width), dtype=torch.float32, device=self.device)
        fn(_view(ids), _view(out), attention_mask=None if mask is None else _view(mask))
        return out

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """float32 logits ``[B, T, vocab]`` on the model's device. ``attention_mask`` (``[B, T]``,
        nonzero = real token) masks padding keys; positions then count real tokens only."""
        width = int(self.config["vocab_size"])
        return self._forward(input_ids, attention_mask, width, self._native.logits_into)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-normed hidden states ``[B, T, hidden]`` as float32 on the model's device."""
        width = int(self.config["hidden_size"])
        return self._forward(input_ids, attention_mask, width, self._native.hidden_states_into)

    def nll_loss_and_grads(
        self, input_ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """Mean next-token NLL over ``labels != -100`` (as HF's ``labels=`` loss) and the gradient
        of every parameter under its HF name (computed by tch autograd in Rust)."""
        ids = _ids("input_ids", input_ids)
        if not isinstance(labels, torch.Tensor):
            raise TensorError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        labels = labels.detach().contiguous()
        shapes = self._native.parameter_shapes()
        grads = {
            name: torch.empty(shape, dtype=self.dtype, device=self.device) for name, shape in shapes
        }
        loss = self._native.nll_loss_and_grads_into(
            _view(ids), _view(labels), [_view(g) for g in grads.values()]
        )
        return loss, grads

    def save(self, path: str | PathLike[str]) -> None:
        """Writes a HF checkpoint (config.json, safetensors, tokenizer files of the source
        directory) that ``transformers.AutoModelForCausalLM.from_pretrained`` loads. The
        directory is replaced as a whole; a crash never leaves a half-written one."""
        self._native.save(path)

    def __repr__(self) -> str:
        return repr(self._native)


__all__ = ["QwenModel"]
