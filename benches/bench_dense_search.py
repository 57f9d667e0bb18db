"""Dense search benchmark (issue 18): our exact search vs faiss-cpu ``IndexFlatIP`` and our HNSW
(usearch) vs faiss ``IndexHNSWFlat``, side by side on the same vectors and queries.

Vectors: ``n`` clustered unit vectors (1,000 Gaussian centres, as embeddings cluster) of ``dim``
floats, written once as a FAISS flat file and imported into our index format (so both engines
search identical data). Queries: 1,024 fresh vectors of the same distribution (none stored, so
nothing is found by identity). Query encoding is excluded on both sides: vectors in, row ids out.

Each engine runs in its own process, so its peak RSS is its own (index loaded + searches); the
HNSW graphs are built first (timed, same M=32, efConstruction=128, efSearch=128 on both sides).
Reported per engine: batch-1 latency p50/p99, queries/s at batch 32 and 512, recall@10 against
faiss's exact results (ties aside, exact search must give 1.000).

    python benches/bench_dense_search.py [--sizes 100000,1000000] [--dims 384,768]
        [--hnsw-max 100000] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import replace_section

MARKERS = ("<!-- bench:dense-search start -->", "<!-- bench:dense-search end -->")
QUERIES = 1024
K = 10
HNSW = {"M": 32, "ef_construction": 128, "ef_search": 128}


def make_vectors(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        pick = rng.integers(0, 1000, hi - lo)
        v = centres[pick] + 0.7 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out[lo:hi] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def prepare(work: Path, n: int, dim: int) -> Path:
    """Writes vectors, queries, a FAISS flat file, the corpus and our imported index."""
    import faiss
    import numpy as np

    case = work / f"{n}x{dim}"
    case.mkdir()
    vectors = make_vectors(n, dim, seed=n + dim)
    queries = make_vectors(QUERIES, dim, seed=1)
    np.save(case / "queries.npy", queries)
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    faiss.write_index(flat, str(case / "flat.index"))
    del flat, vectors
    with (case / "corpus.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "contents": f'"P{i}"\npassage {i}'}) + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import make_tiny_bert

    model = make_tiny_bert(case / "bert", seed=0, hidden_size=dim, layers=1, heads=dim // 64)
    from asearcher.tools import DenseSearch

    DenseSearch.import_faiss(
        case / "flat.index", case / "corpus.jsonl", case / "ours", model, shard_rows=262_144
    )
    return case


def run_engine(case: Path, engine: str, batch1: int) -> dict:
    """Searches in a child process; returns its timings, peak RSS and result ids."""
    out = case / f"{engine}.json"
    subprocess.run(
        [sys.executable, __file__, "--child", str(case), engine, str(batch1), str(out)],
        check=True,
    )
    return json.loads(out.read_text())


def child(case: Path, engine: str, batch1: int, out: Path) -> None:
    import numpy as np

    queries = np.load(case / "queries.npy")
    started = time.perf_counter()
    search, build_s = open_engine(case, engine)
    load_s = time.perf_counter() - started - build_s
    lat = []
    for q in queries[:batch1]:
        t = time.perf_counter()
        search(q[None, :])
        lat.append(time.perf_counter() - t)
    qps = {}
    ids = None
    for b in (32, 512):
        t = time.perf_counter()
        found = [search(queries[lo : lo + b]) for lo in range(0, QUERIES, b)]
        qps[b] = QUERIES / (time.perf_counter() - t)
        ids = np.concatenate(found)
    lat.sort()
    result = {
        "engine": engine,
        "load_s": load_s,
        "build_s": build_s,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "qps32": qps[32],
        "qps512": qps[512],
        "rss_mb": peak_rss_mb(),
        "ids": ids.tolist(),
    }
    out.write_text(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_engine(case: Path, engine: str):
    import numpy as np

    if engine.startswith("faiss"):
        import faiss

        flat = faiss.read_index(str(case / "flat.index"))
        build_s = 0.0
        index = flat
        if engine == "faiss-hnsw":
            t = time.perf_counter()
            index = faiss.IndexHNSWFlat(flat.d, HNSW["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW["ef_construction"]
            index.add(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(-1, flat.d))
            index.hnsw.efSearch = HNSW["ef_search"]
            build_s = time.perf_counter() - t
            del flat

        def search(q):
            return index.search(q, K)[1]

        return search, build_s
    from asearcher.tools import DenseSearch

    build_s = 0.0
    if engine == "ours-hnsw":
        t = time.perf_counter()
        DenseSearch.build_hnsw_graph(
            case / "ours",
            connectivity=HNSW["M"],
            expansion_add=HNSW["ef_construction"],
            expansion_search=HNSW["ef_search"],
        )
        build_s = time.perf_counter() - t
    index = DenseSearch(case / "ours", search="hnsw" if engine == "ours-hnsw" else "exact")

    def search(q):
        return np.array([[r for r, _ in hits] for hits in index.search_vectors(q, K)])

    return search, build_s


def recall(ids: list, truth: list) -> float:
    hit = sum(len(set(a) & set(b)) for a, b in zip(ids, truth, strict=True))
    return hit / (K * len(truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dims", default="384,768")
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="largest n given HNSW rows")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, engine, batch1, out = args.child
        child(Path(case), engine, int(batch1), Path(out))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            for dim in (int(d) for d in args.dims.split(",")):
                t = time.perf_counter()
                case = prepare(Path(tmp), n, dim)
                print(f"{n} x {dim}: prepared in {time.perf_counter() - t:.0f}s", flush=True)
                batch1 = 200 if n <= 100_000 else 50
                engines = ["faiss-flat", "ours-exact"]
                if n <= args.hnsw_max:
                    engines += ["faiss-hnsw", "ours-hnsw"]
                results = {e: run_engine(case, e, batch1) for e in engines}
                truth = results["faiss-flat"]["ids"]
                for e, r in results.items():
                    r["recall"] = recall(r["ids"], truth)
                    r.update(n=n, dim=dim)
                    print(
                        f"  {e:11s} p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms, "
                        f"{r['qps32']:.0f} q/s @32, {r['qps512']:.0f} q/s @512, recall@10 "
                        f"{r['recall']:.3f}, RSS {r['rss_mb']:.0f} MB, build {r['build_s']:.0f}s",
                        flush=True,
                    )
                    rows.append({k: v for k, v in r.items() if k != "ids"})
                for p in case.iterdir():
                    if p.is_file():
                        p.unlink()
    if args.write_docs:
        write_docs(rows, args)


def write_docs(rows: list[dict], args: argparse.Namespace) -> None:
    import faiss

    by = {(r["n"], r["dim"], r["engine"]): r for r in rows}
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"faiss-cpu {faiss.__version__}: `python benches/bench_dense_search.py "
        f"--sizes {args.sizes} --dims {args.dims} --hnsw-max {args.hnsw_max} --write-docs`. "
        f"{QUERIES} fresh queries, k = {K}; recall@10 against faiss's exact results; each engine "
        "in its own process (peak RSS includes the loaded index); HNSW on both sides with "
        f"M = {HNSW['M']}, efConstruction = {HNSW['ef_construction']}, efSearch = "
        f"{HNSW['ef_search']}.",
        "",
        "| vectors | engine | p50 (batch 1) | p99 (batch 1) | q/s @32 | q/s @512 | recall@10 "
        "| peak RSS | graph build |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = by.get(
            (r["n"], r["dim"], "faiss-hnsw" if r["engine"].endswith("hnsw") else "faiss-flat")
        )
        ratio = ""
        if r["engine"].startswith("ours") and base:
            ratio = f" ({r['qps512'] / base['qps512']:.2f}x)"
        lines.append(
            f"| {r['n']:,} x {r['dim']} | {r['engine']} | {r['p50_ms']:.2f} ms | "
            f"{r['p99_ms']:.2f} ms | {r['qps32']:,.0f} | {r['qps512']:,.0f}{ratio} | "
            f"{r['recall']:.3f} | {r['rss_mb']:,.0f} MB | "
            + (f"{r['build_s']:.0f} s |" if r["build_s"] else "- |")
        )
    replace_section("\n".join(lines), MARKERS)


if __name__ == "__main__":
    main()
