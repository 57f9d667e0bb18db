"""The world's tokenizer: a word-level vocabulary over every word the agent can meet (corpus,
questions, prompts, observation framing), lowercased, with the chat and agent tags as added tokens
that decode verbatim. Every entity name is one token. Written as tokenizer.json directly (no
training), with a ChatML tokenizer_config.json and generation_config.json.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
UNK = "<unk>"
#: Agent tags (search_r1 needs search / answer / information; think and access for completeness).
TAG_TOKENS = [
    f"<{slash}{tag}>"
    for tag in ("search", "answer", "information", "think", "access")
    for slash in ("", "/")
]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Texts the agent machinery may put into a context (roles, observation framing, protocol
#: messages), so their words are in the vocabulary too.
FRAMING_TEXTS = [
    "system user assistant",
    "No search results are found.",
    "1. (Title: x) text",
    "No valid action found: no action tag was found. Use exactly one of <search> ... </search>, "
    "<answer> ... </answer>. was not closed was empty is not available no valid action was found",
    "The search failed: error",
]

_WORD = re.compile(r"[a-z]+")


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The ordinary tokens: letters, digits, ASCII punctuation, then every lowercase word of
    ``texts`` (tags removed), in first-seen order."""
    words: dict[str, None] = {}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        words[ch] = None
    for text in list(texts) + FRAMING_TEXTS:
        for tag in TAG_TOKENS + SPECIAL_TOKENS:
            text = text.replace(tag, " ")
        for word in _WORD.findall(text.lower()):
            words[word] = None
    return list(words)


def tokenizer_json(texts: Iterable[str]) -> dict:
    """The tokenizer.json document: ids 0-2 the chat specials, then the tags, ``<unk>``, words."""
    added = SPECIAL_TOKENS + TAG_TOKENS
    vocab = {tok: i for i, tok in enumerate([*added, UNK])}
    for word in vocabulary(texts):
        vocab.setdefault(word, len(vocab))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": tok in SPECIAL_TOKENS,
            }
            for i, tok in enumerate(added)
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {"type": "Punctuation", "behavior": "Isolated"},
                {"type": "Digits", "individual_digits": True},
            ],
        },
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    }


def write_tokenizer(directory: str | Path, texts: Iterable[str]) -> int:
    """Writes tokenizer.json, tokenizer_config.json and generation_config.json; returns the
    vocabulary size (added tokens included)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = tokenizer_json(texts)
    (directory / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": UNK,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 1024,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    generation = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    (directory / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    return len(doc["model"]["vocab"])
