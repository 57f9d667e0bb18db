"""Generate a large synthetic corpus (and matching queries) for retrieval benchmarks.

The corpus mimics the statistics BM25 cares about without shipping real text:

* a vocabulary of pronounceable pseudo-words (letters only), shorter words being more frequent;
* word frequencies following a Zipf law (rank ``r`` drawn with probability ~ ``r ** -zipf``);
* passages of 50-150 words with 1-4 word titles; each passage also has a few topic words
  (its title words plus some mid-frequency words) that recur in its text, as real passages do;
* queries of 2-8 words, mostly taken from one random passage, sometimes with common words mixed
  in, so every query has relevant hits.

Each corpus line is ``{"id": "<n>", "contents": "\\"Title\\"\\ntext"}``; the queries file has one
query per line. Sampling is vectorised with numpy and lines are written in chunks, so memory
stays modest and a million passages take well under a minute::

    python benches/gen_corpus.py --passages 1000000 --out bench-out/corpus.jsonl \\
        --queries 2000 --queries-out bench-out/queries.txt --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

# fmt: off
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
          "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sk", "sl", "st", "th", "tr"]
# fmt: on
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "ie"]
CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "k", "nd", "rt", "st", "ng", "sh"]
# Pseudo-words must not collide with the stopword lists both retrievers drop.
# fmt: off
STOPWORDS = {
    "and", "are", "but", "for", "into", "not", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "was", "will", "with", "she", "our", "your", "his", "her", "him",
    "has", "had", "have", "been", "were", "which", "who", "what", "too", "off", "out", "own",
}
# fmt: on

TOPIC_WORDS = 4  # extra topic words per passage, besides its title words
TOPIC_RATE = 0.12  # share of text tokens replaced by one of the passage's topic words
COMMON_RANKS = 200  # ranks treated as "common words"; titles and topics avoid them


def make_vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    """`size` distinct pseudo-words, ordered so that shorter words get the frequent ranks."""
    words: dict[str, None] = {}
    while len(words) < size:
        for word in random_words(rng, size):
            if len(word) >= 3 and word not in STOPWORDS:
                words.setdefault(word)
    vocab = list(words)[:size]
    order = np.argsort([len(w) for w in vocab], kind="stable")
    return np.array(vocab, dtype=object)[order]


def random_words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` words of 1-4 onset+vowel syllables and an optional coda (may repeat)."""
    onsets = np.array(ONSETS, dtype=object)[rng.integers(0, len(ONSETS), (n, 4))]
    vowels = np.array(VOWELS, dtype=object)[rng.integers(0, len(VOWELS), (n, 4))]
    syllables = onsets + vowels
    syllables[np.arange(4) >= rng.integers(1, 5, (n, 1))] = ""
    codas = np.array(CODAS, dtype=object)[rng.integers(0, len(CODAS), n)]
    return (syllables.sum(axis=1) + codas).tolist()


def zipf_cdf(size: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def sample_ranks(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(ranks, len(cdf) - 1).astype(np.int32)


class Chunk:
    """Word ids of a run of passages: titles, texts and per-passage topic words."""

    def __init__(self, rng: np.random.Generator, cdf: np.ndarray, n: int):
        vocab_size = len(cdf)
        self.title_len = rng.integers(1, 5, n)
        self.text_len = rng.integers(50, 151, n)
        self.titles = rng.integers(COMMON_RANKS, vocab_size, (n, 4), dtype=np.int32)
        extra = rng.integers(COMMON_RANKS, vocab_size, (n, TOPIC_WORDS), dtype=np.int32)
        self.topics = np.concatenate([self.titles, extra], axis=1)
        self.text_start = np.concatenate([[0], np.cumsum(self.text_len)])
        self.text = sample_ranks(rng, cdf, int(self.text_start[-1]))
        self._mix_in_topics(rng)

    def _mix_in_topics(self, rng: np.random.Generator) -> None:
        owner = np.repeat(np.arange(len(self.text_len)), self.text_len)
        topical = np.flatnonzero(rng.random(len(self.text)) < TOPIC_RATE)
        # Title words sit in columns [0, title_len); extra topic words in columns 4 and up.
        column = rng.integers(0, 4 + TOPIC_WORDS, len(topical))
        valid = (column >= 4) | (column < self.title_len[owner[topical]])
        topical, column = topical[valid], column[valid]
        self.text[topical] = self.topics[owner[topical], column]

    def passage_words(self, i: int) -> np.ndarray:
        return self.text[self.text_start[i] : self.text_start[i + 1]]


def render_lines(chunk: Chunk, vocab: np.ndarray, first_id: int) -> str:
    """JSON lines for a chunk; words are plain letters, so no escaping is needed."""
    words = vocab[chunk.text].tolist()
    starts = chunk.text_start.tolist()
    title_len = chunk.title_len.tolist()
    titles = vocab[chunk.titles].tolist()
    lines = []
    for i in range(len(title_len)):
        title = " ".join(titles[i][: title_len[i]]).title()
        text = " ".join(words[starts[i] : starts[i + 1]])
        lines.append(f'{{"id": "{first_id + i}", "contents": "\\"{title}\\"\\n{text}"}}\n')
    return "".join(lines)


def make_query(rng: np.random.Generator, words: np.ndarray, vocab: np.ndarray) -> str:
    """2-8 words: mostly distinct non-common words of one passage, plus maybe common ones."""
    length = int(rng.integers(2, 9))
    candidates = np.unique(words[words >= COMMON_RANKS])
    n_common = int(rng.binomial(length - 1, 0.2))
    picked = rng.choice(candidates, min(length - n_common, len(candidates)), replace=False)
    common = rng.integers(0, COMMON_RANKS, n_common)
    query = np.concatenate([picked, common])
    rng.shuffle(query)
    return " ".join(vocab[query].tolist())


def generate(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    vocab = make_vocab(rng, args.vocab_size)
    cdf = zipf_cdf(len(vocab), args.zipf)
    n_queries = args.queries if args.queries_out else 0
    query_docs = np.sort(rng.integers(0, args.passages, n_queries))
    queries: list[str] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="ascii", newline="\n") as out:
        for first in range(0, args.passages, args.chunk):
            n = min(args.chunk, args.passages - first)
            chunk = Chunk(rng, cdf, n)
            out.write(render_lines(chunk, vocab, first))
            queries += chunk_queries(rng, chunk, vocab, query_docs, first)
            log_progress(first + n, args.passages, started)
    write_queries(rng, queries, args.queries_out)


def chunk_queries(
    rng: np.random.Generator, chunk: Chunk, vocab: np.ndarray, query_docs: np.ndarray, first: int
) -> list[str]:
    lo, hi = np.searchsorted(query_docs, [first, first + len(chunk.text_len)])
    return [make_query(rng, chunk.passage_words(d - first), vocab) for d in query_docs[lo:hi]]


def write_queries(rng: np.random.Generator, queries: list[str], path: Path | None) -> None:
    """Writes queries shuffled (they were collected in passage order), one per line."""
    if path is None or not queries:
        return
    order = rng.permutation(len(queries))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(queries[i] + "\n" for i in order), encoding="ascii")


def log_progress(done: int, total: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    print(f"\r{done:,}/{total:,} passages, {elapsed:.1f} s", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/corpus.jsonl"))
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--queries-out", type=Path, default=None, help="skip queries if unset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=100_000)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of word ranks")
    parser.add_argument("--chunk", type=int, default=50_000, help="passages generated at once")
    return parser.parse_args()


if __name__ == "__main__":
    generate(parse_args())
