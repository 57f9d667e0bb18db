"""Asynchronous vs synchronous RL on real learning: the tinyworld job's RL stage at eta = 0
(synchronous) and eta > 0, from the same warm start, with the same seeds and the same number
of trajectories, on the long-tail world (questions that need 1 to 8 searches).

For each world seed: build the ``longtail`` world, make the demonstrations and the warm start
once (``JobSettings`` defaults). For each training seed and eta: train ``--steps`` steps
(``batch_size`` groups of ``group_size`` each, embedded generator and learner in this process),
checkpointing every ``--every`` steps. Afterwards every checkpoint is evaluated on the held-out
questions (greedy), so evaluation costs no training time. Reported per eta: wall-clock of the
run, held-out F1 at the end, the wall-clock to reach a target F1 (interpolated between
checkpoints; the target is the warm start plus 3/4 of the smallest gain any run of that seed
made, so every run reaches it), generation utilisation (share of the wall-clock with at least
one generation request in flight, and the mean number in flight) and the trainer's waiting
share. Mean and 95 % t-interval over (world, seed) pairs.

Each finished run is appended to ``--out``/runs.jsonl; rerunning skips what is there.

    python benches/bench_tinyworld_async.py [--worlds 1] [--seeds 0,1] [--etas 0,2,4] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOCS = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- bench:tinyworld-async start -->", "<!-- bench:tinyworld-async end -->")
sys.path.insert(0, str(BENCH_DIR))

from bench_tinyworld_seeds import fmt, interval, load_runs  # noqa: E402
from docs_section import replace_section  # noqa: E402


def prepare_world(world_seed: int, args: argparse.Namespace) -> tuple[object, Path, dict]:
    """The long-tail world and the job's warm start on it (reused if already made)."""
    from asearcher.tinyworld import build, heldout_accuracy
    from asearcher.tinyworld.job import JobSettings, run_warm_start, warm_start_data

    s = JobSettings(size=args.size)
    if args.warm_start_epochs is not None:
        s.warm_start_epochs = args.warm_start_epochs
    root = Path(args.out) / f"w{world_seed}"
    world = build(root / "world", seed=world_seed, size=args.size, variant=args.variant)
    ws_dir = root / "warm-start"
    info_path = root / "warm_start.json"
    if info_path.exists():
        return world, ws_dir, json.loads(info_path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    demos, files = warm_start_data(world, root, s, say=print)
    run_warm_start(world, files, ws_dir, s, progress=False)
    acc = heldout_accuracy(ws_dir, world)
    info = {
        "demonstrations_f1": demos.f1,
        "warm_start_s": time.perf_counter() - started,
        "heldout_f1": acc["f1"],
        "by_hops": acc["by_hops"],
        "mean_turns": acc["mean_turns"],
    }
    info_path.write_text(json.dumps(info), encoding="utf-8")
    return world, ws_dir, info


def train(world, ws_dir: Path, out: Path, eta: int, seed: int, args) -> list[dict]:
    import asearcher
    from asearcher.tinyworld.job import JobSettings, rl_config

    s = JobSettings(size=args.size, seed=seed, max_staleness=eta, rl_steps=args.steps)
    if out.exists():
        shutil.rmtree(out)
    cfg = rl_config(world, ws_dir, out, s).to_dict()
    cfg["run"].update(checkpoint_every=args.every, keep_last=args.steps // args.every + 1)
    asearcher.Trainer(cfg).fit(progress=False)
    return asearcher.read_metrics(out)


def evaluate_checkpoints(world, out: Path) -> list[dict]:
    from asearcher.tinyworld import heldout_accuracy

    points = []
    for ckpt in sorted((out / "checkpoints").glob("step-*")):
        acc = heldout_accuracy(ckpt, world)
        points.append({"step": int(ckpt.name.split("-")[1]), "f1": acc["f1"]})
    return points


def run_one(world_seed: int, seed: int, eta: int, args) -> dict:
    world, ws_dir, warm = prepare_world(world_seed, args)
    out = Path(args.out) / f"w{world_seed}" / f"s{seed}-eta{eta}"
    records = train(world, ws_dir, out, eta, seed, args)
    points = evaluate_checkpoints(world, out)
    last = records[-1]
    wall = last["elapsed_s"]
    elapsed = {r["step"]: r["elapsed_s"] for r in records}
    rollout = last["rollout"]
    return {
        "world_seed": world_seed,
        "seed": seed,
        "eta": eta,
        "steps": len(records),
        "trajectories": sum(r["trajectories"] for r in records),
        "wall_s": wall,
        "wait_share": sum(r["wait_s"] for r in records) / wall,
        "gen_util": rollout["gen_busy_s"] / wall,
        "gen_in_flight": rollout["gen_request_s"] / wall,
        "filtered_groups": rollout["filtered_groups"],
        "turns_mean": statistics.fmean(r["turns_mean"] for r in records),
        "staleness_mean": statistics.fmean(r["learner"]["staleness_mean"] for r in records),
        "warm_f1": warm["heldout_f1"],
        "curve": [{"step": 0, "wall_s": 0.0, "f1": warm["heldout_f1"]}]
        + [{**p, "wall_s": elapsed[p["step"]]} for p in points],
        "final_f1": points[-1]["f1"],
    }


def time_to(curve: list[dict], target: float) -> float | None:
    """Wall-clock at which the curve first reaches ``target`` (linear between checkpoints)."""
    for a, b in itertools.pairwise(curve):
        if b["f1"] >= target:
            if a["f1"] >= target:
                return a["wall_s"]
            frac = (target - a["f1"]) / (b["f1"] - a["f1"])
            return a["wall_s"] + frac * (b["wall_s"] - a["wall_s"])
    return None


def summarize(runs: list[dict], etas: list[int]) -> dict:
    pairs = sorted({(r["world_seed"], r["seed"]) for r in runs})
    for w, s in pairs:
        mine = [r for r in runs if (r["world_seed"], r["seed"]) == (w, s)]
        warm = mine[0]["warm_f1"]
        gain = min(max(p["f1"] for p in r["curve"]) for r in mine) - warm
        target = warm + 0.75 * gain
        for r in mine:
            r["target_f1"] = target
            r["time_to_target_s"] = time_to(r["curve"], target)
    out = {"pairs": len(pairs), "by_eta": {}}
    sync = {(r["world_seed"], r["seed"]): r for r in runs if r["eta"] == 0}
    for eta in etas:
        rows = [r for r in runs if r["eta"] == eta]
        if not rows:
            continue
        row = {
            key: interval([r[key] for r in rows])
            for key in ("wall_s", "final_f1", "gen_util", "gen_in_flight", "wait_share")
        }
        reached = [r["time_to_target_s"] for r in rows if r["time_to_target_s"] is not None]
        row["time_to_target_s"] = interval(reached) if reached else None
        row["reached"] = len(reached)
        speedups = [
            sync[(r["world_seed"], r["seed"])]["time_to_target_s"] / r["time_to_target_s"]
            for r in rows
            if (r["world_seed"], r["seed"]) in sync
            and r["time_to_target_s"]
            and sync[(r["world_seed"], r["seed"])]["time_to_target_s"]
        ]
        row["speedup_to_target"] = interval(speedups) if speedups else None
        walls = [
            sync[(r["world_seed"], r["seed"])]["wall_s"] / r["wall_s"]
            for r in rows
            if (r["world_seed"], r["seed"]) in sync
        ]
        row["speedup_wall"] = interval(walls) if walls else None
        out["by_eta"][eta] = row
    return out


def markdown(summary: dict, runs: list[dict], meta: dict) -> str:
    lines = [
        "## Asynchronous vs synchronous RL on real learning (`benches/bench_tinyworld_async.py`)",
        "",
        f"Measured {meta['date']} on {meta['machine']} (release wheel, CPU, fp32; the embedded "
        "generator and the learner share the cores). The tinyworld RL stage on the "
        f"`{meta['variant']}` world (questions of 1 to 8 hops, ~10 % of them 4+), from one warm "
        f"start per world, {meta['steps']} steps x 8 groups x 8 samples at every eta (the same "
        f"trajectories), world seeds {meta['worlds']} x training seeds {meta['seeds']}; held-out "
        "F1 greedy over all held-out questions, at checkpoints every "
        f"{meta['every']} steps (evaluated afterwards, not counted in the wall-clock). Mean and "
        "95 % t-interval over the (world, seed) pairs.",
        "",
        "| eta | wall-clock (s) | final held-out F1 | time to target (s) | speed-up to target "
        "vs eta 0 | speed-up, whole run | generation busy | mean requests in flight | "
        "trainer waiting |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for eta, row in summary["by_eta"].items():
        ttt = fmt(row["time_to_target_s"]) if row["time_to_target_s"] else "not reached"
        sp = fmt(row["speedup_to_target"]) if row["speedup_to_target"] else "-"
        sw = fmt(row["speedup_wall"]) if row["speedup_wall"] else "-"
        lines.append(
            f"| {eta} | {fmt(row['wall_s'])} | {fmt(row['final_f1'])} | {ttt} "
            f"({row['reached']}/{summary['pairs']}) | {sp} | {sw} | "
            f"{row['gen_util']['mean']:.0%} | {row['gen_in_flight']['mean']:.1f} | "
            f"{row['wait_share']['mean']:.0%} |"
        )
    lines += [
        "",
        "| world | seed | eta | warm F1 | target | final F1 | wall (s) | to target (s) | "
        "turns | staleness |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: (r["world_seed"], r["seed"], r["eta"])):
        ttt = f"{r['time_to_target_s']:.0f}" if r["time_to_target_s"] is not None else "-"
        lines.append(
            f"| {r['world_seed']} | {r['seed']} | {r['eta']} | {r['warm_f1']:.3f} | "
            f"{r['target_f1']:.3f} | {r['final_f1']:.3f} | {r['wall_s']:.0f} | {ttt} | "
            f"{r['turns_mean']:.2f} | {r['staleness_mean']:.2f} |"
        )
    lines += [
        "",
        "Reproduce: `python benches/bench_tinyworld_async.py --worlds "
        f"{meta['worlds']} --seeds {meta['seeds']} --etas {meta['etas']} --write-docs`.",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", default="1", help="world seeds")
    p.add_argument("--seeds", default="0,1", help="training seeds")
    p.add_argument("--etas", default="0,2,4", help="max_staleness values (0: synchronous)")
    p.add_argument("--variant", default="longtail", choices=["standard", "longtail"])
    p.add_argument("--size", default="default", choices=["small", "default"])
    p.add_argument("--warm-start-epochs", type=int, default=None, help="default: the job's")
    p.add_argument("--steps", type=int, default=40, help="RL steps per run")
    p.add_argument("--every", type=int, default=5, help="checkpoint (and evaluate) every")
    p.add_argument("--out", default="runs/bench-tinyworld-async", help="work and results dir")
    p.add_argument("--write-docs", action="store_true")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    etas = [int(e) for e in args.etas.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    runs = load_runs(results)
    done = {(r["world_seed"], r["seed"], r["eta"]) for r in runs}
    todo = [(w, s, e) for w in worlds for s in seeds for e in etas if (w, s, e) not in done]
    for i, (w, s, e) in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] world {w}, seed {s}, eta {e}", flush=True)
        r = run_one(w, s, e, args)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        runs.append(r)
        print(
            f"  {r['wall_s']:.0f} s, warm {r['warm_f1']:.3f} -> {r['final_f1']:.3f}, "
            f"generation busy {r['gen_util']:.0%}",
            flush=True,
        )
    runs = [
        r for r in runs if r["world_seed"] in worlds and r["seed"] in seeds and r["eta"] in etas
    ]
    summary = summarize(runs, etas)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "variant": args.variant,
        "steps": args.steps,
        "every": args.every,
        "worlds": args.worlds,
        "seeds": args.seeds,
        "etas": args.etas,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    text = markdown(summary, runs, meta)
    print(text)
    if args.write_docs:
        replace_section(text, MARKERS, DOCS)


if __name__ == "__main__":
    main()
