"""Training: :class:`Trainer` runs fully asynchronous RL (rollouts and training at the same time
within the staleness bound; ``rollout.max_staleness = 0`` is synchronous RL), and
:func:`warm_start` fine-tunes a model on demonstration trajectories first.

The loop itself is Rust (``asearcher._core``) on its own thread; this module polls its step
records, so callbacks, the progress bar and Ctrl-C run in the caller's thread. A stop (Ctrl-C,
:meth:`Trainer.stop`, a callback returning ``False``) ends the run after the step in progress,
which is checkpointed; running the same config again resumes from there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from . import _core
from ._config import as_config_dict
from ._progress import progress_bar
from .callbacks import Callback, as_callback
from .config import TrainConfig, WarmStartConfig

ConfigLike = TrainConfig | dict[str, Any] | str | PathLike[str]


@dataclass
class FitResult:
    """How a :meth:`Trainer.fit` call ended."""

    steps: int
    """Steps completed in all (a resumed run counts the earlier ones)."""
    steps_this_run: int
    ended_by: str
    """``steps`` (run.steps reached), ``data`` (questions used up) or ``stopped``."""
    resumed_from: int
    final_dir: Path
    """The trained model (HF layout with the tokenizer files)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The step records of this call (also in ``<out_dir>/metrics.jsonl``)."""


class Trainer:
    """Asynchronous RL training of a search agent.

    ``config`` is an :class:`asearcher.config.TrainConfig`, a dict of the same shape, or a
    TOML/YAML/JSON file of one (sections ``model``, ``data``, ``tools``, ``agent``, ``reward``,
    ``rollout``, ``inference``, ``learner`` and ``run``; ``docs/config.md`` lists every field;
    unknown keys are refused by name). ``overrides`` are ``a.b.c=v`` settings applied on top
    (``"learner.ppo.eps_clip=0.3"``), as on the command line. ``toolbox``
    replaces ``tools`` with any :class:`asearcher.tools.Toolbox`; ``plugins`` add reward
    plugins (see :func:`asearcher.reward_plugin`); ``reward.primary`` (or ``reward.weights``)
    in the config picks the score trained on, a plugin's name included.

    Building the trainer loads the model, starts the generator and the rollout engine, and
    resumes from the newest checkpoint of ``run.out_dir`` when there is one.

    ``learner`` is for ``learner.backend = "fsdp"``: rank 0's
    :class:`asearcher.distributed.FsdpLearner` (:func:`asearcher.distributed.fit` builds it on
    every rank and passes it here).
    """

    def __init__(
        self,
        config: ConfigLike,
        *,
        overrides: Sequence[str] = (),
        toolbox: Any = None,
        plugins: Sequence[Any] = (),
        primary: str | None = None,
        learner: Any = None,
    ) -> None:
        if isinstance(config, PathLike):
            config = os.fspath(config)
        self._native = _core.Trainer(
            config,
            overrides=list(overrides),
            toolbox=toolbox,
            plugins=list(plugins),
            primary=primary,
            learner=learner,
        )
        self._config = TrainConfig.from_dict(self._native.config)
        self._started = False

    @property
    def config(self) -> TrainConfig:
        """The config in effect, every default filled in."""
        return self._config

    @property
    def out_dir(self) -> Path:
        return Path(self.config.run.out_dir)

    @property
    def resumed_step(self) -> int:
        """Steps already taken when the trainer was built (0 for a fresh run)."""
        return self._native.resumed_step

    def stop(self) -> None:
        """Ends the run after the step in progress (checkpointed)."""
        self._native.stop()

    def fit(
        self,
        callbacks: Iterable[Callback | Any] = (),
        *,
        progress: bool = True,
    ) -> FitResult:
        """Trains until ``run.steps``, the end of the data, or a stop. Each callback is a
        :class:`asearcher.callbacks.Callback` or a function ``f(record) -> bool | None``
        (``False`` stops the run). Returns the :class:`FitResult`."""
        if self._started:
            raise _core_error("fit() was already called on this Trainer; build a new one to resume")
        self._started = True
        cbs = [as_callback(c) for c in callbacks]
        for cb in cbs:
            cb.on_start(self)
        total = self.config.run.steps
        bar = _bar(progress, total=total, initial=self.resumed_step, desc="train", unit="step")
        history: list[dict[str, Any]] = []
        self._native.start()
        try:
            summary = self._poll_until_done(cbs, bar, history)
        except BaseException:
            self._native.stop()
            self._finish_after_error()
            raise
        finally:
            bar.close()
        result = FitResult(
            steps=summary["steps"],
            steps_this_run=summary["steps_this_run"],
            ended_by=summary["ended_by"],
            resumed_from=summary["resumed_from"],
            final_dir=Path(summary["final_dir"]),
            history=history,
        )
        for cb in cbs:
            cb.on_end(self, result)
        return result

    def _poll_until_done(
        self, cbs: list[Callback], bar: Any, history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        while True:
            kind, payload = self._native.poll(0.2)
            if kind == "idle" or payload is None:
                continue
            if kind == "done":
                return json.loads(payload)
            record = json.loads(payload)
            history.append(record)
            bar.update(1)
            bar.set_postfix(
                reward=f"{record['reward_mean']:.3f}",
                f1=f"{record['f1_mean']:.3f}",
                stale=f"{record['learner'].get('staleness_mean', 0.0):.2f}",
                tok_s=f"{record['gen_tokens_per_s']:.0f}",
                refresh=False,
            )
            if any(cb.on_step(self, record) is False for cb in cbs):
                self._native.stop()

    def _finish_after_error(self) -> None:
        """After Ctrl-C or a callback error: let the run checkpoint its step and end."""
        try:
            while True:
                kind, _ = self._native.poll(0.5)
                if kind == "done":
                    return
        except KeyboardInterrupt:
            return
        except Exception:  # the run's own error: the caller's exception is the one to see
            return


def _bar(enabled: bool, **kwargs: Any) -> Any:
    if enabled:
        return progress_bar(**kwargs)
    from tqdm.auto import tqdm

    return tqdm(disable=True, **kwargs)


def _core_error(msg: str) -> Exception:
    from .exceptions import TrainingError

    return TrainingError(msg)


@dataclass
class WarmStartResult:
    steps: int
    trajectories: int
    trajectories_skipped: int
    sequences: int
    first_loss: float
    last_loss: float
    out_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def warm_start(
    model: str | PathLike[str] | WarmStartConfig | dict[str, Any],
    trajectories: str | PathLike[str] | Sequence[str | PathLike[str]] | None = None,
    out_dir: str | PathLike[str] | None = None,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    min_reward: float | None = None,
    micro_batch_tokens: int = 1024,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    frozen: Sequence[str] = (),
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> WarmStartResult:
    """Supervised fine-tuning of ``model`` on recorded trajectories (loss on the tokens the
    agent generated, exactly as generated), written to ``out_dir`` in HF layout with the
    tokenizer files. ``min_reward`` keeps only trajectories scoring at least that (default: all,
    mistakes included). ``frozen`` names parameters to keep fixed (substrings of HF names, e.g.
    ``["embed_tokens"]``).

    ``model`` may instead be a whole :class:`asearcher.config.WarmStartConfig` (or a dict of
    one); then it is the config, and only ``progress`` applies."""
    if isinstance(model, (WarmStartConfig, dict)):
        if trajectories is not None or out_dir is not None:
            raise _config_error(
                "trajectories", "give the trajectories and out_dir inside the WarmStartConfig"
            )
        return _run_warm_start(as_config_dict(model) or {}, progress)
    if trajectories is None or out_dir is None:
        raise _config_error("out_dir" if trajectories else "trajectories", "required")
    files = [trajectories] if isinstance(trajectories, (str, PathLike)) else list(trajectories)
    schedule: dict[str, Any] = {"kind": "warmup_constant" if warmup_steps else "constant", "lr": lr}
    if warmup_steps:
        schedule["warmup_steps"] = warmup_steps
    config = {
        "model": os.fspath(model),
        "trajectories": [os.fspath(f) for f in files],
        "out_dir": os.fspath(out_dir),
        "epochs": epochs,
        "batch_size": batch_size,
        "min_reward": min_reward,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "learner": {
            "schedule": schedule,
            "grad_clip": grad_clip,
            "micro_batch_tokens": micro_batch_tokens,
            "optimizer": {"weight_decay": weight_decay},
            "frozen": list(frozen),
        },
    }
    return _run_warm_start(config, progress)


def _config_error(key: str, msg: str) -> Exception:
    from .exceptions import ConfigError

    return ConfigError(f"invalid setting `{key}`: {msg}")


def _run_warm_start(config: dict[str, Any], progress: bool) -> WarmStartResult:
    history: list[dict[str, Any]] = []
    bar = _bar(progress, total=None, desc="warm start", unit="step")

    def on_step(step: int, total: int, line: str) -> bool:
        stats = json.loads(line)
        history.append({"step": step, **stats})
        if bar.total != total:
            bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
        return True

    try:
        summary = json.loads(_core.warm_start(config, on_step))
    finally:
        bar.close()
    return WarmStartResult(
        steps=summary["steps"],
        trajectories=summary["trajectories"],
        trajectories_skipped=summary["trajectories_skipped"],
        sequences=summary["sequences"],
        first_loss=summary["first_loss"],
        last_loss=summary["last_loss"],
        out_dir=Path(summary["out_dir"]),
        history=history,
    )


def read_metrics(out_dir: str | PathLike[str]) -> list[dict[str, Any]]:
    """The step records of a run (``<out_dir>/metrics.jsonl``), in step order."""
    path = Path(out_dir) / "metrics.jsonl"
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed run
    return sorted(records, key=lambda r: r["step"])


__all__ = ["FitResult", "Trainer", "WarmStartResult", "read_metrics", "warm_start"]
