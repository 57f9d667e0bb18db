"""Tiny Qwen-family checkpoints and tokenizers made by the tests themselves (random weights, HF
layout), so model, generator and server tests need no download.

``make_tiny_qwen(dir, ...)`` writes config.json + safetensors (sharded on request) with
transformers, plus a byte-level BPE tokenizer trained on the sample corpus and a ChatML chat
template of ours. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from asearcher.data import sample_corpus_path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    with open(sample_corpus_path(), encoding="utf-8") as f:
        texts = [json.loads(line)["contents"] for line in f]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def write_tokenizer(directory: str | Path, vocab_size: int = 512) -> int:
    """Writes tokenizer.json and tokenizer_config.json; returns the vocabulary size."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = _tokenizer_json(vocab_size)
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return Tokenizer.from_str(text).get_vocab_size(with_added_tokens=True)


def make_tiny_qwen(
    directory: str | Path,
    variant: str = "qwen2",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    rope_scaling: dict | None = None,
    vocab_size: int | None = None,
    init_std: float = 0.2,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    with_tokenizer: bool = True,
    seed: int = 0,
) -> Path:
    """Writes a randomly initialised Qwen2 (``variant="qwen2"``) or Qwen3 (``"qwen3"``) checkpoint.

    ``init_std`` is larger than HF's default so logits are far from uniform and comparisons are
    sensitive. Without ``vocab_size``, the model's vocabulary is the tokenizer's.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        tok_vocab = write_tokenizer(directory)
        vocab_size = vocab_size or tok_vocab
    vocab_size = vocab_size or 512
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling:
        rope = {**rope_scaling, "rope_theta": rope_theta}
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters=rope,
        max_position_embeddings=4096,
        initializer_range=init_std,
        eos_token_id=2 if with_tokenizer else None,
        pad_token_id=0 if with_tokenizer else None,
    )
    if variant == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif variant == "qwen3":
        config = Qwen3Config(**common, head_dim=head_dim or hidden_size // heads)
        cls = Qwen3ForCausalLM
    else:
        raise ValueError(f"unknown variant {variant!r} (qwen2, qwen3)")
    torch.manual_seed(seed)
    model = cls(config).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # RMSNorm weights away from 1 so a missing one shows
            elif name.endswith(".bias"):
                p.normal_(0.0, init_std)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return directory


def make_tiny_bert(
    directory: Path, seed: int, hidden_size: int = 32, layers: int = 2, heads: int = 4
) -> Path:
    """A random tiny BERT encoder written by transformers (hidden 32, 2 layers by default) with
    a WordPiece tokenizer trained on the sample corpus, in HF layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials)
    from asearcher.data import sample_corpus_path

    texts = sample_corpus_path().read_text(encoding="utf-8").splitlines()
    tok.train_from_iterator([*texts, "query passage who founded the works 北京"], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    return directory
