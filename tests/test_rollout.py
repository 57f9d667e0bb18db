"""The rollout engine from Python over real servers on loopback: the scripted policy server
(SGLang /generate), the embedded BM25 index behind a Toolbox, CLI server subprocesses killed
mid-run, a retrieval endpoint that never answers, and the embedded tch generator."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asearcher
import pytest
from asearcher.config import RewardConfig, RolloutConfig
from asearcher.data import sample_questions_path, sample_tokenizer_path
from asearcher.exceptions import ConfigError
from asearcher.testing import start_scripted_policy_server
from asearcher.tools import LocalSearch, RetrievalClient, Toolbox

# The default template ends with the question, which the chat template puts on the line of
# `<|im_end|>`; a marker line after it keeps the scripted server's question line clean and shows
# that a prompt override reaches the model.
MARKER = "Think step by step before each action."


def prompts_with_marker() -> dict[str, str]:
    base = asearcher.default_prompts("asearcher")["prompt"].rstrip()
    return {"prompt": f"{base}\n{MARKER}\n"}


AGENT = {"kind": "asearcher", "max_turns": 8, "prompts": prompts_with_marker()}


@pytest.fixture(scope="module")
def tok() -> asearcher.Tokenizer:
    return asearcher.Tokenizer(sample_tokenizer_path())


@pytest.fixture(scope="module")
def toolbox(sample_index: LocalSearch) -> Toolbox:
    return Toolbox(sample_index)


@pytest.fixture(scope="module")
def questions(sample_questions: list[dict]) -> list[dict]:
    return sample_questions[:10]


@pytest.fixture(scope="module")
def policy():
    with start_scripted_policy_server(answers=sample_questions_path()) as srv:
        yield srv


def run_all(engine: asearcher.RolloutEngine, per_batch: int = 2) -> list:
    groups = []
    while (batch := engine.next_batch(per_batch)) is not None:
        groups.extend(batch)
    return groups


@pytest.fixture(scope="module")
def run(policy, toolbox, questions):
    pool = asearcher.InferencePool([policy.url])
    cfg = {"group_size": 2, "max_concurrent": 8, "batch_size": 2, "max_staleness": None}
    with asearcher.RolloutEngine(
        questions, pool, sample_tokenizer_path(), toolbox=toolbox, agent=AGENT, config=cfg
    ) as engine:
        groups = run_all(engine)
        yield engine, groups, pool


def test_every_question_runs_as_a_group_of_two(run, questions):
    _, groups, _ = run
    assert sorted(g.question["question"] for g in groups) == sorted(
        q["question"] for q in questions
    )
    assert all(len(g.trajectories) == 2 for g in groups)
    ids = [t.id for g in groups for t in g.trajectories]
    assert len(set(ids)) == 20


def test_trajectories_search_then_answer_the_gold(run):
    _, groups, _ = run
    trajs = [t for g in groups for t in g.trajectories]
    for t in trajs:
        assert t.num_turns >= 2 and t.tool_calls >= 1
        assert t.stop_reason == "answered" and t.errors == []
        assert t.turns[0]["tool"]["tool"] == "search"
        assert t.output_tokens == sum(len(x["output_ids"]) for x in t.turns)
    f1 = [t.rewards["f1"] for t in trajs]
    assert sum(r == 1.0 for r in f1) >= 0.8 * len(f1)
    assert [t.reward for t in trajs] == [t.rewards["f1"] for t in trajs]
    for g in groups:
        assert g.rewards == [t.reward for t in g.trajectories]
        right = [t for t in g.trajectories if t.reward == 1.0]
        assert all(t.answer in t.answers for t in right)


def test_prompt_override_reaches_the_model(run, tok):
    _, groups, _ = run
    t = groups[0].trajectories[0]
    prompt = tok.decode(t.prompt_ids(0))
    assert MARKER in prompt
    assert f"Question: {t.question}\n{MARKER}" in prompt
    with pytest.raises(ConfigError, match="turn"):
        t.prompt_ids(t.num_turns + 5)


def test_sequences_mask_exactly_the_generated_tokens(run):
    _, groups, _ = run
    t = groups[0].trajectories[0]
    seqs = t.sequences()
    assert seqs
    outputs = [x["output_ids"] for x in t.turns]
    generated = []
    for s in seqs:
        assert len(s["input_ids"]) == len(s["loss_mask"]) == len(s["logprobs"])
        assert len(s["versions"]) == len(s["input_ids"])
        generated += [i for i, m in zip(s["input_ids"], s["loss_mask"], strict=True) if m == 1]
        for m, v in zip(s["loss_mask"], s["versions"], strict=True):
            assert (v is not None) == (m == 1)
    assert generated == [i for out in outputs for i in out]
    # Masked positions are the outputs, in place: each output appears as a run of 1s.
    ids, mask = seqs[0]["input_ids"], seqs[0]["loss_mask"]
    start = mask.index(1)
    assert ids[start : start + len(outputs[0])] == outputs[0]
    assert all(mask[start : start + len(outputs[0])])
    assert mask[start + len(outputs[0])] == 0  # the tool observation that follows


def test_jsonl_round_trip(run, tmp_path: Path):
    _, groups, _ = run
    trajs = [t for g in groups for t in g.trajectories]
    path = tmp_path / "out.jsonl"
    asearcher.save_trajectories(path, trajs[:5])
    asearcher.save_trajectories(path, trajs[5:])
    back = asearcher.load_trajectories(path)
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]
    asearcher.save_trajectories(path, trajs[:3], append=False)
    assert len(asearcher.load_trajectories(path)) == 3
    one = asearcher.Trajectory.from_json(trajs[0].to_json())
    assert one.to_dict() == trajs[0].to_dict()
    path.write_text(path.read_text() + "not json\n" + trajs[0].to_json() + "\n")
    with pytest.raises(asearcher.exceptions.BadLineError, match=r"out\.jsonl:4"):
        asearcher.load_trajectories(path)
    with pytest.raises(asearcher.exceptions.BadLineError, match="not a trajectory"):
        asearcher.Trajectory.from_json('{"id": 1}')


def test_html_shows_the_question(run):
    _, groups, _ = run
    t = groups[0].trajectories[0]
    html = t._repr_html_()
    assert t.question in html and "<" in html
    group_html = groups[0]._repr_html_()
    assert groups[0].question["question"] in group_html
    assert all(x.id in group_html for x in groups[0].trajectories)


def test_stats_count_the_run(run):
    engine, groups, pool = run
    s = engine.stats()
    for key in ("running", "finished", "failed", "turns", "tokens_per_s", "tool_latency_ms",
                "gen_latency_ms", "ready_groups", "pending_rewards", "staleness"):  # fmt: skip
        assert key in s
    trajs = [t for g in groups for t in g.trajectories]
    assert s["finished"] == 20 and s["failed"] == 0 and s["running"] == 0
    assert s["turns"] == sum(t.num_turns for t in trajs)
    assert s["tool_calls"] == sum(t.tool_calls for t in trajs)
    assert s["output_tokens"] == sum(t.output_tokens for t in trajs)
    assert s["tool_latency_ms"]["p50"] is not None
    assert s["position"] == engine.position == 10
    assert engine.is_done
    [server] = pool.stats()
    assert server["requests"] == s["turns"] and server["healthy"]


def test_default_prompts_find_the_gold_too(policy, toolbox, questions):
    cfg = {"group_size": 1, "max_concurrent": 8, "max_staleness": None}
    with asearcher.RolloutEngine(
        questions[:4], [policy.url], sample_tokenizer_path(), toolbox=toolbox, config=cfg
    ) as engine:
        trajs = [t for g in run_all(engine) for t in g.trajectories]
    assert len(trajs) == 4
    assert all(t.tool_calls >= 1 and t.answer in t.answers for t in trajs)


def test_epochs_repeat_the_questions_in_a_seeded_order(policy, toolbox, questions):
    def order(seed: int) -> list[tuple[int, str]]:
        cfg = {"group_size": 1, "max_concurrent": 1, "max_staleness": None}
        with asearcher.RolloutEngine(
            questions[:3], [policy.url], sample_tokenizer_path(), toolbox=toolbox, agent=AGENT,
            config=cfg, epochs=2, shuffle_seed=seed,
        ) as engine:  # fmt: skip
            groups = run_all(engine, per_batch=1)
            assert engine.position == 6
        return [(g.epoch, g.question["question"]) for g in sorted(groups, key=lambda g: g.index)]

    a = order(7)
    assert a == order(7)
    assert sorted(a) == sorted((e, q["question"]) for e in (0, 1) for q in questions[:3])


def test_staleness_gate_holds_until_the_version_moves(policy, toolbox, questions):
    cfg = {"group_size": 2, "max_concurrent": 8, "batch_size": 1, "max_staleness": 0}
    with asearcher.RolloutEngine(
        questions, [policy.url], sample_tokenizer_path(), toolbox=toolbox, agent=AGENT, config=cfg
    ) as engine:
        [first] = engine.next_batch(1)
        assert first.admitted_version == 0
        time.sleep(0.5)
        assert engine.stats()["admitted"] == 2  # eta=0: nothing beyond the one batch
        assert engine.position == 1
        engine.set_version(1)
        assert engine.version == 1
        [second] = engine.next_batch(1)
        assert second.admitted_version == 1
        assert engine.stats()["admitted"] == 4


def test_async_batches(policy, toolbox, questions):
    import asyncio

    cfg = {"group_size": 2, "max_concurrent": 8, "batch_size": 4, "max_staleness": None}

    async def main() -> list:
        engine = asearcher.RolloutEngine(
            questions[:4], [policy.url], sample_tokenizer_path(), toolbox=toolbox, agent=AGENT,
            config=cfg,
        )  # fmt: skip
        first = await engine.anext_batch(2)
        rest = await engine.adrain()
        await engine.ashutdown()
        return first + rest

    groups = asyncio.run(main())
    assert len(groups) >= 2
    assert all(len(g) == 2 for g in groups)


def test_bad_config_names_the_key(policy, questions):
    tok = sample_tokenizer_path()
    with pytest.raises(ConfigError, match="group_sizee"):
        asearcher.RolloutEngine(questions, [policy.url], tok, config={"group_sizee": 2})
    with pytest.raises(ConfigError, match="max_turnz"):
        asearcher.RolloutEngine(questions, [policy.url], tok, agent={"max_turnz": 2})
    with pytest.raises(ConfigError, match="metrik"):
        asearcher.RolloutEngine(questions, [policy.url], tok, reward={"metrik": "em"})
    with pytest.raises(ConfigError, match="max_concurrent"):
        asearcher.RolloutEngine(
            questions, [policy.url], tok, config={"group_size": 4, "max_concurrent": 2}
        )
    with pytest.raises(ConfigError, match="item 1"):
        asearcher.RolloutEngine([questions[0], {"answer": "x"}], [policy.url], tok)
    with pytest.raises(ConfigError, match="backend"):
        asearcher.RolloutEngine(questions, 42, tok)
    with pytest.raises(ConfigError, match="primary"):
        asearcher.RolloutEngine(questions, [policy.url], tok, reward={"primary": "judge"})
    with pytest.raises(ConfigError, match="request_timeout_secs"):
        asearcher.InferencePool([policy.url], config={"request_timeout_secs": -1})
    with pytest.raises(asearcher.exceptions.AsearcherIOError, match="missing.jsonl"):
        asearcher.RolloutEngine("/nonexistent/missing.jsonl", [policy.url], tok)
    with pytest.raises(ConfigError, match="unknown agent kind"):
        asearcher.default_prompts("nope")


def test_default_prompts_are_editable_copies():
    p = asearcher.default_prompts("search_r1")
    assert p and all(isinstance(v, str) for v in p.values())
    p.clear()
    assert asearcher.default_prompts("search_r1")


def start_cli_policy(latency_ms: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "asearcher.cli", "serve", "scripted-policy", "--port", "0",
           "--answers", str(sample_questions_path()), "--latency-ms", str(latency_ms)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "scripted policy server on " in line, line
    url = line.split(" on ", 1)[1].split(";", 1)[0].strip()
    return proc, url


def test_a_killed_server_loses_no_trajectory(toolbox, questions):
    procs = [start_cli_policy(latency_ms=200) for _ in range(2)]
    try:
        pool = asearcher.InferencePool(
            [url for _, url in procs],
            config={"backoff_base_ms": 10, "backoff_max_ms": 100, "unhealthy_cooldown_secs": 60},
        )
        cfg = {"group_size": 2, "max_concurrent": 4, "batch_size": 2, "max_staleness": None}
        with asearcher.RolloutEngine(
            questions, pool, sample_tokenizer_path(), toolbox=toolbox, agent=AGENT, config=cfg
        ) as engine:
            killer = threading.Timer(0.8, procs[0][0].kill)
            killer.start()
            started = time.monotonic()
            groups = run_all(engine)
            took = time.monotonic() - started
            killer.join()
        assert took > 1.5  # 20 trajectories x 2 turns x 0.2 s / 4 at once: the kill is mid-run
        trajs = [t for g in groups for t in g.trajectories]
        assert len(trajs) == 20 and len({t.id for t in trajs}) == 20
        assert all(t.stop_reason == "answered" and t.errors == [] for t in trajs)
        s = engine.stats()
        assert s["failed"] == 0 and s["dropped"] == 0 and s["retried"] == 0
        dead, alive = pool.stats()
        assert not dead["healthy"] and dead["failures"] >= 1
        assert alive["healthy"] and alive["requests"] > dead["requests"] - dead["failures"]
        servers = {x["server"] for t in trajs for x in t.turns}
        assert procs[1][1] in servers
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture()
def silent_endpoint():
    """A TCP socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in held:
        c.close()
    srv.close()


