"""Callbacks of :meth:`asearcher.Trainer.fit`: hooks at the start, after every step (with the
step record, the same dict as a line of ``metrics.jsonl``) and at the end. Loggers for
TensorBoard and Weights & Biases are used when those packages are installed; the plot callback
needs nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError

if TYPE_CHECKING:
    from .training import FitResult, Trainer

# Scalars logged per step: (name in the logger, path in the record).
SCALARS: list[tuple[str, tuple[str, ...]]] = [
    ("reward/mean", ("reward_mean",)),
    ("accuracy/f1", ("f1_mean",)),
    ("accuracy/em", ("em_mean",)),
    ("agent/turns", ("turns_mean",)),
    ("agent/tool_calls", ("tool_calls_mean",)),
    ("loss/total", ("learner", "loss")),
    ("loss/grad_norm", ("learner", "grad_norm")),
    ("loss/lr", ("learner", "lr")),
    ("ppo/clip_frac", ("learner", "clip_frac")),
    ("ppo/approx_kl", ("learner", "approx_kl")),
    ("ppo/behav_weight_mean", ("learner", "behav_weight_mean")),
    ("ppo/entropy", ("learner", "entropy_mean")),
    ("staleness/mean", ("learner", "staleness_mean")),
    ("staleness/max", ("learner", "staleness_max")),
    ("staleness/version_dropped", ("learner", "trajectories_version_dropped")),
    ("staleness/tokens_masked", ("learner", "tokens_version_masked")),
    ("throughput/gen_tokens_per_s", ("gen_tokens_per_s",)),
    ("time/step_s", ("step_s",)),
    ("time/wait_s", ("wait_s",)),
    ("time/train_s", ("train_s",)),
    ("time/sync_s", ("sync_s",)),
    ("rollout/running", ("rollout", "running")),
    ("rollout/filtered_groups", ("rollout", "filtered_groups")),
]


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a step record under the logger names of :data:`SCALARS`."""
    out = {}
    for name, path in SCALARS:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class Callback:
    """Override what you need. ``on_step`` returning ``False`` stops the run after the step."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, record: dict[str, Any]) -> bool | None:
        return None

    def on_end(self, trainer: Trainer, result: FitResult) -> None:
        pass


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        self.fn = fn

    def on_step(self, trainer: Trainer, record: dict[str, Any]) -> bool | None:
        return self.fn(record)


def as_callback(obj: Callback | Callable[[dict[str, Any]], Any]) -> Callback:
    if isinstance(obj, Callback):
        return obj
    if callable(obj):
        return _FunctionCallback(obj)
    raise ConfigError(f"invalid setting `callbacks`: {obj!r} is neither a Callback nor a function")


class TensorBoardCallback(Callback):
    """Writes every scalar of :data:`SCALARS` to TensorBoard event files in ``log_dir``
    (default ``<out_dir>/tensorboard``). Needs the ``tensorboard`` package."""

    def __init__(self, log_dir: str | os.PathLike[str] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "invalid setting `callbacks`: TensorBoardCallback needs the `tensorboard` package "
                "(pip install tensorboard)"
            ) from e
        self.log_dir = log_dir
        self.writer: Any = None

    def on_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.fspath(self.log_dir or trainer.out_dir / "tensorboard"))

    def on_step(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for name, value in scalars_of(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def on_end(self, trainer: Trainer, result: FitResult) -> None:
        self.writer.close()


class WandbCallback(Callback):
    """Logs every scalar to Weights & Biases (``wandb.init(**init_kwargs)`` at the start; the
    API key comes from the environment as wandb reads it). Needs the ``wandb`` package."""

    def __init__(self, **init_kwargs: Any) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ConfigError(
                "invalid setting `callbacks`: WandbCallback needs the `wandb` package "
                "(pip install wandb)"
            ) from e
        self.wandb = wandb
        self.init_kwargs = init_kwargs
        self.run: Any = None

    def on_start(self, trainer: Trainer) -> None:
        self.run = self.wandb.init(config=trainer.config.to_dict(), **self.init_kwargs)

    def on_step(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.run.log(scalars_of(record), step=record["step"])

    def on_end(self, trainer: Trainer, result: FitResult) -> None:
        self.run.finish()


class PlotCallback(Callback):
    """Saves the training curves (reward, accuracy, staleness, throughput) of the whole run,
    from ``metrics.jsonl``, at the end (and every ``every`` steps if given): SVG, and PNG too
    when matplotlib is installed. Default path ``<out_dir>/training.svg``."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, every: int | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.every = every
        self.saved: list[Path] = []

    def _save(self, trainer: Trainer) -> None:
        from .plotting import plot_training
        from .training import read_metrics

        path = self.path or trainer.out_dir / "training.svg"
        self.saved = plot_training(read_metrics(trainer.out_dir), path)

    def on_step(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.every and record["step"] % self.every == 0:
            self._save(trainer)

    def on_end(self, trainer: Trainer, result: FitResult) -> None:
        self._save(trainer)


def default_callbacks() -> list[Callback]:
    """The plot, plus TensorBoard when ``tensorboard`` is installed and Weights & Biases when
    ``wandb`` is installed and ``WANDB_PROJECT`` is set."""
    cbs: list[Callback] = [PlotCallback()]
    with contextlib.suppress(ConfigError):
        cbs.append(TensorBoardCallback())
    if os.environ.get("WANDB_PROJECT"):
        with contextlib.suppress(ConfigError):
            cbs.append(WandbCallback(project=os.environ["WANDB_PROJECT"]))
    return cbs


__all__ = [
    "SCALARS",
    "Callback",
    "PlotCallback",
    "TensorBoardCallback",
    "WandbCallback",
    "as_callback",
    "default_callbacks",
    "scalars_of",
]
