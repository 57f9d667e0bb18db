"""The asynchronous rollout engine: agents run on many questions at once against inference
servers (or the embedded generator) and the search tools, scored as groups, and handed to a
consumer (a trainer, an evaluation) under the staleness gate of asynchronous RL.

All classes are implemented in Rust. Configs are plain dicts (unknown keys raise
:class:`~asearcher.exceptions.ConfigError` naming the key). Blocking methods release the GIL and
answer Ctrl-C; methods prefixed with ``a`` return awaitables for asyncio. See docs/rollout.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from . import _core

InferencePool = _core.InferencePool
RolloutEngine = _core.RolloutEngine
Trajectory = _core.Trajectory
Group = _core.Group

AGENT_KINDS = ("asearcher", "search_r1", "reasoning")


def default_prompts(kind: str = "asearcher") -> dict[str, str]:
    """The default prompt templates of an agent kind (``asearcher``, ``search_r1`` or
    ``reasoning``), by template name. Edit a copy and pass it back as
    ``agent={"kind": kind, "prompts": {...}}``; only the templates you give are replaced."""
    return _core.default_prompts(kind)


def load_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """Reads a trajectory jsonl file. A torn last line (left by a killed writer) is skipped; any
    other malformed line raises :class:`~asearcher.exceptions.BadLineError` naming file:line."""
    return _core.load_trajectories(path)


def save_trajectories(
    path: str | os.PathLike[str], trajectories: Iterable[Trajectory], append: bool = True
) -> None:
    """Writes trajectories as jsonl, one per line: appended to ``path`` (default; the file is
    created if missing) or replacing it (``append=False``)."""
    _core.save_trajectories(path, list(trajectories), append)


def rewards_of(groups: Sequence[Group]) -> list[list[float | None]]:
    """The rewards of each group, in order (a small convenience for trainers and notebooks)."""
    return [g.rewards for g in groups]


__all__ = [
    "AGENT_KINDS",
    "Group",
    "InferencePool",
    "RolloutEngine",
    "Trajectory",
    "default_prompts",
    "load_trajectories",
    "rewards_of",
    "save_trajectories",
]
