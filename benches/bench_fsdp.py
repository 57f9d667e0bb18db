"""The FSDP2 learner (torchrun, gloo, CPU) vs the embedded tch learner on the same model and the
same scored batch: seconds per PPO step (proximal pass + training passes, as each learner reports
it), training tokens per second per process, and peak RSS per process.

Model: a Qwen2-shaped random model (H=256, 4 layers, vocab 8,192) written by transformers. Batch:
4 groups x 4 trajectories x 512 tokens (64 prompt + 448 generated) = 8,192 tokens of fresh
random ids, micro-batches of 2,048 tokens, one minibatch. Each case runs in fresh processes, 2
steps per run (the second one is timed), --runs runs; the table gives the median and the range.

    python benches/bench_fsdp.py                 # prints the table
    python benches/bench_fsdp.py --write-docs    # also replaces its section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from docs_section import replace_section  # noqa: E402

WORKER = ROOT / "tests" / "distributed" / "ppo_step_worker.py"
MARKERS = ("<!-- bench:fsdp start -->", "<!-- bench:fsdp end -->")
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def make_model(directory: Path) -> Path:
    from tiny_models import make_tiny_qwen

    return make_tiny_qwen(
        directory,
        "qwen2",
        hidden_size=256,
        layers=4,
        heads=4,
        kv_heads=2,
        intermediate_size=704,
        vocab_size=8192,
        with_tokenizer=False,
        init_std=0.02,
    )


GROUPS, PER_GROUP, LENGTH = 4, 4, 512


def make_groups(vocab: int, seed: int) -> list[list[str]]:
    import random

    from test_fsdp import _trajectory, _turn

    rng = random.Random(seed)
    groups = []
    for g in range(GROUPS):
        trajs = []
        for k in range(PER_GROUP):
            prompt = [rng.randrange(3, vocab) for _ in range(LENGTH // 8)]
            out = [rng.randrange(3, vocab) for _ in range(LENGTH - LENGTH // 8)]
            lps = [rng.uniform(-9.5, -8.5) for _ in out]
            trajs.append(_trajectory(f"q{g}", k, [_turn(prompt, out, lps, 0)], float(k % 2)))
        groups.append(trajs)
    return groups


def learner_config(checkpointing: bool) -> dict:
    return {
        "schedule": {"lr": 1e-5},
        "micro_batch_tokens": 2048,
        "fsdp": {
            "param_dtype": "float32",
            "export_dtype": "float32",
            "activation_checkpointing": checkpointing,
            "timeout_s": 600.0,
        },
    }


TCH_SCRIPT = """
import json, resource, sys
from asearcher import _core
from asearcher.distributed import tch_ppo_step
spec = json.load(open(sys.argv[1]))
groups = [[_core.Trajectory.from_json(t) for t in g] for g in spec["groups"]]
stats = tch_ppo_step(spec["model"], groups, 1, spec["learner"], spec["out"], steps=spec["steps"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"stats": stats, "rss_mib": [rss]}))
"""


def run_case(tmp: Path, model: Path, groups, case: str, world: int, run: int) -> dict:
    checkpointing = case == "fsdp+ac"
    spec = {
        "model": str(model),
        "groups": groups,
        "version": 1,
        "learner": learner_config(checkpointing),
        "out": str(tmp / f"{case}-{world}-{run}"),
        "steps": 2,
        "report_rss": True,
    }
    path = tmp / f"{case}-{world}-{run}.json"
    path.write_text(json.dumps(spec))
    if case.startswith("tch"):
        threads = str(world) if case == "tch-threads" else "1"
        env = {**ENV, "OMP_NUM_THREADS": threads}
        done = subprocess.run(
            [sys.executable, "-c", TCH_SCRIPT, str(path)], env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        str(WORKER),
        str(path),
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    out = Path(spec["out"])
    result = json.loads((out / "stats.json").read_text())
    result["rss_mib"] = [float(p.read_text()) for p in sorted(out.glob("rss-rank*.txt"))]
    return result


def summarise(results: list[dict], world: int) -> dict:
    secs = [r["stats"]["seconds_prox"] + r["stats"]["seconds_train"] for r in results]
    tokens = results[0]["batch"]["total_tokens"] if "batch" in results[0] else None
    return {
        "seconds": secs,
        "tokens": tokens,
        "rss": max(max(r["rss_mib"]) for r in results),
        "world": world,
        "loss": results[-1]["stats"]["loss"],
    }


def fmt_range(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):,.{digits}f} ({v[0]:,.{digits}f}-{v[-1]:,.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    # ("tch-threads", 2): one tch process with 2 intra-op threads, the same cores as 2 ranks.
    cases = [("tch", 1), ("tch-threads", 2), ("fsdp", 1), ("fsdp", 2), ("fsdp+ac", 2)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = make_model(tmp / "model")
        for case, world in cases:
            results = []
            for run in range(args.runs):
                groups = make_groups(8192, seed=100 * run + world)  # fresh tokens every run
                results.append(run_case(tmp, model, groups, case, world, run))
                stats = results[-1]["stats"]
                secs = stats["seconds_prox"] + stats["seconds_train"]
                print(f"{case} x{world} run {run}: {secs:.2f} s", file=sys.stderr, flush=True)
            rows[(case, world)] = summarise(results, world)
    total = GROUPS * PER_GROUP * LENGTH
    base = statistics.median(rows[("tch", 1)]["seconds"])
    lines = [
        "| Learner | Processes | s / step, median (range) | Training tokens/s per process "
        "| vs tch (same run) | Peak RSS per process (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "tch": "embedded tch",
        "tch-threads": "embedded tch, 2 threads (1 process)",
        "fsdp": "FSDP2, no activation checkpointing",
        "fsdp+ac": "FSDP2 + activation checkpointing",
    }
    for (case, world), row in rows.items():
        med = statistics.median(row["seconds"])
        procs = 1 if case == "tch-threads" else world
        per_proc = [total / s / procs for s in row["seconds"]]
        lines.append(
            f"| {names[case]} | {procs} | {fmt_range(row['seconds'])} | "
            f"{fmt_range(per_proc, digits=0)} | {base / med:.2f}x step speed | {row['rss']:,.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_docs(table, args.runs)


def write_docs(table: str, runs: int) -> None:
    import torch

    cpu = platform.processor() or platform.machine()
    block = (
        "## FSDP2 learner vs the embedded tch learner (CPU, `benches/bench_fsdp.py`)\n\n"
        f"Machine: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, gloo; "
        f"OMP_NUM_THREADS=1 in every process. {runs} runs per row, each in fresh processes on "
        f"fresh random tokens; one PPO step of {GROUPS * PER_GROUP * LENGTH:,} tokens "
        f"({GROUPS * PER_GROUP} trajectories x {LENGTH}), micro-batches of 2,048 tokens, "
        "Qwen2-shaped model H=256, 4 layers, vocab 8,192, float32. Seconds per step are the "
        "learner's own proximal + training time of the 2nd step (model loading, process "
        "start and export excluded).\n\n"
        f"{table}\n\n"
        "Reading it: one FSDP rank does what the embedded learner does per process (same "
        "tokens/s within noise; a little more memory for the Python model and the optimizer). "
        "Two ranks on the two cores lose some tokens/s per process to the collectives "
        "(all-gathers and reduce-scatters, which gloo emulates) and activation checkpointing "
        "costs its recomputation but lowers peak memory; compare the 2-rank rows with the "
        "2-thread tch row, which uses the same cores in one process. FSDP's purpose is memory "
        "per GPU and many GPUs, which a 2-core CPU cannot show; see `benches/gpu_fsdp.py` and "
        "docs/scale.md.\n"
    )
    replace_section(block, MARKERS)


if __name__ == "__main__":
    main()
