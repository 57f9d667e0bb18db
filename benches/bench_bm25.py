"""Benchmark asearcher's embedded BM25 index against bm25s on the same corpus and queries.

Measures, for both engines in the same run (each in its own child process, so peak RSS is
per engine):

* index build wall time, corpus loading included (ours: ``LocalSearch.build``; bm25s: reading
  the JSONL, tokenizing and indexing);
* single-query latency p50/p99, one query at a time (ours: ``idx.search(q, k)``; bm25s:
  tokenizing one query and ``retriever.retrieve`` on it);
* batched throughput over all queries (ours: ``idx.search_batch``; bm25s: tokenizing all queries
  and ``retrieve`` with ``n_threads`` = cores);
* peak RSS, and the top-k overlap between the two engines' results (by passage id).

With ``--server`` it also starts ``asearcher serve retrieval`` on the built index and load-tests
``POST /retrieve`` with 64 concurrent clients using ``wrk`` (or a Python thread-pool client when
``wrk`` is not installed). Results are printed as a markdown section; ``--write-docs`` also puts
it between the ``bench:bm25`` markers in ``docs/benchmarks.md``.

    python benches/bench_bm25.py --passages 1000000 --server --write-docs
    python benches/bench_bm25.py --corpus my.jsonl --queries-file my-queries.txt

Without ``--corpus``, a synthetic corpus is generated with ``benches/gen_corpus.py`` (cached in
``--work-dir``). Requirements: ``pip install -r benches/requirements.txt``; ``wrk`` optional
(``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
START_MARK = "<!-- bench:bm25 start -->"
END_MARK = "<!-- bench:bm25 end -->"
WARMUP_QUERIES = 20

# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=100_000, help="synthetic corpus size")
    p.add_argument("--n-queries", type=int, default=2000, help="synthetic queries to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    p.add_argument("--corpus", type=Path, help="use this JSONL corpus instead of generating one")
    p.add_argument("--queries-file", type=Path, help="queries, one per line (with --corpus)")
    p.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench-out")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--single", type=int, default=500, help="queries timed one at a time")
    p.add_argument("--batch-repeats", type=int, default=3, help="median of this many batches")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--bm25s-backend", choices=["auto", "numpy", "numba"], default="auto")
    p.add_argument("--server", action="store_true", help="also load-test the HTTP server")
    p.add_argument("--server-clients", type=int, default=64)
    p.add_argument("--server-duration", type=float, default=10.0, help="seconds")
    p.add_argument("--server-tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--write-docs", action="store_true", help="update the docs section")
    p.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    p.add_argument("--child", choices=["asearcher", "bm25s"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def ensure_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The corpus and queries to use, generating (and caching) synthetic ones if needed."""
    if args.corpus:
        if not args.queries_file:
            sys.exit("--corpus needs --queries-file")
        return args.corpus, args.queries_file
    stem = f"synthetic-{args.passages}-s{args.seed}"
    corpus = args.work_dir / f"{stem}.jsonl"
    queries = args.work_dir / f"{stem}-q{args.n_queries}.txt"
    if not (corpus.exists() and queries.exists()):
        generate_corpus(args, corpus, queries)
    return corpus, queries


def generate_corpus(args: argparse.Namespace, corpus: Path, queries: Path) -> None:
    print(f"generating {args.passages:,} synthetic passages -> {corpus}", file=sys.stderr)
    cmd = [
        sys.executable,
        str(BENCH_DIR / "gen_corpus.py"),
        f"--passages={args.passages}",
        f"--out={corpus}",
        f"--queries={args.n_queries}",
        f"--queries-out={queries}",
        f"--seed={args.seed}",
    ]
    subprocess.run(cmd, check=True)


