"""Bundled sample data: a small made-up encyclopedia and questions about it.

``sample_corpus.jsonl`` holds about 2,900 passages (``{"id", "contents", "url"}``, with
``contents`` in the Search-R1 ``"Title"\\ntext`` shape) about ~600 invented people, places,
companies and works; ``sample_questions.jsonl`` holds 60 one- and two-hop questions about them
(``{"question", "answer", "hops", "supporting_ids"}``); ``sample_tokenizer/`` is a
2,048-token byte-level BPE tokenizer with a ChatML template, trained on them
(``scripts/make_sample_tokenizer.py``). The corpus and questions are generated deterministically
by ``scripts/make_sample_corpus.py``; everything in them is fictional.

The files ship inside the package, so ``importlib.resources.files("asearcher.data")`` finds them
too; the helpers below return plain filesystem paths for APIs that want one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_corpus_path", "sample_questions_path", "sample_tokenizer_path"]

_DATA_DIR = Path(__file__).resolve().parent


def sample_corpus_path() -> Path:
    """Path of ``sample_corpus.jsonl``, the bundled fictional encyclopedia (one passage a line)."""
    return _DATA_DIR / "sample_corpus.jsonl"


def sample_questions_path() -> Path:
    """Path of ``sample_questions.jsonl``, questions answerable from the sample corpus."""
    return _DATA_DIR / "sample_questions.jsonl"


def sample_tokenizer_path() -> Path:
    """Directory of the bundled ChatML tokenizer (``tokenizer.json``, ``tokenizer_config.json``)."""
    return _DATA_DIR / "sample_tokenizer"
