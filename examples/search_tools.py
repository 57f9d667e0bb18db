"""Walk through asearcher's search tools from Python: build an index, search it, serve it over the
Search-R1 protocol, and use the agent-facing Toolbox with a result cache (live, then replay).

    python examples/search_tools.py [--corpus CORPUS.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from asearcher.data import sample_corpus_path
from asearcher.tools import (
    LocalSearch,
    ResultCache,
    RetrievalClient,
    Toolbox,
    start_retrieval_server,
)


async def search_concurrently(index: LocalSearch, queries: list[str]) -> list[int]:
    hits = await asyncio.gather(*(index.asearch(q, k=5) for q in queries))
    return [len(h) for h in hits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=sample_corpus_path())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = LocalSearch.build(args.corpus, Path(tmp) / "index")
        print(index, index.last_build)
        for doc in index.search("which river flows through the capital", k=3):
            print(f"  {doc.score:6.2f}  {doc.title}: {doc.text[:70]}…")
        print("async:", asyncio.run(search_concurrently(index, ["river", "university", "band"])))

        cache_path = Path(tmp) / "cache.jsonl"
        with start_retrieval_server(index) as server:
            client = RetrievalClient([server.url])
            box = Toolbox(client, pages=client, cache=ResultCache(cache_path), top_k=2)
            out = box.search("founded company headquarters")
            print(out)
            print(box.access(out.docs[0].url or out.docs[0].id).text[:300], "…")
        # The server is gone: replay mode still answers what was seen, from the cache alone.
        replay = Toolbox(
            client, pages=client, cache=ResultCache(cache_path, mode="replay"), top_k=2
        )
        print("replayed:", replay.search("founded company headquarters").cached)


if __name__ == "__main__":
    main()
