"""Python reward plugins scored through the engine's path (plugin thread, batching, PluginScorer)
on the shared tokio runtime, via the test hook ``asearcher.testing.score_with_plugins``."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import threading
import time
import weakref

import asearcher
import pytest
from asearcher import Trajectory, reward_plugin
from asearcher.exceptions import ConfigError
from asearcher.testing import score_with_plugins


def _records(sample_questions: list[dict], n: int) -> list[dict]:
    """Finished trajectories: even ones answered with the gold answer, odd ones wrongly."""
    out = []
    for i in range(n):
        q = sample_questions[i % len(sample_questions)]
        out.append(
            {
                "id": f"q{i}#0",
                "question_id": f"q{i}",
                "sample": 0,
                "question": q["question"],
                "answers": q["answer"],
                "agent": "asearcher",
                "turns": [],
                "answer": q["answer"][0] if i % 2 == 0 else f"not {q['answer'][0]}",
                "stop_reason": "answered",
                "rewards": {},
                "reward": None,
                "errors": [],
                "started_at": 0.0,
                "elapsed_s": 1.0,
                "metadata": {},
            }
        )
    return out


def score(plugins: list, records: list[dict], **kw):
    return score_with_plugins(plugins, [json.dumps(r) for r in records], **kw)


def exact(trajectory: Trajectory, answers: list[str]) -> float:
    return float(trajectory.answer in answers)


def test_sync_per_item_scores_land_in_order(sample_questions):
    records = _records(sample_questions, 12)
    scored = score([exact], records)
    assert [t["id"] for t in scored] == [r["id"] for r in records]
    assert [t["rewards"]["exact"] for t in scored] == [float(i % 2 == 0) for i in range(12)]
    assert all(t["errors"] == [] for t in scored)


def test_async_per_item_runs_on_one_plugin_thread(sample_questions):
    threads = set()

    @reward_plugin(name="answer_len")
    async def answer_len(trajectory, answers):
        threads.add(threading.get_ident())
        await asyncio.sleep(0.01)
        return len(trajectory.answer) / 100

    records = _records(sample_questions, 10)
    scored = score([answer_len], records)
    assert [t["rewards"]["answer_len"] for t in scored] == [len(r["answer"]) / 100 for r in records]
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_batched_sync_and_async_scores_land_in_order(sample_questions):
    @reward_plugin(batched=True, name="qlen")
    def qlen(trajectories, answers_lists):
        assert len(trajectories) == len(answers_lists)
        return [len(t.question) + len(a) for t, a in zip(trajectories, answers_lists, strict=True)]

    @reward_plugin(batched=True)
    async def gold_count(trajectories, answers_lists):
        await asyncio.sleep(0.01)
        return [float(len(a)) for a in answers_lists]

    records = _records(sample_questions, 9)
    scored = score([qlen, gold_count], records)
    for t, r in zip(scored, records, strict=True):
        assert t["rewards"]["qlen"] == len(r["question"]) + len(r["answers"])
        assert t["rewards"]["gold_count"] == len(r["answers"])


def test_concurrent_trajectories_are_batched(sample_questions):
    sizes: list[int] = []

    @reward_plugin(batched=True, max_batch=16, max_wait_ms=100)
    def sizes_seen(trajectories, answers_lists):
        sizes.append(len(trajectories))
        return [1.0] * len(trajectories)

    scored = score([sizes_seen], _records(sample_questions, 40))
    assert sum(sizes) == 40
    assert max(sizes) > 1 and max(sizes) <= 16
    assert len(sizes) < 40
    assert all(t["rewards"]["sizes_seen"] == 1.0 for t in scored)


def fails_on_odd(trajectory, answers):
    if trajectory.answer not in answers:
        raise ValueError(f"bad answer {trajectory.answer!r}")
    return 1.0


def test_exception_records_traceback_and_others_are_scored(sample_questions):
    raise_line = (
        next(
            i
            for i, line in enumerate(inspect.getsourcelines(fails_on_odd)[0])
            if "raise ValueError" in line
        )
        + inspect.getsourcelines(fails_on_odd)[1]
    )
    scored = score([fails_on_odd], _records(sample_questions, 6))
    for i, t in enumerate(scored):
        if i % 2 == 0:
            assert t["rewards"]["fails_on_odd"] == 1.0 and t["errors"] == []
            continue
        assert "fails_on_odd" not in t["rewards"]
        [err] = t["errors"]
        assert err["kind"] == "reward"
        assert "ValueError: bad answer 'not " in err["message"]
        assert "fails_on_odd" in err["traceback"]
        assert f"line {raise_line}" in err["traceback"]


def test_batched_exception_fails_the_whole_batch(sample_questions):
    @reward_plugin(batched=True, max_batch=64, max_wait_ms=200)
    async def broken(trajectories, answers_lists):
        raise RuntimeError(f"{len(trajectories)} at once")

    scored = score([broken, exact], _records(sample_questions, 5))
    for i, t in enumerate(scored):
        [err] = t["errors"]
        assert err["message"].startswith("reward `broken` failed: RuntimeError:")
        assert "in broken" in err["traceback"]
        assert t["rewards"]["exact"] == float(i % 2 == 0)


def test_wrong_return_types_name_the_plugin(sample_questions):
    def says_high(trajectory, answers):
        return "high"

    @reward_plugin(batched=True, name="short_list", max_wait_ms=200)
    def short_list(trajectories, answers_lists):
        return [0.5] * (len(trajectories) - 1)

    @reward_plugin(batched=True, name="nan_second", max_wait_ms=200)
    def nan_second(trajectories, answers_lists):
        return [float("nan") if t.id == "q1#0" else 0.25 for t in trajectories]

    scored = score([says_high, short_list, nan_second], _records(sample_questions, 3))
    for i, t in enumerate(scored):
        messages = [e["message"] for e in t["errors"]]
        assert any("`says_high` returned 'high' (str), not a number" in m for m in messages)
        assert any("`short_list` returned 2 scores for 3 trajectories" in m for m in messages)
        if i == 1:
            assert any("`nan_second` returned nan, not a finite number" in m for m in messages)
        else:
            assert t["rewards"]["nan_second"] == 0.25


def test_slow_plugins_do_not_block_the_runtime_or_hold_the_gil(sample_questions):
    _, warmup = score([exact], _records(sample_questions, 1), probe_ms=5)
    n_plugins = warmup["workers"] + 1

    def run_slow_plugin(i: int, out: dict) -> None:
        @reward_plugin(batched=True, name=f"slow{i}", max_wait_ms=50)
        def sleeper(trajectories, answers_lists):
            time.sleep(0.6)
            return [1.0] * len(trajectories)

        out[i] = score([sleeper], _records(sample_questions, 4), probe_ms=5)

    # More slow plugins at once than the runtime has workers, each scored by its own caller.
    results: dict = {}
    callers = [
        threading.Thread(target=run_slow_plugin, args=(i, results)) for i in range(n_plugins)
    ]
    started = time.monotonic()
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    elapsed = time.monotonic() - started
    assert sorted(results) == list(range(n_plugins))
    for i, (scored, probe) in results.items():
        assert all(t["rewards"][f"slow{i}"] == 1.0 for t in scored)
        # The probe ticks on the runtime and takes the GIL every 5 ms: a plugin blocking a
        # tokio worker (all workers, here) or a caller holding the GIL would stall it.
        assert probe["ticks"] >= 20, probe
        assert probe["max_gap_ms"] < 300, probe
    # The plugins slept in parallel, on threads of their own.
    assert elapsed < 0.6 * n_plugins


def test_keyboard_interrupt_and_system_exit_stop_the_plugin(sample_questions):
    calls = []

    @reward_plugin(max_batch=1, max_wait_ms=0)
    def quits(trajectory, answers):
        calls.append(trajectory.id)
        raise SystemExit("plugin asked to stop")

    scored = score([quits], _records(sample_questions, 4))
    assert len(calls) == 1
    messages = [t["errors"][0]["message"] for t in scored]
    assert (
        sum("SystemExit: plugin asked to stop" in m and "stopped" not in m for m in messages) == 1
    )
    assert sum("stopped after it raised SystemExit" in m for m in messages) == 3
    assert all(t["errors"][0]["traceback"] for t in scored)


def test_plain_callables_and_callable_objects(sample_questions):
    class Graded:
        def __call__(self, trajectory, answers):
            return 0.5 if trajectory.answer in answers else 0.0

    scored = score([Graded(), exact], _records(sample_questions, 2))
    assert [t["rewards"]["Graded"] for t in scored] == [0.5, 0.0]
    assert [t["rewards"]["exact"] for t in scored] == [1.0, 0.0]


def test_plugin_thread_ends_when_the_plugin_is_dropped(sample_questions):
    class Holder:
        def __call__(self, trajectory, answers):
            return 1.0

    holder = Holder()
    ref = weakref.ref(holder)
    score([holder], _records(sample_questions, 2))
    del holder
    deadline = time.monotonic() + 5
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert ref() is None


def test_bad_plugins_are_named(sample_questions):
    with pytest.raises(TypeError, match=r"reward plugin 42 \(int\) is not callable"):
        score([42], _records(sample_questions, 1))

    def odd(trajectory, answers):
        return 1.0

    odd.__asearcher_reward__ = {"name": "odd", "batch": True}
    with pytest.raises(ConfigError, match="unknown field `batch`"):
        score([odd], _records(sample_questions, 1))
    with pytest.raises(ConfigError, match=r"trajectories\[0\]`: not a trajectory"):
        score_with_plugins([exact], ["{}"])


def test_decorator_keeps_the_function_and_checks_options():
    @reward_plugin
    def plain(trajectory, answers):
        return 2.0

    assert plain(None, []) == 2.0
    assert plain.__asearcher_reward__ == {
        "name": "plain",
        "batched": False,
        "max_batch": 64,
        "max_wait_ms": 20,
    }
    assert asearcher.reward_plugin is reward_plugin
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1, got 0"):
        reward_plugin(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        reward_plugin(max_wait_ms=-1)
    with pytest.raises(TypeError, match="is not callable"):
        reward_plugin(name="x")(3)


def test_async_keyboard_interrupt_stops_only_that_plugin(sample_questions):
    @reward_plugin(max_batch=2, max_wait_ms=100)
    async def interrupts(trajectory, answers):
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    scored = score([interrupts, exact], _records(sample_questions, 6))
    messages = [t["errors"][0]["message"] for t in scored]
    assert any("KeyboardInterrupt" in m and "stopped" not in m for m in messages)
    assert sum("stopped after it raised KeyboardInterrupt" in m for m in messages) >= 4
    assert [t["rewards"]["exact"] for t in scored] == [float(i % 2 == 0) for i in range(6)]
