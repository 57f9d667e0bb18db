"""The embedded main job: build a tinyworld, measure the random model, warm-start it on the
demonstrator's imperfect trajectories, train it with asynchronous RL (F1 reward, embedded BM25
search, embedded generator), and measure held-out accuracy after each stage. Held-out questions
are about entities never trained on, so only searching and reading answers them.

``asearcher demo`` runs :func:`run_job`; ``notebooks/tinyworld.ipynb`` walks through the same
stages.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .build import TOP_K, BuiltWorld, agent_config, build
from .demonstrator import Imperfections
from .runs import (
    DemonstrationStats,
    heldout_accuracy,
    make_demonstrations,
    make_name_drills,
    make_reading_drills,
)


@dataclass
class JobSettings:
    """The main job's knobs (defaults: the README's run, a few minutes on 2 CPU cores)."""

    size: str = "default"
    # The training seed: demonstrations' imperfections, warm start, RL (and the world, unless
    # ``world_seed`` is given).
    seed: int = 0
    world_seed: int | None = None
    demos_per_question: int = 2
    # The expert guesses without searching in 30% of its trajectories (and stops multi-hop
    # chains early in 15%): mistakes RL has to unlearn. Not more: at 60% a guess is the likely
    # first move, and the greedy warm-started policy lands on either side of that knife edge
    # depending on the world and even the order of the demonstrations (docs/tinyworld.md).
    guess_rate: float = 0.3
    name_drill_repeats: int = 2
    # Trajectories per train question of a perfect expert on the counterfactual twin (0: none):
    # the answer can only be read from the observation there, so the warm start learns to read
    # instead of recall (with the demonstrations' imperfect expert there instead, the warm start
    # reached only 0.38 and 0.51 held-out F1 on 2 of 4 runs; docs/tinyworld.md).
    reading_drills: int = 1
    warm_start_epochs: int = 10
    warm_start_lr: float = 3e-3
    # AdamW weight decay of the warm start: without it the tiny model memorises the train set
    # (train F1 1.0) and held-out F1 landed anywhere from 0.35 to 0.96; with 0.1, five runs
    # (worlds 1-3) gave 0.62-0.87 (docs/tinyworld.md).
    warm_start_weight_decay: float = 0.1
    warm_start_batch: int = 32
    rl_steps: int = 40
    rl_lr: float = 3e-4
    group_size: int = 8
    batch_size: int = 8
    max_staleness: int = 2
    max_running: int = 64
    eval_questions: int | None = None


@dataclass
class JobResult:
    heldout_f1_random: float
    heldout_f1_warm_start: float
    heldout_f1_rl: float
    heldout_em_warm_start: float
    heldout_em_rl: float
    demonstrations_f1: float
    demonstrations_searched: float
    warm_start_loss: tuple[float, float]
    rl_steps: int
    # Per stage ("random", "warm_start", "rl"): greedy f1, em, mean_turns and by_hops
    # ({hops: {"f1", "pass_f1", "questions"}}).
    heldout: dict[str, dict[str, Any]] = field(default_factory=dict)
    warm_start_dir: str = ""
    rl_dir: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    plot: list[str] = field(default_factory=list)
    out_dir: str = ""


def rl_config(world: BuiltWorld, model_dir: Path, out_dir: Path, s: JobSettings) -> TrainConfig:
    """The trainer config of the RL stage (validated by Rust; ``print`` it to see every
    setting, defaults included)."""
    return TrainConfig.from_dict(
        {
            "model": {"path": str(model_dir)},
            "data": {"train": str(world.train), "epochs": 1000, "shuffle": True},
            "tools": {"index": str(world.index), "top_k": TOP_K},
            "agent": agent_config(world.world.size, variant=world.world.variant),
            "reward": {"metric": "f1"},
            "rollout": {
                "group_size": s.group_size,
                "batch_size": s.batch_size,
                "max_staleness": s.max_staleness,
                "max_concurrent": s.max_running,
                "filter_zero_variance": True,
            },
            "inference": {"max_context": 1024},
            "learner": {
                "micro_batch_tokens": 1024,
                "schedule": {"kind": "constant", "lr": s.rl_lr},
                "optimizer": {"weight_decay": 0.0},
            },
            "run": {
                "out_dir": str(out_dir),
                "steps": s.rl_steps,
                "checkpoint_every": 10,
                "resume": False,
                "seed": s.seed,
            },
        }
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


def reference(size: str) -> dict[str, Any] | None:
    """What a normal result looks like: the intervals of ``benches/bench_tinyworld_seeds.py``
    (held-out F1 per stage and the RL gain over many worlds and seeds), if measured for
    ``size``."""
    path = Path(__file__).with_name("reference.json")
    if not path.exists():
        return None
    ref = json.loads(path.read_text(encoding="utf-8"))
    return ref if ref.get("size") == size else None


def _bands(ref: dict[str, Any] | None) -> list[tuple[str, float, float]]:
    """The benchmark's 95% intervals per stage, for the plot."""
    if ref is None:
        return []
    names = {"random": "random", "warm_start": "warm start", "rl": "after RL"}
    return [
        (f"benchmark {names[k]}", ref["heldout_f1"][k]["lo"], ref["heldout_f1"][k]["hi"])
        for k in ("random", "warm_start", "rl")
    ]


