"""The embedded model server over HTTP on loopback with a tiny random Qwen2: SGLang's /generate
(ids and text, logprobs, stops, batches, concurrency) against transformers, weight updates from
disk, pause/continue, abort, the OpenAI endpoints, 400s that name the field, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from asearcher.serving import Tokenizer, start_model_server
from tiny_models import make_tiny_qwen


def post(url: str, payload: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def post_error(url: str, payload: dict) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as e:
        post(url, payload)
    return e.value.code, json.loads(e.value.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return make_tiny_qwen(root / "m1", "qwen2"), make_tiny_qwen(root / "m2", "qwen2", seed=1)


@pytest.fixture(scope="module")
def server(models):
    with start_model_server(models[0], max_running=8, served_model_name="tiny") as handle:
        yield handle.url


def hf_greedy(model_dir: Path, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out, lps = [], []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1].double()
            logprobs = torch.log_softmax(logits, -1)
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            lps.append(float(logprobs[nxt]))
            seq.append(nxt)
    return out, lps


def greedy(n: int, **extra) -> dict:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, **extra}


def test_generate_ids_greedy_matches_transformers(server, models):
    ids = [5, 17, 42, 99, 7]
    r = post(f"{server}/generate", {"input_ids": ids, "sampling_params": greedy(12),
                                    "return_logprob": True})  # fmt: skip
    want_ids, want_lps = hf_greedy(models[0], ids, 12)
    assert r["output_ids"] == want_ids
    lps = r["meta_info"]["output_token_logprobs"]
    assert [e[1] for e in lps] == want_ids
    assert [e[0] for e in lps] == pytest.approx(want_lps, abs=1e-4)
    meta = r["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 12}
    assert meta["prompt_tokens"] == 5 and meta["completion_tokens"] == 12
    assert meta["output_token_versions"] == [0] * 12 and meta["weight_version"] == "0"


def test_text_in_text_out_and_stop_strings(server, models):
    tok = Tokenizer(models[0])
    prompt = "The Glass River flows"
    r = post(f"{server}/generate", {"text": prompt, "sampling_params": greedy(10)})
    assert r["meta_info"]["prompt_tokens"] == len(tok.encode(prompt))
    assert r["text"] == tok.decode(r["output_ids"], skip_special_tokens=True)
    want_ids, _ = hf_greedy(models[0], tok.encode(prompt), 10)
    assert r["output_ids"] == want_ids
    # A stop string taken from the middle of the greedy text ends generation and is trimmed.
    full = tok.decode(r["output_ids"])
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    s = post(f"{server}/generate", {"text": prompt, "sampling_params": greedy(10, stop=[stop])})
    assert s["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert s["text"] == full[: full.index(stop)]
    params = greedy(10, stop=stop, no_stop_trim=True)
    kept = post(f"{server}/generate", {"text": prompt, "sampling_params": params})
    assert kept["text"].endswith(stop) or stop in kept["text"]


def test_batch_and_concurrent_requests_equal_sequential(server):
    prompts = [[5, 6, 7], [10, 11], [40, 41, 42, 43], [9], [100, 3, 8]]
    one = [post(f"{server}/generate", {"input_ids": p, "sampling_params": greedy(8)})["output_ids"]
           for p in prompts]  # fmt: skip
    batch = post(f"{server}/generate", {"input_ids": prompts, "sampling_params": greedy(8)})
    assert [b["output_ids"] for b in batch] == one
    with ThreadPoolExecutor(len(prompts)) as pool:
        conc = list(pool.map(lambda p: post(f"{server}/generate", {
            "input_ids": p, "sampling_params": greedy(8)})["output_ids"], prompts))  # fmt: skip
    assert conc == one


def test_pause_continue_and_abort(server):
    post(f"{server}/pause_generation", {"mode": "in_place"})
    results: dict = {}

    def run(rid: str) -> None:
        results[rid] = post(f"{server}/generate", {"input_ids": [5, 6], "rid": rid,
                                                   "sampling_params": greedy(4)})  # fmt: skip

    threads = [threading.Thread(target=run, args=(rid,)) for rid in ("keep", "drop")]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert not results, "generation went on while paused"
    assert get(f"{server}/get_server_info")["stats"]["paused"] is True
    post(f"{server}/abort_request", {"rid": "drop"})
    threads[1].join(timeout=30)
    assert results["drop"]["meta_info"]["finish_reason"]["type"] == "abort"
    post(f"{server}/continue_generation", {})
    threads[0].join(timeout=30)
    assert results["keep"]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}


def test_openai_completions_and_chat(server, models):
    from transformers import AutoTokenizer

    assert get(f"{server}/v1/models")["data"][0]["id"] == "tiny"
    c = post(f"{server}/v1/completions", {"model": "tiny", "prompt": [[5, 17, 42]],
                                          "max_tokens": 5, "temperature": 0, "logprobs": 1,
                                          "ignore_eos": True})  # fmt: skip
    want_ids, want_lps = hf_greedy(models[0], [5, 17, 42], 5)
    choice = c["choices"][0]
    assert c["object"] == "text_completion" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(want_lps, abs=1e-4)
    assert choice["text"] == Tokenizer(models[0]).decode(want_ids, skip_special_tokens=True)
    assert c["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    chat = post(f"{server}/v1/chat/completions", {"messages": msgs, "max_tokens": 4,
                                                  "temperature": 0, "logprobs": True,
                                                  "ignore_eos": True})  # fmt: skip
    ref = AutoTokenizer.from_pretrained(str(models[0]))
    prompt_ids = list(ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])  # fmt: skip
    assert chat["usage"]["prompt_tokens"] == len(prompt_ids)
    want_ids, want_lps = hf_greedy(models[0], prompt_ids, 4)
    msg = chat["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == ref.decode(want_ids, skip_special_tokens=True)
    got_lps = [e["logprob"] for e in chat["choices"][0]["logprobs"]["content"]]
    assert got_lps == pytest.approx(want_lps, abs=1e-4)


def test_bad_requests_name_the_field(server):
    cases = [
        ("/generate", {"input_ids": [1], "sampling_params": {"top_p": 2}}, "top_p"),
        ("/generate", {"input_ids": [1], "sampling_params": {"temperature": "hot"}}, "temperature"),
        ("/generate", {"input_ids": [1], "frobnicate": True}, "frobnicate"),
        ("/generate", {"input_ids": [10**9]}, "input_ids"),
        ("/generate", {"input_ids": [1], "stream": True}, "stream"),
        ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages[0]"),
        ("/update_weights_from_disk", {"model_path": "x", "weight_version": "v"}, "weight_version"),
    ]  # fmt: skip
    for path, body, field in cases:
        code, err = post_error(f"{server}{path}", body)
        assert code == 400, (path, body)
        assert field in err["error"]["message"], err
    code, err = post_error(f"{server}/v1/completions", {"model": "gpt-9", "prompt": "x"})
    assert code == 404 and err["error"]["code"] == "model_not_found"
    assert get(f"{server}/health")["status"] == "ok"


def test_update_weights_from_disk(models, tmp_path):
    with start_model_server(models[0]) as srv:
        body = {"input_ids": [5, 17, 42], "sampling_params": greedy(8)}
        before = post(f"{srv.url}/generate", body)
        bad = post_error(f"{srv.url}/update_weights_from_disk", {"model_path": str(tmp_path)})
        assert bad[1]["success"] is False and str(tmp_path) in bad[1]["message"]
        assert post(f"{srv.url}/generate", body)["output_ids"] == before["output_ids"]
        ok = post(f"{srv.url}/update_weights_from_disk", {"model_path": str(models[1])})
        assert ok["success"] is True
        after = post(f"{srv.url}/generate", body)
        assert after["output_ids"] == hf_greedy(models[1], [5, 17, 42], 8)[0]
        assert after["output_ids"] != before["output_ids"]
        assert after["meta_info"]["weight_version"] == "1"
        assert get(f"{srv.url}/get_model_info")["model_path"] == str(models[1])


def test_cli_help_and_subprocess_server(models):
    out = subprocess.run([sys.executable, "-m", "asearcher.cli", "serve", "model", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--model" in out and "--max-running" in out and "--served-model-name" in out
    cmd = [sys.executable, "-m", "asearcher.cli", "serve", "model", "--model", str(models[0]),
           "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "model server on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split()[0]
        r = post(f"{url}/generate", {"input_ids": [5, 17, 42], "sampling_params": greedy(3)})
        assert r["output_ids"] == hf_greedy(models[0], [5, 17, 42], 3)[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
