"""The embedded model server: SGLang's native protocol (``/generate``, weight updates,
pause/continue, abort) and OpenAI's (``/v1/completions``, ``/v1/chat/completions``) over the tch
generator, in this process. (The scripted policy server, an LLM test double, is in
:mod:`asearcher.testing`.) See docs/serving.md."""

from __future__ import annotations

from os import PathLike

from . import _core
from ._core import ModelServerHandle, Tokenizer


def start_model_server(
    model_dir: str | PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    max_running: int = 32,
    max_context: int | None = None,
    served_model_name: str | None = None,
) -> ModelServerHandle:
    """Loads the model and serves it in the background; returns once it listens.

    The handle has ``.url``, ``.port`` and ``.stop()``, and is a context manager. Port 0 picks a
    free port. Binds loopback unless ``host`` says otherwise (the server has no authentication).
    """
    return _core.start_model_server(
        str(model_dir),
        host=host,
        port=port,
        device=device,
        dtype=dtype,
        max_running=max_running,
        max_context=max_context,
        served_model_name=served_model_name,
    )


__all__ = ["ModelServerHandle", "Tokenizer", "start_model_server"]
