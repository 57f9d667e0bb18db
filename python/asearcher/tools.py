"""Search and page-access tools for agents: embedded BM25, retrieval servers, web search, page
reading, the shared result cache, and the agent-facing :class:`Toolbox`.

All classes are implemented in Rust. Blocking methods release the GIL and can be interrupted
with Ctrl-C; methods prefixed with ``a`` return awaitables for asyncio.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import _core
from ._progress import progress_bar, with_count_progress

Document = _core.Document
Page = _core.Page
RetrievalClient = _core.RetrievalClient
WebSearch = _core.WebSearch
PageReader = _core.PageReader
ResultCache = _core.ResultCache
Toolbox = _core.Toolbox
ToolOutput = _core.ToolOutput
#: Backends fused by weighted reciprocal rank fusion: ``HybridSearch([(bm25, 1.0), (dense, 1.0)],
#: depth=50, rrf_k=60.0)``; usable wherever ``LocalSearch`` goes.
HybridSearch = _core.HybridSearch
RetrievalServerHandle = _core.RetrievalServerHandle


class DenseSearch(_core.DenseSearch):
    """A dense (embedding) index: passages encoded by a BERT-family encoder (E5, MiniLM, BGE),
    searched exactly by inner product. ``DenseSearch(path)`` opens an index built by
    :meth:`build` with the encoder it was built with (``model=`` when that directory moved);
    use it wherever ``LocalSearch`` goes (``Toolbox(DenseSearch(...))``)."""

    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike[str],
        out: str | os.PathLike[str],
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        batch_size: int = 64,
        shard_rows: int = 16_384,
        overwrite: bool = False,
        on_bad_line: str = "error",
        progress: bool | Callable[[int], object] = True,
    ) -> DenseSearch:
        """Encodes every passage of a jsonl corpus (``"Title"\ntext``, with the passage
        prefix) into ``out``, in shards of ``shard_rows``; a build that was stopped (Ctrl-C,
        kill) resumes after its last finished shard when called again with the same corpus and
        encoder. Refuses a changed corpus or another encoder unless ``overwrite``. The encoder
        options (``pooling``, prefixes, ...) override the model directory's own spec and are
        recorded in the index."""
        from .encoder import encoder_options_json

        options_json = encoder_options_json(
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )
        kwargs: dict[str, Any] = dict(
            device=device,
            dtype=dtype,
            options_json=options_json,
            batch_size=batch_size,
            shard_rows=shard_rows,
            overwrite=overwrite,
            on_bad_line=on_bad_line,
        )
        stats = with_count_progress(
            lambda report: cls.build_index(corpus, out, model, progress=report, **kwargs),
            progress,
            desc="encoding passages",
            unit="passage",
        )
        if stats["skipped_lines"]:
            import logging

            logging.getLogger("asearcher").warning(
                "skipped %d malformed lines of %s", stats["skipped_lines"], corpus
            )
        index = cls(out, device=device, dtype=dtype)
        index.last_build = stats
        return index

    @classmethod
    def import_faiss(
        cls,
        faiss: str | os.PathLike[str],
        corpus: str | os.PathLike[str],
        out: str | os.PathLike[str],
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: str = "float32",
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        pooling: str | None = None,
        shard_rows: int = 16_384,
        overwrite: bool = False,
        on_bad_line: str = "error",
    ) -> DenseSearch:
        """A dense index from a FAISS ``IndexFlatIP`` file (e.g. Search-R1's ``e5_Flat.index``)
        and the corpus it was built from (row ``i`` is passage ``i``), without re-encoding.
        ``model`` and the encoder options must be those the vectors were made with (E5:
        ``query_prefix="query: "``, ``passage_prefix="passage: "``): queries are encoded
        with them. A corpus with more or fewer passages than vectors is refused."""
        from .encoder import encoder_options_json

        options_json = encoder_options_json(
            pooling=pooling, query_prefix=query_prefix, passage_prefix=passage_prefix
        )
        stats = cls.import_faiss_index(
            faiss,
            corpus,
            out,
            model,
            device=device,
            dtype=dtype,
            options_json=options_json,
            shard_rows=shard_rows,
            overwrite=overwrite,
            on_bad_line=on_bad_line,
        )
        index = cls(out, device=device, dtype=dtype)
        index.last_build = stats
        return index

    @classmethod
    def build_hnsw(
        cls,
        path: str | os.PathLike[str],
        *,
        connectivity: int = 32,
        expansion_add: int = 128,
        expansion_search: int = 128,
        threads: int = 0,
        progress: bool | Callable[[int], object] = True,
        model: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> DenseSearch:
        """Builds an HNSW graph (usearch; M = ``connectivity``, efConstruction =
        ``expansion_add``, efSearch = ``expansion_search``) over the stored vectors of the
        finished index at ``path`` and opens it for approximate search. Nothing is re-encoded;
        an earlier graph is replaced. ``threads=0`` uses every core."""
        import json

        kwargs: dict[str, Any] = dict(
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
            threads=threads,
        )
        info = with_count_progress(
            lambda report: cls.build_hnsw_graph(path, progress=report, **kwargs),
            progress,
            desc="HNSW graph",
            unit="vector",
        )
        index = cls(path, model=model, device=device, dtype=dtype, search="hnsw")
        index.last_build = json.loads(info)
        return index

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        search: str = "exact",
        expansion_search: int | None = None,
    ) -> None:
        self.last_build: dict | None = None

    def search_vectors(self, vectors: Any, k: int = 5) -> list[list[tuple[int, float]]]:
        """The ``k`` best rows and inner-product scores of each query vector, best first.
        ``vectors``: a list of float lists, or a 2-D numpy array or torch tensor (passed as
        raw float32 bytes, no per-float conversion). Rows map to passages by
        :meth:`document`."""
        if hasattr(vectors, "detach"):  # torch
            vectors = vectors.detach().to("cpu").float().contiguous().numpy()
        if hasattr(vectors, "tobytes") and hasattr(vectors, "shape"):
            import numpy as np

            array = np.ascontiguousarray(vectors, dtype="<f4")
            if array.ndim != 2:
                from .exceptions import ConfigError

                raise ConfigError(
                    f"invalid setting `vectors`: expected a 2-D array, got shape {array.shape}"
                )
            return self.search_vector_bytes(array.tobytes(), array.shape[0], k)
        return super().search_vectors(vectors, k)

    @property
    def manifest(self) -> dict[str, Any]:
        """``dense.json``: the encoder (weights hash, spec), the corpus (hash), the shards."""
        import json

        return dict(json.loads(self.manifest_json()))


class LocalSearch(_core.LocalSearch):
    """The embedded BM25 index. ``LocalSearch(path)`` opens an index built by :meth:`build`."""

    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike[str],
        out: str | os.PathLike[str],
        *,
        threads: int | None = None,
        heap_mb: int | None = None,
        on_bad_line: str = "error",
        overwrite: bool = False,
        merge: bool = True,
        progress: bool | Callable[[int, int, int], object] = True,
    ) -> LocalSearch:
        """Builds an index over a jsonl corpus and opens it.

        ``on_bad_line="skip"`` skips and counts malformed lines instead of failing (the count is
        logged). ``progress`` is True for a progress bar, False for none, or a callable
        ``(docs, bytes_read, total_bytes)``.
        """
        kwargs: dict[str, Any] = dict(
            threads=threads,
            heap_mb=heap_mb,
            on_bad_line=on_bad_line,
            overwrite=overwrite,
            merge=merge,
        )
        if callable(progress):
            stats = cls.build_index(corpus, out, progress=progress, **kwargs)
        elif progress:
            size = os.path.getsize(corpus) if os.path.isfile(corpus) else None
            with progress_bar(total=size, unit="B", unit_scale=True, desc="indexing") as bar:

                def report(docs: int, done: int, total: int) -> None:
                    if bar.total != total:
                        bar.total = total
                    bar.update(done - bar.n)
                    bar.set_postfix(passages=docs, refresh=False)

                stats = cls.build_index(corpus, out, progress=report, **kwargs)
        else:
            stats = cls.build_index(corpus, out, **kwargs)
        if stats["skipped_lines"]:
            import logging

            logging.getLogger("asearcher").warning(
                "skipped %d malformed lines of %s", stats["skipped_lines"], corpus
            )
        index = cls(out)
        index.last_build = stats
        return index

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.last_build: dict | None = None


def start_retrieval_server(
    index: LocalSearch | DenseSearch | HybridSearch,
    pages: LocalSearch | DenseSearch | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    default_topk: int = 3,
    micro_batch: int = 0,
) -> RetrievalServerHandle:
    """Starts a Search-R1-compatible retrieval server in the background of this process.

    ``index`` is any search backend; ``/access`` reads pages from ``pages`` (default: the
    index itself when it has pages; a hybrid needs ``pages=``). ``micro_batch`` > 0 merges
    concurrent requests into one search of up to that many queries (one encoder pass and one
    matrix product for a dense index)."""
    return _core.start_retrieval_server(
        index,
        pages=pages,
        host=host,
        port=port,
        default_topk=default_topk,
        micro_batch=micro_batch,
    )


__all__ = [
    "DenseSearch",
    "Document",
    "HybridSearch",
    "LocalSearch",
    "Page",
    "PageReader",
    "ResultCache",
    "RetrievalClient",
    "RetrievalServerHandle",
    "ToolOutput",
    "Toolbox",
    "WebSearch",
    "start_retrieval_server",
]
