"""Benchmark asynchronous vs synchronous RL wall-clock on a long-tail agent workload.

The rollout side is real: ``asearcher.RolloutEngine`` runs ASearcher agents (embedded BM25 over
the sample corpus) against scripted SGLang policy servers, each its own process, time-scaled to
a fixed token throughput (``tokens_per_s_total``, a shared virtual clock per server) and a fixed
per-request decode speed (``ms_per_token``). The trainer is simulated: it takes ``B`` groups per
step, sleeps for the batch's training tokens / a fixed trainer throughput, bumps the version and
pushes a weight update to every server (``/update_weights_from_disk``: in-flight generations are
aborted and re-sent by the pool with the tokens so far, as in real interruptible training).
Synchronous RL is the same loop with ``max_staleness = 0``.

Workload: per-question turns drawn log-uniform on 1..128 (the scripted server's per-question
search count; questions with the wanted count are found by probing the server's rule), output
lengths spread 100x by ``think_tokens``.

    python benches/bench_async_train.py [--quick] [--json out.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DOCS = ROOT / "docs" / "benchmarks.md"
MARKERS = ("<!-- bench:async start -->", "<!-- bench:async end -->")

import asearcher  # noqa: E402
from asearcher.data import (  # noqa: E402
    sample_corpus_path,
    sample_questions_path,
    sample_tokenizer_path,
)
from asearcher.testing import start_scripted_policy_server  # noqa: E402
from asearcher.tools import LocalSearch, Toolbox  # noqa: E402
from docs_section import replace_section  # noqa: E402

MAX_TURNS = 128


def post(url: str, body: dict, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- workload


def target_turns(n: int, seed: int) -> list[int]:
    """Turns per question, log-uniform on 1..MAX_TURNS (P(t) falls like 1/t: a long tail)."""
    rng = random.Random(seed)
    return [min(MAX_TURNS, int(math.exp(rng.random() * math.log(MAX_TURNS + 1)))) for _ in range(n)]


def probe_searches(url: str, question: str) -> int:
    """The scripted server's search count for `question`: the fewest observations it answers at."""
    lo, hi = 0, MAX_TURNS - 1
    while lo < hi:
        mid = (lo + hi) // 2
        text = f"Question: {question}\n" + "<information>x</information>\n" * mid
        body = {"text": text, "sampling_params": {"stop": ["</search>"], "max_new_tokens": 32}}
        if "<answer>" in post(url + "/generate", body)["text"]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def find_questions(wanted: set[int], seed: int) -> dict[int, dict]:
    """One question (text variant of a sample question) per wanted turn count."""
    with open(sample_questions_path(), encoding="utf-8") as f:
        base = [json.loads(line) for line in f]
    found: dict[int, dict] = {}
    with start_scripted_policy_server(searches=(0, MAX_TURNS - 1), seed=seed) as srv:
        i = 0
        while not wanted <= found.keys():
            q = base[i % len(base)]
            text = f"{q['question'].rstrip('?')} (variant {i})?"
            turns = probe_searches(srv.url, text) + 1
            if turns in wanted and turns not in found:
                found[turns] = {"question": text, "answer": q["answer"]}
            i += 1
            if i > 20000:
                raise RuntimeError(f"no question found for turns {sorted(wanted - found.keys())}")
    return found


def build_workload(n_questions: int, seed: int) -> list[dict]:
    turns = target_turns(n_questions, seed)
    by_turns = find_questions(set(turns), seed)
    return [dict(by_turns[t], id=f"q{i}", turns=t) for i, t in enumerate(turns)]


# ---------------------------------------------------------------- servers


