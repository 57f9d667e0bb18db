"""Retrieval server benchmark (issue 18): requests/s under 64 concurrent clients, each request
one fresh Search-R1-shaped query (``{"queries": [q], "topk": 5}``), against our server in dense
and hybrid mode (micro-batching on and off, on 1 and on all cores) and against the Python stack
the original uses: sentence-transformers + faiss ``IndexFlatIP`` behind one lock, one request at
a time (as Search-R1's and ASearcher's retrieval servers do), served by aiohttp.

Corpus: the sample corpus encoded with the real all-MiniLM-L6-v2 (the same vectors for both).
Queries: the sample questions with a random suffix word each, so no two requests are equal.
Servers and the client run in separate processes; the client is an aiohttp loop.

    pip install aiohttp   # the load generator and the baseline server
    python benches/bench_retrieval_server.py [--seconds 15] [--clients 64] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import replace_section

MARKERS = ("<!-- bench:retrieval-server start -->", "<!-- bench:retrieval-server end -->")
ROOT = Path(__file__).resolve().parents[1]


def questions() -> list[str]:
    from asearcher.data import sample_questions_path

    return [json.loads(q)["question"] for q in sample_questions_path().read_text().splitlines()]


async def load(url: str, clients: int, seconds: float) -> dict:
    import aiohttp

    qs = questions()
    words = [f"w{i}" for i in range(10_000)]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            q = f"{rng.choice(qs)} {rng.choice(words)}"
            t = time.perf_counter()
            async with session.post(f"{url}/retrieve", json={"queries": [q], "topk": 5}) as r:
                body = await r.json()
                if r.status != 200 or len(body["result"][0]) != 5:
                    errors += 1
            latencies.append(time.perf_counter() - t)

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "errors": errors,
    }


def wait_ready(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if " on http://" not in line:
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    return line.split(" on ")[1].split()[0]


def baseline_server(model: str, index_dir: str) -> None:
    """Search-R1's architecture: encode + faiss search per request, under one lock."""
    import faiss
    import numpy as np
    from aiohttp import web
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, device="cpu")
    manifest = json.loads(Path(index_dir, "dense.json").read_text())
    parts = [
        np.fromfile(Path(index_dir, s["vectors"]), dtype="<f4").reshape(-1, manifest["dim"])
        for s in manifest["shards"]
    ]
    flat = faiss.IndexFlatIP(manifest["dim"])
    flat.add(np.concatenate(parts))
    docs = []
    for s in manifest["shards"]:
        with open(Path(index_dir, s["docs"]), encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    lock = asyncio.Lock()

    async def retrieve(request: web.Request) -> web.Response:
        body = await request.json()
        async with lock:
            q = encoder.encode(body["queries"], normalize_embeddings=True)
            _, ids = flat.search(q, body.get("topk", 3))
        result = [[docs[i] for i in row] for row in ids]
        return web.json_response({"result": result})

    app = web.Application()
    app.router.add_post("/retrieve", retrieve)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"baseline server on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def run_case(cmd: list[str], cpus: str, clients: int, seconds: float) -> dict:
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = wait_ready(proc)
        asyncio.run(load(url, clients, 2.0))  # warm-up
        return asyncio.run(load(url, clients, seconds))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        baseline_server(*args.baseline)
        return
    sys.path.insert(0, str(ROOT / "benches"))
    from asearcher.data import sample_corpus_path
    from asearcher.tools import DenseSearch, LocalSearch
    from bench_dense import minilm_dir

    all_cpus = f"0-{os.cpu_count() - 1}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = minilm_dir(Path(tmp) / "minilm")
        index = Path(tmp) / "index"
        LocalSearch.build(sample_corpus_path(), index, progress=False)
        DenseSearch.build(sample_corpus_path(), index / "dense", model, progress=False)
        serve = [sys.executable, "-m", "asearcher", "serve", "retrieval", "--index", str(index)]
        serve += ["--port", "0"]
        cases = [
            ("python baseline (sentence-transformers + faiss, one lock)", "dense", all_cpus,
             [sys.executable, __file__, "--baseline", str(model), str(index / "dense")]),
            ("asearcher dense, no micro-batching", "dense", all_cpus,
             [*serve, "--mode", "dense", "--micro-batch", "0"]),
            ("asearcher dense, micro-batch 512, 1 core", "dense", "0",
             [*serve, "--mode", "dense", "--micro-batch", "512"]),
            ("asearcher dense, micro-batch 512", "dense", all_cpus,
             [*serve, "--mode", "dense", "--micro-batch", "512"]),
            ("asearcher hybrid, micro-batch 512", "hybrid", all_cpus,
             [*serve, "--mode", "hybrid", "--micro-batch", "512"]),
            ("asearcher bm25", "bm25", all_cpus, [*serve, "--mode", "bm25"]),
        ]  # fmt: skip
        for name, mode, cpus, cmd in cases:
            r = run_case(cmd, cpus, args.clients, args.seconds)
            r.update(name=name, mode=mode, cpus=cpus)
            rows.append(r)
            print(
                f"{name:58s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:.0f} ms  "
                f"p99 {r['p99_ms']:.0f} ms  errors {r['errors']}",
                flush=True,
            )
    if args.write_docs:
        base = rows[0]["rps"]
        lines = [
            f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores: "
            f"`python benches/bench_retrieval_server.py --seconds {args.seconds:g} --clients "
            f"{args.clients} --write-docs`. {args.clients} concurrent clients (aiohttp, another "
            "process), one fresh query per request, topk 5, all-MiniLM-L6-v2 on the sample corpus "
            f"(2,910 passages), {args.seconds:g} s per row after a 2 s warm-up.",
            "",
            "| server | requests/s | vs baseline | p50 | p99 | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['name']} (cores {r['cpus']}) | {r['rps']:,.1f} | {r['rps'] / base:.2f}x | "
                f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['errors']} |"
            )
        replace_section("\n".join(lines), MARKERS)


if __name__ == "__main__":
    main()
