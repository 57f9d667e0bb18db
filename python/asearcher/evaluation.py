"""Evaluation of a search agent on QA benchmarks: ``evaluate`` / ``aevaluate`` and ``EvalReport``.

Benchmarks sit in the ``{data_dir}/{name}/test.jsonl`` layout; every question runs ``k`` times and
Avg@k and Pass@k are reported for every metric (F1, EM, CEM, the format flag, the judge, reward
plugins). Trajectories are saved to ``{output_dir}/{name}/trajectories.jsonl`` as each question's
group finishes, and a later call with the same ``output_dir`` runs only what is missing. The
report is saved to ``{output_dir}/results.json``. See docs/evaluation.md.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import _core
from ._config import as_config_dict
from ._progress import progress_bar
from .config import AgentConfig, EvalConfig, JudgeConfig, RewardConfig, RolloutConfig

_CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


class EvalReport:
    """The results of an evaluation: one entry per benchmark with Avg@k / Pass@k per metric.

    ``report.benchmarks`` is a list of dicts (``name``, ``questions``, ``trajectories``,
    ``failed``, ``with_tool_errors``, ``tool_calls``, ``failed_tool_calls``, ``reward_errors`` =
    ``{stage: trajectories}``, ``with_reward_errors``, ``mean_turns``, ``metrics`` =
    ``{metric: {"avg_at_k", "pass_at_k"}}``, ``resumed``, ``ran``, ...);
    ``report["name"]`` is one of them; ``table()`` is the fixed-width table that ``print(report)``
    shows; ``_repr_html_`` renders it in notebooks.
    """

    def __init__(self, data: dict[str, Any], table: str) -> None:
        self._data = data
        self._table = table

    @property
    def k(self) -> int:
        return int(self._data["k"])

    @property
    def benchmarks(self) -> list[dict[str, Any]]:
        return list(self._data["benchmarks"])

    def __getitem__(self, name: str) -> dict[str, Any]:
        for b in self._data["benchmarks"]:
            if b["name"] == name:
                return b
        raise KeyError(f"no benchmark {name!r}; have {[b['name'] for b in self.benchmarks]}")

    def metric_keys(self) -> list[str]:
        """The metrics of all benchmarks, in the table's order."""
        header = self._table.splitlines()[0] if self._table else ""
        suffix = f" avg@{self.k}"
        cells = [c for c in header.split("  ") if c.strip().endswith(suffix)]
        return [c.strip()[: -len(suffix)] for c in cells]

    def table(self) -> str:
        return self._table

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data))

    def __str__(self) -> str:
        return self._table

    def __repr__(self) -> str:
        names = ", ".join(b["name"] for b in self.benchmarks)
        return f"EvalReport(k={self.k}, benchmarks=[{names}])\n{self._table}"

    def _repr_html_(self) -> str:
        k = self.k
        keys = self.metric_keys()
        head = "".join(
            f"<th>{html.escape(m)} avg@{k}</th><th>{html.escape(m)} pass@{k}</th>" for m in keys
        )
        rows = []
        for b in self.benchmarks:
            cells = []
            errors = b.get("reward_errors", {})
            for m in keys:
                score = b["metrics"].get(m)
                mark = "*" if errors.get(m) else ""
                if score is None:
                    cell = "error" if errors.get(m) else "-"
                    cells.append(f"<td>{cell}</td><td>{cell}</td>")
                else:
                    cells.append(
                        f"<td>{score['avg_at_k']:.3f}{mark}</td>"
                        f"<td>{score['pass_at_k']:.3f}{mark}</td>"
                    )
            counts = (b["failed"], b.get("with_tool_errors", 0), b.get("with_reward_errors", 0))
            rows.append(
                f"<tr><td>{html.escape(b['name'])}</td><td>{b['questions']}</td>{''.join(cells)}"
                + "".join(f"<td>{c}</td>" for c in counts)
                + f"<td>{b['mean_turns']:.1f}</td></tr>"
            )
        return (
            "<table><thead><tr><th>benchmark</th><th>n</th>"
            f"{head}<th>failed</th><th>tool err</th><th>reward err</th><th>turns</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )


def _config_json(
    config: Any,
    *,
    benchmarks: Sequence[str] | str | None,
    k: int | None,
    output_dir: str | os.PathLike[str] | None,
    agent: Any,
    rollout: Any,
    reward: Any,
    judge: Any,
    max_questions: int | None,
    resume: str | None = None,
    seed: int | None = None,
) -> str:
    """The EvalConfig as JSON: ``config`` (an EvalConfig, a dict of one, a config file, or the
    data directory) with the keyword arguments that were given on top."""
    cfg: dict[str, Any]
    if isinstance(config, (str, os.PathLike)) and Path(config).suffix in _CONFIG_SUFFIXES:
        cfg = _core.load_config("EvalConfig", os.fspath(config))
    elif isinstance(config, (str, os.PathLike)):
        cfg = {"data_dir": os.fspath(config)}
    else:
        cfg = as_config_dict(config) or {}
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.split(",") if b]
    given = {
        "benchmarks": list(benchmarks) if benchmarks is not None else None,
        "k": k,
        "output_dir": os.fspath(output_dir) if output_dir is not None else None,
        "max_questions": max_questions,
        "resume": resume,
        "seed": seed,
        "judge": as_config_dict(judge),
        "rollout": as_config_dict(rollout),
        "agent": as_config_dict(agent),
        "reward": as_config_dict(reward),
    }
    cfg.update({key: v for key, v in given.items() if v is not None})
    return json.dumps(cfg)


