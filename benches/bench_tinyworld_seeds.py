"""The tinyworld main job over many worlds and training seeds: what a normal result looks like.

Runs ``asearcher.tinyworld.run_job`` (build, random model, demonstrations, warm start, async RL)
for every world seed x training seed, then evaluates the warm-started and the RL model on the
held-out questions again with sampling (temperature 1, k samples, seeded): Avg@k and Pass@k.
Reports, per stage, the mean and a 95 % t-interval over all runs of held-out F1 (greedy, and
by hop count 1 / 2 / 3), the sampled Avg@k / Pass@k, and the RL gain per world.

Each finished run is saved to ``--out`` (``runs.jsonl``); rerunning skips what is there, so an
interrupted benchmark continues. ``--write-docs`` replaces its section of docs/benchmarks.md
and writes the intervals the main job prints beside its own numbers
(``python/asearcher/tinyworld/reference.json``).

    python benches/bench_tinyworld_seeds.py [--worlds 1,2,3,4,5] [--seeds 0,1] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

from docs_section import replace_section

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOCS = ROOT / "docs" / "benchmarks.md"
REFERENCE = ROOT / "python" / "asearcher" / "tinyworld" / "reference.json"
MARKERS = ("<!-- bench:tinyworld-seeds start -->", "<!-- bench:tinyworld-seeds end -->")

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30; normal beyond).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95 % t-interval of the mean (half-width 0 for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    t = T95[n - 2] if n - 1 <= len(T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def run_one(world_seed: int, seed: int, args: argparse.Namespace) -> dict:
    from asearcher.tinyworld import build, heldout_accuracy
    from asearcher.tinyworld.job import JobSettings, run_job

    work = Path(args.out) / f"w{world_seed}-s{seed}"
    settings = JobSettings(size=args.size, seed=seed, world_seed=world_seed)
    if args.rl_steps is not None:
        settings.rl_steps = args.rl_steps
    started = time.perf_counter()
    job = run_job(work, settings, progress=False)
    world = build(work / "world", seed=world_seed, size=args.size)
    sampled = {}
    for stage, model in (("warm_start", job.warm_start_dir), ("rl", job.rl_dir)):
        acc = heldout_accuracy(model, world, k=args.k, temperature=1.0, seed=seed)
        sampled[stage] = {k: acc[k] for k in ("f1", "pass_f1", "by_hops", "mean_turns")}
    return {
        "world_seed": world_seed,
        "seed": seed,
        "greedy": job.heldout,
        "sampled": sampled,
        "demonstrations_f1": job.demonstrations_f1,
        "demonstrations_searched": job.demonstrations_searched,
        "rl_steps": job.rl_steps,
        "seconds": {**job.seconds, "total": time.perf_counter() - started},
    }


def load_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


STAGES = ("random", "warm_start", "rl")


def summarize(runs: list[dict], k: int) -> dict:
    """Intervals per stage of greedy F1 (all, by hops), sampled Avg@k / Pass@k, and RL gains."""
    out: dict = {"runs": len(runs), "k": k, "greedy": {}, "sampled": {}}
    for stage in STAGES:
        rows = [r["greedy"][stage] for r in runs]
        hops = sorted({h for row in rows for h in row["by_hops"]}, key=int)
        out["greedy"][stage] = {
            "f1": interval([row["f1"] for row in rows]),
            "by_hops": {h: interval([row["by_hops"][h]["f1"] for row in rows]) for h in hops},
            "mean_turns": interval([row["mean_turns"] for row in rows]),
        }
    for stage in ("warm_start", "rl"):
        rows = [r["sampled"][stage] for r in runs]
        out["sampled"][stage] = {
            "avg": interval([row["f1"] for row in rows]),
            "pass": interval([row["pass_f1"] for row in rows]),
        }
    gains = [r["greedy"]["rl"]["f1"] - r["greedy"]["warm_start"]["f1"] for r in runs]
    out["rl_gain"] = interval(gains)
    per_world: dict[int, list[float]] = {}
    for r, g in zip(runs, gains, strict=True):
        per_world.setdefault(r["world_seed"], []).append(g)
    out["rl_gain_by_world"] = {w: statistics.fmean(v) for w, v in sorted(per_world.items())}
    out["worlds_where_rl_beats_warm_start"] = sum(g > 0 for g in out["rl_gain_by_world"].values())
    warm = [r["greedy"]["warm_start"]["f1"] for r in runs]
    out["warm_start_min"] = min(warm)
    out["warm_start_runs_at_least_0_5"] = sum(w >= 0.5 for w in warm)
    out["minutes_per_run"] = interval([r["seconds"]["total"] / 60 for r in runs])
    return out


def fmt(iv: dict) -> str:
    return f"{iv['mean']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}]"


def markdown(summary: dict, runs: list[dict], meta: dict) -> str:
    g, s = summary["greedy"], summary["sampled"]
    hops = list(g["rl"]["by_hops"])
    lines = [
        "## tinyworld main job over worlds and seeds (`benches/bench_tinyworld_seeds.py`)",
        "",
        f"Measured {meta['date']} on {meta['machine']} (release wheel, CPU, fp32): "
        f"`asearcher demo` settings, size `{meta['size']}`, world seeds {meta['worlds']} x "
        f"training seeds {meta['seeds']} = {summary['runs']} runs. Mean and 95 % t-interval "
        "over runs; greedy = temperature 0, k = 1, all held-out questions; sampled = "
        f"temperature 1, k = {summary['k']}, seeded.",
        "",
        "| stage | held-out F1 (greedy) | "
        + " | ".join(f"{h}-hop" for h in hops)
        + f" | Avg@{summary['k']} | Pass@{summary['k']} | turns |",
        "|---|---:|" + "---:|" * len(hops) + "---:|---:|---:|",
    ]
    for stage, name in zip(STAGES, ("random model", "warm start", "after RL"), strict=True):
        row = g[stage]
        avg = fmt(s[stage]["avg"]) if stage in s else ""
        pas = fmt(s[stage]["pass"]) if stage in s else ""
        cells = [fmt(row["f1"]), *(fmt(row["by_hops"][h]) for h in hops), avg, pas]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['mean_turns']['mean']:.2f} |")
    lines += [
        "",
        f"- RL gain (after RL - warm start, greedy): {fmt(summary['rl_gain'])}; by world "
        + ", ".join(f"{w}: {v:+.3f}" for w, v in summary["rl_gain_by_world"].items())
        + f" ({summary['worlds_where_rl_beats_warm_start']} of "
        f"{len(summary['rl_gain_by_world'])} worlds gain).",
        f"- Warm start: lowest run {summary['warm_start_min']:.3f}; "
        f"{summary['warm_start_runs_at_least_0_5']} of {summary['runs']} runs reach 0.5.",
        f"- Minutes per run (job + two sampled evaluations): {fmt(summary['minutes_per_run'])}.",
        "",
        "| world | seed | demos F1 | random | warm start | after RL | gain | "
        f"warm Avg@{summary['k']} | RL Avg@{summary['k']} |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        gr, sa = r["greedy"], r["sampled"]
        gain = gr["rl"]["f1"] - gr["warm_start"]["f1"]
        lines.append(
            f"| {r['world_seed']} | {r['seed']} | {r['demonstrations_f1']:.3f} | "
            f"{gr['random']['f1']:.3f} | {gr['warm_start']['f1']:.3f} | {gr['rl']['f1']:.3f} | "
            f"{gain:+.3f} | {sa['warm_start']['f1']:.3f} | {sa['rl']['f1']:.3f} |"
        )
    lines += [
        "",
        "Reproduce: `python benches/bench_tinyworld_seeds.py --worlds "
        f"{meta['worlds']} --seeds {meta['seeds']} --write-docs` (about "
        f"{summary['minutes_per_run']['mean']:.0f} minutes per run on this machine).",
    ]
    return "\n".join(lines)


def write_reference(summary: dict, meta: dict) -> None:
    """The intervals the main job prints beside a single run's numbers."""
    ref = {
        "source": "benches/bench_tinyworld_seeds.py",
        "date": meta["date"],
        "size": meta["size"],
        "runs": summary["runs"],
        "worlds": meta["worlds"],
        "seeds": meta["seeds"],
        "heldout_f1": {stage: summary["greedy"][stage]["f1"] for stage in STAGES},
        "rl_gain": summary["rl_gain"],
    }
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", default="1,2,3,4,5", help="world seeds")
    p.add_argument("--seeds", default="0,1", help="training seeds")
    p.add_argument("--size", default="default", choices=["small", "default"])
    p.add_argument("--k", type=int, default=4, help="samples per question for Avg@k / Pass@k")
    p.add_argument("--rl-steps", type=int, default=None, help="RL steps (default: the job's)")
    p.add_argument("--out", default="runs/bench-tinyworld-seeds", help="work and results dir")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--no-run", action="store_true", help="only summarise the runs already saved")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "runs.jsonl"
    runs = load_runs(results)
    done = {(r["world_seed"], r["seed"]) for r in runs}
    todo = [] if args.no_run else [(w, s) for w in worlds for s in seeds if (w, s) not in done]
    for i, (w, s) in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] world {w}, seed {s}", flush=True)
        r = run_one(w, s, args)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        runs.append(r)
        warm, rl = r["greedy"]["warm_start"]["f1"], r["greedy"]["rl"]["f1"]
        print(f"  warm start {warm:.3f} -> RL {rl:.3f} ({r['seconds']['total'] / 60:.1f} min)")
    runs = [r for r in runs if r["world_seed"] in worlds and r["seed"] in seeds]
    runs.sort(key=lambda r: (r["world_seed"], r["seed"]))
    summary = summarize(runs, args.k)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "size": args.size,
        "worlds": args.worlds,
        "seeds": args.seeds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    text = markdown(summary, runs, meta)
    print(text)
    if args.write_docs:
        replace_section(text, MARKERS, DOCS)
        write_reference(summary, meta)


if __name__ == "__main__":
    main()
