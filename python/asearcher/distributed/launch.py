"""Running the at-scale trainer: the process group from torchrun's environment, the FSDP2
learner on every rank, the Rust training loop (rollout engine, buffer stage, checkpoints,
weight sync) on global rank 0.

``torchrun --nproc_per_node 8 -m asearcher train cluster.toml`` ends up in :func:`fit` on every
rank (the CLI sends configs with ``learner.backend = "fsdp"`` here); from Python, call
:func:`fit` on every rank yourself. Without torchrun's variables the job is one rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from os import PathLike
from typing import Any

import torch
import torch.distributed as dist

from .._config import as_config_dict
from ..config import TrainConfig
from ..exceptions import ConfigError
from .fsdp import FsdpLearner
from .weight_sync import free_port

log = logging.getLogger("asearcher.distributed")


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(device: str, timeout_s: float) -> RankInfo:
    """Initialises the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or as a one-rank group on
    loopback without it. ``device`` is ``model.device``: ``cpu`` (gloo) or ``cuda`` (each rank
    on ``cuda:LOCAL_RANK``; NCCL for tensors, gloo for control messages)."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("invalid setting `model.device`: cuda is not available on this host")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "cpu:gloo,cuda:nccl"
    elif device == "cpu":
        dev, backend = torch.device("cpu"), "gloo"
    else:
        raise ConfigError(
            f"invalid setting `model.device`: `{device}`; the fsdp learner takes `cpu` or `cuda` "
            "(each rank uses cuda:LOCAL_RANK)"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return RankInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _train_config(config: Any, overrides: Sequence[str]) -> dict[str, Any]:
    if isinstance(config, (str, PathLike)):
        return TrainConfig.from_file(config, *overrides).to_dict()
    cfg = TrainConfig.from_dict(as_config_dict(config) or {})
    return (cfg.override(*overrides) if overrides else cfg).to_dict()


def fit(
    config: TrainConfig | dict[str, Any] | str | PathLike[str],
    *,
    overrides: Sequence[str] = (),
    callbacks: Iterable[Any] = (),
    toolbox: Any = None,
    plugins: Sequence[Any] = (),
    progress: bool = True,
) -> Any:
    """Trains with the FSDP2 learner; call it on every rank. Returns rank 0's
    :class:`asearcher.training.FitResult` there and ``None`` on the other ranks. Tools, plugins
    and callbacks are used on rank 0 only (where the rollout engine runs)."""
    from ..training import Trainer

    cfg = _train_config(config, overrides)
    if cfg["learner"]["backend"] != "fsdp":
        raise ConfigError(
            "invalid setting `learner.backend`: asearcher.distributed.fit trains with "
            '`fsdp`; set learner.backend = "fsdp" (or use asearcher.Trainer for `tch`)'
        )
    info = init_distributed(cfg["model"]["device"], float(cfg["learner"]["fsdp"]["timeout_s"]))
    learner = FsdpLearner(cfg, device=info.device)
    log.info("rank %d/%d ready on %s", info.rank, info.world_size, info.device)
    try:
        if info.rank != 0:
            learner.serve()
            return None
        try:
            trainer = Trainer(cfg, toolbox=toolbox, plugins=plugins, learner=learner)
            return trainer.fit(callbacks, progress=progress)
        finally:
            learner.shutdown()
    finally:
        dist.destroy_process_group()