class _Progress:
    """One tqdm bar per benchmark, fed by the Rust progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.name: str | None = None

    def __call__(self, name: str, index: int, count: int, done: int, total: int) -> None:
        if not self.enabled:
            return
        if name != self.name:
            self.close()
            self.name = name
            self.bar = progress_bar(total=total, desc=f"{name} ({index + 1}/{count})", unit="traj")
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _plugins(plugins: Iterable[Callable[..., Any]]) -> list[Callable[..., Any]]:
    return list(plugins)


def evaluate(
    config: EvalConfig | dict[str, Any] | str | os.PathLike[str],
    backend: Any,
    tokenizer: Any,
    *,
    benchmarks: Sequence[str] | str | None = None,
    toolbox: Any = None,
    k: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    agent: AgentConfig | dict[str, Any] | None = None,
    rollout: RolloutConfig | dict[str, Any] | None = None,
    reward: RewardConfig | dict[str, Any] | None = None,
    judge: JudgeConfig | dict[str, Any] | None = None,
    plugins: Iterable[Callable[..., Any]] = (),
    max_questions: int | None = None,
    resume: str | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Runs the agent ``k`` times on every question of the benchmarks and returns the report.

    ``config``: an :class:`asearcher.config.EvalConfig` (or a dict of one, or a TOML/YAML/JSON
    file of one), or just the data directory of ``{name}/test.jsonl`` benchmarks; the keyword
    arguments that are given replace its fields. ``backend``: an ``InferencePool``, a
    ``Generator`` or a list of SGLang URLs; ``tokenizer``: a directory or an
    ``asearcher.Tokenizer``; ``toolbox``: an ``asearcher.tools.Toolbox`` (none: the agent cannot
    search); ``agent`` / ``rollout`` / ``reward`` / ``judge``: an AgentConfig, RolloutConfig,
    RewardConfig, JudgeConfig (or dicts of them); ``resume``: what to do with results already in
    ``output_dir`` — ``"match"`` (default: continue only the same setup; otherwise a
    ``ResumeMismatchError`` lists what differs), ``"restart"`` (delete them) or
    ``"allow_changes"`` (continue, the changes recorded in ``fingerprint.json``); ``seed``: seeds
    every request from it and the request id, so a sampled run (``k`` > 1 at a temperature)
    repeats on the embedded generator (or a server that samples deterministically). A run whose
    every trajectory or tool call failed raises ``RunFailedError`` (the results are saved); the
    first trajectories all failing the same way raise ``SystematicFailureError``. Blocks
    (Ctrl-C stops it; finished questions stay saved). In a notebook, ``await aevaluate(...)``.
    """
    cfg = _config_json(
        config,
        benchmarks=benchmarks,
        k=k,
        output_dir=output_dir,
        agent=agent,
        rollout=rollout,
        reward=reward,
        judge=judge,
        max_questions=max_questions,
        resume=resume,
        seed=seed,
    )
    bar = _Progress(progress)
    try:
        report, table = _core.run_eval(cfg, backend, tokenizer, toolbox, _plugins(plugins), bar)
    finally:
        bar.close()
    return EvalReport(json.loads(report), table)


async def aevaluate(
    config: EvalConfig | dict[str, Any] | str | os.PathLike[str],
    backend: Any,
    tokenizer: Any,
    *,
    benchmarks: Sequence[str] | str | None = None,
    toolbox: Any = None,
    k: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    agent: AgentConfig | dict[str, Any] | None = None,
    rollout: RolloutConfig | dict[str, Any] | None = None,
    reward: RewardConfig | dict[str, Any] | None = None,
    judge: JudgeConfig | dict[str, Any] | None = None,
    plugins: Iterable[Callable[..., Any]] = (),
    max_questions: int | None = None,
    resume: str | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """``evaluate`` as a coroutine (the event loop keeps running while the agents work)."""
    cfg = _config_json(
        config,
        benchmarks=benchmarks,
        k=k,
        output_dir=output_dir,
        agent=agent,
        rollout=rollout,
        reward=reward,
        judge=judge,
        max_questions=max_questions,
        resume=resume,
        seed=seed,
    )
    bar = _Progress(progress)
    try:
        report, table = await _core.arun_eval(
            cfg, backend, tokenizer, toolbox, _plugins(plugins), bar
        )
    finally:
        bar.close()
    return EvalReport(json.loads(report), table)


__all__ = ["EvalReport", "aevaluate", "evaluate"]
