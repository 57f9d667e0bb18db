"""Run by torchrun from tests/test_fsdp.py: PPO steps of the FSDP2 learner on the groups of a spec
file, on every rank; rank 0 writes the trained weights (HF layout) and the statistics.

``python -m torch.distributed.run --standalone --nproc_per_node N ppo_step_worker.py SPEC``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from asearcher import _core
from asearcher.config import LearnerConfig
from asearcher.distributed import FsdpLearner, init_distributed, plan_ppo_step


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    learner_cfg = LearnerConfig.from_dict(spec["learner"]).to_dict()
    info = init_distributed("cpu", 120.0)
    config = {"model": {"path": spec["model"]}, "learner": learner_cfg}
    if "inference" in spec:
        config["inference"] = spec["inference"]
    learner = FsdpLearner(config, device=info.device, head=spec.get("head", "fused"))
    if spec.get("max_shard_bytes"):
        learner.max_shard_bytes = spec["max_shard_bytes"]
    if info.rank != 0:
        learner.serve()
        _report_rss(spec, info.rank)
        dist.destroy_process_group()
        return
    groups = [[_core.Trajectory.from_json(line) for line in g] for g in spec["groups"]]
    plan, batch = plan_ppo_step(groups, spec["version"], learner_cfg, info.world_size)
    stats = {}
    for _ in range(spec.get("steps", 1)):
        stats = learner.ppo_step(plan, spec["version"])
    if spec.get("die_rank") is not None:
        learner._send("no-such-command", {})  # the other rank fails; this one must not hang
        learner._send("shutdown", {})
    if spec.get("push_version") is not None:
        learner.push_weights(spec["push_version"])
    learner.export_hf(spec["out"])
    learner.shutdown()
    out = Path(spec["out"])
    (out / "stats.json").write_text(json.dumps({"stats": stats, "batch": batch}))
    _report_rss(spec, 0)
    dist.destroy_process_group()


def _report_rss(spec: dict, rank: int) -> None:
    """With ``report_rss``: this rank's peak RSS (MiB) into ``out/rss-rank<r>.txt``."""
    if spec.get("report_rss"):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        (Path(spec["out"]) / f"rss-rank{rank}.txt").write_text(f"{peak:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
