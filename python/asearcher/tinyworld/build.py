"""Writing a tinyworld to disk: corpus, BM25 index, questions (train and held-out), tokenizer and
a random tiny Qwen2 (``build``), and the agent and tool settings every tinyworld run shares
(``agent_config``, ``toolbox``, ``model_config``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tokenizer import SPECIAL_TOKENS, write_tokenizer
from .world import VARIANTS, World

#: Documents per search shown to the agent (short observations, short contexts).
TOP_K = 2

#: The agent's only prompt: short, so contexts stay ~100-400 tokens.
PROMPT = (
    "Answer the question. To search, write <search> query </search>; results come back in "
    "<information> and </information>. Search once per fact. When you know it, write "
    "<answer> name </answer>.\nQuestion: {{ question }}"
)


def agent_config(
    size: str = "default", temperature: float = 1.0, variant: str = "standard"
) -> dict[str, Any]:
    """The tinyworld agent: search_r1 (search + answer) with the short prompt, enough turns for
    the longest chain plus the answer and one spare (3 hops: 5 turns; the long-tail variant's 8
    hops: 10), and short turns."""
    if size not in ("small", "default"):
        raise ValueError(f"size: unknown world size {size!r}; valid: ['default', 'small']")
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown world variant {variant!r}; valid: {sorted(VARIANTS)}")
    longest = max(len(k.chain) for k in VARIANTS[variant])
    return {
        "kind": "search_r1",
        "prompts": {"prompt": PROMPT},
        "max_turns": longest + 2,
        "max_generation_failures": 2,
        "context_budget": 1024,
        "min_new_tokens": 4,
        "sampling": {"temperature": temperature, "top_p": 1.0, "top_k": -1, "max_new_tokens": 12},
    }


def model_config(vocab_size: int) -> dict[str, Any]:
    """A tiny Qwen2 for a world's vocabulary (~0.5M parameters with the default world). Two
    layers: enough for the copy circuits the task needs, and on a CPU they learn them in far
    fewer steps than four (measured: train F1 0.58 vs 0.04 after the same warm start)."""
    ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "torch_dtype": "float32",
    }


@dataclass(frozen=True)
class BuiltWorld:
    """Where ``build`` put everything, and the world itself."""

    world: World = field(repr=False)
    root: Path
    corpus: Path
    index: Path
    train: Path
    heldout: Path
    tokenizer: Path
    model_init: Path

    @property
    def data_dir(self) -> Path:
        """The evaluation layout root: ``{data_dir}/heldout/test.jsonl``."""
        return self.root

    def toolbox(self) -> Any:
        """A toolbox over the world's index with the tinyworld observation size."""
        return toolbox(self.index)


def toolbox(index: str | Path) -> Any:
    from asearcher.tools import LocalSearch, Toolbox

    return Toolbox(LocalSearch(index), top_k=TOP_K)


def build(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "default",
    model_seed: int | None = None,
    variant: str = "standard",
) -> BuiltWorld:
    """Generates the world of ``seed`` (``variant`` ``"longtail"``: with rare 4- to 8-hop
    questions) and writes corpus.jsonl, index/, train.jsonl, heldout/test.jsonl, tokenizer/ and
    model-init/ (random weights, seed ``model_seed`` or ``seed``) under ``out_dir``. Existing
    files there are replaced."""
    from asearcher import QwenModel

    world = World.generate(seed, size, variant=variant)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    built = _write_searchable(world, root, root / "tokenizer", root / "model-init")
    vocab_size = write_tokenizer(built.tokenizer, [*world.texts(), PROMPT])
    if built.model_init.exists():
        shutil.rmtree(built.model_init)
    QwenModel.init_random(
        built.model_init, model_config(vocab_size), seed=seed if model_seed is None else model_seed
    )
    for f in built.tokenizer.iterdir():
        shutil.copy(f, built.model_init / f.name)
    (root / "world.json").write_text(
        json.dumps({"seed": seed, "size": size, "variant": variant}), encoding="utf-8"
    )
    return built


def build_counterfactual(world: BuiltWorld, seed: int = 1) -> BuiltWorld:
    """The counterfactual twin of a built world (``World.counterfactual``): its corpus, index and
    questions under ``{root}/counterfactual-{seed}``, sharing the tokenizer and model."""
    cf = world.world.counterfactual(seed)
    root = world.root / f"counterfactual-{seed}"
    return _write_searchable(cf, root, world.tokenizer, world.model_init)


def _write_searchable(world: World, root: Path, tokenizer: Path, model_init: Path) -> BuiltWorld:
    """Writes ``world``'s corpus, train and held-out questions and BM25 index under ``root``."""
    from asearcher.tools import LocalSearch

    built = BuiltWorld(
        world=world,
        root=root,
        corpus=root / "corpus.jsonl",
        index=root / "index",
        train=root / "train.jsonl",
        heldout=root / "heldout" / "test.jsonl",
        tokenizer=tokenizer,
        model_init=model_init,
    )
    world.write_corpus(built.corpus)
    world.write_questions(built.train, world.train)
    world.write_questions(built.heldout, world.heldout)
    LocalSearch.build(built.corpus, built.index, threads=1, overwrite=True, progress=False)
    return built