def _normal(ref: dict[str, Any] | None, key: str) -> str:
    if ref is None:
        return ""
    iv = ref["rl_gain"] if key == "rl_gain" else ref["heldout_f1"][key]
    return f"  [benchmark, {ref['runs']} runs: {iv['mean']:.3f}, 95% {iv['lo']:.3f}-{iv['hi']:.3f}]"


def warm_start_data(
    world: BuiltWorld, root: Path, s: JobSettings, say: Any = _say
) -> tuple[DemonstrationStats, list[Path]]:
    """The warm start's files under ``root``: the imperfect demonstrations, the name drills and
    (``s.reading_drills``) a perfect expert on the counterfactual twin."""
    imperfections = Imperfections(guess_rate=s.guess_rate)
    demos = make_demonstrations(
        world, s.demos_per_question, root / "demos.jsonl", seed=s.seed, imperfections=imperfections
    )
    files = [demos.path]
    files.append(make_name_drills(world, root / "name_drills.jsonl", repeats=s.name_drill_repeats))
    say(
        f"demonstrations: {demos.trajectories} trajectories, F1 {demos.f1:.3f}, "
        f"searched {demos.searched:.0%} (deliberately imperfect)"
    )
    if s.reading_drills:
        reading = make_reading_drills(
            world,
            root / "reading_drills.jsonl",
            n_per_question=s.reading_drills,
            seed=s.seed + 1,
        )
        files.append(reading.path)
        say(
            f"reading drills: {reading.trajectories} trajectories of a perfect expert on the "
            "counterfactual twin (same names, facts redrawn: answers must be read)"
        )
    return demos, files


def run_warm_start(
    world: BuiltWorld, files: list[Path], out_dir: Path, s: JobSettings, progress: bool = True
) -> Any:
    """Supervised warm start of the world's random model on ``files`` (``JobSettings`` knobs)."""
    from asearcher import warm_start

    return warm_start(
        world.model_init,
        files,
        out_dir,
        epochs=s.warm_start_epochs,
        batch_size=s.warm_start_batch,
        lr=s.warm_start_lr,
        weight_decay=s.warm_start_weight_decay,
        warmup_steps=10,
        micro_batch_tokens=512,
        seed=s.seed,
        progress=progress,
    )


