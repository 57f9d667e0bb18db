"""Runs over a built tinyworld with the real engine: demonstrations for the warm start
(``make_demonstrations``: the demonstrator served over /generate, the rollout engine, saved
trajectories; ``make_reading_drills``: the same on the world's counterfactual twin; and
``make_name_drills``) and accuracy on held-out or train questions (``heldout_accuracy``:
``evaluate`` with a model directory, a served policy's URL, or any backend).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import BuiltWorld, agent_config, build_counterfactual
from .demonstrator import Demonstrator, Imperfections


@dataclass(frozen=True)
class DemonstrationStats:
    """What ``make_demonstrations`` saved: trajectory count, mean F1 / EM of their answers, the
    share that searched at least once, and the file."""

    trajectories: int
    f1: float
    em: float
    searched: float
    path: Path


def make_demonstrations(
    world: BuiltWorld,
    n_per_question: int,
    out_path: str | os.PathLike[str],
    seed: int = 0,
    imperfections: Imperfections | None = None,
    max_questions: int | None = None,
) -> DemonstrationStats:
    """Runs the demonstrator through ``asearcher.RolloutEngine`` on the world's train questions
    (``n_per_question`` trajectories each, the tinyworld agent and toolbox) and saves the
    trajectories to ``out_path`` (replaced)."""
    import asearcher

    if n_per_question < 1:
        raise ValueError(f"n_per_question: {n_per_question} must be at least 1")
    questions = world.world.train[:max_questions] if max_questions else world.world.train
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    trajectories: list[asearcher.Trajectory] = []
    with Demonstrator(world.world, world.tokenizer, imperfections, seed) as demo:
        pool = asearcher.InferencePool([demo.url])
        engine = asearcher.RolloutEngine(
            [_rollout_question(q) for q in questions],
            pool,
            asearcher.Tokenizer(world.tokenizer),
            toolbox=world.toolbox(),
            agent=agent_config(world.world.size, variant=world.world.variant),
            config={
                "group_size": n_per_question,
                "batch_size": 16,
                "max_staleness": None,
                "max_concurrent": 16 * n_per_question,
            },
            reward={"metric": "f1"},
        )
        with engine:
            while (batch := engine.next_batch(16)) is not None:
                trajectories.extend(t for g in batch for t in g.trajectories)
    # Saved in question order, then sample order: the file (and so the warm start that reads
    # it) does not depend on which trajectory happened to finish first.
    order = {q["id"]: i for i, q in enumerate(questions)}
    trajectories.sort(key=lambda t: (order[t.question_id], t.sample))
    asearcher.save_trajectories(out, trajectories, append=False)
    n = max(1, len(trajectories))
    return DemonstrationStats(
        trajectories=len(trajectories),
        f1=sum(t.rewards["f1"] for t in trajectories) / n,
        em=sum(t.rewards["em"] for t in trajectories) / n,
        searched=sum(t.tool_calls > 0 for t in trajectories) / n,
        path=out,
    )


def make_reading_drills(
    world: BuiltWorld,
    out_path: str | os.PathLike[str],
    n_per_question: int = 1,
    seed: int = 1,
    imperfections: Imperfections | None = None,
) -> DemonstrationStats:
    """Warm-start data that makes reading the observation the only way to answer: the perfect
    demonstrator on the world's counterfactual twin (``World.counterfactual(seed)``: the same
    names and questions, every fact redrawn, its own corpus and index). Memorised facts of the
    real world give the wrong answer there, so a model trained on both learns to copy the
    answer from what its search returned; no fact of the real world is taught. The expert is
    perfect unless ``imperfections`` are given (the job gives the demonstrations' own, so the
    drills teach reading without teaching a better policy than the demonstrations show).

    Why (measured, docs/tinyworld.md): without them, one warm start in ten searched correctly but
    answered a memorised train fact instead of the one in the observation (held-out F1 0.32)."""
    twin = build_counterfactual(world, seed)
    expert = imperfections or Imperfections(guess_rate=0.0, early_stop_rate=0.0)
    return make_demonstrations(twin, n_per_question, out_path, seed=seed, imperfections=expert)


def _rollout_question(q: dict) -> dict:
    return {"id": q["id"], "question": q["question"], "answer": q["answer"]}


def heldout_accuracy(
    model: str | os.PathLike[str] | Any,
    world: BuiltWorld,
    *,
    split: str = "heldout",
    k: int = 1,
    temperature: float = 0.0,
    max_questions: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Avg F1 / EM (over ``k`` samples per question) of a policy on the world's ``heldout`` or
    ``train`` questions with the tinyworld agent and toolbox. ``model``: a model directory (run
    by an embedded ``asearcher.Generator``), an ``http://`` URL of an SGLang-compatible server
    (e.g. a ``Demonstrator``), or a backend ``evaluate`` takes. Greedy by default; ``seed``
    makes a sampled run repeat. Trajectories are kept in ``output_dir`` when given (a later call
    there runs only what is missing). Returns Avg@k ``f1`` / ``em``, Pass@k ``pass_f1``,
    ``questions``, ``mean_turns``, ``by_hops`` ({hops: {"f1", "pass_f1", "questions"}}) and the
    ``report``."""
    import asearcher

    if split not in ("heldout", "train"):
        raise ValueError(f"split: {split!r} is not 'heldout' or 'train'")
    data_dir = world.data_dir if split == "heldout" else _train_layout(world)
    agent = agent_config(world.world.size, temperature=temperature, variant=world.world.variant)
    backend, close = _backend(model)
    try:
        with tempfile.TemporaryDirectory(prefix="tinyworld-eval-") as scratch:
            report = asearcher.evaluate(
                data_dir,
                backend,
                asearcher.Tokenizer(world.tokenizer),
                benchmarks=[split],
                toolbox=world.toolbox(),
                k=k,
                output_dir=output_dir or scratch,
                agent=agent,
                rollout={"max_concurrent": 32},
                max_questions=max_questions,
                seed=seed,
                progress=False,
            )
            by_hops = _by_hops(world, split, Path(output_dir or scratch) / split)
    finally:
        close()
    bench = report[split]
    return {
        "f1": bench["metrics"]["f1"]["avg_at_k"],
        "em": bench["metrics"]["em"]["avg_at_k"],
        "pass_f1": bench["metrics"]["f1"]["pass_at_k"],
        "questions": bench["questions"],
        "mean_turns": bench["mean_turns"],
        "by_hops": by_hops,
        "report": report,
    }


