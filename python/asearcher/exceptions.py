"""The exception hierarchy of asearcher: one base class, specific subclasses.

Every error raised by asearcher's own code is an :class:`AsearcherError`. Subclasses also derive
from the matching builtin where one fits (``ValueError``, ``ConnectionError``, ``TimeoutError``,
...), so ``except ValueError`` keeps working. Exceptions raised by user code (callbacks, reward
functions) pass through unchanged.
"""

from __future__ import annotations


class AsearcherError(Exception):
    """Base class of every asearcher error."""


class ConfigError(AsearcherError, ValueError):
    """A setting is invalid; the message names it."""


class MissingSecretError(ConfigError):
    """A secret (API key) expected in an environment variable is not set."""


class DataError(AsearcherError, ValueError):
    """An input data file (questions, a benchmark, a corpus, trajectories) is malformed, empty or
    inconsistent; the message names the file (and the line where one is to blame). Its
    subclasses say which kind of file."""


class AsearcherIOError(AsearcherError, OSError):
    """A file or socket operation failed; the message names the path or address."""


class ToolError(AsearcherError):
    """A search or page-access tool failed."""


class CorpusError(ToolError, DataError):
    """A corpus line is malformed; the message names the file and line number."""


class SearchIndexError(ToolError):
    """An index directory is missing, damaged or of an unsupported format."""


class BackendError(ToolError, ConnectionError):
    """A remote backend (retrieval server, web search, page) failed or could not be reached."""


class RequestRejectedError(BackendError):
    """A backend refused the request itself (HTTP 4xx); retrying will not help."""


class ToolTimeoutError(ToolError, TimeoutError):
    """A tool call exceeded its time limit."""


class PageRefusedError(ToolError, PermissionError):
    """A page fetch was refused by policy (private address, content type, size)."""


class CacheMissError(ToolError, LookupError):
    """Replay mode was asked for a result that is not in the cache."""


class CancelledError(AsearcherError):
    """Long work was cancelled on request."""


class TensorError(AsearcherError, ValueError):
    """A tensor handed to a kernel has the wrong shape, dtype or device."""


class ModelError(AsearcherError):
    """A model or checkpoint directory is missing a file, or a file in it is malformed."""


class GenerationError(AsearcherError, RuntimeError):
    """A generation request could not be served, or the generator engine has stopped."""


class RolloutError(AsearcherError):
    """The rollout engine failed (inference, rewards, question or trajectory files)."""


class InferenceError(RolloutError, ConnectionError):
    """An inference server (or the embedded generator) failed or broke the protocol; the message
    names the server."""


class InferenceTimeoutError(InferenceError, TimeoutError):
    """An inference call exceeded its time limit."""


class RewardError(RolloutError):
    """A reward function or the LLM judge failed."""


class BadLineError(RolloutError, DataError):
    """A line of a questions or trajectory jsonl file is malformed; the message names file:line."""


class EngineStoppedError(RolloutError, RuntimeError):
    """The rollout engine was shut down while a call waited on it."""


class SystematicFailureError(RolloutError, RuntimeError):
    """The first trajectories (or tool calls) all failed with the same error: a systematic error
    (a missing chat template, a dead server, no toolbox), not bad luck. The engine stopped; the
    message names the cause and the config key to check (``rollout.fail_fast_after``)."""


class RunFailedError(RolloutError, RuntimeError):
    """A run ended without a usable result: every trajectory or every tool call failed. What was
    done is saved (the message says where) and a re-run retries the failures."""


class ResumeMismatchError(ConfigError):
    """An output directory holds results of a different setup; the message lists each differing
    field with its saved and current value, and how to start over or continue deliberately."""


class TrainingError(AsearcherError, RuntimeError):
    """Training failed or was misused (started twice, polled before start)."""


class TrainingDataError(TrainingError, DataError):
    """Training data cannot be used (a trajectory whose turns do not line up, nothing to train
    on); the message names the trajectory or file."""


class WeightSyncError(TrainingError, ConnectionError):
    """New weights could not be pushed to the generator or an inference server."""


__all__ = [
    "AsearcherError",
    "AsearcherIOError",
    "BackendError",
    "BadLineError",
    "CacheMissError",
    "CancelledError",
    "ConfigError",
    "CorpusError",
    "DataError",
    "EngineStoppedError",
    "GenerationError",
    "InferenceError",
    "InferenceTimeoutError",
    "MissingSecretError",
    "ModelError",
    "PageRefusedError",
    "RequestRejectedError",
    "ResumeMismatchError",
    "RewardError",
    "RolloutError",
    "RunFailedError",
    "SearchIndexError",
    "SystematicFailureError",
    "TensorError",
    "ToolError",
    "ToolTimeoutError",
    "TrainingDataError",
    "TrainingError",
    "WeightSyncError",
]
