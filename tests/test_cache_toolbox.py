"""The agent-facing toolbox over the shared result cache, including offline replay."""

from __future__ import annotations

import asyncio

import pytest
from asearcher.exceptions import CacheMissError, ConfigError
from asearcher.tools import ResultCache, RetrievalClient, Toolbox, start_retrieval_server


def test_observation_format(sample_index):
    box = Toolbox(sample_index, pages=sample_index, top_k=2, doc_chars=50)
    out = box.search("river")
    assert out.tool == "search" and out.input == "river" and len(out.docs) == 2
    blocks = out.text.split("\n\n")
    assert blocks[0].startswith(f"[Doc 1]({out.docs[0].url}):\n")
    assert len(blocks[0].split(":\n", 1)[1]) == 50
    assert box.search("qqqqzzzz").text == "No search results are found."
    page = box.access(out.docs[0].url)
    assert page.text.startswith(">>>> Page 1 >>>>") and page.chunks
    assert box.access("https://tinywiki.example/wiki/None").text == (
        "No More Information is Found for this URL."
    )
    with pytest.raises(ConfigError, match="no page source"):
        Toolbox(sample_index).access("x")


def test_cache_survives_restart_and_replays_offline(sample_index, tmp_path, sample_questions):
    questions = [q["question"] for q in sample_questions[:8]]
    path = tmp_path / "cache.jsonl"
    with start_retrieval_server(sample_index) as server:
        client = RetrievalClient([server.url], retries=0, timeout=2)
        live = Toolbox(client, pages=client, cache=ResultCache(path))
        first = live.search_batch(questions)
        url = first[0].docs[0].url
        page = live.access(url)
        again = live.search(questions[0])
        assert not first[0].cached and again.cached and again.text == first[0].text
    # The server is gone; replay serves everything seen before, and only that.
    replay = Toolbox(client, pages=client, cache=ResultCache(path, mode="replay"))
    assert [o.text for o in replay.search_batch(questions)] == [o.text for o in first]
    assert replay.access(url).text == page.text
    with pytest.raises(CacheMissError, match="replay"):
        replay.search("a question never asked")
    stats = ResultCache(path).stats()
    assert stats["entries"] == len(questions) + 1


def test_async_toolbox_calls(sample_index):
    box = Toolbox(sample_index, pages=sample_index)

    async def run():
        hits = await asyncio.gather(*(box.asearch(f"city number {i}") for i in range(10)))
        page = await box.aaccess(hits[0].docs[0].url)
        return hits, page

    hits, page = asyncio.run(run())
    assert len(hits) == 10 and page.chunks


def test_bad_cache_mode_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cache mode"):
        ResultCache(tmp_path / "c.jsonl", mode="sometimes")