class PolicyServer:
    """`asearcher serve scripted-policy` in its own process (its CPU is not the client's)."""

    def __init__(self, answers: Path, args) -> None:
        cmd = [
            sys.executable, "-m", "asearcher.cli", "serve", "scripted-policy",
            "--answers", str(answers),
            "--searches", f"0,{MAX_TURNS - 1}",
            "--think-tokens", args.think,
            "--latency-ms", str(args.latency_ms),
            "--ms-per-token", str(args.ms_per_token),
            "--tokens-per-s-total", str(args.server_tps),
            "--seed", str(args.seed),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        start = line.find("http://")
        if start < 0:
            self.proc.kill()
            raise RuntimeError(f"scripted policy server did not start: {line!r}")
        self.url = line[start:].split()[0].rstrip(";,")

    def generated_tokens(self) -> int:
        return int(get(self.url + "/get_server_info")["stats"]["generated_tokens"])

    def info(self) -> dict:
        return get(self.url + "/get_server_info")["stats"]

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class TokenSampler:
    """Samples the servers' generated-token counters every 0.25 s: utilisation over time."""

    def __init__(self, servers: list[PolicyServer]) -> None:
        self.servers, self.samples = servers, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            total = sum(s.generated_tokens() for s in self.servers)
            self.samples.append((time.perf_counter(), total))
            if self._stop.wait(0.25):
                return

    def __enter__(self) -> TokenSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tokens_between(self, a: float, b: float) -> float:
        """Tokens generated between times a and b (linear between samples)."""
        return self._at(b) - self._at(a)

    def _at(self, t: float) -> float:
        prev = self.samples[0]
        for cur in self.samples:
            if cur[0] >= t:
                span = cur[0] - prev[0]
                return prev[1] + (cur[1] - prev[1]) * ((t - prev[0]) / span if span else 1.0)
            prev = cur
        return prev[1]


def push_weights(servers: list[PolicyServer], version: int) -> None:
    """The trainer's weight update: every server aborts in-flight requests and moves on."""
    body = {"model_path": f"/sim/step-{version}", "weight_version": version}
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as ex:
        list(ex.map(lambda s: post(s.url + "/update_weights_from_disk", body), servers))


# ---------------------------------------------------------------- one run


def training_tokens(batch) -> int:
    """Tokens the trainer processes: the packed sequences (prompt, outputs, observations)."""
    return sum(len(s["input_ids"]) for g in batch for t in g.trajectories for s in t.sequences())


def run_mode(eta: int, workload: list[dict], index: LocalSearch, work: Path, args) -> dict:
    answers = work / "answers.jsonl"
    servers = [PolicyServer(answers, args) for _ in range(args.servers)]
    try:
        return train(eta, workload, index, servers, args)
    finally:
        for s in servers:
            s.stop()


def trainer_loop(engine, servers: list[PolicyServer], args):
    """The simulated trainer: B groups per step, training time by tokens, then a weight update."""
    steps, trajs, train_s = [], [], 0.0
    version, gen_end = 0, time.perf_counter()
    while True:
        wait0 = time.perf_counter()
        batch = engine.next_batch(args.batch)
        if batch is None:
            return steps, trajs, train_s, gen_end
        got = gen_end = time.perf_counter()
        tokens = training_tokens(batch)
        step_train = tokens / args.train_tps
        time.sleep(max(0.0, step_train - (time.perf_counter() - got)))
        train_s += step_train
        version += 1
        push0 = time.perf_counter()
        push_weights(servers, version)
        engine.set_version(version)
        push_s = time.perf_counter() - push0
        steps.append({"wait_s": got - wait0, "train_tokens": tokens, "push_s": push_s})
        trajs.extend(t for g in batch for t in g.trajectories)


def train(eta: int, workload: list[dict], index, servers: list[PolicyServer], args) -> dict:
    pool = asearcher.InferencePool([s.url for s in servers])
    agent = {
        "kind": "asearcher",
        "max_turns": MAX_TURNS,
        "context_budget": 131072,
        "sampling": {"max_new_tokens": args.max_new_tokens},
    }
    config = {
        "group_size": args.group,
        "batch_size": args.batch,
        "max_concurrent": args.max_concurrent,
        "max_staleness": eta,
    }
    qs = [{"id": q["id"], "question": q["question"], "answer": q["answer"]} for q in workload]
    toolbox = Toolbox(index, index, top_k=args.top_k, doc_chars=args.doc_chars)
    gen0 = sum(s.generated_tokens() for s in servers)
    srv_cpu0 = sum(s.cpu_s() for s in servers)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with TokenSampler(servers) as sampler:
        with asearcher.RolloutEngine(
            qs, pool, sample_tokenizer_path(), toolbox=toolbox, agent=agent, config=config
        ) as engine:
            steps, trajs, train_s, gen_end = trainer_loop(engine, servers, args)
            stats = engine.stats()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    infos = [s.info() for s in servers]
    gen_tokens = sum(int(i["generated_tokens"]) for i in infos) - gen0
    capacity = args.servers * args.server_tps
    gen_span = gen_end - t0
    return {
        "eta": eta,
        "steps": len(steps),
        "trajectories": len(trajs),
        "turns": sum(t.num_turns for t in trajs),
        "wall_s": wall,
        "gen_span_s": gen_span,
        "train_s": train_s,
        "gen_ideal_s": gen_tokens / capacity,
        "trajectories_per_s": len(trajs) / wall,
        "generated_tokens": gen_tokens,
        "trajectory_output_tokens": sum(t.output_tokens for t in trajs),
        "util_gen": gen_tokens / (capacity * gen_span),
        "util_wall": gen_tokens / (capacity * wall),
        "util_middle": sampler.tokens_between(t0 + gen_span / 4, t0 + 3 * gen_span / 4)
        / (capacity * gen_span / 2),
        "util_last_quarter": sampler.tokens_between(t0 + 3 * gen_span / 4, gen_end)
        / (capacity * gen_span / 4),
        "trainer_wait_s": sum(s["wait_s"] for s in steps),
        "push_s": sum(s["push_s"] for s in steps),
        "client_cpu_s": cpu,
        "client_cpu_pct": 100 * cpu / wall,
        "server_cpu_s": sum(s.cpu_s() for s in servers) - srv_cpu0,
        "aborted_requests": sum(int(i["aborted"]) for i in infos),
        "staleness": stats["staleness"],
        "stop_reasons": stats["stop_reasons"],
        "failed": stats["failed"],
        "per_step": steps,
        "turns_hist": turn_summary([t.num_turns for t in trajs]),
        "output_tokens_hist": turn_summary([t.output_tokens for t in trajs]),
    }


def turn_summary(xs: list[int]) -> dict:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"min": xs[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": xs[-1],
            "mean": statistics.fmean(xs)}  # fmt: skip


# ---------------------------------------------------------------- report


def table(runs: list[dict]) -> str:
    sync = next((r for r in runs if r["eta"] == 0), runs[0])
    lines = [
        "| eta | Wall s | Trajectories/s | Util (gen window) | Util (middle half) "
        "| Util (last quarter) | Util (wall) | Speed-up vs sync "
        "| Trainer waits s | Train s | Gen at 100% s | Aborted requests | Mean staleness "
        "| Client CPU % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        name = "0 (sync)" if r["eta"] == 0 else str(r["eta"])
        lines.append(
            f"| {name} | {r['wall_s']:.1f} | {r['trajectories_per_s']:.2f} "
            f"| {100 * r['util_gen']:.1f}% | {100 * r['util_middle']:.1f}% "
            f"| {100 * r['util_last_quarter']:.1f}% | {100 * r['util_wall']:.1f}% "
            f"| {sync['wall_s'] / r['wall_s']:.2f}x "
            f"| {r['trainer_wait_s']:.1f} | {r['train_s']:.1f} | {r['gen_ideal_s']:.1f} "
            f"| {r['aborted_requests']:,} "
            f"| {r['staleness'].get('mean', 0):.2f} | {r['client_cpu_pct']:.0f} |"
        )
    return "\n".join(lines)


def workload_summary(workload: list[dict], runs: list[dict], args) -> dict:
    turns = [q["turns"] for q in workload]
    r = runs[0]
    return {
        "questions": len(workload),
        "turns_per_question": turn_summary(turns),
        "turns_per_trajectory_measured": r["turns_hist"],
        "trajectory_output_tokens": r["output_tokens_hist"],
        "output_tokens_per_turn_mean": r["trajectory_output_tokens"] / r["turns"],
        "think_tokens": args.think,
    }


def markdown(result: dict) -> str:
    a, w = result["args"], result["workload"]
    tq, tt = w["turns_per_question"], w["trajectory_output_tokens"]
    cmd = "python benches/bench_async_train.py" + (" --quick" if a["quick"] else "")
    title = "Asynchronous vs synchronous RL on a long-tail workload"
    return f"""## {title} (`benches/bench_async_train.py`)

Measured {result["date"]} on {result["machine"]}: `{cmd} --write-docs`.

Setup: {a["servers"]} scripted SGLang policy servers (own processes), each
`tokens_per_s_total = {a["server_tps"]:,.0f}` (a shared token clock: the server's capacity) and
`ms_per_token = {a["ms_per_token"]}` + `latency_ms = {a["latency_ms"]}` per request (one
request decodes at most {1000 / a["ms_per_token"]:,.0f} tokens/s, so a server is saturated by
about {a["server_tps"] * a["ms_per_token"] / 1000:.0f} concurrent requests); `RolloutEngine` with
ASearcher agents (max 128 turns), embedded BM25 over the sample corpus (top {a["top_k"]},
{a["doc_chars"]} chars); `group_size = {a["group"]}`, `batch_size = B = {a["batch"]}` groups,
`max_concurrent = {a["max_concurrent"]}`, {a["steps"]} training steps = {a["steps"] * a["batch"]}
questions = {a["steps"] * a["batch"] * a["group"]} trajectories in every mode. The trainer is
simulated: per step it takes B groups, sleeps for the batch's packed-sequence tokens at
{a["train_ratio"]}x the servers' total token throughput, then pushes a weight update to every
server (`/update_weights_from_disk`: in-flight requests are aborted and re-sent by the pool with
their tokens so far) and calls `set_version`. Sync = `max_staleness = 0`, the same loop.

Workload: turns per question log-uniform on 1..128 (min {tq["min"]}, median {tq["p50"]}, p90
{tq["p90"]}, max {tq["max"]}, mean {tq["mean"]:.1f}); `think_tokens = {a["think"]}` filler words
per turn: {w["output_tokens_per_turn_mean"]:.0f} output tokens per turn on average; output tokens
per trajectory min {tt["min"]:,}, median {tt["p50"]:,}, max {tt["max"]:,}.

{table(result["runs"])}

- Utilisation = tokens generated by all servers (partial outputs of aborted requests included,
  re-sent remainders counted once) / (servers x `tokens_per_s_total` x time). *Gen window*: from
  the start to the moment the trainer received the last batch (generation cannot continue after
  it); *middle half* / *last quarter*: the same over 25-75% / 75-100% of that window (from the
  servers' counters sampled every 0.25 s); *wall*: the whole run including the final training
  step. 100% is the limit.
- Speed-up = sync wall time / wall time for the same trajectories and steps. Trainer waits:
  time the trainer spent in `next_batch`. Train s: simulated training time, summed. Gen at
  100% s: the tokens generated / the servers' total throughput (the least time generation can
  take). Client CPU %: this process's CPU time (engine, BM25,
  HTTP, tokenisation, trainer loop) / wall; the servers used
  {result["runs"][0]["server_cpu_s"]:.0f} s CPU in the sync run.
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 steps, eta 0 and 4 only")
    p.add_argument("--etas", default="0,1,2,4,8")
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--server-tps", type=float, default=40000.0, help="tokens/s per server")
    p.add_argument("--ms-per-token", type=float, default=0.25, help="per-request decode speed")
    p.add_argument("--latency-ms", type=float, default=0.5, help="per-request overhead")
    p.add_argument("--think", default="2,200", help="think filler tokens per turn MIN,MAX")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="groups per training step (B)")
    p.add_argument("--group", type=int, default=4, help="trajectories per group")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--max-concurrent", type=int, default=64)
    p.add_argument("--train-ratio", type=float, default=1.5,
                   help="trainer tokens/s as a multiple of the servers' total")  # fmt: skip
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--doc-chars", type=int, default=200)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--json", default=None, help="results file (default: a temp file)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 4)
        args.etas = "0,4"
    args.train_tps = args.train_ratio * args.servers * args.server_tps
    return args


def main() -> None:
    args = parse_args()
    etas = [int(e) for e in args.etas.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        workload = build_workload(args.steps * args.batch, args.seed)
        with open(work / "answers.jsonl", "w", encoding="utf-8") as f:
            for q in workload:
                f.write(json.dumps({"question": q["question"], "answer": q["answer"]}) + "\n")
        LocalSearch.build_index(sample_corpus_path(), work / "index")
        index = LocalSearch(work / "index")
        runs = []
        for eta in etas:
            r = run_mode(eta, workload, index, work, args)
            print(f"eta={eta}: {r['wall_s']:.1f} s, util {100 * r['util_gen']:.1f}%", flush=True)
            runs.append(r)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "args": vars(args),
        "workload": workload_summary(workload, runs, args),
        "runs": runs,
    }
    out = Path(args.json) if args.json else Path(tempfile.mkstemp(suffix=".json")[1])
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(table(runs))
    print(f"workload: {json.dumps(result['workload'])}")
    print(f"results: {out}")
    if args.write_docs:
        replace_section(markdown(result), MARKERS, DOCS)


if __name__ == "__main__":
    main()
