"""tinyworld: the synthetic world (determinism, the split by entity, BM25 findability), its
tokenizer (one token per entity, tags kept), the tiny model, the demonstrator over real HTTP
through the real rollout engine, and held-out accuracy of a random model and of the demonstrator.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import asearcher
import pytest
from asearcher.tinyworld import (
    RELATIONS,
    TOP_K,
    BuiltWorld,
    Demonstrator,
    Imperfections,
    World,
    agent_config,
    build,
    heldout_accuracy,
    make_demonstrations,
)
from asearcher.tools import LocalSearch


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltWorld:
    return build(tmp_path_factory.mktemp("tinyworld"), seed=0, size="small")


@pytest.fixture(scope="module")
def tok(built: BuiltWorld) -> asearcher.Tokenizer:
    return asearcher.Tokenizer(built.tokenizer)


def _files(root: Path) -> dict[str, bytes]:
    names = ["corpus.jsonl", "train.jsonl", "heldout/test.jsonl", "tokenizer/tokenizer.json"]
    names += ["model-init/config.json", "model-init/model.safetensors"]
    return {n: (root / n).read_bytes() for n in names}


def test_build_is_deterministic_for_a_seed(built: BuiltWorld, tmp_path: Path):
    again = build(tmp_path / "again", seed=0, size="small")
    assert _files(again.root) == _files(built.root)
    other = World.generate(seed=1, size="small")
    assert other.types != built.world.types


def test_sizes_and_bad_input():
    small, default = World.generate(0, "small"), World.generate(0, "default")
    assert 40 <= len(small.types) < len(default.types)
    assert 200 <= len(default.types) <= 400
    with pytest.raises(ValueError, match="size: unknown world size 'huge'"):
        World.generate(0, "huge")
    with pytest.raises(ValueError, match="heldout_fraction"):
        World.generate(0, "small", heldout_fraction=1.5)
    with pytest.raises(ValueError, match="size"):
        agent_config("huge")


def test_questions_are_in_the_rollout_format(built: BuiltWorld):
    lines = built.heldout.read_text().splitlines()
    assert len(lines) == len(built.world.heldout) > 0
    for q in map(json.loads, lines):
        assert q["question"].endswith("?") and q["subject"] in q["question"]
        assert q["answer"] == [q["path"][-1]]
        assert built.world.follow(q["subject"], tuple(q["chain"])) == q["path"]
    hops = {len(q["chain"]) for q in built.world.heldout}
    assert hops == {1, 2, 3}


def test_split_by_entity_keeps_heldout_subjects_out_of_train(built: BuiltWorld):
    world = built.world
    heldout_subjects = {q["subject"] for q in world.heldout}
    assert heldout_subjects == set(world.heldout_subjects)
    for q in world.train:
        assert not heldout_subjects.intersection(q["path"][:-1]), q["id"]
    assert len(world.train) > 2 * len(world.heldout)
    # Guessing without search: at best about one in #countries for country questions.
    assert 0.0 < world.majority_baseline() < 0.3
    assert World.generate(0, "default").majority_baseline() < 0.12


def test_every_hop_is_found_by_its_expert_query(built: BuiltWorld):
    index = LocalSearch(built.index)
    for q in built.world.all_questions():
        for i, rel in enumerate(q["chain"]):
            entity, nxt = q["path"][i], q["path"][i + 1]
            docs = index.search(f"{entity} {RELATIONS[rel].query}", k=TOP_K)
            hits = [d.contents for d in docs if d.contents.startswith(f'"{entity}"\n')]
            assert hits, f"{q['id']} hop {i}: no passage of {entity} in the top {TOP_K}"
            assert nxt in hits[0].split("\n", 1)[1]


def test_every_entity_name_is_one_known_token(built: BuiltWorld, tok: asearcher.Tokenizer):
    unk = tok.token_to_id("<unk>")
    for name in built.world.types:
        ids = tok.encode(name, False)
        assert len(ids) == 1 and ids[0] != unk, name
        assert tok.encode(name.lower(), False) == ids


def test_tokenizer_round_trip_keeps_tags_and_words(tok: asearcher.Tokenizer, built: BuiltWorld):
    name = next(iter(built.world.types)).lower()
    text = (
        f"<think> x </think> <search> {name} birthplace </search>\n\n<information>\n"
        f"1. (Title: {name}) </information> <answer> {name} </answer><|im_end|>"
    )
    ids = tok.encode(text, False)
    assert tok.token_to_id("<unk>") not in ids
    for tag in ("<search>", "</search>", "<answer>", "</answer>", "<information>", "<think>"):
        assert tok.token_to_id(tag) in ids
    decoded = tok.decode(ids, False)
    assert f"<search> {name} birthplace </search>" in decoded
    assert decoded.endswith(f"<answer> {name} </answer> <|im_end|>")
    assert tok.encode("zzqqx", False) == [tok.token_to_id("<unk>")]
    assert tok.eos_token_ids == [tok.token_to_id("<|im_end|>")]


def test_model_init_matches_the_tokenizer(built: BuiltWorld, tok: asearcher.Tokenizer):
    model = asearcher.QwenModel.load(built.model_init)
    assert model.config["vocab_size"] == tok.vocab_size
    assert model.config["eos_token_id"] == tok.token_to_id("<|im_end|>")
    assert model.config["tie_word_embeddings"] is True


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_demonstrator_speaks_sglang_generate(built: BuiltWorld, tok: asearcher.Tokenizer):
    q = next(q for q in built.world.train if len(q["chain"]) == 2)
    prompt = agent_config()["prompts"]["prompt"].replace("{{ question }}", q["question"])
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    perfect = Imperfections(guess_rate=0.0, early_stop_rate=0.0)
    with Demonstrator(built.world, built.tokenizer, perfect) as demo:
        status, out = _post(demo.url + "/generate", {"input_ids": ids, "rid": "q#0-0"})
        assert status == 200
        text = tok.decode(out["output_ids"], False)
        assert text == f"<search> {q['subject'].lower()} {RELATIONS[q['chain'][0]].query} </search>"
        meta = out["meta_info"]
        assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"]
        assert meta["finish_reason"]["type"] == "stop"
        status, out = _post(
            demo.url + "/generate",
            {"input_ids": ids, "rid": "q#0-0", "sampling_params": {"max_new_tokens": 2}},
        )
        assert len(out["output_ids"]) == 2 and out["meta_info"]["finish_reason"]["type"] == "length"
        status, out = _post(demo.url + "/generate", {"input_ids": []})
        assert status == 400 and "input_ids" in out["error"]
        other = tok.encode("question : who is nobody ? <|im_end|>", False)
        status, out = _post(demo.url + "/generate", {"input_ids": other})
        assert status == 400 and "no question" in out["error"]


def test_perfect_demonstrations_answer_everything(built: BuiltWorld, tmp_path: Path):
    perfect = Imperfections(guess_rate=0.0, early_stop_rate=0.0)
    stats = make_demonstrations(built, 1, tmp_path / "d.jsonl", imperfections=perfect)
    assert stats.trajectories == len(built.world.train)
    assert stats.f1 == 1.0 and stats.searched == 1.0
    for t in asearcher.load_trajectories(stats.path):
        q = next(q for q in built.world.train if q["id"] == t.question_id)
        assert t.tool_calls == len(q["chain"]) and t.num_turns == len(q["chain"]) + 1


def test_imperfect_demonstrations_and_their_loss_masks(
    built: BuiltWorld, tok: asearcher.Tokenizer, tmp_path: Path
):
    stats = make_demonstrations(built, 4, tmp_path / "d.jsonl", seed=0)
    assert stats.trajectories == 4 * len(built.world.train)
    # 40% guess without searching, 15% of multi-hop chains stop at a bridge: ~0.55 correct.
    assert 0.4 < stats.f1 < 0.7
    assert 0.45 < stats.searched < 0.75
    trajs = asearcher.load_trajectories(stats.path)
    assert len({t.answer for t in trajs if t.reward == 0.0}) > 5
    for t in trajs[:40]:
        (seq,) = t.sequences()
        generated = [i for i, m in zip(seq["input_ids"], seq["loss_mask"], strict=True) if m]
        outputs = [i for turn in t.turns for i in turn["output_ids"]]
        assert generated == outputs
        text = tok.decode(generated, False)
        assert text.count("<search>") == t.tool_calls and text.endswith("</answer>")
        assert len(seq["input_ids"]) < 400


def test_random_model_scores_about_zero_and_the_demonstrator_its_rate(
    built: BuiltWorld, tmp_path: Path
):
    random_model = heldout_accuracy(built.model_init, built, max_questions=12)
    assert random_model["questions"] == 12
    assert random_model["f1"] < 0.05
    perfect = Imperfections(guess_rate=0.0, early_stop_rate=0.0)
    with Demonstrator(built.world, built.tokenizer, perfect) as demo:
        assert heldout_accuracy(demo.url, built, output_dir=tmp_path)["f1"] == 1.0
        saved = asearcher.load_trajectories(tmp_path / "heldout" / "trajectories.jsonl")
        assert len(saved) == len(built.world.heldout)
        train = heldout_accuracy(demo.url, built, split="train", max_questions=20)
        assert train["f1"] == 1.0 and train["questions"] == 20
    with Demonstrator(built.world, built.tokenizer, seed=3) as demo:
        imperfect = heldout_accuracy(demo.url, built, k=4)
    assert 0.3 < imperfect["f1"] < 0.8


def test_heldout_accuracy_names_a_bad_split(built: BuiltWorld):
    with pytest.raises(ValueError, match="split: 'test'"):
        heldout_accuracy(built.model_init, built, split="test")


def _demo_content(path: Path) -> list[tuple]:
    """What a demonstration file teaches (timing, servers and ids of the run left out)."""
    return [
        (t.question_id, t.sample, t.answer, t.reward, [turn["output_ids"] for turn in t.turns])
        for t in asearcher.load_trajectories(path)
    ]


def test_demonstrations_warm_start_and_eval_repeat_for_a_seed(built: BuiltWorld, tmp_path: Path):
    import hashlib

    runs = []
    for name in ("a", "b"):
        demos = make_demonstrations(built, 2, tmp_path / f"{name}.jsonl", seed=4)
        ws = asearcher.warm_start(
            built.model_init,
            demos.path,
            tmp_path / f"ws-{name}",
            epochs=1,
            batch_size=16,
            lr=3e-3,
            seed=4,
            progress=False,
        )
        weights = hashlib.sha256((ws.out_dir / "model.safetensors").read_bytes()).hexdigest()
        acc = heldout_accuracy(ws.out_dir, built, max_questions=8)
        runs.append((_demo_content(demos.path), weights, acc["f1"], acc["em"]))
    assert runs[0][0] and [q for q, *_ in runs[0][0]] == sorted(
        (q for q, *_ in runs[0][0]), key=[q["id"] for q in built.world.train].index
    ), "saved in question order, whatever finished first"
    assert runs[0] == runs[1]
    other = make_demonstrations(built, 2, tmp_path / "c.jsonl", seed=5)
    assert _demo_content(other.path) != runs[0][0]


def test_the_long_tail_variant_adds_rare_questions_of_up_to_8_hops(tmp_path: Path):
    from collections import Counter

    standard = World.generate(2, "default")
    longtail = World.generate(2, "default", variant="longtail")
    assert longtail.types == standard.types and longtail.facts == standard.facts
    assert longtail.heldout_subjects == standard.heldout_subjects
    standard_ids = {q["id"] for q in standard.train}
    assert standard_ids <= {q["id"] for q in longtail.train}
    hops = Counter(len(q["chain"]) for q in longtail.train)
    assert set(hops) == set(range(1, 9))
    long = sum(n for h, n in hops.items() if h >= 4)
    assert 0 < long < 0.2 * sum(hops.values()), hops
    assert hops[8] < hops[4] < hops[1]
    for q in longtail.train:
        assert longtail.follow(q["subject"], tuple(q["chain"])) == q["path"]
        assert len(set(q["path"])) > len(q["chain"]) // 2, "long chains do not circle back"
    assert agent_config(variant="longtail")["max_turns"] == 10
    assert agent_config()["max_turns"] == 5
    with pytest.raises(ValueError, match="variant: unknown world variant 'huge'"):
        World.generate(0, "small", variant="huge")
    with pytest.raises(ValueError, match="variant"):
        agent_config(variant="huge")


def test_perfect_demonstrations_follow_8_hop_chains(tmp_path: Path):
    world = build(tmp_path / "lt", seed=0, size="small", variant="longtail")
    long_ids = [q["id"] for q in world.world.train if len(q["chain"]) >= 6]
    assert long_ids
    perfect = Imperfections(guess_rate=0.0, early_stop_rate=0.0)
    stats = make_demonstrations(world, 1, tmp_path / "d.jsonl", imperfections=perfect)
    assert stats.f1 == 1.0
    by_id = {t.question_id: t for t in asearcher.load_trajectories(stats.path)}
    for qid in long_ids:
        q = next(q for q in world.world.train if q["id"] == qid)
        assert by_id[qid].tool_calls == len(q["chain"]) and by_id[qid].reward == 1.0


def test_the_counterfactual_twin_contradicts_the_world_and_reading_drills_follow_it(
    built: BuiltWorld, tmp_path: Path
):
    from asearcher.tinyworld import make_reading_drills

    world = built.world
    twin = world.counterfactual(1)
    assert twin.types == world.types and twin.heldout_subjects == world.heldout_subjects
    assert twin.facts != world.facts and twin.facts == world.counterfactual(1).facts
    real = {q["id"]: q["answer"] for q in world.train}
    twin_train = {q["id"].removeprefix("cf1-"): q["answer"] for q in twin.train}
    shared = real.keys() & twin_train.keys()
    changed = sum(real[i] != twin_train[i] for i in shared)
    assert len(shared) > 20 and changed > 0.5 * len(shared), (changed, len(shared))
    stats = make_reading_drills(built, tmp_path / "reading.jsonl")
    assert stats.f1 == 1.0 and stats.searched == 1.0
    trajs = asearcher.load_trajectories(stats.path)
    assert all(t.question_id.startswith("cf1-") for t in trajs)
    against_real = [
        t.answer.lower() == real[t.question_id.removeprefix("cf1-")][0].lower()
        for t in trajs
        if t.question_id.removeprefix("cf1-") in real
    ]
    assert sum(against_real) < 0.5 * len(against_real), "their answers are not the world's"


_WARM_START_AFTER = """
import hashlib, sys
import asearcher
from asearcher.tinyworld import build, make_demonstrations
from asearcher.tinyworld.runs import make_name_drills
out, generator_first = sys.argv[1], sys.argv[2] == "1"
w = build(out + "/world", seed=1, size="small")
if generator_first:
    asearcher.Generator(w.model_init, max_running=32).close()
