"""Embedded generation: a KV-cached, continuous-batching generator running a Qwen-family model
directory in this process (the tch engine in Rust, on its own thread).

>>> with Generator("path/to/model", device="cpu") as gen:  # doctest: +SKIP
...     out = gen.generate([[1, 2, 3]], max_new_tokens=16, temperature=0.0)[0]
...     out.output_ids, out.output_logprobs, out.finish_reason

Every prompt of one ``generate`` call is queued at once, so they decode as one batch; requests of
other calls (other threads, other asyncio tasks) join and leave the same batch at any step. Each
output token carries its logprob (under the temperature-scaled distribution, before top-p/top-k
cuts) and the policy version of the weights that produced it, so ``update_weights`` in the middle
of a request shows up token by token. ``seed=int`` seeds prompt ``i`` with ``seed + i``; the same
seed, prompt and weights give the same output whatever else is in the batch.

Bad sampling parameters raise :class:`~asearcher.exceptions.ConfigError` naming the parameter;
requests that cannot be served (too long, token ids outside the vocabulary, empty) and a stopped
engine raise :class:`~asearcher.exceptions.GenerationError`; a bad weights directory raises
:class:`~asearcher.exceptions.ModelError` or :class:`~asearcher.exceptions.AsearcherIOError` and
leaves the old weights in place.
"""

from __future__ import annotations

from typing import Any

from . import _core
from ._core import GenerationOutput

__all__ = ["GenerationOutput", "Generator"]


class Generator(_core.Generator):
    """A generator over ``model_dir`` (HF layout: config.json + safetensors).

    ``Generator(model_dir, *, device="cpu", dtype="float32", max_running=32, max_context=None,
    version=0)``: ``max_running`` requests decode together (more wait for a slot);
    ``max_context`` bounds prompt + output per request (default: the model's
    max_position_embeddings, at most 32768); ``version`` is the policy version of the initial
    weights. Use as a context manager, or call :meth:`close`, to free the model at once.
    """

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"Generator({str(self.model_dir)!r}, version={s['version']}, running={s['running']}, "
            f"waiting={s['waiting']}, alive={self.is_alive})"
        )