def test_tool_timeouts_are_recorded_and_runs_finish(policy, questions, silent_endpoint):
    client = RetrievalClient([silent_endpoint], timeout=0.3, retries=0)
    cfg = {"group_size": 2, "max_concurrent": 8, "batch_size": 2, "max_staleness": None,
           "tool_errors": "observe"}  # fmt: skip
    agent = {**AGENT, "max_turns": 4}
    with asearcher.RolloutEngine(
        questions[:3], [policy.url], sample_tokenizer_path(), toolbox=Toolbox(client),
        agent=agent, config=cfg,
    ) as engine:  # fmt: skip
        groups = run_all(engine)
        stats = engine.stats()
    trajs = [t for g in groups for t in g.trajectories]
    assert len(trajs) == 6
    for t in trajs:
        tools = [x["tool"] for x in t.turns if x["tool"] is not None]
        assert tools and all(x["error"] for x in tools)
        assert all(x["latency_ms"] >= 250 for x in tools)
        assert t.stop_reason != "error" and t.errors == []
    assert stats["tool_errors"] == sum(t.tool_calls for t in trajs) > 0
    assert stats["failed"] == 0


def test_embedded_generator_records_garbage_without_crashing(tmp_path: Path, questions):
    tiny_models = pytest.importorskip("tiny_models")
    model_dir = tiny_models.make_tiny_qwen(tmp_path / "tiny", "qwen2", seed=0)
    gen = asearcher.Generator(model_dir, max_running=8, max_context=4096, version=3)
    try:
        agent = {"kind": "asearcher", "max_turns": 3, "context_budget": 4096,
                 "sampling": {"max_new_tokens": 24}, "max_generation_failures": 2}  # fmt: skip
        cfg = {"group_size": 2, "max_concurrent": 4, "batch_size": 2, "max_staleness": None}
        with asearcher.RolloutEngine(
            questions[:2], gen, model_dir, agent=agent, config=cfg
        ) as engine:
            groups = run_all(engine)
        trajs = [t for g in groups for t in g.trajectories]
        assert len(trajs) == 4
        for t in trajs:
            assert t.num_turns >= 1 and t.errors == []
            for turn in t.turns:
                n = len(turn["output_ids"])
                assert 0 < n <= 24
                assert len(turn["output_logprobs"]) == n
                assert turn["output_versions"] == [3] * n
                assert all(lp <= 0 for lp in turn["output_logprobs"])
        issues = [i for t in trajs for turn in t.turns for i in turn["issues"]]
        assert issues or any(t.stop_reason != "answered" for t in trajs)
        assert all(t.reward is not None for t in trajs)
    finally:
        gen.close()


