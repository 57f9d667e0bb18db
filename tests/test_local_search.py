"""The embedded BM25 index from Python: build, search (sync, batch, async), page access."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from asearcher.exceptions import CorpusError, SearchIndexError
from asearcher.tools import Document, LocalSearch


def test_sample_index_answers_questions(sample_index, sample_questions):
    assert len(sample_index) > 2000
    found = 0
    for q in sample_questions:
        docs = sample_index.search(q["question"], k=5)
        assert 0 < len(docs) <= 5
        scores = [d.score for d in docs]
        assert scores == sorted(scores, reverse=True)
        found += any(a.lower() in (d.contents.lower()) for d in docs for a in q["answer"])
    # BM25 over the question text finds the answer for most questions (one-hop mostly).
    assert found / len(sample_questions) > 0.5


def test_documents_carry_search_r1_fields(sample_index):
    doc = sample_index.search("capital city population", k=1)[0]
    assert isinstance(doc, Document)
    assert doc.contents == f'"{doc.title}"\n{doc.text}'
    assert doc.url.startswith("https://tinywiki.example/wiki/")
    d = doc.to_dict()
    assert d["id"] == doc.id and d["score"] == pytest.approx(doc.score)


def test_batch_equals_single_and_async(sample_index, sample_questions):
    queries = [q["question"] for q in sample_questions[:20]] + ["", "zzzz-no-such-term"]
    batch = sample_index.search_batch(queries, k=3)
    single = [sample_index.search(q, k=3) for q in queries]
    assert batch == single
    assert batch[-1] == [] and batch[-2] == []

    async def run():
        one = await sample_index.asearch(queries[0], k=3)
        many = await sample_index.asearch_batch(queries, k=3)
        concurrent = await asyncio.gather(*(sample_index.asearch(q, k=3) for q in queries))
        return one, many, concurrent

    one, many, concurrent = asyncio.run(run())
    assert one == batch[0] and many == batch and list(concurrent) == batch


def test_access_by_url_joins_a_page(sample_index):
    doc = sample_index.search("river flows", k=1)[0]
    page = sample_index.access(doc.url)
    assert page is not None and page.title == doc.title
    assert doc.text in page.contents
    assert len(page.contents) > len(doc.text), "a page joins all passages sharing the URL"
    assert sample_index.access(doc.id).contents == doc.text
    assert sample_index.access("https://tinywiki.example/wiki/Nowhere") is None
    assert sample_index.get(doc.id) == Document(doc.id, doc.text, doc.title, doc.url)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_line_is_named_and_nothing_is_left(tmp_path):
    corpus = _write(
        tmp_path / "c.jsonl",
        [json.dumps({"id": "1", "contents": '"A"\nalpha'}), '{"id": "2", "contents": ', "{}"],
    )
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid JSON"):
        LocalSearch.build(corpus, tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    index = LocalSearch.build(corpus, tmp_path / "idx", on_bad_line="skip", progress=False)
    assert len(index) == 1 and index.last_build["skipped_lines"] == 2


def test_title_text_format_and_progress(tmp_path):
    lines = [json.dumps({"id": i, "title": f"T{i}", "text": f"word{i} body"}) for i in range(20000)]
    corpus = _write(tmp_path / "c.jsonl", lines)
    calls = []
    index = LocalSearch.build(
        corpus, tmp_path / "idx", progress=lambda d, b, t: calls.append((d, b, t))
    )
    assert len(index) == 20000
    assert calls[-1][1] == calls[-1][2] == corpus.stat().st_size
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert index.search("word123", k=1)[0].title == "T123"


def test_progress_callback_can_cancel(tmp_path):
    lines = [json.dumps({"id": i, "contents": f"text {i}"}) for i in range(20000)]
    corpus = _write(tmp_path / "c.jsonl", lines)

    def stop(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalSearch.build(corpus, tmp_path / "idx", progress=stop)
    assert not (tmp_path / "idx").exists()


def test_existing_index_is_protected(sample_index, tmp_path):
    corpus = _write(tmp_path / "c.jsonl", [json.dumps({"id": "1", "contents": "x y"})])
    out = tmp_path / "idx"
    LocalSearch.build(corpus, out, progress=False)
    with pytest.raises(Exception, match="already exists"):
        LocalSearch.build(corpus, out, progress=False)
    assert len(LocalSearch.build(corpus, out, overwrite=True, progress=False)) == 1
    with pytest.raises(SearchIndexError):
        LocalSearch(tmp_path / "missing")


def test_cli_output_into_a_closed_pipe_ends_quietly(sample_index):
    """`asearcher search ... | head -1`: the reader closes the pipe early; no traceback."""
    cmd = [
        sys.executable,
        "-m",
        "asearcher.cli",
        "search",
        str(sample_index.path),
        "river",
        "-k",
        "5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head` exiting before the output is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
