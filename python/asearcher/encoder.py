"""Text encoders for dense retrieval: BERT-family models (E5, MiniLM, BGE) from Hugging Face
directories, run by the Rust core on libtorch, pooled and normalised as sentence-transformers
does.

``Encoder(path)`` reads the directory's own spec (``1_Pooling``, a ``Normalize`` module,
``max_seq_length``, query/passage prompts); keyword arguments override it. E5 models need their
prefixes: ``Encoder(path, query_prefix="query: ", passage_prefix="passage: ")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import torch

from . import _core
from ._progress import progress_bar
from .exceptions import ConfigError
from .ops import _view

TextKind = Literal["query", "passage", "raw"]

# Texts handed to Rust per call: the progress bar moves and Ctrl-C is seen between chunks.
_CHUNK = 1024


class Encoder:
    """A BERT-family text encoder.

    ``Encoder(path, device="cpu", dtype="float32", *, pooling=None, normalize=None,
    max_length=None, query_prefix=None, passage_prefix=None)``: ``pooling`` is ``"mean"`` or
    ``"cls"``; ``None`` keeps what the directory says.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        *,
        pooling: Literal["mean", "cls"] | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        options_json = encoder_options_json(
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )
        self.path = os.fspath(path)
        self._native = _core.Encoder.load(self.path, str(device), dtype, options_json)

    @property
    def dim(self) -> int:
        """The size of a vector."""
        return int(self._native.dim)

    @property
    def device(self) -> str:
        return str(self._native.device)

    @property
    def dtype(self) -> str:
        return str(self._native.dtype)

    @property
    def spec(self) -> dict[str, Any]:
        """pooling, normalize, max_length, query_prefix, passage_prefix as used."""
        return dict(json.loads(self._native.spec_json()))

    def tokenize(self, texts: Sequence[str], kind: TextKind = "passage") -> list[list[int]]:
        """Token ids of each text as the encoder sees it (prefix, truncation, special tokens)."""
        return [list(ids) for ids in self._native.tokenize(_texts(texts), kind)]

    def encode(
        self,
        texts: str | Sequence[str],
        kind: TextKind = "passage",
        *,
        batch_size: int = 64,
        progress: bool = False,
    ) -> torch.Tensor:
        """Vectors of ``texts`` as a ``[len(texts), dim]`` float32 CPU tensor (``[dim]`` for a
        single string). ``kind`` picks the prefix: ``"query"``, ``"passage"`` or ``"raw"``."""
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else _texts(texts)
        if batch_size < 1:
            raise ConfigError(f"invalid setting `batch_size`: must be at least 1, got {batch_size}")
        out = torch.empty(len(items), self.dim, dtype=torch.float32)
        bar = progress_bar(total=len(items), desc="encoding", unit="text") if progress else None
        try:
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                part = out[start : start + len(chunk)]
                self._native.encode_into(chunk, kind, batch_size, _view(part))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return out[0] if single else out

    def __repr__(self) -> str:
        spec = self.spec
        return (
            f"Encoder({self.path!r}, dim={self.dim}, pooling={spec['pooling']!r}, "
            f"normalize={spec['normalize']}, max_length={spec['max_length']}, "
            f"device={self.device!r}, dtype={self.dtype!r})"
        )


def encoder_options_json(**options: Any) -> str:
    """The encoder options that are set (pooling, normalize, max_length, query_prefix,
    passage_prefix), as the JSON the Rust core reads; ``None`` keeps the model's own."""
    return json.dumps({k: v for k, v in options.items() if v is not None})


def _texts(texts: Sequence[str]) -> list[str]:
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ConfigError(
                f"invalid setting `texts`: item {i} is {type(t).__name__}, not a string"
            )
    return items


__all__ = ["Encoder", "TextKind", "encoder_options_json"]
