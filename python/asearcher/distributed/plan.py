"""The buffer stage's plan for data-parallel ranks, and the embedded learner's step on the same
groups (the reference the FSDP learner is tested and benchmarked against)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from os import PathLike
from typing import Any

from .. import _core
from ..config import LearnerConfig

Groups = Sequence[Sequence[_core.Trajectory]]


def plan_ppo_step(
    groups: Groups,
    version: int,
    learner: LearnerConfig | dict[str, Any],
    world_size: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What each of ``world_size`` ranks trains on for one PPO step on ``groups`` (each a list of
    scored trajectories) with the policy at ``version``: ``(plan, batch_stats)``. ``plan`` is
    ``{"minibatch_loss_tokens": [...], "ranks": [[[micro, ...] per minibatch] per rank]}``,
    each micro-batch a dict of little-endian byte buffers (``input_ids``, ``position_ids``,
    ``targets``, ``loss_mask``, ``behav``, ``advantages``), ``seq_lens`` and ``loss_tokens``."""
    plan, stats = _core.plan_ppo_step([list(g) for g in groups], version, learner, world_size)
    return plan, json.loads(stats)


def tch_ppo_step(
    model_dir: str | PathLike[str],
    groups: Groups,
    version: int,
    learner: LearnerConfig | dict[str, Any],
    out_dir: str | PathLike[str],
    *,
    steps: int = 1,
) -> dict[str, Any]:
    """``steps`` PPO steps of the embedded tch learner (CPU, float32) on ``groups`` from the
    model in ``model_dir``; the trained model goes to ``out_dir``; returns the last step's
    statistics."""
    stats = _core.tch_ppo_step(
        os.fspath(model_dir),
        [list(g) for g in groups],
        version,
        learner,
        os.fspath(out_dir),
        steps,
    )
    return json.loads(stats)