def _by_hops(world: BuiltWorld, split: str, results: Path) -> dict[int, dict[str, float]]:
    """Avg@k and Pass@k of F1, and the question count, for each number of hops."""
    import asearcher

    questions = world.world.heldout if split == "heldout" else world.world.train
    hops = {q["id"]: len(q["chain"]) for q in questions}
    scores: dict[str, list[float]] = {}
    for t in asearcher.load_trajectories(results / "trajectories.jsonl"):
        scores.setdefault(t.question_id, []).append(t.rewards.get("f1") or 0.0)
    out: dict[int, dict[str, float]] = {}
    for n in sorted(set(hops[q] for q in scores)):
        runs = [v for q, v in scores.items() if hops[q] == n]
        out[n] = {
            "f1": sum(sum(v) / len(v) for v in runs) / len(runs),
            "pass_f1": sum(max(v) for v in runs) / len(runs),
            "questions": len(runs),
        }
    return out


def _backend(model: Any) -> tuple[Any, Any]:
    import asearcher

    if isinstance(model, str) and model.startswith(("http://", "https://")):
        return asearcher.InferencePool([model]), lambda: None
    if isinstance(model, (str, os.PathLike)):
        gen = asearcher.Generator(model, max_running=32)
        return gen, gen.close
    return model, lambda: None


def _train_layout(world: BuiltWorld) -> Path:
    """``{root}/eval-train/train/test.jsonl``: the train questions in the evaluation layout."""
    data_dir = world.root / "eval-train"
    world.world.write_questions(data_dir / "train" / "test.jsonl", world.world.train)
    return data_dir


def make_name_drills(world: BuiltWorld, out_path: str | os.PathLike[str], repeats: int = 2) -> Path:
    """Warm-start data that teaches a tiny model to emit and copy every name, without teaching
    any fact: each corpus passage is read as context, and the loss is only on the *repeated
    mentions of the passage's own subject* (its second, third... occurrence, which can only be
    predicted by copying it from earlier in the passage). Facts (the objects of relations) are
    never targets, so held-out answers still need a search. Written as trajectories (one
    one-token "turn" per repeated mention) for :func:`asearcher.warm_start`; returns the path.

    Why: a tiny model with tied embeddings cannot copy a name it has never produced (measured
    in docs/tinyworld.md: held-out subjects never emitted in the demonstrations were never put
    into a query)."""
    import asearcher

    tok = asearcher.Tokenizer(world.tokenizer)
    bos = tok.encode("<|im_start|>", False)
    lines = []
    with open(world.corpus, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    for n, doc in enumerate(docs):
        turns = _drill_turns(tok, bos, doc["contents"])
        if turns:
            lines.append(json.dumps(_drill_trajectory(f"names-{n}", turns)))
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines * repeats), encoding="utf-8")
    return path


def _drill_turns(tok: Any, bos: list[int], contents: str) -> list[dict]:
    title = contents.split("\n", 1)[0].strip('"')
    ids = tok.encode(contents.replace('"', ""), False)
    name_id = tok.encode(title, False)[0]
    turns: list[dict] = []
    context, start = list(bos), 0
    for i, t in enumerate(ids):
        if t != name_id or i == 0:
            continue
        new = ids[start:i]
        turns.append(
            {
                "role": "drill",
                "prompt_prefix_len": len(context) if turns else 0,
                "prompt_ids": new if turns else bos + new,
                "output_ids": [t],
                "output_logprobs": [0.0],
                "output_versions": [0],
                "output_text": title.lower(),
                "finish": "stop",
                "action": None,
                "issues": [],
                "tool": None,
                "server": None,
                "resends": 0,
                "gen_latency_ms": 0.0,
            }
        )
        context = context + new + [t]
        start = i + 1
    return turns


def _drill_trajectory(ident: str, turns: list[dict]) -> dict:
    return {
        "id": ident,
        "question_id": ident,
        "sample": 0,
        "question": "",
        "answers": [],
        "agent": "name_drill",
        "turns": turns,
        "answer": None,
        "stop_reason": "answered",
        "rewards": {},
        "reward": None,
        "errors": [],
        "started_at": 0.0,
        "elapsed_s": 0.0,
        "metadata": {},
    }
