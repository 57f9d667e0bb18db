"""Benchmark the rollout engine's own cost against a plain Python asyncio + aiohttp agent loop.

Both drive the same ASearcher-style agent (search until the scripted policy answers) against the
same scripted SGLang policy server, run as a separate process so its CPU time is not counted,
with the same embedded BM25 index over the bundled sample corpus. The baseline is
``benches/rollout_baseline.py``. Reported per side:

* turns per second (wall) and CPU seconds of this process per turn (``time.process_time``, all
  threads: tokenisation, HTTP, JSON, search, parsing and bookkeeping included), and the ratio of
  turns per CPU second (target: the engine >= 5x the baseline);
* ``--scale``: 10,000 trajectories of 32 searches (33 turns) live at once against a server with
  simulated latency, with the peak resident memory per live trajectory.

    pip install -r benches/requirements.txt
    python benches/bench_rollout.py              # throughput, zero-latency server
    python benches/bench_rollout.py --scale      # also 10,000 concurrent trajectories
    python benches/bench_rollout.py --quick --write-docs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOCS = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- bench:rollout start -->", "<!-- bench:rollout end -->")
sys.path.insert(0, str(BENCH_DIR))

import asearcher  # noqa: E402
from asearcher.data import (  # noqa: E402
    sample_corpus_path,
    sample_questions_path,
    sample_tokenizer_path,
)
from asearcher.tools import LocalSearch, Toolbox  # noqa: E402
from rollout_baseline import BaselineAgentLoop  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """Samples this process's resident memory every 50 ms while running."""

    def __init__(self) -> None:
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PolicyServer:
    """`asearcher serve scripted-policy` as a subprocess; its CPU is not this process's."""

    def __init__(self, searches: int, latency_ms: float) -> None:
        cmd = [
            sys.executable,
            "-m",
            "asearcher.cli",
            "serve",
            "scripted-policy",
            "--answers",
            str(sample_questions_path()),
            "--searches",
            str(searches),
            "--latency-ms",
            str(latency_ms),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        start = line.find("http://")
        if start < 0:
            self.proc.kill()
            raise RuntimeError(f"scripted policy server did not start: {line!r}")
        self.url = line[start:].split()[0].rstrip(";,")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def questions(n: int) -> list[dict]:
    with open(sample_questions_path(), encoding="utf-8") as f:
        base = [json.loads(line) for line in f]
    return [
        {
            "id": f"q{i}",
            "question": base[i % len(base)]["question"],
            "answer": base[i % len(base)]["answer"],
        }
        for i in range(n)
    ]


def build_index(work: Path) -> LocalSearch:
    path = work / "index"
    if not path.exists():
        LocalSearch.build_index(sample_corpus_path(), path)
    return LocalSearch(path)


def toolbox(index: LocalSearch, top_k: int, doc_chars: int) -> Toolbox:
    return Toolbox(index, index, top_k=top_k, doc_chars=doc_chars)


def run_engine(url: str, qs: list[dict], index, args, concurrency: int, max_turns: int) -> dict:
    pool = asearcher.InferencePool([url])
    agent = {
        "kind": "asearcher",
        "max_turns": max_turns,
        "sampling": {"max_new_tokens": args.max_new_tokens},
    }
    config = {
        "group_size": 1,
        "batch_size": 64,
        "max_concurrent": concurrency,
        "max_staleness": None,
    }
    with PeakRss() as rss:
        rss_before = rss_mib()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with asearcher.RolloutEngine(
            qs,
            pool,
            sample_tokenizer_path(),
            toolbox=toolbox(index, args.top_k, args.doc_chars),
            agent=agent,
            config=config,
        ) as engine:
            groups = []
            while (batch := engine.next_batch(64)) is not None:
                groups.extend(batch)
            stats = engine.stats()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    trajs = [t for g in groups for t in g.trajectories]
    return summary("engine", trajs, [t.num_turns for t in trajs], cpu, wall, rss, rss_before, stats)


def run_baseline(url: str, qs: list[dict], index, args, concurrency: int, max_turns: int) -> dict:
    prompt = asearcher.default_prompts("asearcher")["prompt"]
    loop = BaselineAgentLoop(
        url,
        index,
        sample_tokenizer_path(),
        prompt,
        max_turns=max_turns,
        max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        doc_chars=args.doc_chars,
    )
    pairs = [(q["question"], q["answer"]) for q in qs]
    with PeakRss() as rss:
        rss_before = rss_mib()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trajs = asyncio.run(loop.run(pairs, concurrency))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return summary(
        "baseline", trajs, [len(t.turns) for t in trajs], cpu, wall, rss, rss_before, None
    )


def summary(name, trajs, turns, cpu, wall, rss, rss_before, stats) -> dict:
    total = sum(turns)
    rewards = [t.reward or 0.0 for t in trajs]
    return {
        "side": name,
        "trajectories": len(trajs),
        "turns": total,
        "wall_s": wall,
        "cpu_s": cpu,
        "turns_per_s": total / wall,
        "turns_per_cpu_s": total / cpu,
        "cpu_us_per_turn": cpu / total * 1e6,
        "mean_reward": sum(rewards) / max(len(rewards), 1),
        "peak_rss_mib": rss.peak,
        "rss_growth_mib": rss.peak - rss_before,
        "errors": sum(1 for t in trajs if getattr(t, "error", None) or getattr(t, "errors", None)),
        "engine_stats": stats,
    }


def compare(label: str, url: str, qs, index, args, concurrency: int, max_turns: int, sides):
    results = {}
    for side in sides:
        fn = run_engine if side == "engine" else run_baseline
        results[side] = fn(url, qs, index, args, concurrency, max_turns)
        r = results[side]
        print(
            f"[{label}] {side:8s} {r['trajectories']} traj, {r['turns']} turns: "
            f"{r['turns_per_s']:.0f} turns/s, {r['cpu_us_per_turn']:.0f} us CPU/turn, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f}), "
            f"reward {r['mean_reward']:.2f}, errors {r['errors']}",
            flush=True,
        )
    if len(results) == 2:
        ratio = results["engine"]["turns_per_cpu_s"] / results["baseline"]["turns_per_cpu_s"]
        print(f"[{label}] engine / baseline turns per CPU second: {ratio:.1f}x", flush=True)
        results["ratio_turns_per_cpu_s"] = ratio
    return results


def write_docs(text: str) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    start, end = MARKERS
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(doc, encoding="utf-8")


def markdown(throughput: dict, scale: dict | None, args) -> str:
    lines = [
        "## Rollout engine vs a plain asyncio + aiohttp loop (`benches/bench_rollout.py`)",
        "",
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; scripted policy server in its own process; "
        f"embedded BM25 over the sample corpus (top {args.top_k}, {args.doc_chars} chars).",
        "",
        "| Workload | Side | Trajectories | Turns | Turns/s | CPU us/turn | Peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, res in [("zero latency", throughput)] + ([("scale", scale)] if scale else []):
        for side in ("engine", "baseline"):
            if side in res:
                r = res[side]
                lines.append(
                    f"| {label} | {side} | {r['trajectories']:,} | {r['turns']:,} | "
                    f"{r['turns_per_s']:,.0f} | {r['cpu_us_per_turn']:,.0f} | "
                    f"{r['peak_rss_mib']:,.0f} |"
                )
    lines.append("")
    for label, res in [("zero latency", throughput)] + ([("scale", scale)] if scale else []):
        if "ratio_turns_per_cpu_s" in res:
            lines.append(
                f"- {label}: engine / baseline turns per CPU second = "
                f"**{res['ratio_turns_per_cpu_s']:.1f}x** (target >= 5x)."
            )
    if scale and "engine" in scale:
        r = scale["engine"]
        per = r["rss_growth_mib"] * 1024 / max(args.scale_trajectories, 1)
        lines.append(
            f"- scale: {args.scale_trajectories:,} trajectories live at once "
            f"({args.scale_searches + 1} turns each, {args.latency_ms:.0f} ms per request): "
            f"engine peak RSS growth {r['rss_growth_mib']:,.0f} MiB = {per:,.1f} KiB per live "
            "trajectory (records of every turn's tokens included)."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs")
    parser.add_argument("--scale", action="store_true", help="also 10,000 concurrent trajectories")
    parser.add_argument("--trajectories", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=4, help="searches per trajectory")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--scale-trajectories", type=int, default=10_000)
    parser.add_argument("--scale-searches", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="scale run latency")
    parser.add_argument("--scale-baseline", action="store_true", help="run the baseline at scale")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--doc-chars", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "asearcher-bench-rollout"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trajectories, args.scale_trajectories = 300, 1000
    args.work_dir.mkdir(parents=True, exist_ok=True)
    index = build_index(args.work_dir)

    server = PolicyServer(args.searches, 0.0)
    try:
        throughput = compare(
            "zero latency",
            server.url,
            questions(args.trajectories),
            index,
            args,
            args.concurrency,
            args.searches + 4,
            ("engine", "baseline"),
        )
    finally:
        server.stop()

    scale = None
    if args.scale:
        server = PolicyServer(args.scale_searches, args.latency_ms)
        try:
            sides = ("engine", "baseline") if args.scale_baseline else ("engine",)
            scale = compare(
                "scale",
                server.url,
                questions(args.scale_trajectories),
                index,
                args,
                args.scale_trajectories,
                args.scale_searches + 4,
                sides,
            )
        finally:
            server.stop()

    text = markdown(throughput, scale, args)
    print("\n" + text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
