"""Retrieval quality (issue 18): answer recall@k of BM25, dense (all-MiniLM-L6-v2, exact and
HNSW) and hybrid (RRF) search, on the sample corpus with its 60 questions and on a tinyworld
world with its questions by hop count. A question counts as found at k when one of its gold
answers appears (case-insensitive) in the title or text of the k best passages; for multi-hop
tinyworld questions only the first hop is searchable from the question, so their recall reads
as "does the first search already find the answer" (low by design).

    python benches/bench_retrieval_quality.py [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from docs_section import replace_section

MARKERS = ("<!-- bench:retrieval-quality start -->", "<!-- bench:retrieval-quality end -->")
KS = (1, 3, 5, 10)


def recall_at(found: list[list], answers: list[list[str]], k: int) -> float:
    hit = 0
    for docs, gold in zip(found, answers, strict=True):
        text = " ".join(f"{d.title} {d.text}" for d in docs[:k]).lower()
        hit += any(a.lower() in text for a in gold)
    return hit / max(1, len(answers))


def evaluate(corpus: Path, questions: list[dict], model: Path, work: Path) -> dict[str, dict]:
    from asearcher.tools import DenseSearch, HybridSearch, LocalSearch

    bm25 = LocalSearch.build(corpus, work / "bm25", progress=False)
    dense = DenseSearch.build(corpus, work / "dense", model, progress=False)
    hnsw = DenseSearch.build_hnsw(work / "dense", progress=False)
    backends = {
        "bm25": bm25,
        "dense (exact)": dense,
        "dense (HNSW)": hnsw,
        "hybrid (RRF, 1:1)": HybridSearch([(bm25, 1.0), (dense, 1.0)]),
    }
    texts = [q["question"] for q in questions]
    answers = [q["answer"] if isinstance(q["answer"], list) else [q["answer"]] for q in questions]
    out = {}
    for name, backend in backends.items():
        found = backend.search_batch(texts, k=max(KS))
        out[name] = {k: recall_at(found, answers, k) for k in KS}
    return out


def tinyworld_questions(root: Path) -> tuple[Path, dict[int, list[dict]]]:
    from asearcher.tinyworld.build import build

    world = build(root, size="small", seed=0)
    by_hops: dict[int, list[dict]] = {}
    for path in (world.train, world.heldout):
        for line in Path(path).read_text().splitlines():
            q = json.loads(line)
            by_hops.setdefault(len(q["chain"]), []).append(q)
    return Path(world.corpus), by_hops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from asearcher.data import sample_corpus_path, sample_questions_path
    from bench_dense import minilm_dir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = minilm_dir(work / "minilm")
        sample = [json.loads(q) for q in sample_questions_path().read_text().splitlines()]
        (work / "sample").mkdir()
        for name, r in evaluate(sample_corpus_path(), sample, model, work / "sample").items():
            rows.append(("sample corpus (60 questions)", name, r))
        corpus, by_hops = tinyworld_questions(work / "tw")
        for hops, qs in sorted(by_hops.items()):
            (work / f"tw{hops}").mkdir()
            for name, r in evaluate(corpus, qs, model, work / f"tw{hops}").items():
                rows.append((f"tinyworld small, {hops}-hop ({len(qs)} questions)", name, r))
    for where, name, r in rows:
        print(f"{where:40s} {name:18s} " + " ".join(f"R@{k} {r[k]:.3f}" for k in KS))
    if args.write_docs:
        lines = [
            f"Measured {datetime.date.today()}: `python benches/bench_retrieval_quality.py "
            "--write-docs`. Answer recall@k: a gold answer appears in the k best passages. "
            "Dense: all-MiniLM-L6-v2 (HNSW M=32, ef 128). Deterministic (no sampling): one run.",
            "",
            "| questions | search | " + " | ".join(f"R@{k}" for k in KS) + " |",
            "|---|---|" + "---:|" * len(KS),
        ]
        for where, name, r in rows:
            lines.append(f"| {where} | {name} | " + " | ".join(f"{r[k]:.3f}" for k in KS) + " |")
        replace_section("\n".join(lines), MARKERS)


if __name__ == "__main__":
    main()
