"""The embedded generator: exactness against HF transformers (greedy tokens, logprobs),
continuous batching, stops, abort, pause/resume, weight updates with per-token versions, and
errors that leave the engine serving. Tiny random Qwen2 checkpoints made by the tests."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from asearcher import Generator
from asearcher.exceptions import ConfigError, GenerationError, ModelError
from tiny_models import make_tiny_qwen

EOS = 2
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], [77]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("gen") / "a", "qwen2", seed=0)


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory):
    return make_tiny_qwen(tmp_path_factory.mktemp("gen") / "b", "qwen2", seed=1)


def load_hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf(model_dir):
    return load_hf(model_dir)


@pytest.fixture(scope="module")
def hf_b(second_dir):
    return load_hf(second_dir)


@pytest.fixture
def gen(model_dir):
    with Generator(model_dir, max_running=8) as g:
        yield g


def hf_greedy(model, prompt, n, ignore_eos=False):
    kwargs = {"min_new_tokens": n} if ignore_eos else {}
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=EOS,
            **kwargs,
        )
    return out[0, len(prompt) :].tolist()


def hf_logprobs(model, prompt, output, temperature=1.0):
    """log_softmax(logits / T) of every output token given everything before it."""
    ids = torch.tensor([prompt + output])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, torch.tensor(output)[:, None])[:, 0].tolist()


def wait_until(pred, timeout=20.0):
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


async def await_until(pred, timeout=20.0):
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


def test_greedy_matches_hf_token_for_token(gen, hf):
    outs = gen.generate(PROMPTS, max_new_tokens=24, temperature=0.0)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        want = hf_greedy(hf, prompt, 24)
        assert out.output_ids == want
        assert out.prompt_tokens == len(prompt)
        if want[-1] == EOS:
            assert (out.finish_reason, out.matched_stop) == ("stop", EOS)
        else:
            assert out.finish_reason == "length"


def test_logprobs_match_hf(gen, hf):
    outs = gen.generate(PROMPTS, max_new_tokens=16, temperature=0.0, ignore_eos=True)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        want = hf_logprobs(hf, prompt, out.output_ids)
        assert out.output_logprobs == pytest.approx(want, abs=1e-4)
    sampled = gen.generate(PROMPTS, max_new_tokens=16, temperature=0.7, top_k=20, seed=3)
    for prompt, out in zip(PROMPTS, sampled, strict=True):
        want = hf_logprobs(hf, prompt, out.output_ids, temperature=0.7)
        assert out.output_logprobs == pytest.approx(want, abs=1e-4)


def test_batched_equals_one_at_a_time(gen):
    prompts = [list(range(3, 3 + n)) for n in (1, 4, 9, 17, 30, 41)]
    kwargs = dict(max_new_tokens=20, temperature=0.9, top_p=0.95, top_k=50, ignore_eos=True)
    seeds = [100 + i for i in range(len(prompts))]
    batched = gen.generate(prompts, seed=seeds, **kwargs)
    for prompt, seed, out in zip(prompts, seeds, batched, strict=True):
        alone = gen.generate([prompt], seed=seed, **kwargs)[0]
        assert alone.output_ids == out.output_ids
        assert alone.output_logprobs == pytest.approx(out.output_logprobs, abs=1e-4)
    greedy = gen.generate(prompts, max_new_tokens=20, temperature=0.0, ignore_eos=True)
    for prompt, out in zip(prompts, greedy, strict=True):
        alone = gen.generate([prompt], max_new_tokens=20, temperature=0.0, ignore_eos=True)
        assert alone[0].output_ids == out.output_ids


def test_more_requests_than_slots(model_dir):
    prompts = [[4 + i, 9, 10 + i] for i in range(7)]
    with Generator(model_dir, max_running=3) as g:
        outs = g.generate(prompts, max_new_tokens=12, temperature=0.0, ignore_eos=True)
        for prompt, out in zip(prompts, outs, strict=True):
            alone = g.generate([prompt], max_new_tokens=12, temperature=0.0, ignore_eos=True)
            assert alone[0].output_ids == out.output_ids
        assert g.stats()["finished"] == 14


def test_seed_gives_reproducible_samples(gen):
    a = gen.generate([PROMPTS[0]], max_new_tokens=20, seed=11, ignore_eos=True)[0]
    b = gen.generate([PROMPTS[0]], max_new_tokens=20, seed=11, ignore_eos=True)[0]
    c = gen.generate([PROMPTS[0]], max_new_tokens=20, seed=12, ignore_eos=True)[0]
    assert a.output_ids == b.output_ids
    assert a.output_ids != c.output_ids


def test_request_joins_a_running_batch(gen):
    long_prompt, short_prompt = PROMPTS[2], PROMPTS[1]
    kwargs = dict(temperature=0.0, ignore_eos=True)

    async def scenario():
        long_task = asyncio.ensure_future(
            gen.agenerate([long_prompt], max_new_tokens=1500, **kwargs)
        )
        await await_until(lambda: gen.stats()["decode_steps"] >= 5)
        short = await gen.agenerate([short_prompt], max_new_tokens=10, **kwargs)
        still_running = not long_task.done()
        return (await long_task)[0], short[0], still_running

    long_out, short_out, still_running = asyncio.run(scenario())
    assert still_running, "the short request should finish while the long one runs"
    assert (
        short_out.output_ids
        == gen.generate([short_prompt], max_new_tokens=10, **kwargs)[0].output_ids
    )
    alone = gen.generate([long_prompt], max_new_tokens=1500, **kwargs)[0]
    assert long_out.output_ids == alone.output_ids
    assert long_out.finish_reason == "length" and len(long_out.output_ids) == 1500


def test_max_new_tokens_gives_length(gen):
    out = gen.generate([PROMPTS[0]], max_new_tokens=7, ignore_eos=True, seed=1)[0]
    assert (len(out.output_ids), out.finish_reason, out.matched_stop) == (7, "length", None)
    assert len(out.output_logprobs) == len(out.output_versions) == 7


def test_max_context_gives_length(model_dir):
    with Generator(model_dir, max_context=12) as g:
        out = g.generate([PROMPTS[0]], max_new_tokens=50, temperature=0.0, ignore_eos=True)[0]
        assert out.finish_reason == "length"
        assert len(PROMPTS[0]) + len(out.output_ids) == 12


def test_stop_token_ids(gen):
    full = gen.generate([PROMPTS[3]], max_new_tokens=30, temperature=0.0, ignore_eos=True)[0]
    k = 4
    stop = full.output_ids[k]
    first = full.output_ids.index(stop)
    out = gen.generate(
        [PROMPTS[3]], max_new_tokens=30, temperature=0.0, ignore_eos=True, stop_token_ids=[stop]
    )[0]
    assert out.output_ids == full.output_ids[: first + 1]
    assert (out.finish_reason, out.matched_stop) == ("stop", stop)


def test_abort_returns_partial_tokens(gen):
    kwargs = dict(temperature=0.0, ignore_eos=True)

    async def scenario():
        task = asyncio.ensure_future(
            gen.agenerate([PROMPTS[0]], max_new_tokens=3000, rids=["victim"], **kwargs)
        )
        await await_until(lambda: gen.stats()["generated_tokens"] >= 10)
        gen.abort("victim")
        gen.abort("no-such-request")
        return (await task)[0]

    out = asyncio.run(scenario())
    assert out.finish_reason == "abort" and out.rid == "victim"
    assert 10 <= len(out.output_ids) < 3000
    prefix = gen.generate([PROMPTS[0]], max_new_tokens=len(out.output_ids), **kwargs)[0]
    assert out.output_ids == prefix.output_ids
    assert gen.stats()["aborted"] == 1


def test_pause_and_resume(gen):
    kwargs = dict(temperature=0.0, ignore_eos=True, max_new_tokens=400)

    async def scenario():
        task = asyncio.ensure_future(gen.agenerate([PROMPTS[1]], **kwargs))
        await await_until(lambda: gen.stats()["decode_steps"] >= 3)
        gen.pause()
        steps = gen.stats()["decode_steps"]
        await asyncio.sleep(0.2)
        paused = (gen.stats()["decode_steps"], gen.stats()["paused"], task.done())
        gen.resume()
        return (await task)[0], steps, paused

    out, steps, (steps_later, flag, done) = asyncio.run(scenario())
    assert steps_later == steps and flag and not done
    assert not gen.stats()["paused"]
    assert out.output_ids == gen.generate([PROMPTS[1]], **kwargs)[0].output_ids


def paused_update(g, prompt, n, **update):
    """Starts a greedy request, pauses after a few tokens, updates the weights, resumes."""

    async def scenario():
        task = asyncio.ensure_future(
            g.agenerate([prompt], max_new_tokens=n, temperature=0.0, ignore_eos=True)
        )
        await await_until(lambda: g.stats()["generated_tokens"] >= 5)
        g.pause()
        version = g.update_weights(**update)
        g.resume()
        return (await task)[0], version

    return asyncio.run(scenario())


def test_update_weights_mid_request(model_dir, second_dir, hf_b):
    with Generator(model_dir) as g:
        out, version = paused_update(g, PROMPTS[0], 200, model_dir=second_dir)
        assert version == 1 and g.version == 1 and g.stats()["version"] == 1
        versions = out.output_versions
        assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
        fresh = g.generate([PROMPTS[0]], max_new_tokens=16, temperature=0.0, ignore_eos=True)[0]
        assert fresh.output_ids == hf_greedy(hf_b, PROMPTS[0], 16, ignore_eos=True)
        assert set(fresh.output_versions) == {1}
        assert g.update_weights(model_dir, version=7) == 7
        again = g.generate([PROMPTS[0]], max_new_tokens=4, temperature=0.0, ignore_eos=True)[0]
        assert again.output_versions == [7] * 4


def test_update_with_recompute_continues_on_new_weights(model_dir, second_dir, hf_b):
    with Generator(model_dir) as g:
        out, _ = paused_update(g, PROMPTS[2], 40, model_dir=second_dir, recompute_cache=True)
    k = out.output_versions.index(1)
    assert 0 < k < 40
    rest = hf_greedy(hf_b, PROMPTS[2] + out.output_ids[:k], 40 - k, ignore_eos=True)
    assert out.output_ids[k:] == rest


def test_update_can_abort_in_flight(model_dir, second_dir):
    with Generator(model_dir) as g:
        out, version = paused_update(g, PROMPTS[0], 500, model_dir=second_dir, abort_in_flight=True)
        assert version == 1
        assert out.finish_reason == "abort" and "version 1" in out.abort_message
        assert len(out.output_ids) < 500 and set(out.output_versions) == {0}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("temperature", {"temperature": -1.0}),
        ("top_p", {"top_p": 0.0}),
        ("top_p", {"top_p": 1.5}),
        ("top_k", {"top_k": -3}),
        ("max_new_tokens", {"max_new_tokens": 0}),
        ("seed", {"seed": [1, 2, 3]}),
    ],
)
def test_bad_sampling_params_name_the_parameter(gen, name, kwargs):
    with pytest.raises(ConfigError, match=name):
        gen.generate([PROMPTS[0]], **kwargs)
    assert gen.stats()["finished"] == 0


def test_bad_requests_fail_alone_and_the_engine_keeps_serving(gen, model_dir):
    vocab = 10**6
    with pytest.raises(GenerationError, match="too-long"):
        gen.generate([list(range(3, 5000))], rids=["too-long"])
    with pytest.raises(GenerationError, match="vocabulary"):
        gen.generate([[3, vocab]])
    with pytest.raises(GenerationError, match="empty"):
        gen.generate([[]])
    with pytest.raises(ConfigError, match="device"):
        Generator(model_dir, device="tpu")
    with pytest.raises(ConfigError, match="dtype"):
        Generator(model_dir, dtype="int8")
    out = gen.generate([PROMPTS[0]], max_new_tokens=5, ignore_eos=True)[0]
    assert len(out.output_ids) == 5


def test_bad_update_dir_keeps_old_weights(gen, tmp_path):
    before = gen.generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0, ignore_eos=True)[0]
    with pytest.raises((ModelError, OSError)):
        gen.update_weights(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    make_tiny_qwen(tmp_path / "other", "qwen2", hidden_size=32, with_tokenizer=False)
    with pytest.raises(Exception, match="shape"):
        gen.update_weights(tmp_path / "other")
    assert gen.version == 0
    after = gen.generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0, ignore_eos=True)[0]
    assert after.output_ids == before.output_ids


def test_close_stops_the_engine(model_dir):
    g = Generator(model_dir)
    assert g.is_alive
    g.close()
    assert not g.is_alive
    with pytest.raises(GenerationError, match="stopped"):
        g.generate([PROMPTS[0]])
    g.close()  # closing twice is harmless


def test_stats_count_requests_and_tokens(gen):
    gen.generate(PROMPTS, max_new_tokens=6, ignore_eos=True, seed=0)
    s = gen.stats()
    assert s["finished"] == len(PROMPTS)
    assert s["generated_tokens"] == 6 * len(PROMPTS)
    assert s["prompt_tokens"] == sum(map(len, PROMPTS))
    # 5 steps when all four are admitted together; more when some arrive after the first step.
    assert 5 <= s["decode_steps"] <= 5 * len(PROMPTS)
    assert (s["running"], s["waiting"], s["paused"]) == (0, 0, False)
