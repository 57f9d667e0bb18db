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


def filter_by_solve_rate(
    questions: str | os.PathLike[str],
    out: str | os.PathLike[str],
    backend: Any,
    tokenizer: Any,
    *,
    toolbox: Any,
    k: int = 16,
    metric: str = "em",
    solved_at: float = 1.0,
    max_solve_rate: float = 0.5,
    min_tool_calls: int = 2,
    work_dir: str | os.PathLike[str] | None = None,
    agent: Any = None,
    rollout: Any = None,
    seed: int | None = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """ASearcher's offline solve-rate filter, on any QA file (synthesized or not): the policy
    behind ``backend`` answers every question ``k`` times with ``toolbox`` (through
    :func:`asearcher.evaluate`, so the samples are saved and a stopped filter resumes); a sample
    is solved when its ``metric`` reward is at least ``solved_at``. A question is dropped when
    no sample solved it (``unsolved``), when its solve rate is ``max_solve_rate`` or more
    (``too_easy``), or when its successes needed fewer than ``min_tool_calls`` tool calls at the
    median (``shortcut``: solved in one search). Kept questions go to ``out`` (jsonl) with
    ``solve_rate`` and ``tool_calls_median``; returns the counts by reason and a row per
    question."""
    import shutil
    import statistics
    from pathlib import Path

    from .evaluation import evaluate
    from .exceptions import ConfigError
    from .rollout import load_trajectories

    if not 0.0 < max_solve_rate <= 1.0 or k < 1:
        raise ConfigError(
            f"invalid setting `max_solve_rate`/`k`: need 0 < max_solve_rate <= 1 and k >= 1, "
            f"got {max_solve_rate}, {k}"
        )
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".samples")
    data = work / "data" / "questions"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(questions, data / "test.jsonl")
    evaluate(
        work / "data",
        backend,
        tokenizer,
        toolbox=toolbox,
        k=k,
        output_dir=work / "runs",
        agent=agent,
        rollout=rollout,
        seed=seed,
        progress=progress,
    )
    runs: dict[str, list[tuple[bool, int]]] = {}
    for t in load_trajectories(work / "runs" / "questions" / "trajectories.jsonl"):
        solved = t.rewards.get(metric, 0.0) >= solved_at
        runs.setdefault(t.question_id, []).append((solved, t.tool_calls))
    lines = [json.loads(x) for x in Path(questions).read_text().splitlines() if x.strip()]
    kept, rows = [], []
    counts = {"kept": 0, "unsolved": 0, "too_easy": 0, "shortcut": 0}
    for i, q in enumerate(lines):
        qid = str(q.get("id", f"test-{i + 1}"))
        samples = runs.get(qid, [])
        rate = sum(s for s, _ in samples) / max(1, len(samples))
        calls = [c for s, c in samples if s]
        median = statistics.median(calls) if calls else None
        if rate == 0.0:
            reason = "unsolved"
        elif rate >= max_solve_rate:
            reason = "too_easy"
        elif median is not None and median < min_tool_calls:
            reason = "shortcut"
        else:
            reason = "kept"
            kept.append({"id": qid, **q, "solve_rate": rate, "tool_calls_median": median})
        counts[reason] += 1
        rows.append({"id": qid, "solve_rate": rate, "tool_calls_median": median, "reason": reason})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in kept))
    return {"counts": counts, "questions": rows, "k": k}


__all__ = ["asynthesize", "filter_by_solve_rate", "synthesize"]