def run_job(
    workdir: str | Path, settings: JobSettings | None = None, progress: bool = True
) -> JobResult:
    """Runs every stage in ``workdir`` (replacing an earlier run there) and prints the held-out
    accuracy after each; saves ``tinyworld.svg`` (and ``.png`` with matplotlib) and
    ``summary.json``."""
    from asearcher import Trainer, read_metrics
    from asearcher.plotting import plot_training

    s = settings or JobSettings()
    ref = reference(s.size)
    root = Path(workdir)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    world_seed = s.seed if s.world_seed is None else s.world_seed
    world = build(root / "world", seed=world_seed, size=s.size)
    seconds["build"] = time.perf_counter() - t
    _say(
        f"tinyworld '{s.size}' (world seed {world_seed}, seed {s.seed}): "
        f"{len(world.world.train)} train / "
        f"{len(world.world.heldout)} held-out "
        f"questions, corpus {world.corpus}"
    )

    stages: dict[str, dict[str, Any]] = {}

    def heldout(stage: str, model: Any) -> dict[str, Any]:
        acc = heldout_accuracy(model, world, max_questions=s.eval_questions)
        stages[stage] = {k: acc[k] for k in ("f1", "em", "mean_turns", "by_hops")}
        return acc

    t = time.perf_counter()
    acc_random = heldout("random", world.model_init)
    seconds["eval_random"] = time.perf_counter() - t
    _say(f"held-out F1, random model:      {acc_random['f1']:.3f}" + _normal(ref, "random"))

    t = time.perf_counter()
    demos, files = warm_start_data(world, root, s)
    seconds["demonstrations"] = time.perf_counter() - t
    t = time.perf_counter()
    ws = run_warm_start(world, files, root / "warm-start", s, progress=progress)
    seconds["warm_start"] = time.perf_counter() - t
    acc_warm = heldout("warm_start", ws.out_dir)
    _say(
        f"held-out F1, after warm start:  {acc_warm['f1']:.3f}  "
        f"(loss {ws.first_loss:.3f} -> {ws.last_loss:.3f})" + _normal(ref, "warm_start")
    )

    t = time.perf_counter()
    rl_out = root / "rl"
    trainer = Trainer(rl_config(world, ws.out_dir, rl_out, s))
    fit = trainer.fit(progress=progress)
    seconds["rl"] = time.perf_counter() - t
    acc_rl = heldout("rl", fit.final_dir)
    _say(
        f"held-out F1, after RL:          {acc_rl['f1']:.3f}  "
        f"({fit.steps} async RL steps, eta={s.max_staleness})" + _normal(ref, "rl")
    )
    gain = acc_rl["f1"] - acc_warm["f1"]
    _say(f"RL gain:                        {gain:+.3f}" + _normal(ref, "rl_gain"))

    plot = plot_training(
        read_metrics(rl_out),
        root / "tinyworld.svg",
        refs=[
            ("held-out F1 random", acc_random["f1"]),
            ("held-out F1 warm start", acc_warm["f1"]),
            ("held-out F1 after RL", acc_rl["f1"]),
        ],
        title="tinyworld: asynchronous RL after a warm start",
        bands=_bands(ref),
    )
    result = JobResult(
        heldout_f1_random=acc_random["f1"],
        heldout_f1_warm_start=acc_warm["f1"],
        heldout_f1_rl=acc_rl["f1"],
        heldout_em_warm_start=acc_warm["em"],
        heldout_em_rl=acc_rl["em"],
        demonstrations_f1=demos.f1,
        demonstrations_searched=demos.searched,
        warm_start_loss=(ws.first_loss, ws.last_loss),
        rl_steps=fit.steps,
        heldout=stages,
        warm_start_dir=str(ws.out_dir),
        rl_dir=str(fit.final_dir),
        seconds=seconds,
        plot=[str(p) for p in plot],
        out_dir=str(root),
    )
    (root / "summary.json").write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
    _say(f"plot -> {plot[0]}; summary -> {root / 'summary.json'}")
    return result


__all__ = [
    "JobResult",
    "JobSettings",
    "reference",
    "rl_config",
    "run_job",
    "run_warm_start",
    "warm_start_data",
]