d = make_demonstrations(w, 2, out + "/demos.jsonl", seed=0)
names = make_name_drills(w, out + "/names.jsonl")
ws = asearcher.warm_start(w.model_init, [d.path, names], out + "/ws", epochs=3, batch_size=32,
                          lr=3e-3, warmup_steps=10, micro_batch_tokens=512, progress=False)
print(hashlib.sha256((ws.out_dir / "model.safetensors").read_bytes()).hexdigest())
"""


def test_a_warm_start_does_not_depend_on_what_the_process_allocated_before(tmp_path: Path):
    # Measured: without MKL_CBWR=AUTO,STRICT (set by `import asearcher`) loading a generator first
    # changed the weights (MKL rounds by memory alignment).
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    hashes = [
        subprocess.run(
            [sys.executable, "-c", _WARM_START_AFTER, str(tmp_path / flag), flag],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        for flag in ("0", "1")
    ]
    assert hashes[0] == hashes[1]


def test_the_job_shows_the_benchmark_interval_when_there_is_one(tmp_path: Path, monkeypatch):
    from asearcher.tinyworld import job

    assert job._normal(None, "rl") == "" and job._bands(None) == []
    iv = {"mean": 0.6, "lo": 0.5, "hi": 0.7, "n": 10}
    ref = {
        "size": "default",
        "runs": 10,
        "heldout_f1": dict.fromkeys(("random", "warm_start", "rl"), iv),
        "rl_gain": iv,
    }
    fake = tmp_path / "job.py"
    (tmp_path / "reference.json").write_text(json.dumps(ref), encoding="utf-8")
    monkeypatch.setattr(job, "__file__", str(fake))
    assert job.reference("default") == ref and job.reference("small") is None
    assert job._normal(ref, "warm_start") == "  [benchmark, 10 runs: 0.600, 95% 0.500-0.700]"
    assert [band[0] for band in job._bands(ref)] == [
        "benchmark random",
        "benchmark warm start",
        "benchmark after RL",
    ]
