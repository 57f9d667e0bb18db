"""Train the small byte-level BPE tokenizer that ships with asearcher (``asearcher.data``).

It is trained on the bundled sample corpus and questions, has the ChatML special tokens and a
ChatML chat template, so agents, the scripted policy server and the benchmarks can work in token
space without downloading a model. Deterministic: the same corpus gives the same files::

    python scripts/make_sample_tokenizer.py [--out-dir python/asearcher/data/sample_tokenizer]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Text the agents' prompts and the tag protocol use often, so it is seen in training.
PROTOCOL_TEXT = (
    "<think> </think> <search> </search> <access> </access> <answer> </answer> "
    "<information> </information> >>>> Page 1 >>>> [Doc 1](https://tinywiki.example/wiki/X):\n"
    "Answer the given question. You must conduct reasoning inside <think> and </think> first. "
    "Question: No search results are found. No More Information is Found for this URL."
)


def texts(data_dir: Path) -> list[str]:
    out = [PROTOCOL_TEXT] * 50
    with open(data_dir / "sample_corpus.jsonl", encoding="utf-8") as f:
        out += [json.loads(line)["contents"] for line in f]
    with open(data_dir / "sample_questions.jsonl", encoding="utf-8") as f:
        out += [json.loads(line)["question"] for line in f]
    return out


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    data_dir = Path(__file__).resolve().parent.parent / "python" / "asearcher" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=data_dir / "sample_tokenizer")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(data_dir), trainer=trainer)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 32768,
    }
    (args.out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
    print(f"wrote {args.out_dir} (vocab {tok.get_vocab_size(with_added_tokens=True)})")


if __name__ == "__main__":
    main()
