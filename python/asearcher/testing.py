"""The test kit: doubles for the services a test cannot run here, speaking their real
protocols, and test hooks. Not part of the training API; tests, benchmarks and examples import
it explicitly.

- :func:`start_scripted_policy_server`: a deterministic LLM test double that answers SGLang's
  ``/generate`` by fixed rules (search, then answer from what it read), with an OpenAI-chat LLM
  judge at ``/v1/chat/completions`` (``asearcher serve scripted-policy`` on the command line);
- :func:`score_with_plugins`: runs reward plugins on recorded trajectories through the same
  batching path the rollout engine uses;
- :func:`emit_test_event`: emits a Rust ``tracing`` event (checks the logging bridge).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

from . import _core
from ._core import ScriptedPolicyHandle


def _spread(name: str, value: int | tuple[int, int] | Sequence[int]) -> int | list[int]:
    """A count given as a number or as an inclusive ``(min, max)`` range."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return [int(value[0]), int(value[1])]
    from .exceptions import ConfigError

    raise ConfigError(
        f"invalid setting `{name}`: give a number or a (min, max) pair, got {value!r}"
    )


def scripted_policy_config(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answers: Mapping[str, str | Sequence[str]] | str | PathLike[str] | None = None,
    searches: int | tuple[int, int] = 1,
    wrong_rate: float = 0.0,
    garbage_rate: float = 0.0,
    think_tokens: int | tuple[int, int] = 0,
    latency_ms: float = 0.0,
    ms_per_token: float = 0.0,
    tokens_per_s_total: float | None = None,
    judge_garbage_rate: float = 0.0,
    seed: int = 0,
    served_model_name: str = "scripted-policy",
) -> dict[str, Any]:
    """The scripted server's config as the JSON object the Rust side reads
    (``ScriptedPolicyConfig``); ``answers`` is a mapping question -> answer(s) or the path of a
    questions jsonl (``{"question", "answer"}`` per line)."""
    cfg: dict[str, Any] = {
        "host": host,
        "port": port,
        "searches": _spread("searches", searches),
        "wrong_rate": wrong_rate,
        "garbage_rate": garbage_rate,
        "think_tokens": _spread("think_tokens", think_tokens),
        "latency_ms": latency_ms,
        "ms_per_token": ms_per_token,
        "tokens_per_s_total": tokens_per_s_total,
        "judge_garbage_rate": judge_garbage_rate,
        "seed": seed,
        "served_model_name": served_model_name,
    }
    if isinstance(answers, Mapping):
        cfg["answers"] = {q: [a] if isinstance(a, str) else list(a) for q, a in answers.items()}
    elif answers is not None:
        cfg["questions_file"] = str(answers)
    return cfg


def start_scripted_policy_server(
    tokenizer: str | PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answers: Mapping[str, str | Sequence[str]] | str | PathLike[str] | None = None,
    searches: int | tuple[int, int] = 1,
    wrong_rate: float = 0.0,
    garbage_rate: float = 0.0,
    think_tokens: int | tuple[int, int] = 0,
    latency_ms: float = 0.0,
    ms_per_token: float = 0.0,
    tokens_per_s_total: float | None = None,
    judge_garbage_rate: float = 0.0,
    seed: int = 0,
    served_model_name: str = "scripted-policy",
) -> ScriptedPolicyHandle:
    """Starts the scripted policy server (an LLM test double) in the background.

    It answers SGLang's ``/generate`` by rules over the decoded prompt: search the question
    (``searches`` times, a number or a ``(min, max)`` range chosen per question), then answer
    with a gold answer from ``answers`` if an observation contains it, else the first document
    title of the last observation. ``wrong_rate`` / ``garbage_rate`` make some replies wrong or
    protocol-breaking (chosen by request id), ``think_tokens`` pads the ``<think>``, and
    ``latency_ms`` + ``ms_per_token`` (+ a shared ``tokens_per_s_total``) delay replies without
    using CPU. ``/v1/chat/completions`` is an LLM judge. ``tokenizer`` defaults to the bundled
    sample tokenizer. The handle has ``.address``, ``.url``, ``.port``, ``.stats()`` and
    ``.stop()``, and is a context manager. Rules and endpoints: docs/serving.md.
    """
    if tokenizer is None:
        from .data import sample_tokenizer_path

        tokenizer = sample_tokenizer_path()
    cfg = scripted_policy_config(
        host=host,
        port=port,
        answers=answers,
        searches=searches,
        wrong_rate=wrong_rate,
        garbage_rate=garbage_rate,
        think_tokens=think_tokens,
        latency_ms=latency_ms,
        ms_per_token=ms_per_token,
        tokens_per_s_total=tokens_per_s_total,
        judge_garbage_rate=judge_garbage_rate,
        seed=seed,
        served_model_name=served_model_name,
    )
    return _core.start_scripted_policy_server(str(tokenizer), json.dumps(cfg))


def score_with_plugins(plugins: Sequence[Any], records: Sequence[str], **kwargs: Any) -> Any:
    """Scores trajectory records (JSON lines) with reward plugins on the shared tokio runtime,
    as the rollout engine would (batched per plugin); returns each record's scores or errors."""
    return _core._test_score_with_plugins(list(plugins), list(records), **kwargs)


def emit_test_event(level: str, message: str) -> None:
    """Emits a Rust ``tracing`` event at ``level`` (for tests of the logging bridge)."""
    _core.emit_test_event(level, message)


__all__ = [
    "ScriptedPolicyHandle",
    "emit_test_event",
    "score_with_plugins",
    "scripted_policy_config",
    "start_scripted_policy_server",
]