def test_seeded_sampling_repeats_and_ordered_groups_come_in_question_order(
    tmp_path: Path, questions
):
    tiny_models = pytest.importorskip("tiny_models")
    model_dir = tiny_models.make_tiny_qwen(tmp_path / "tiny", "qwen2", seed=0)
    agent = {"kind": "asearcher", "max_turns": 2, "context_budget": 4096,
             "sampling": {"max_new_tokens": 16, "temperature": 1.0}}  # fmt: skip
    cfg = {"group_size": 2, "max_concurrent": 8, "batch_size": 2, "max_staleness": None,
           "ordered": True}  # fmt: skip

    def sampled(seed: int | None) -> tuple[list[str], list[list[int]]]:
        # A fresh generator each time: its batches are made of whatever is running.
        gen = asearcher.Generator(model_dir, max_running=8, max_context=4096)
        try:
            with asearcher.RolloutEngine(
                questions[:6], gen, model_dir, agent=agent, config=cfg, sampling_seed=seed
            ) as engine:
                groups = run_all(engine)
        finally:
            gen.close()
        tokens = [turn["output_ids"] for g in groups for t in g.trajectories for turn in t.turns]
        return [g.question["question"] for g in groups], tokens

    order, tokens = sampled(11)
    assert order == [q["question"] for q in questions[:6]], "ordered: in question order"
    assert sampled(11)[1] == tokens, "the same seed draws the same tokens, whatever the batching"
    assert sampled(12)[1] != tokens
    assert sampled(None)[1] != tokens


