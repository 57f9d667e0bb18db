"""asearcher: fully asynchronous RL training and evaluation of long-horizon LLM search agents.

The core is Rust (``asearcher._core``); this package is its typed Python face. torch is imported
first because the native module links the libtorch that the torch wheel ships.
"""

from __future__ import annotations

import logging as _logging
import os as _os

# libtorch's CPU matrix products (MKL) round differently with the memory alignment of their
# inputs and with the number of threads MKL picks under load, so the same computation gave
# different bits after unrelated allocations (a generator loaded earlier in the process changed a
# warm start's weights) or while another process ran. Strict conditional numerical
# reproducibility makes them alignment-independent and a fixed thread count keeps the split of
# the work; both must be set before MKL's first call. Set them yourself to choose otherwise
# (docs/training.md, "Reproducibility").
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import torch as _torch  # noqa: F401  (loads libtorch before the native module needs it)

from . import _core, config
from ._plugins import reward_plugin
from .config import EvalConfig, TrainConfig
from .encoder import Encoder
from .evaluation import EvalReport, aevaluate, evaluate
from .exceptions import AsearcherError
from .generation import GenerationOutput, Generator
from .model import QwenModel
from .rollout import (
    Group,
    InferencePool,
    RolloutEngine,
    Trajectory,
    default_prompts,
    load_trajectories,
    save_trajectories,
)
from .serving import Tokenizer, start_model_server
from .synthesis import asynthesize, synthesize
from .training import FitResult, Trainer, WarmStartResult, read_metrics, warm_start

__version__: str = _core.__version__

# No NullHandler: until the application configures logging, asearcher's warnings reach stderr
# through logging's last-resort handler (repeats are rate-limited in the Rust bridge), so a run
# that drops work never does so silently.


def set_log_level(level: int | str) -> None:
    """Sets the level of the ``asearcher`` logger, Rust events included, at once."""
    _logging.getLogger("asearcher").setLevel(level)
    _core.refresh_log_level()


__all__ = [
    "AsearcherError",
    "Encoder",
    "EvalConfig",
    "EvalReport",
    "FitResult",
    "GenerationOutput",
    "Generator",
    "Group",
    "InferencePool",
    "QwenModel",
    "RolloutEngine",
    "Tokenizer",
    "TrainConfig",
    "Trainer",
    "Trajectory",
    "WarmStartResult",
    "__version__",
    "aevaluate",
    "asynthesize",
    "config",
    "default_prompts",
    "evaluate",
    "load_trajectories",
    "read_metrics",
    "reward_plugin",
    "save_trajectories",
    "set_log_level",
    "start_model_server",
    "synthesize",
    "warm_start",
]
