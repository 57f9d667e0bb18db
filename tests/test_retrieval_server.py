"""`asearcher serve retrieval` as a real subprocess, spoken to over HTTP: the Search-R1 protocol
itself, our failover client, concurrency, and the in-process background server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from asearcher.exceptions import BackendError, RequestRejectedError
from asearcher.tools import RetrievalClient, Toolbox, start_retrieval_server
from conftest import free_port


def post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_retrieve_protocol_with_and_without_scores(retrieval_server, sample_index):
    q = "Where was the founder born?"
    scored = post(
        f"{retrieval_server}/retrieve", {"queries": [q, q], "topk": 4, "return_scores": True}
    )
    assert len(scored["result"]) == 2 and len(scored["result"][0]) == 4
    hit = scored["result"][0][0]
    assert set(hit) == {"document", "score"}
    assert hit["document"]["contents"].startswith('"')
    assert hit["document"]["url"].startswith("https://tinywiki.example/")
    expected = sample_index.search(q, k=4)
    assert [h["document"]["id"] for h in scored["result"][0]] == [d.id for d in expected]
    assert hit["score"] == pytest.approx(expected[0].score, rel=1e-5)
    bare = post(f"{retrieval_server}/retrieve", {"queries": [q], "topk": None})
    assert len(bare["result"][0]) == 3 and "contents" in bare["result"][0][0]


def test_access_protocol(retrieval_server, sample_index):
    url = sample_index.search("company headquarters", k=1)[0].url
    result = post(f"{retrieval_server}/access", {"urls": [url, "https://nowhere.example/x"]})
    assert result["result"][0]["url"] == url
    assert result["result"][0]["contents"] == sample_index.access(url).contents
    assert result["result"][1] is None


def test_bad_requests_are_400_with_reason(retrieval_server):
    with pytest.raises(urllib.error.HTTPError) as e:
        post(f"{retrieval_server}/retrieve", {"query": "x"})
    assert e.value.code == 400
    assert "queries" in e.value.read().decode()
    client = RetrievalClient([retrieval_server], retries=0)
    with pytest.raises(RequestRejectedError, match="HTTP 400"):
        client.search("x", k=10_000)


def test_client_fails_over_and_reports_all_dead(retrieval_server):
    dead = f"http://127.0.0.1:{free_port()}"
    client = RetrievalClient([dead, retrieval_server], timeout=5, retries=1, backoff=0.01)
    for _ in range(3):
        assert len(client.search("river", k=2)) == 2
    only_dead = RetrievalClient([dead], timeout=2, retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="all retrieval endpoints failed"):
        only_dead.search("river")


def test_concurrent_clients_get_their_own_answers(retrieval_server, sample_questions):
    client = RetrievalClient([retrieval_server], max_concurrency=64)
    questions = [q["question"] for q in sample_questions]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: client.search(q, k=3), questions))
    assert answers == client.search_batch(questions, k=3)

    async def gather():
        return await asyncio.gather(*(client.asearch(q, k=3) for q in questions))

    assert list(asyncio.run(gather())) == answers


def test_background_server_handle(sample_index):
    with start_retrieval_server(sample_index, default_topk=2) as handle:
        assert handle.url.startswith("http://127.0.0.1:")
        box = Toolbox(RetrievalClient([handle.url]), top_k=2)
        out = box.search("university")
        assert len(out.docs) == 2 and out.text.startswith("[Doc 1](")
    with pytest.raises(BackendError):
        RetrievalClient([handle.url], timeout=1, retries=0).search("university")


def test_cli_searches_and_reads_through_a_server(retrieval_server, sample_index):
    exe = [sys.executable, "-m", "asearcher.cli"]
    out = subprocess.run([*exe, "search", retrieval_server, "glass works founded", "-k", "2"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    local = Toolbox(sample_index, top_k=2).search("glass works founded").text
    assert out.stdout.strip() == local.strip()
    url = sample_index.search("glass works founded", k=1)[0].url
    page = subprocess.run([*exe, "access", retrieval_server, url], capture_output=True, text=True)
    assert page.returncode == 0 and page.stdout.startswith(">>>> Page 1 >>>>")
    dead = subprocess.run([*exe, "search", f"http://127.0.0.1:{free_port()}", "x"],
                          capture_output=True, text=True)  # fmt: skip
    assert dead.returncode == 1 and "all retrieval endpoints failed" in dead.stderr
