"""The QA synthesis agent on tinyworld, against a scripted LLM that speaks OpenAI's chat protocol
and sees only what our BM25 search returned: oracle checks against the world's ground truth
(the answer never changes, every injected fact is a true relation read verbatim in a retrieved
passage, the question resolves to the answer, hops follow the evidence chain, no replaced
entity is still named), fault modes recorded as rejections, kill -9 and resume giving the
same files, and the errors of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asearcher
import pytest
from asearcher.config import SynthConfig
from asearcher.exceptions import BadLineError, ConfigError, SystematicFailureError
from asearcher.tinyworld.synth_llm import SynthesisLLM, parse_question, resolve
from asearcher.tinyworld.world import RELATIONS, World
from asearcher.tools import LocalSearch, Toolbox

BY_NOUN = {r.noun: r for r in RELATIONS.values()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path, Path]:
    root = tmp_path_factory.mktemp("tw")
    w = World.generate(seed=3, size="small")
    w.write_corpus(root / "corpus.jsonl")
    LocalSearch.build(root / "corpus.jsonl", root / "index", progress=False)
    seeds = [q for q in w.train if len(q["chain"]) == 1][:12]
    with (root / "seeds.jsonl").open("w") as f:
        for q in seeds:
            f.write(json.dumps({"id": q["id"], "question": q["question"], "answer": q["answer"]}))
            f.write("\n")
    return w, root / "index", root / "seeds.jsonl"


def config(url: str, **over) -> SynthConfig:
    cfg = {
        "proposer": {"url": url, "model": "scripted", "timeout_s": 1.0, "max_attempts": 2},
        "solver": {"url": url, "model": "scripted", "timeout_s": 1.0, "temperature": 0.6},
        "rounds": 3,
        "solver_samples": 4,
        "max_concurrent_seeds": 4,
    }
    cfg.update(over)
    return SynthConfig.from_dict(cfg)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_grown_questions_pass_the_oracle(world, tmp_path: Path):
    w, index, seeds = world
    out = tmp_path / "out"
    with SynthesisLLM(w) as llm:
        result = asearcher.synthesize(seeds, out, config(llm.url), index=index, progress=False)
    seeds_by_id = {s["id"]: s for s in read_jsonl(seeds)}
    qas = read_jsonl(out / "qas.jsonl")
    assert result["seeds"] == 12 and result["accepted"] == len(qas) >= 6
    assert read_jsonl(out / "synth" / "test.jsonl") == qas
    provenance = {p["id"]: p for p in read_jsonl(out / "provenance.jsonl")}
    assert len(provenance) == 12
    for qa in qas:
        seed = seeds_by_id[qa["source"]]
        assert qa["answer"] == seed["answer"]  # the answer never changes
        assert resolve(w, qa["question"]) == seed["answer"][0]  # constraints -> the answer
        final = provenance[qa["id"]]["final"]
        assert qa["hops"] == 1 + qa["n_inject"] == len(parse_question(qa["question"])[0])
        assert qa["solve_rate"] == 0.0
        for fact in final["facts"]:
            subject, rest = fact["text"].rstrip(".").split(" has ")
            noun, obj = rest.split(" ", 1)
            assert w.facts[(subject, BY_NOUN[noun].name)] == obj == fact["entity_in"]
            passage_of = list(w.types)[int(fact["doc_id"])]
            assert fact["text"] in w.passage(passage_of)  # verbatim in the retrieved passage
            assert fact["entity_in"].lower() not in qa["question"].lower().split()
        # every search the edits rely on is in the provenance
        searches = [s for s in provenance[qa["id"]]["steps"] if s["kind"] == "search"]
        assert len(searches) >= qa["n_inject"]
        for fact in final["facts"]:
            assert any(fact["doc_id"] in s["detail"]["doc_ids"] for s in searches)
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] == len(qas) and report["per_accepted"]["hops"] > 1.0
    assert llm.calls["inject"] >= report["commits"]
    # Rounds make questions longer: hops per accepted QA rise with the round budget.
    with SynthesisLLM(w) as llm:
        one = asearcher.synthesize(
            seeds, tmp_path / "one", config(llm.url, rounds=1), index=index, progress=False
        )
    assert one["report"]["per_accepted"]["hops"] < report["per_accepted"]["hops"]


def test_faults_become_recorded_rejections(world, tmp_path: Path):
    w, index, seeds = world
    faults = {"500": 0.1, "timeout": 0.05, "bad_json": 0.15, "missing": 0.1}
    with SynthesisLLM(w, faults=faults, timeout_sleep_s=1.5) as llm:
        result = asearcher.synthesize(
            seeds, tmp_path / "f", config(llm.url), index=index, progress=False
        )
    reasons = result["report"]["rejects_by_reason"]
    assert reasons.get("llm_error", 0) > 0 and reasons.get("bad_json", 0) > 0, reasons
    assert result["seeds"] == 12 and result["accepted"] > 0
    for qa in read_jsonl(tmp_path / "f" / "qas.jsonl"):
        assert resolve(w, qa["question"]) == qa["answer"][0]


def test_kill_9_then_resume_gives_the_same_files(world, tmp_path: Path):
    w, index, seeds = world
    with SynthesisLLM(w, faults={"timeout": 0.1}, timeout_sleep_s=0.3) as llm:
        cfg = config(llm.url, max_concurrent_seeds=1)
        (tmp_path / "synth.json").write_text(json.dumps(cfg.to_dict()))
        cmd = [sys.executable, "-m", "asearcher", "synthesize", str(seeds), "--index", str(index)]
        cmd += ["--config", str(tmp_path / "synth.json"), "--quiet", "--out"]
        proc = subprocess.Popen([*cmd, str(tmp_path / "killed")], stderr=subprocess.PIPE)
        events = tmp_path / "killed" / "events.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if events.is_file() and events.read_text().count('"finished"') >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        finished_before = events.read_text().count('"finished"')
        assert 3 <= finished_before < 12
        resumed = subprocess.run([*cmd, str(tmp_path / "killed")], capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert f"({finished_before} read back" in resumed.stdout
        whole = subprocess.run([*cmd, str(tmp_path / "whole")], capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr
    for name in ("qas.jsonl", "provenance.jsonl", "synth/test.jsonl"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    # The log holds each seed once: none was redone.
    ids = [
        json.loads(x)["outcome"]["seed"]["id"]
        for x in events.read_text().splitlines()
        if '"finished"' in x
    ]
    assert len(ids) == len(set(ids)) == 12


def test_bad_inputs_are_named(world, tmp_path: Path):
    w, index, seeds = world
    box = Toolbox(LocalSearch(index))
    with pytest.raises(ConfigError, match="proposer"):
        asearcher.synthesize(seeds, tmp_path / "x", {}, toolbox=box, progress=False)
    with pytest.raises(ConfigError, match="prompts.propose"):
        asearcher.synthesize(
            seeds,
            tmp_path / "x",
            config("http://127.0.0.1:9", prompts={"propose": "{% if %}"}),
            toolbox=box,
            progress=False,
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "What is the birthplace of Ann?", "answer": "Rome"}\n{"question": ""}\n'
    )
    with pytest.raises(BadLineError, match=r"bad.jsonl:2: no `question`"):
        asearcher.synthesize(
            bad, tmp_path / "x", config("http://127.0.0.1:9"), toolbox=box, progress=False
        )
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadLineError, match="no seeds"):
        asearcher.synthesize(
            tmp_path / "empty.jsonl",
            tmp_path / "x",
            config("http://127.0.0.1:9"),
            toolbox=box,
            progress=False,
        )
    # An output directory written under another config is refused, not mixed.
    with SynthesisLLM(w) as llm:
        asearcher.synthesize(
            seeds, tmp_path / "o", config(llm.url, limit=2), toolbox=box, progress=False
        )
        with pytest.raises(ConfigError, match="another config"):
            asearcher.synthesize(
                seeds, tmp_path / "o", config(llm.url, rounds=1), toolbox=box, progress=False
            )
    # An unreachable endpoint is the same failure everywhere: the run stops with an error naming
    # it, and no seed is recorded as finished (a rerun with the endpoint up redoes them).
    with pytest.raises(
        SystematicFailureError, match=r"no LLM call was answered for the first 2 seeds \(proposer: "
    ):
        asearcher.synthesize(
            seeds,
            tmp_path / "down",
            config("http://127.0.0.1:9", limit=2),
            toolbox=box,
            progress=False,
        )
    assert '"finished"' not in (tmp_path / "down" / "events.jsonl").read_text()


def test_the_solve_rate_filter_drops_unsolved_easy_and_one_search_questions(
    sample_index, tmp_path: Path
):
    from asearcher.data import sample_questions_path, sample_tokenizer_path
    from asearcher.synthesis import filter_by_solve_rate
    from asearcher.testing import start_scripted_policy_server

    questions = tmp_path / "qs.jsonl"
    questions.write_text("\n".join(sample_questions_path().read_text().splitlines()[:8]) + "\n")
    agent = {
        "kind": "asearcher",
        "max_turns": 8,
        "prompts": {"prompt": asearcher.default_prompts("asearcher")["prompt"] + "\n"},
    }
    box = Toolbox(sample_index, pages=sample_index)
    with start_scripted_policy_server(answers=sample_questions_path(), wrong_rate=0.5) as srv:
        common = dict(toolbox=box, k=4, agent=agent, work_dir=tmp_path / "w", progress=False)
        result = filter_by_solve_rate(
            questions, tmp_path / "kept.jsonl", [srv.url], sample_tokenizer_path(),
            min_tool_calls=0, max_solve_rate=0.75, **common,
        )  # fmt: skip
        strict = filter_by_solve_rate(
            questions, tmp_path / "strict.jsonl", [srv.url], sample_tokenizer_path(),
            min_tool_calls=99, max_solve_rate=0.75, **common,
        )  # fmt: skip
    rows = result["questions"]
    assert len(rows) == 8 and sum(result["counts"].values()) == 8
    # The reasons follow from the saved samples, recomputed by hand.
    samples: dict[str, list[dict]] = {}
    for line in (
        (tmp_path / "w" / "runs" / "questions" / "trajectories.jsonl").read_text().splitlines()
    ):
        t = json.loads(line)
        samples.setdefault(t["question_id"], []).append(t)
    for row in rows:
        runs = samples[row["id"]]
        assert len(runs) == 4
        rate = sum(t["rewards"]["em"] >= 1.0 for t in runs) / 4
        assert row["solve_rate"] == rate
        want = "unsolved" if rate == 0 else "too_easy" if rate >= 0.75 else "kept"
        assert row["reason"] == want
    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert [q["id"] for q in kept] == [r["id"] for r in rows if r["reason"] == "kept"]
    assert all(0 < q["solve_rate"] < 0.75 for q in kept)
    # The same samples (resumed, not rerun) under a strict tool-call rule: every kept one is a
    # shortcut now.
    assert strict["counts"]["shortcut"] == result["counts"]["kept"]
    assert strict["counts"]["kept"] == 0
    assert result["counts"]["unsolved"] + result["counts"]["too_easy"] < 8


def test_a_clause_whose_own_search_finds_the_answer_is_a_shortcut(tmp_path: Path):
    # Rome's own passage names Acme's founder relation: searching "the founder of Acme" alone
    # finds the answer's passage, so injecting Ann as "the founder of Acme" is a shortcut.
    docs = [
        ("0", "Ann", "Ann is a person. Ann has birthplace Rome."),
        ("1", "Acme", "Acme is a company. Acme has founder Ann."),
        ("2", "Rome", "Rome is a city. Rome has founder Acme."),
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in docs)
    )
    index = LocalSearch.build(corpus, tmp_path / "idx", progress=False)
    seeds = tmp_path / "s.jsonl"
    seeds.write_text(json.dumps({"question": "What is the birthplace of Ann?", "answer": "Rome"}))
    w = World(
        seed=0,
        size="small",
        types={"Ann": "person", "Acme": "company", "Rome": "city"},
        facts={("Ann", "born_in"): "Rome", ("Acme", "founded_by"): "Ann"},
    )
    with SynthesisLLM(w, know_fraction=0.0) as llm:
        on = asearcher.synthesize(
            seeds, tmp_path / "on", config(llm.url), index=index.path, progress=False
        )
        off = asearcher.synthesize(
            seeds, tmp_path / "off", config(llm.url, shortcut_check=False), index=index.path,
            progress=False,
        )  # fmt: skip
    assert on["accepted"] == 0
    assert on["report"]["rejects_by_reason"]["shortcut_clause"] >= 1
    assert on["report"]["rejects_by_stage"]["shortcut"] >= 1
    assert off["accepted"] == 1
    qa = read_jsonl(tmp_path / "off" / "qas.jsonl")[0]
    assert qa["question"] == "What is the birthplace of the founder of Acme?"
