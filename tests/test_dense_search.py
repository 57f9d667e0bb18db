"""Dense retrieval end to end: an index of the sample corpus built with the real
all-MiniLM-L6-v2 encoder, exact search equal to faiss-cpu's IndexFlatIP on the same vectors,
the index as the agents' search tool, a build stopped half-way and resumed, and the errors of
a changed corpus or another encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import asearcher
import pytest
import torch
from asearcher.data import sample_corpus_path, sample_questions_path
from asearcher.exceptions import SearchIndexError
from asearcher.tools import DenseSearch, Toolbox
from tiny_models import make_tiny_bert


@pytest.fixture(scope="module")
def dense(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> DenseSearch:
    out = tmp_path_factory.mktemp("dense") / "index"
    return DenseSearch.build(sample_corpus_path(), out, minilm, shard_rows=64, progress=False)


def _vectors(index: DenseSearch) -> torch.Tensor:
    parts = []
    for shard in index.manifest["shards"]:
        raw = (index.path / shard["vectors"]).read_bytes()
        parts.append(torch.frombuffer(bytearray(raw), dtype=torch.float32).view(-1, index.dim))
    return torch.cat(parts)


def test_exact_search_equals_faiss_flat_ip(dense: DenseSearch, minilm: Path):
    faiss = pytest.importorskip("faiss")
    corpus = sample_corpus_path().read_text().splitlines()
    assert len(dense) == len([line for line in corpus if line.strip()])
    assert dense.last_build["rows"] == len(dense) and dense.last_build["shards"] > 1
    vectors = _vectors(dense)
    flat = faiss.IndexFlatIP(dense.dim)
    flat.add(vectors.numpy())
    questions = [
        json.loads(q)["question"] for q in sample_questions_path().read_text().splitlines()
    ]
    encoder = asearcher.Encoder(minilm)
    scores, ids = flat.search(encoder.encode(questions, "query").numpy(), 5)
    found = dense.search_batch(questions, k=5)
    for q, docs in enumerate(found):
        assert [d.score for d in docs] == pytest.approx(scores[q].tolist(), abs=1e-5)
        for rank, d in enumerate(docs):
            if rank + 1 < 5 and abs(scores[q][rank] - scores[q][rank + 1]) < 1e-6:
                continue  # a tie: either order is right
            assert d.id == json.loads(corpus[int(ids[q][rank])])["id"], (q, rank)
    # The search answers the question it is asked: the passage naming the answer is found.
    first = json.loads(sample_questions_path().read_text().splitlines()[0])
    hits = dense.search(first["question"], k=5)
    assert any(a.lower() in (h.title + h.text).lower() for h in hits for a in first["answer"])


def test_a_faiss_flat_index_imports_and_searches_the_same(
    dense: DenseSearch, minilm: Path, tmp_path: Path
):
    faiss = pytest.importorskip("faiss")
    flat = faiss.IndexFlatIP(dense.dim)
    flat.add(_vectors(dense).numpy())
    path = tmp_path / "e5_Flat.index"
    faiss.write_index(flat, str(path))
    imported = DenseSearch.import_faiss(path, sample_corpus_path(), tmp_path / "imp", minilm)
    assert len(imported) == len(dense) and imported.last_build["encoded_rows"] == 0
    assert imported.manifest["imported_from"].startswith("faiss:")
    queries = ["Which city is the capital of France?", "Who founded the glass works?"]
    a, b = dense.search_batch(queries, k=5), imported.search_batch(queries, k=5)
    assert [[d.id for d in x] for x in a] == [[d.id for d in x] for x in b]
    l2 = faiss.IndexFlatL2(dense.dim)
    l2.add(_vectors(dense).numpy()[:10])
    faiss.write_index(l2, str(tmp_path / "l2.index"))
    with pytest.raises(SearchIndexError, match="IndexFlatL2"):
        DenseSearch.import_faiss(
            tmp_path / "l2.index", sample_corpus_path(), tmp_path / "x", minilm
        )


def test_the_dense_index_is_an_agent_tool(dense: DenseSearch):
    box = Toolbox(dense, top_k=3)
    out = box.search("Which city is the capital of France?")
    assert out.docs and len(out.docs) == 3 and "Doc 1" in out.text
    want = [d.id for d in dense.search("Which city is the capital of France?", k=3)]
    assert [d.id for d in out.docs] == want


def test_hybrid_search_is_reciprocal_rank_fusion_of_bm25_and_dense(
    dense: DenseSearch, sample_index, capsys
):
    from asearcher.exceptions import ConfigError
    from asearcher.tools import HybridSearch

    hybrid = HybridSearch([(sample_index, 1.0), (dense, 2.0)], depth=20, rrf_k=60.0)
    assert "local:bm25:" in hybrid.name and "local:dense:" in hybrid.name
    questions = [json.loads(q) for q in sample_questions_path().read_text().splitlines()]
    texts = [q["question"] for q in questions]
    fused = hybrid.search_batch(texts, k=5)
    bm25, vec = sample_index.search_batch(texts, k=20), dense.search_batch(texts, k=20)
    for q in range(len(texts)):
        scores: dict[str, float] = {}
        for docs, weight in ((bm25[q], 1.0), (vec[q], 2.0)):
            for rank, d in enumerate(docs):
                scores[d.id] = scores.get(d.id, 0.0) + weight / (60.0 + rank + 1)
        want = sorted(scores.values(), reverse=True)[:5]
        assert [d.score for d in fused[q]] == pytest.approx(want, rel=1e-5)
        assert all(scores[d.id] == pytest.approx(d.score, rel=1e-5) for d in fused[q])

    # Answer recall@5 of each (printed for the record; the sample corpus is small).
    def recall(found: list) -> float:
        hit = 0
        for q, docs in zip(questions, found, strict=True):
            text = " ".join(d.title + " " + d.text for d in docs[:5]).lower()
            hit += any(a.lower() in text for a in q["answer"])
        return hit / len(questions)

    with capsys.disabled():
        print(
            f"\nanswer recall@5 on the sample questions: bm25 {recall(bm25):.3f}, "
            f"dense {recall(vec):.3f}, hybrid {recall(fused):.3f}"
        )
    assert recall(fused) >= min(recall(bm25), recall(vec))
    assert Toolbox(hybrid, top_k=3).search(texts[0]).docs[0].id == fused[0][0].id
    with pytest.raises(ConfigError, match="weight"):
        HybridSearch([(sample_index, 1.0), (dense, 0.0)])
    with pytest.raises(ConfigError, match="at least two"):
        HybridSearch([(dense, 1.0)])


def test_a_stopped_build_resumes_and_bad_inputs_are_named(tmp_path: Path):
    model = make_tiny_bert(tmp_path / "bert", seed=3)
    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(sample_corpus_path(), corpus)
    out = tmp_path / "index"

    def stop_after_two_shards(rows: int) -> None:
        if rows > 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DenseSearch.build(corpus, out, model, shard_rows=10, progress=stop_after_two_shards)
    manifest = json.loads((out / "dense.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 2
    with pytest.raises(SearchIndexError, match="has not finished"):
        DenseSearch(out)
    resumed = DenseSearch.build(corpus, out, model, shard_rows=10, progress=False)
    assert resumed.last_build["resumed_shards"] == 2
    assert resumed.last_build["encoded_rows"] == len(resumed) - 20
    fresh = DenseSearch.build(corpus, tmp_path / "fresh", model, shard_rows=10, progress=False)
    assert resumed.manifest["build_id"] == fresh.manifest["build_id"]
    assert torch.equal(_vectors(resumed), _vectors(fresh))
    # Another encoder: refused, naming both.
    other = make_tiny_bert(tmp_path / "other", seed=4)
    with pytest.raises(SearchIndexError, match="query vectors would not match"):
        DenseSearch(out, model=other)
    # A corpus changed since the build: refused unless overwrite.
    with corpus.open("a") as f:
        f.write(json.dumps({"id": "new", "contents": '"New"\\nA new passage.'}) + "\n")
    with pytest.raises(SearchIndexError, match="the corpus changed"):
        DenseSearch.build(corpus, out, model, shard_rows=10, progress=False)
    rebuilt = DenseSearch.build(corpus, out, model, shard_rows=10, overwrite=True, progress=False)
    assert len(rebuilt) == len(fresh) + 1
    with pytest.raises(SearchIndexError, match="not a dense index"):
        DenseSearch(tmp_path)
    with pytest.raises(ZeroDivisionError):  # an error of the caller's callback, unchanged
        DenseSearch.build(corpus, tmp_path / "x", model, progress=lambda n: 1 / 0)


def test_hnsw_finds_what_exact_search_finds(dense: DenseSearch, minilm: Path):
    questions = [
        json.loads(q)["question"] for q in sample_questions_path().read_text().splitlines()
    ]
    seen: list[int] = []
    graph = DenseSearch.build_hnsw(dense.path, progress=seen.append, threads=2)
    assert graph.mode == "hnsw" and dense.mode == "exact"
    assert graph.last_build["rows"] == len(dense) and seen[-1] == len(dense)
    assert graph.manifest["hnsw"]["connectivity"] == 32
    exact, approx = dense.search_batch(questions, k=10), graph.search_batch(questions, k=10)
    found = sum(
        len({d.id for d in a} & {d.id for d in b}) for a, b in zip(exact, approx, strict=True)
    )
    recall = found / (10 * len(questions))
    assert recall >= 0.95, recall
    # Scores are the same inner products exact search gives.
    for a, b in zip(exact, approx, strict=True):
        by_id = {d.id: d.score for d in a}
        for d in b:
            if d.id in by_id:
                assert d.score == pytest.approx(by_id[d.id], abs=1e-4)
    # search_vectors on vectors encoded by the caller gives the same rows.
    vectors = dense.encode_queries(questions[:3])
    rows = dense.search_vectors(vectors, k=3)
    assert [[dense.document(r).id for r, _ in hits] for hits in rows] == [
        [d.id for d in docs[:3]] for docs in exact[:3]
    ]
    from asearcher.exceptions import ConfigError

    with pytest.raises(ConfigError, match="vector 0 has 3 floats"):
        dense.search_vectors([[0.0, 1.0, 0.0]])
    with pytest.raises(ConfigError, match='"annoy" is not one of'):
        DenseSearch(dense.path, search="annoy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoding_and_search_match_the_cpu(dense: DenseSearch, minilm: Path):
    questions = [
        json.loads(q)["question"] for q in sample_questions_path().read_text().splitlines()
    ]
    cpu = asearcher.Encoder(minilm).encode(questions, "query")
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 3e-2), ("float16", 5e-3)):
        gpu = asearcher.Encoder(minilm, device="cuda", dtype=dtype).encode(questions, "query")
        assert (gpu.float().cpu() - cpu).abs().max().item() < tol, dtype
    on_gpu = DenseSearch(dense.path, device="cuda")
    want = dense.search_batch(questions, k=5)
    got = on_gpu.search_batch(questions, k=5)
    agree = sum([d.id for d in a] == [d.id for d in b] for a, b in zip(want, got, strict=True))
    assert agree >= len(questions) - 2  # ties and float order may swap a pair
