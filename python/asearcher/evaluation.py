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
from typing import Any

from . import _core
from ._progress import progress_bar

#: Keys of ``reward`` that matter for training only; evaluation ignores them.
_TRAINING_ONLY_REWARD_KEYS = ("primary",)


class EvalReport:
    """The results of an evaluation: one entry per benchmark with Avg@k / Pass@k per metric.

    ``report.benchmarks`` is a list of dicts (``name``, ``questions``, ``trajectories``,
    ``failed``, ``mean_turns``, ``metrics`` = ``{metric: {"avg_at_k", "pass_at_k"}}``, ...);
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
            for m in keys:
                score = b["metrics"].get(m)
                if score is None:
                    cells.append("<td>-</td><td>-</td>")
                else:
                    cells.append(
                        f"<td>{score['avg_at_k']:.3f}</td><td>{score['pass_at_k']:.3f}</td>"
                    )
            rows.append(
                f"<tr><td>{html.escape(b['name'])}</td><td>{b['questions']}</td>{''.join(cells)}"
                f"<td>{b['failed']}</td><td>{b['mean_turns']:.1f}</td></tr>"
            )
        return (
            "<table><thead><tr><th>benchmark</th><th>n</th>"
            f"{head}<th>failed</th><th>turns</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )


def _config_json(
    data_dir: str | os.PathLike[str],
    *,
    benchmarks: Sequence[str] | str | None,
    k: int,
    output_dir: str | os.PathLike[str],
    agent: dict[str, Any] | None,
    config: dict[str, Any] | None,
    reward: dict[str, Any] | None,
    judge: dict[str, Any] | None,
    max_questions: int | None,
) -> str:
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.split(",") if b]
    cfg: dict[str, Any] = {
        "data_dir": os.fspath(data_dir),
        "benchmarks": list(benchmarks) if benchmarks is not None else None,
        "k": k,
        "output_dir": os.fspath(output_dir),
        "max_questions": max_questions,
        "judge": judge,
    }
    if config:
        cfg["rollout"] = dict(config)
    if agent:
        cfg["agent"] = dict(agent)
    if reward:
        cfg["reward"] = {
            key: v for key, v in reward.items() if key not in _TRAINING_ONLY_REWARD_KEYS
        }
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
    data_dir: str | os.PathLike[str],
    backend: Any,
    tokenizer: Any,
    *,
    benchmarks: Sequence[str] | str | None = None,
    toolbox: Any = None,
    k: int = 4,
    output_dir: str | os.PathLike[str] = "eval_out",
    agent: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    reward: dict[str, Any] | None = None,
    judge: dict[str, Any] | None = None,
    plugins: Iterable[Callable[..., Any]] = (),
    max_questions: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Runs the agent ``k`` times on every question of the benchmarks and returns the report.

    ``backend``: an ``InferencePool``, a ``Generator`` or a list of SGLang URLs; ``tokenizer``: a
    directory or an ``asearcher.Tokenizer``; ``toolbox``: an ``asearcher.tools.Toolbox`` (none: the
    agent cannot search); ``agent`` / ``config`` / ``reward``: AgentConfig, RolloutConfig and rule
    reward fields; ``judge``: ``{"url", "model", "api_key_env"?, "max_retries"?, ...}``. Blocks
    (Ctrl-C stops it; finished questions stay saved). In a notebook, ``await aevaluate(...)``.
    """
    cfg = _config_json(
        data_dir,
        benchmarks=benchmarks,
        k=k,
        output_dir=output_dir,
        agent=agent,
        config=config,
        reward=reward,
        judge=judge,
        max_questions=max_questions,
    )
    bar = _Progress(progress)
    try:
        report, table = _core.run_eval(cfg, backend, tokenizer, toolbox, _plugins(plugins), bar)
    finally:
        bar.close()
    return EvalReport(json.loads(report), table)


async def aevaluate(
    data_dir: str | os.PathLike[str],
    backend: Any,
    tokenizer: Any,
    *,
    benchmarks: Sequence[str] | str | None = None,
    toolbox: Any = None,
    k: int = 4,
    output_dir: str | os.PathLike[str] = "eval_out",
    agent: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    reward: dict[str, Any] | None = None,
    judge: dict[str, Any] | None = None,
    plugins: Iterable[Callable[..., Any]] = (),
    max_questions: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """``evaluate`` as a coroutine (the event loop keeps running while the agents work)."""
    cfg = _config_json(
        data_dir,
        benchmarks=benchmarks,
        k=k,
        output_dir=output_dir,
        agent=agent,
        config=config,
        reward=reward,
        judge=judge,
        max_questions=max_questions,
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
