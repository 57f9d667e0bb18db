"""tinyworld: a small synthetic world (made-up entities, typed relations, a corpus and multi-hop
questions with a train / held-out split by entity), its word-level tokenizer, a tiny random
Qwen2, the agent setup, and a scripted, deliberately imperfect demonstrator served over SGLang's
/generate, so the embedded main job can train a search agent end to end in minutes on a CPU.
See docs/tinyworld.md.
"""

from __future__ import annotations

from .build import (
    TOP_K,
    BuiltWorld,
    agent_config,
    build,
    build_counterfactual,
    model_config,
    toolbox,
)
from .demonstrator import Demonstrator, Imperfections
from .runs import (
    DemonstrationStats,
    heldout_accuracy,
    make_demonstrations,
    make_name_drills,
    make_reading_drills,
)
from .world import QUESTION_KINDS, RELATIONS, World

__all__ = [
    "QUESTION_KINDS",
    "RELATIONS",
    "TOP_K",
    "BuiltWorld",
    "DemonstrationStats",
    "Demonstrator",
    "Imperfections",
    "World",
    "agent_config",
    "build",
    "build_counterfactual",
    "heldout_accuracy",
    "make_demonstrations",
    "make_name_drills",
    "make_reading_drills",
    "model_config",
    "toolbox",
]
