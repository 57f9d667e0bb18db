"""Dense and hybrid retrieval served over HTTP: the retrieval server in bm25, dense and hybrid
mode answers Search-R1-shaped requests with what the backends give, merges concurrent requests
into batches, and serves pages; the CLI builds both indexes, resumes a dense build killed with
SIGKILL, and serves each mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from asearcher.data import sample_corpus_path, sample_questions_path
from asearcher.tools import DenseSearch, HybridSearch, LocalSearch, start_retrieval_server
from tiny_models import make_tiny_bert


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalSearch, DenseSearch]:
    root = tmp_path_factory.mktemp("serving")
    model = make_tiny_bert(root / "bert", seed=11)
    bm25 = LocalSearch.build(sample_corpus_path(), root / "index", progress=False)
    dense = DenseSearch.build(
        sample_corpus_path(), root / "index" / "dense", model, shard_rows=1000, progress=False
    )
    return bm25, dense


def _questions() -> list[str]:
    lines = sample_questions_path().read_text().splitlines()
    return [json.loads(q)["question"] for q in lines]


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_each_mode_answers_search_r1_requests_as_its_backend_does(indexes, mode: str):
    bm25, dense = indexes
    backend = {"bm25": bm25, "dense": dense, "hybrid": HybridSearch([(bm25, 1.0), (dense, 1.0)])}[
        mode
    ]
    questions = _questions()[:8]
    with start_retrieval_server(backend, pages=bm25, micro_batch=64) as server:
        got = _post(
            f"{server.url}/retrieve", {"queries": questions, "topk": 3, "return_scores": True}
        )
        want = backend.search_batch(questions, k=3)
        assert len(got["result"]) == len(questions)
        for hits, docs in zip(got["result"], want, strict=True):
            assert [h["document"]["id"] for h in hits] == [d.id for d in docs]
            assert [h["score"] for h in hits] == pytest.approx([d.score for d in docs], rel=1e-5)
            assert hits[0]["document"]["contents"].startswith('"')
        # topk left out: the default (3); no scores: bare documents.
        bare = _post(f"{server.url}/retrieve", {"queries": questions[:1]})["result"][0]
        assert len(bare) == 3 and "contents" in bare[0]
        page = _post(f"{server.url}/access", {"urls": [want[0][0].url or want[0][0].id]})
        assert page["result"][0]["contents"]
        health = _get(f"{server.url}/health")
        assert health["mode"] == mode and health["micro_batch"]["requests"] == 2


def test_concurrent_requests_are_merged_into_batches(indexes):
    _, dense = indexes
    questions = _questions()
    with start_retrieval_server(dense, micro_batch=512) as server:

        def ask(i: int) -> list:
            q = questions[i % len(questions)]
            return _post(f"{server.url}/retrieve", {"queries": [q], "topk": 5})["result"][0]

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, range(256)))
        health = _get(f"{server.url}/health")
    want = dense.search_batch(questions, k=5)
    for i, hits in enumerate(answers):
        assert [h["id"] for h in hits] == [d.id for d in want[i % len(questions)]]
    batching = health["micro_batch"]
    assert batching["requests"] == 256 and batching["queries"] == 256
    assert batching["batches"] < 256, batching
    # Dense mode serves pages from the dense index itself.
    assert health["pages"] is True and health["docs"] == len(dense)


def test_a_hybrid_server_without_pages_answers_access_with_404(indexes):
    bm25, dense = indexes
    with start_retrieval_server(HybridSearch([(bm25, 1.0), (dense, 1.0)])) as server:
        with pytest.raises(urllib.error.HTTPError) as e:
            _post(f"{server.url}/access", {"urls": ["x"]})
        assert e.value.code == 404
        assert "no page source" in json.loads(e.value.read())["error"]


SERVE = [sys.executable, "-m", "asearcher", "serve", "retrieval"]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asearcher", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def test_cli_builds_both_indexes_resumes_after_sigkill_and_serves_every_mode(tmp_path: Path):
    model = make_tiny_bert(tmp_path / "bert", seed=11)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(sample_corpus_path().read_text() * 4)  # slow enough to kill mid-way
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "asearcher", "index", "build", str(corpus), "--out", str(out)]
    cmd += ["--dense", str(model), "--batch-size", "8", "--shard-rows", "500", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = out / "dense" / "dense.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(json.loads(manifest.read_text())["shards"])
    assert not json.loads(manifest.read_text())["complete"] and kept >= 1
    done = _cli(*cmd[3:], "--hnsw")
    assert done.returncode == 0, done.stderr
    assert "already built from" in done.stdout and "finished shards kept" in done.stdout
    assert "HNSW graph" in done.stdout
    fresh = tmp_path / "fresh"
    again = _cli(*cmd[3:6], "--out", str(fresh), *cmd[8:])
    assert again.returncode == 0, again.stderr
    a, b = DenseSearch(out / "dense"), DenseSearch(fresh / "dense")
    assert a.manifest["build_id"] == b.manifest["build_id"] and len(a) == len(b) == 4 * 2910
    for sa, sb in zip(a.manifest["shards"], b.manifest["shards"], strict=True):
        assert sa["sha256"] == sb["sha256"]
    info = _cli("index", "info", str(out))
    assert "BM25, 11640 passages" in info.stdout and "HNSW graph" in info.stdout, info.stdout

    question = _questions()[0]
    for mode, extra in (("dense", ["--search", "hnsw"]), ("hybrid", [])):
        server = subprocess.Popen(
            [*SERVE, "--index", str(out), "--port", "0", "--mode", mode, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = server.stdout.readline()
            assert "retrieval server on http://" in line, server.stderr.read()
            url = line.split(" on ")[1].split(" ")[0]
            hits = _post(f"{url}/retrieve", {"queries": [question], "topk": 4})["result"][0]
            assert len(hits) == 4
            assert _get(f"{url}/health")["mode"] == mode
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


def test_training_searches_with_the_configured_hybrid_tool(indexes, tmp_path: Path):
    import asearcher
    from asearcher.exceptions import ConfigError
    from run_files import first_questions
    from tiny_models import make_tiny_qwen

    bm25, _ = indexes
    model = make_tiny_qwen(tmp_path / "m", hidden_size=32, intermediate_size=64)
    cfg = {
        "model": {"path": str(model)},
        "data": {"train": str(first_questions(tmp_path, 4))},
        "tools": {"index": str(bm25.path), "top_k": 2, "search": "hybrid", "dense_weight": 2.0},
        "agent": {"kind": "search_r1", "max_turns": 2, "sampling": {"max_new_tokens": 12}},
        "rollout": {"group_size": 2, "batch_size": 2, "filter_zero_variance": False},
        "inference": {"max_context": 2048},
        "run": {"out_dir": str(tmp_path / "run"), "steps": 1},
    }
    result = asearcher.Trainer(cfg).fit(progress=False)
    assert result.steps == 1
    fingerprint = (tmp_path / "run" / "fingerprint.json").read_text()
    assert "local:dense:" in fingerprint and "local:bm25:" in fingerprint
    cfg["tools"] = {"search": "dense"}
    cfg["run"]["out_dir"] = str(tmp_path / "run2")
    with pytest.raises(ConfigError, match="tools.index"):
        asearcher.Trainer(cfg).fit(progress=False)
