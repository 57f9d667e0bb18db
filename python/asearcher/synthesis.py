"""The QA synthesis agent: seed QAs grown into harder, verified, search-only questions.

``asearcher.synthesize(seeds, out, config, index=...)`` (or ``await asynthesize(...)``, or
``asearcher synthesize`` on the command line) runs each seed through a state machine: the
proposer LLM picks an action (inject an entity, fuzz a detail, stop); an injection searches the
entity with our tools, the rewriter LLM rewrites the question with one fact it must copy
verbatim from a retrieved passage, and code checks the edit against the fact ledger (the entity
was in the question, the fact is in the passage and mentions it, the entity and the answer are
no longer named); then the judge LLM checks quality and a no-tool solver must fail every sample.
An edit is committed only if it passes and is not easier than the question it replaces.

Outputs in ``out``: ``qas.jsonl`` (training format), ``{name}/test.jsonl`` (the evaluation
layout), ``provenance.jsonl`` (every edit, fact, tool call, raw reply, model and prompt hash),
``report.json`` (rejects by reason and stage, calls per accepted QA) and ``events.jsonl`` (the
append-only log a stopped run resumes from: finished seeds are never redone).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import _core
from ._config import as_config_dict
from ._progress import progress_bar

if TYPE_CHECKING:
    from .config import SynthConfig

_CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def _config_json(config: SynthConfig | Mapping[str, Any] | str | os.PathLike[str]) -> str:
    if isinstance(config, (str, os.PathLike)):
        cfg = _core.load_config("SynthConfig", os.fspath(config))
    else:
        cfg = as_config_dict(config) or {}
    return json.dumps(_core.check_config("SynthConfig", cfg, []))


def _toolbox(toolbox: Any, index: str | os.PathLike[str] | None) -> Any:
    from .tools import LocalSearch, Toolbox

    if toolbox is not None:
        return toolbox
    if index is None:
        from .exceptions import ConfigError

        raise ConfigError("invalid setting `index`: give index= (a BM25 directory) or toolbox=")
    return Toolbox(LocalSearch(index))


def synthesize(
    seeds: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: SynthConfig | Mapping[str, Any] | str | os.PathLike[str],
    *,
    index: str | os.PathLike[str] | None = None,
    toolbox: Any = None,
    name: str = "synth",
    progress: bool | Callable[[int, int], object] = True,
) -> dict[str, Any]:
    """Grows every seed of ``seeds`` (jsonl: ``question``, ``answer``, optional ``id``,
    ``facts``, ``hops``) into ``out``; searches go to ``toolbox`` (or a BM25 ``index``).
    Returns ``{"seeds", "resumed", "accepted", "report"}``. Run again with the same config to
    resume; another config in the same ``out`` is refused."""
    cfg = _config_json(config)
    box = _toolbox(toolbox, index)
    if callable(progress):
        raw = _core.synthesize_run(cfg, seeds, out, box, name=name, progress=progress)
    elif progress:
        with progress_bar(desc="synthesizing", unit="seed") as bar:

            def report(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            raw = _core.synthesize_run(cfg, seeds, out, box, name=name, progress=report)
    else:
        raw = _core.synthesize_run(cfg, seeds, out, box, name=name)
    return dict(json.loads(raw))


async def asynthesize(
    seeds: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: SynthConfig | Mapping[str, Any] | str | os.PathLike[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`synthesize` as an awaitable (runs in a worker thread; the GIL is released)."""
    return await asyncio.to_thread(synthesize, seeds, out, config, **kwargs)


__all__ = ["asynthesize", "synthesize"]