def test_rollout_module_exports():
    from asearcher import rollout

    assert rollout.RolloutEngine is asearcher.RolloutEngine
    assert set(rollout.AGENT_KINDS) == {"asearcher", "search_r1", "reasoning"}
    assert json.dumps(asearcher.default_prompts("reasoning"))


def test_embedded_generations_aborted_by_a_weight_update_are_resent(tmp_path: Path, questions):
    tiny_models = pytest.importorskip("tiny_models")
    model_dir = tiny_models.make_tiny_qwen(tmp_path / "tiny", "qwen2", seed=0)
    gen = asearcher.Generator(model_dir, max_running=8, max_context=4096, version=3)
    try:
        agent = {"kind": "asearcher", "max_turns": 2, "context_budget": 4096,
                 "sampling": {"max_new_tokens": 400}, "max_generation_failures": 1}  # fmt: skip
        cfg = {"group_size": 2, "max_concurrent": 4, "batch_size": 2, "max_staleness": None}
        with asearcher.RolloutEngine(
            questions[:2], gen, model_dir, agent=agent, config=cfg
        ) as engine:
            deadline = time.monotonic() + 30
            while gen.stats()["generated_tokens"] < 20 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert gen.update_weights(model_dir, version=4, abort_in_flight=True) == 4
            groups = run_all(engine)
        turns = [x for g in groups for t in g.trajectories for x in t.turns]
        resent = [x for x in turns if x["resends"] > 0]
        assert resent, "no generation was in flight at the update"
        for x in resent:
            v = x["output_versions"]
            assert v == sorted(v) and v[0] == 3 and v[-1] == 4
            assert len(v) == len(x["output_ids"]) == len(x["output_logprobs"]) <= 400
    finally:
        gen.close()


