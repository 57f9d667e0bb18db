"""The scripted policy server (our LLM test double) spoken to over real HTTP on loopback: SGLang's
/generate rules, abort / pause / weight updates, the OpenAI-chat judge, and the CLI subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import asearcher
import pytest
from asearcher.data import sample_questions_path, sample_tokenizer_path
from asearcher.exceptions import ConfigError
from asearcher.testing import start_scripted_policy_server

STOPS = ["</search>", "</access>", "</answer>"]
QUESTION = "In which city was Grado Rith born?"
GOLD = "Simomora"


@pytest.fixture(scope="module")
def tok() -> asearcher.Tokenizer:
    return asearcher.Tokenizer(sample_tokenizer_path())


def post(url: str, path: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return json.loads(r.read())


def prompt(question: str, rest: str = "") -> str:
    return (
        "<|im_start|>user\nUse <search>, <answer> and read <information>.\n"
        f"Question: {question}\n<|im_end|>\n<|im_start|>assistant\n{rest}"
    )


def observation(title: str, text: str) -> str:
    return f'\n<information>[Doc 1](https://tinywiki.example/x):\n"{title}"\n{text}</information>\n'


def generate(url: str, tok, text: str, rid: str | None = None, **sampling) -> dict:
    body: dict = {
        "input_ids": tok.encode(text, add_special_tokens=False),
        "return_logprob": True,
        "sampling_params": {"stop": STOPS, "no_stop_trim": True, **sampling},
    }
    if rid is not None:
        body["rid"] = rid
    status, out = post(url, "/generate", body)
    assert status == 200, out
    return out


def test_fresh_prompt_searches_and_the_gold_is_answered_once_seen(tok):
    with start_scripted_policy_server(answers=sample_questions_path()) as srv:
        assert srv.url == f"http://{srv.address}"
        out = generate(srv.url, tok, prompt(QUESTION), rid="r0")
        assert out["text"].endswith(f"<search>{QUESTION}</search>")
        assert tok.decode(out["output_ids"]) == out["text"]
        meta = out["meta_info"]
        assert meta["finish_reason"] == {"type": "stop", "matched": "</search>"}
        assert meta["completion_tokens"] == len(out["output_ids"]) > 0
        lps = [e[0] for e in meta["output_token_logprobs"]]
        assert all(lp < 0 for lp in lps) and len(set(lps)) > 1
        assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"]

        seen = prompt(QUESTION, out["text"] + observation("Grado Rith", f"Born in {GOLD}."))
        ans = generate(srv.url, tok, seen, rid="r1")
        assert ans["text"].endswith(f"<answer>{GOLD}</answer>")
        # Without the gold in sight, the first title of the last observation is the answer.
        other = prompt(QUESTION, out["text"] + observation("Tragrad", "A river town."))
        assert generate(srv.url, tok, other, rid="r1")["text"].endswith("<answer>Tragrad</answer>")
        stats = srv.stats()
        assert (stats["searches"], stats["answers"], stats["requests"]) == (1, 2, 3)


def test_searches_range_and_wrong_rate_are_deterministic(tok):
    answers = {QUESTION: GOLD}
    seen = prompt(QUESTION, "<search>q</search>" + observation("Grado Rith", f"in {GOLD}"))
    runs = []
    for _ in range(2):
        with start_scripted_policy_server(answers=answers, wrong_rate=0.5, seed=3) as s:
            runs.append([generate(s.url, tok, seen, rid=f"g{i}")["text"] for i in range(40)])
    assert runs[0] == runs[1]
    wrong = sum(t.endswith("<answer>unknown</answer>") for t in runs[0])
    right = sum(t.endswith(f"<answer>{GOLD}</answer>") for t in runs[0])
    assert wrong + right == 40 and 8 <= wrong <= 32

    with start_scripted_policy_server(searches=(2, 4), seed=1) as s:
        text = prompt("Who founded Ovassa?")
        turns = 0
        while not text.rstrip().endswith("</answer>") and turns < 10:
            out = generate(s.url, tok, text, rid=f"t{turns}")
            text += out["text"] + ("" if "<answer>" in out["text"] else observation("Ovassa", "x"))
            turns += 1
        assert 3 <= turns <= 5  # 2..4 searches, then the answer


def test_garbage_and_think_padding(tok):
    with start_scripted_policy_server(garbage_rate=1.0) as s:
        texts = [
            generate(s.url, tok, prompt("q?"), rid=f"x{i}", max_new_tokens=64)["text"]
            for i in range(20)
        ]
        assert not any(t.count("</search>") == 1 and "<access>" not in t for t in texts)
        assert s.stats()["garbage"] == 20
    with start_scripted_policy_server(think_tokens=(0, 500)) as s:
        lengths = [
            len(generate(s.url, tok, prompt("q?"), rid=f"p{i}", max_new_tokens=4096)["output_ids"])
            for i in range(20)
        ]
        again = generate(s.url, tok, prompt("q?"), rid="p0", max_new_tokens=4096)
        base = len(again["output_ids"]) - lengths[0]
    with start_scripted_policy_server() as s:
        bare = len(generate(s.url, tok, prompt("q?"), rid="p0")["output_ids"])
    assert base == 0  # the padding depends on the rid only
    assert all(bare <= n <= bare + 2 * 500 for n in lengths)
    assert max(lengths) - min(lengths) > 300 and max(lengths) > 5 * bare


def test_abort_returns_partial_output_and_weight_updates_bump_versions(tok):
    text = prompt("Where is Koford?")
    with start_scripted_policy_server(think_tokens=150) as fast:
        full = len(generate(fast.url, tok, text, rid="slow", max_new_tokens=4096)["output_ids"])
    with start_scripted_policy_server(think_tokens=150, latency_ms=20, ms_per_token=10) as srv:
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(
                generate(srv.url, tok, text, rid="slow", max_new_tokens=4096)
            )
        )
        worker.start()
        time.sleep(0.6)
        assert srv.stats()["in_flight"] == 1
        assert post(srv.url, "/abort_request", {"rid": "slow"})[1]["aborted"] == 1
        worker.join(10)
        meta = result["meta_info"]
        assert meta["finish_reason"]["type"] == "abort"
        n = len(result["output_ids"])
        assert 0 < n < full
        assert meta["output_token_versions"] == [0] * n

        status, up = post(
            srv.url, "/update_weights_from_disk", {"model_path": "/ckpt", "weight_version": 5}
        )
        assert status == 200 and up["weight_version"] == "5"
        out = generate(srv.url, tok, prompt("q?"), rid="after")
        assert set(out["meta_info"]["output_token_versions"]) == {5}
        assert out["meta_info"]["weight_version"] == "5"
        info = get(srv.url, "/get_server_info")
        assert info["weight_version"] == "5" and info["stats"]["aborted"] == 1


def test_pause_aborts_in_flight_and_holds_new_requests(tok):
    with start_scripted_policy_server(latency_ms=5000) as srv:
        first: dict = {}
        t1 = threading.Thread(target=lambda: first.update(generate(srv.url, tok, prompt("a?"))))
        t1.start()
        time.sleep(0.3)
        assert post(srv.url, "/pause_generation", {})[0] == 200
        t1.join(5)
        assert first["meta_info"]["finish_reason"]["type"] == "abort"
        assert first["output_ids"] == []  # still in its 5 s of "prefill"
    with start_scripted_policy_server() as srv:
        post(srv.url, "/pause_generation", {})
        second: dict = {}
        t2 = threading.Thread(target=lambda: second.update(generate(srv.url, tok, prompt("b?"))))
        t2.start()
        time.sleep(0.3)
        assert not second and srv.stats()["paused"]
        post(srv.url, "/continue_generation", {})
        t2.join(5)
        assert second["meta_info"]["finish_reason"]["type"] == "stop"


def test_unknown_keys_are_400_naming_the_key(tok):
    with start_scripted_policy_server() as srv:
        ids = tok.encode(prompt("q?"), add_special_tokens=False)
        status, err = post(
            srv.url, "/generate", {"input_ids": ids, "sampling_params": {"temprature": 0}}
        )
        assert status == 400 and "temprature" in err["error"]["message"]
        status, err = post(srv.url, "/generate", {"input_ids": ids, "bogus": 1})
        assert status == 400 and "bogus" in err["error"]["message"]
    with pytest.raises(ConfigError, match="wrong_rate"):
        start_scripted_policy_server(wrong_rate=2.0)
    with pytest.raises(ConfigError, match="searches"):
        start_scripted_policy_server(searches=(5, 2))


def test_token_budget_makes_concurrent_requests_share_capacity(tok):
    with start_scripted_policy_server(think_tokens=100, tokens_per_s_total=2000) as srv:
        outs: list[dict] = []
        start = time.monotonic()
        threads = [
            threading.Thread(
                target=lambda i=i: outs.append(
                    generate(srv.url, tok, prompt("q?"), rid=f"c{i}", max_new_tokens=4096)
                )
            )
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - start
        tokens = sum(len(o["output_ids"]) for o in outs)
        assert len(outs) == 8 and elapsed >= 0.9 * tokens / 2000


def judge(url: str, truth: str, response: str) -> str:
    body = {
        "model": "judge",
        "messages": [
            {"role": "system", "content": "You grade answers."},
            {
                "role": "user",
                "content": f"Question: q\nGround truth: {truth}\nResponse: {response}",
            },
        ],
        "temperature": 0.0,
    }
    status, out = post(url, "/v1/chat/completions", body)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] > 0
    return out["choices"][0]["message"]["content"]


def test_judge_verdicts_and_garbage():
    with start_scripted_policy_server() as srv:
        assert (
            json.loads(judge(srv.url, GOLD, f"The city is {GOLD.lower()}."))["judgement"]
            == "correct"
        )
        assert json.loads(judge(srv.url, GOLD, "Tragrad"))["judgement"] == "incorrect"
        status, err = post(
            srv.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
        )
        assert status == 400 and "Ground truth:" in err["error"]["message"]
    with (
        start_scripted_policy_server(judge_garbage_rate=1.0) as srv,
        pytest.raises(json.JSONDecodeError),
    ):
        json.loads(judge(srv.url, GOLD, GOLD))


def test_cli_prints_its_address_and_serves(tok):
    cmd = [sys.executable, "-m", "asearcher.cli", "serve", "scripted-policy", "--port", "0",
           "--answers", str(sample_questions_path()), "--searches", "1,3"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[line.split().index("on") + 1].rstrip(";")
        assert get(url, "/health") == {"status": "ok"}
        out = generate(url, tok, prompt(QUESTION), rid="cli")
        assert out["text"].endswith(f"<search>{QUESTION}</search>")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) is not None
