"""The main job on the embedded default (for now): index the bundled sample corpus, serve it over
the Search-R1 protocol, and walk sample questions through the agent-facing tools, embedded and
remote, printing what an agent would see. Ends with answer recall over all sample questions."""

from __future__ import annotations

import json
import tempfile
import textwrap
import time
from pathlib import Path

from .data import sample_corpus_path, sample_questions_path
from .tools import LocalSearch, ResultCache, RetrievalClient, Toolbox, start_retrieval_server

RULE = "─" * 78


def _load_questions() -> list[dict]:
    with open(sample_questions_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _show(title: str, text: str, limit: int = 900) -> None:
    body = text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more chars)"
    print(f"  {title}")
    print(textwrap.indent(body, "    │ ", lambda _line: True))


def _answer_recall(toolbox: Toolbox, questions: list[dict]) -> float:
    outputs = toolbox.search_batch([q["question"] for q in questions])
    found = sum(
        any(a.lower() in out.text.lower() for a in q["answer"])
        for q, out in zip(questions, outputs, strict=True)
    )
    return found / max(1, len(questions))


def _walk(question: dict, local: Toolbox, remote: Toolbox) -> None:
    print(RULE)
    print(f"Q: {question['question']}   (gold: {', '.join(question['answer'])})")
    hit = local.search(question["question"])
    _show(f"<search> via embedded index  [{hit.elapsed_ms:.1f} ms]", hit.text)
    remote_hit = remote.search(question["question"])
    same = [d.id for d in remote_hit.docs] == [d.id for d in hit.docs]
    print(f"  same documents via the retrieval server: {'yes' if same else 'NO'}")
    if hit.docs and hit.docs[0].url:
        page = remote.access(hit.docs[0].url)
        _show(f"<access> {hit.docs[0].url}  [{len(page.chunks)} chunk(s)]", page.text, limit=500)


def run_demo(workdir: Path | None = None, questions: int = 3) -> int:
    """Runs the demo; returns a process exit code."""
    with tempfile.TemporaryDirectory(prefix="asearcher-demo-") as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        index = LocalSearch.build(sample_corpus_path(), root / "index", overwrite=True)
        print(
            f"built a BM25 index of {len(index)} passages in {time.perf_counter() - started:.2f}s"
        )
        cache = ResultCache(root / "cache.jsonl")
        local = Toolbox(index, pages=index, top_k=3, doc_chars=300)
        with start_retrieval_server(index) as server:
            print(f"retrieval server (Search-R1 protocol) listening on {server.url}")
            client = RetrievalClient([server.url])
            remote = Toolbox(client, pages=client, cache=cache, top_k=3, doc_chars=300)
            all_questions = _load_questions()
            for q in all_questions[:questions]:
                _walk(q, local, remote)
            print(RULE)
            print("answer found in the top-k documents of one search with the question:")
            for hops in (1, 2):
                subset = [q for q in all_questions if q.get("hops", 1) == hops]
                recalls = [_answer_recall(Toolbox(index, top_k=k), subset) for k in (1, 3, 5)]
                cells = ", ".join(
                    f"top {k}: {r:.0%}" for k, r in zip((1, 3, 5), recalls, strict=True)
                )
                print(f"  {hops}-hop questions ({len(subset)}): {cells}")
            print("  (2-hop answers usually need a second search: that is the agent's job)")
            print(f"result cache: {cache.stats()}")
    return 0