def test_reward_plugins_run_in_the_engine_and_a_raising_one_is_isolated(policy, toolbox, questions):
    seen: list[str] = []

    @asearcher.reward_plugin(name="length_bonus")
    async def length_bonus(trajectory: asearcher.Trajectory, answers: list[str]) -> float:
        seen.append(trajectory.id)
        return 1.0 / (1 + trajectory.num_turns)

    @asearcher.reward_plugin(name="picky", batched=True)
    def picky(trajectories: list[asearcher.Trajectory], answers: list[list[str]]) -> list[float]:
        if any(t.sample == 1 for t in trajectories):
            raise ValueError("picky refuses sample 1")
        return [0.5 for _ in trajectories]

    pool = asearcher.InferencePool([policy.url])
    cfg = {"group_size": 2, "max_concurrent": 2, "batch_size": 1, "max_staleness": None}
    with asearcher.RolloutEngine(
        questions[:4],
        pool,
        sample_tokenizer_path(),
        toolbox=toolbox,
        agent=AGENT,
        config=cfg,
        reward={"metric": "f1", "primary": "length_bonus"},
        plugins=[length_bonus, picky],
    ) as engine:
        trajs = [t for g in run_all(engine, 1) for t in g.trajectories]
    assert len(trajs) == 8 and sorted(seen) == sorted(t.id for t in trajs)
    for t in trajs:
        assert t.reward == pytest.approx(1.0 / (1 + t.num_turns))
        assert "f1" in t.rewards
        failures = [e for e in t.errors if e["kind"] == "reward"]
        if "picky" in t.rewards:
            assert t.rewards["picky"] == 0.5 and not failures
        else:
            # A batch holding a sample-1 trajectory fails for every member, with the traceback.
            assert failures and "picky refuses sample 1" in failures[0]["message"]
            assert "def picky" in failures[0]["traceback"] or "picky" in failures[0]["traceback"]
    assert any("picky" not in t.rewards for t in trajs if t.sample == 1)