def read_queries(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


# --------------------------------------------------------------------------------------------
# Engines (each runs in a child process)
# --------------------------------------------------------------------------------------------


class OursEngine:
    """asearcher's embedded tantivy-based BM25 index."""

    name = "asearcher"

    def __init__(self, args: argparse.Namespace):
        from asearcher.tools import LocalSearch

        self.local_search = LocalSearch
        self.index_dir = args.work_dir / "asearcher-index"
        shutil.rmtree(self.index_dir, ignore_errors=True)  # before the build clock starts
        self.threads = args.threads
        self.idx = None

    def version(self) -> str:
        import asearcher

        return getattr(asearcher, "__version__", None) or package_version("asearcher")

    def build(self, corpus: Path) -> int:
        self.idx = self.local_search.build(
            str(corpus), str(self.index_dir), threads=self.threads, progress=False
        )
        return len(self.idx)

    def search(self, query: str, k: int) -> list[str]:
        return [doc.id for doc in self.idx.search(query, k=k)]

    def search_batch(self, queries: list[str], k: int) -> list[list[str]]:
        return [[doc.id for doc in hits] for hits in self.idx.search_batch(queries, k=k)]

    def details(self) -> dict:
        size = sum(f.stat().st_size for f in self.index_dir.rglob("*") if f.is_file())
        return {"index_dir": str(self.index_dir), "index_bytes": size}


class Bm25sEngine:
    """bm25s, configured to match our analyzer and scoring as closely as it allows."""

    name = "bm25s"

    def __init__(self, args: argparse.Namespace):
        import bm25s

        self.bm25s = bm25s
        self.threads = args.threads
        self.backend = resolve_bm25s_backend(args.bm25s_backend)
        self.stemmer = english_stemmer()
        self.ids: list[str] = []
        self.retriever = None

    def version(self) -> str:
        return package_version("bm25s")

    def tokenize(self, texts: list[str], return_ids: bool = False):
        return self.bm25s.tokenize(
            texts, stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=return_ids
        )

    def build(self, corpus: Path) -> int:
        texts = []
        with corpus.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                self.ids.append(str(record["id"]))
                texts.append(record["contents"])
        tokens = self.tokenize(texts, return_ids=True)
        del texts
        self.retriever = self.bm25s.BM25(k1=1.2, b=0.75, method="lucene", backend=self.backend)
        self.retriever.index(tokens, show_progress=False)
        return len(self.ids)

    def _retrieve(self, queries: list[str], k: int, n_threads: int) -> list[list[str]]:
        docs, scores = self.retriever.retrieve(
            self.tokenize(queries), k=k, n_threads=n_threads, show_progress=False
        )
        return [
            [self.ids[d] for d, s in zip(row_d, row_s, strict=True) if s > 0]
            for row_d, row_s in zip(docs.tolist(), scores.tolist(), strict=True)
        ]

    def search(self, query: str, k: int) -> list[str]:
        return self._retrieve([query], k, n_threads=0)[0]

    def search_batch(self, queries: list[str], k: int) -> list[list[str]]:
        return self._retrieve(queries, k, n_threads=self.threads)

    def details(self) -> dict:
        return {"backend": self.backend, "stemmer": "PyStemmer english" if self.stemmer else None}


def resolve_bm25s_backend(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


def english_stemmer():
    try:
        import Stemmer
    except ImportError:
        print("PyStemmer not installed: bm25s runs WITHOUT stemming", file=sys.stderr)
        return None
    return Stemmer.Stemmer("english").stemWords


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def measure_engine(engine, corpus: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """Build, then time single queries and one batch; returns raw timings and top-k ids."""
    started = time.perf_counter()
    docs = engine.build(corpus)
    build_s = time.perf_counter() - started
    for query in queries[:WARMUP_QUERIES]:
        engine.search(query, args.k)
    engine.search_batch(queries[:WARMUP_QUERIES], args.k)  # e.g. numba compiles per code path
    single_ms = []
    for query in queries[: args.single]:
        t0 = time.perf_counter()
        engine.search(query, args.k)
        single_ms.append((time.perf_counter() - t0) * 1000)
    batch_s = []
    for _ in range(args.batch_repeats):
        started = time.perf_counter()
        topk = engine.search_batch(queries, args.k)
        batch_s.append(time.perf_counter() - started)
    return {
        "engine": engine.name,
        "version": engine.version(),
        "docs": docs,
        "build_s": build_s,
        "single_ms": single_ms,
        "batch_s": batch_s,
        "batch_queries": len(queries),
        "topk": topk,
        "peak_rss_mib": peak_rss_mib(),
        **engine.details(),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(args: argparse.Namespace) -> None:
    engine = OursEngine(args) if args.child == "asearcher" else Bm25sEngine(args)
    import_rss = peak_rss_mib()
    queries = read_queries(args.queries_file)
    result = measure_engine(engine, args.corpus, queries, args)
    result["import_rss_mib"] = import_rss
    args.child_out.write_text(json.dumps(result), encoding="utf-8")


def run_child(engine: str, corpus: Path, queries: Path, args: argparse.Namespace) -> dict:
    """Runs one engine's measurements in a fresh interpreter and returns its results."""
    print(f"[{engine}] building the index and querying ...", file=sys.stderr)
    out = args.work_dir / f"result-{engine}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--child={engine}",
        f"--child-out={out}",
        f"--corpus={corpus}",
        f"--queries-file={queries}",
        f"--work-dir={args.work_dir}",
        f"--k={args.k}",
        f"--single={args.single}",
        f"--batch-repeats={args.batch_repeats}",
        f"--threads={args.threads}",
        f"--bm25s-backend={args.bm25s_backend}",
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def summarize(result: dict) -> dict:
    return {
        "build_s": result["build_s"],
        "p50_ms": percentile(result["single_ms"], 50),
        "p99_ms": percentile(result["single_ms"], 99),
        "qps": result["batch_queries"] / statistics.median(result["batch_s"]),
        "rss_mib": result["peak_rss_mib"],
        "rss_delta_mib": result["peak_rss_mib"] - result["import_rss_mib"],
    }


def top_hit_agreement(ours: list[list[str]], theirs: list[list[str]], k: int) -> float:
    """Share of queries whose top asearcher hit is in bm25s's top k."""
    found = [bool(a) and a[0] in b[:k] for a, b in zip(ours, theirs, strict=True)]
    return statistics.fmean(found) if found else float("nan")


def topk_overlap(ours: list[list[str]], theirs: list[list[str]], k: int) -> float:
    """Mean |ours ∩ theirs| / k over queries."""
    shared = [len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ours, theirs, strict=True)]
    return statistics.fmean(shared) if shared else float("nan")


# --------------------------------------------------------------------------------------------
# Server load test
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asearcher_cli() -> list[str]:
    found = shutil.which("asearcher") or shutil.which("asearcher", path=Path(sys.executable).parent)
    if not found:
        sys.exit("the `asearcher` command is not installed; needed for --server")
    return [found]


def start_server(index_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [*asearcher_cli(), "serve", "retrieval", "--index", str(index_dir), "--port", str(port)]
    help_text = subprocess.run(
        [*cmd[:3], "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--host" in help_text:
        cmd += ["--host", "127.0.0.1"]
    log = log_path.open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy in time")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request_bodies(queries: list[str], k: int) -> list[str]:
    return [json.dumps({"queries": [q], "topk": k, "return_scores": True}) for q in queries]


def check_one_request(port: int, body: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"POST /retrieve returned {response.status}: {payload[:300]!r}")


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


WRK_SCRIPT = """
local bodies = {%s}
local counter = 0
local next_thread = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  counter = (thread_index or 0) * 7919
end

function request()
  counter = counter + 1
  return wrk.format(nil, "/retrieve", nil, bodies[counter %% #bodies + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"errors\\": %%d, " ..
    "\\"non2xx\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"mean_us\\": %%.1f}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_load(port: int, bodies: list[str], args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % ",\n".join(lua_string(b) for b in bodies))
        script = f.name
    try:
        cmd = [
            "wrk",
            f"-t{min(args.threads, args.server_clients)}",
            f"-c{args.server_clients}",
            f"-d{max(1, round(args.server_duration))}s",
            "--timeout=30s",
            f"-s{script}",
            f"http://127.0.0.1:{port}/retrieve",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    stats = json.loads(re.search(r"WRK_JSON (\{.*\})", out).group(1))
    ok = stats["requests"] - stats["non2xx"]
    return {
        "tool": "wrk",
        "rps": ok / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "mean_ms": stats["mean_us"] / 1000,
        "errors": stats["errors"] + stats["non2xx"],
        "requests": stats["requests"],
    }


def python_client(port: int, bodies: list[str], offset: int, deadline: float):
    """One keep-alive client posting bodies in turn until the deadline: (latencies, errors)."""
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, errors, i = [], 0, offset
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/retrieve", bodies[i % len(bodies)], headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        if ok:
            latencies.append((time.perf_counter() - t0) * 1000)
        else:
            errors += 1
        i += 1
    conn.close()
    return latencies, errors


def python_load(port: int, bodies: list[str], args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    deadline = started + args.server_duration
    with ThreadPoolExecutor(args.server_clients) as pool:
        futures = [
            pool.submit(python_client, port, bodies, c * 7919, deadline)
            for c in range(args.server_clients)
        ]
        results = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    latencies = [lat for lats, _ in results for lat in lats]
    return {
        "tool": "python (http.client thread pool; client-bound, a lower bound)",
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "errors": sum(errors for _, errors in results),
        "requests": len(latencies),
    }


def pick_load_tool(choice: str) -> str:
    if choice == "auto":
        if shutil.which("wrk"):
            return "wrk"
        print("wrk not found (apt-get install -y wrk); using the Python client", file=sys.stderr)
        return "python"
    if choice == "wrk" and not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    return choice


def bench_server(index_dir: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """Serves the built index, load-tests POST /retrieve, and stops the server."""
    tool = pick_load_tool(args.server_tool)
    port = free_port()
    log_path = args.work_dir / "server.log"
    print(f"[server] starting on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
    proc = start_server(index_dir, port, log_path)
    try:
        wait_healthy(proc, port)
        bodies = request_bodies(queries, args.k)
        check_one_request(port, bodies[0])
        print(f"[server] {args.server_clients} clients for {args.server_duration:g} s ({tool})")
        load = wrk_load if tool == "wrk" else python_load
        result = load(port, bodies, args)
    except Exception:
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        stop_server(proc)
    return {**result, "clients": args.server_clients, "duration_s": args.server_duration}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", info).group(1).strip()
    except (OSError, AttributeError):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux, Python {python}"


def ratio_verdict(ours: float, theirs: float, higher_is_better: bool, unit: str) -> str:
    ratio = ours / theirs if theirs else float("nan")
    better = ratio > 1 if higher_is_better else ratio < 1
    factor = ratio if ratio >= 1 else 1 / ratio if ratio else float("nan")
    winner = "asearcher" if better else "bm25s"
    return f"{ratio:.2f} | {winner} {factor:.1f}× {unit}"


def results_table(ours: dict, theirs: dict) -> list[str]:
    rows = [
        ("Index build incl. corpus load (s)", "build_s", False, "faster", "{:.1f}"),
        ("Single-query latency p50 (ms)", "p50_ms", False, "faster", "{:.2f}"),
        ("Single-query latency p99 (ms)", "p99_ms", False, "faster", "{:.2f}"),
        ("Batched throughput (queries/s)", "qps", True, "higher", "{:,.0f}"),
        ("Peak RSS (MiB)", "rss_mib", False, "smaller", "{:,.0f}"),
        ("Peak RSS above RSS after imports (MiB)", "rss_delta_mib", False, "smaller", "{:,.0f}"),
    ]
    lines = [
        "| Metric | asearcher | bm25s | asearcher / bm25s | Verdict |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, key, higher, unit, fmt in rows:
        verdict = ratio_verdict(ours[key], theirs[key], higher, unit)
        lines.append(
            f"| {label} | {fmt.format(ours[key])} | {fmt.format(theirs[key])} | {verdict} |"
        )
    return lines


def server_lines(server: dict | None, k: int) -> list[str]:
    if not server:
        return []
    setup = (
        f"`asearcher serve retrieval`, `POST /retrieve` with one query and `topk={k}` per "
        f"request, {server['clients']} concurrent keep-alive clients for "
        f"{server['duration_s']:g} s, load generator: {server['tool']}"
    )
    numbers = (
        f"**{server['rps']:,.0f} requests/s**, latency p50 {server['p50_ms']:.2f} ms, "
        f"p99 {server['p99_ms']:.2f} ms, mean {server['mean_ms']:.2f} ms; "
        f"{server['requests']:,} requests, {server['errors']} errors"
    )
    return ["", f"**HTTP server** ({setup}): {numbers}."]


NOTES = """\
Notes:

- Each engine runs in its own fresh Python process on the same corpus file and query list, so
  peak RSS is per engine. "RSS after imports" is the process's RSS once the engine's modules are
  loaded ({ours_import:,.0f} MiB for `asearcher.tools`, whose native module links libtorch, so
  torch is loaded; {theirs_import:,.0f} MiB for bm25s + PyStemmer{numba_note}).
- Build time includes reading the corpus for both: ours reads the JSONL in Rust inside
  `LocalSearch.build(..., threads={threads})`; bm25s parses it with `json.loads`, tokenizes it
  and indexes it.
- Single-query latency: {single} queries one at a time after {warmup} warm-up queries
  (ours: `idx.search(q, k={k})`; bm25s: `bm25s.tokenize([q])` + `retriever.retrieve(..., k={k})`).
  Batched: all {nq:,} queries in one call, median of {repeats} runs after a warm-up batch
  (ours: `idx.search_batch(queries, k={k})`; bm25s: tokenizing all queries +
  `retrieve(..., n_threads={threads})`), tokenization included. Ours returns full documents
  (id, title, text and url read from its memory-mapped document store); bm25s returns row
  indices, which the benchmark maps to passage ids.
- Top-{k} overlap is the mean of |ours ∩ bm25s| / {k} by passage id ({overlap:.3f} here). Both
  score the title line and the text as one field; what remains comes from tie-breaking between
  equal scores and the analyzer differences below. (An earlier version of our index scored the
  title as a separate field; overlap was then 0.61 at 100,000 passages.)
- Analysis and scoring. Ours is tantivy-based: split on non-alphanumeric characters, lowercase,
  drop tokens longer than 40 bytes, remove English stopwords, English Snowball stemmer; BM25
  with k1=1.2, b=0.75 over one field holding the title line and the text (Search-R1's
  `contents`). bm25s is configured as close as it allows: `stopwords="en"` (the
  same 33-word Lucene list tantivy uses), PyStemmer's English (Snowball) stemmer,
  `k1=1.2, b=0.75, method="lucene"`, backend `{backend}`. Remaining differences: its token pattern
  `\\b\\w\\w+\\b` drops 1-character tokens and keeps `_` inside tokens; it does not drop
  long tokens.
"""


def render_markdown(
    corpus: Path, ours: dict, theirs: dict, overlap: float, server: dict | None, args
) -> str:
    o, t = summarize(ours), summarize(theirs)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    measured = (
        f"Measured {today} on {machine_description()}; asearcher {ours['version']}, "
        f"bm25s {theirs['version']} (backend `{theirs['backend']}`)."
    )
    inputs = (
        f"Corpus: `{corpus.name}`, {ours['docs']:,} passages (bm25s indexed "
        f"{theirs['docs']:,}); {ours['batch_queries']:,} queries; k={args.k}; "
        f"{args.threads} threads."
    )
    header = ["## BM25: asearcher vs bm25s", "", measured, inputs, ""]
    body = results_table(o, t)
    agreement = top_hit_agreement(ours["topk"], theirs["topk"], args.k)
    body += [
        "",
        f"Top-{args.k} overlap (mean |ours ∩ bm25s| / {args.k}): **{overlap:.3f}**; "
        f"our top hit is in bm25s's top {args.k} for {agreement:.1%} of queries.",
    ]
    if "index_bytes" in ours:
        body.append(f"Our index on disk: {ours['index_bytes'] / 2**20:,.1f} MiB.")
    body += server_lines(server, args.k)
    notes = NOTES.format(
        threads=args.threads,
        single=len(ours["single_ms"]),
        warmup=WARMUP_QUERIES,
        repeats=args.batch_repeats,
        k=args.k,
        nq=ours["batch_queries"],
        overlap=overlap,
        backend=theirs["backend"],
        ours_import=ours["import_rss_mib"],
        theirs_import=theirs["import_rss_mib"],
        numba_note=" + numba" if theirs["backend"] == "numba" else "",
    )
    cmd = "python benches/bench_bm25.py " + " ".join(reproduce_flags(args))
    tail = ["", notes, f"Reproduce: `{cmd}`"]
    return "\n".join(header + body + tail) + "\n"


def reproduce_flags(args: argparse.Namespace) -> list[str]:
    if args.corpus:
        flags = [f"--corpus {args.corpus}", f"--queries-file {args.queries_file}"]
    else:
        flags = [f"--passages {args.passages}", f"--n-queries {args.n_queries}"]
        flags += [f"--seed {args.seed}"] if args.seed else []
    return flags + (["--server"] if args.server else [])


def write_docs(section: str, path: Path) -> None:
    """Replaces the text between the bench:bm25 markers (creating file or markers if missing)."""
    block = f"{START_MARK}\n{section}{END_MARK}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        after = rest.split(END_MARK, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def print_ratios(o: dict, t: dict, overlap: float, k: int) -> None:
    print("\nasearcher / bm25s ratios (lower is better except throughput):", file=sys.stderr)
    for key in ("build_s", "p50_ms", "p99_ms", "qps", "rss_mib", "rss_delta_mib"):
        print(f"  {key:>13}: {o[key] / t[key]:.2f}", file=sys.stderr)
    print(f"  top-{k} overlap: {overlap:.3f}\n", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args)
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    corpus, queries_path = ensure_inputs(args)
    ours = run_child("asearcher", corpus, queries_path, args)
    theirs = run_child("bm25s", corpus, queries_path, args)
    overlap = topk_overlap(ours["topk"], theirs["topk"], args.k)
    server = None
    if args.server:
        server = bench_server(Path(ours["index_dir"]), read_queries(queries_path), args)
    print_ratios(summarize(ours), summarize(theirs), overlap, args.k)
    section = render_markdown(corpus, ours, theirs, overlap, server, args)
    print(section)
    if args.write_docs:
        write_docs(section, args.docs)
        print(f"updated {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