def test_reward_config_picks_any_score_and_a_hanging_plugin_only_marks_its_trajectories(
    policy, toolbox, questions
):
    release = threading.Event()
    active = []

    @asearcher.reward_plugin(name="stuck")
    def stuck(trajectory: asearcher.Trajectory, answers: list[str]) -> float:
        active.append(1)
        release.wait(30)  # hangs past the 0.3 s timeout until the test lets it go
        active.pop()
        return 1.0

    pool = asearcher.InferencePool([policy.url])
    cfg = RolloutConfig(group_size=2, max_concurrent=4, batch_size=1, max_staleness=None)
    reward = RewardConfig(weights={"f1": 1.0, "format": 0.5}, plugin_timeout_s=0.3)
    with asearcher.RolloutEngine(
        questions[:2],
        pool,
        sample_tokenizer_path(),
        toolbox=toolbox,
        agent=AGENT,
        config=cfg,
        reward=reward,
        plugins=[stuck],
    ) as engine:
        trajs = [t for g in run_all(engine, 1) for t in g.trajectories]
    release.set()  # let the plugin thread finish before the interpreter does
    deadline = time.monotonic() + 10
    while active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(trajs) == 4  # the run went on past the hung plugin
    for t in trajs:
        assert t.reward == pytest.approx(t.rewards["f1"] + 0.5 * t.rewards["format"])
        assert "stuck" not in t.rewards
        assert any("`stuck` failed: timed out" in e["message"] for e in t.errors), t.errors


def test_a_misspelt_primary_lists_the_recorded_scores(policy, questions):
    with pytest.raises(ConfigError, match=r"reward\.primary.*f1, em, cem, format"):
        asearcher.RolloutEngine(
            questions, [policy.url], sample_tokenizer_path(), reward={"primary": "f2"}
        )
