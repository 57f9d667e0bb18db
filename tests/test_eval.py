"""``asearcher.evaluate`` / ``aevaluate`` and ``asearcher eval`` against the scripted policy server
(SGLang /generate and its OpenAI judge) on loopback, with the real BM25 index over the sample
corpus and benchmarks written to a temporary directory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asearcher
import pytest
from asearcher.cli import main
from asearcher.data import sample_questions_path, sample_tokenizer_path
from asearcher.exceptions import BadLineError, ConfigError
from asearcher.testing import start_scripted_policy_server
from asearcher.tools import Toolbox

# The default instructions end with `Question: {{ question }}` and the chat template puts
# `<|im_end|>` on that line; the scripted server reads the question to the end of its line, so the
# tests end the prompt with a line break (see the branch report).
AGENT = {"kind": "asearcher", "max_turns": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    lines = sample_questions_path().read_text().splitlines()
    for name, part in (("alpha", lines[0:4]), ("beta", lines[10:13])):
        (root / name).mkdir()
        (root / name / "test.jsonl").write_text("\n".join(part) + "\n")
    return root


@pytest.fixture(scope="module")
def agent() -> dict:
    prompt = asearcher.default_prompts("asearcher")["prompt"] + "\n"
    return {**AGENT, "prompts": {"prompt": prompt}}


@pytest.fixture(scope="module")
def policy():
    with start_scripted_policy_server(answers=sample_questions_path(), wrong_rate=0.5) as srv:
        yield srv


@pytest.fixture(scope="module")
def toolbox(sample_index) -> Toolbox:
    return Toolbox(sample_index, pages=sample_index)


def by_hand(path: Path, key: str) -> tuple[float, float]:
    runs: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        t = json.loads(line)
        runs.setdefault(t["question_id"], []).append(t["rewards"][key])
    avg = sum(sum(r) / len(r) for r in runs.values()) / len(runs)
    best = sum(max(r) for r in runs.values()) / len(runs)
    return avg, best


def test_evaluate_reports_avg_and_pass_at_k(data_dir, policy, toolbox, agent, tmp_path):
    out = tmp_path / "out"
    report = asearcher.evaluate(
        data_dir,
        [policy.url],
        sample_tokenizer_path(),
        toolbox=toolbox,
        k=3,
        output_dir=out,
        agent=agent,
        rollout={"max_concurrent": 16},
        judge={"url": policy.url, "model": "scripted-policy"},
        progress=False,
    )
    assert [b["name"] for b in report.benchmarks] == ["alpha", "beta"]
    for name, n in (("alpha", 4), ("beta", 3)):
        b = report[name]
        assert (b["questions"], b["trajectories"]) == (n, 3 * n)
        for key in ("f1", "em", "cem", "judge"):
            m = b["metrics"][key]
            assert m["avg_at_k"] <= m["pass_at_k"]
            avg, best = by_hand(out / name / "trajectories.jsonl", key)
            assert m["avg_at_k"] == pytest.approx(avg) and m["pass_at_k"] == pytest.approx(best)
    assert json.loads((out / "results.json").read_text()) == report.to_dict()
    assert "judge pass@3" in report.table()
    assert "<table>" in report._repr_html_()

    # Resuming: nothing is missing, so no request reaches the server and the report is the same.
    before = policy.stats()["requests"]
    again = asearcher.evaluate(
        data_dir,
        [policy.url],
        sample_tokenizer_path(),
        toolbox=toolbox,
        k=3,
        output_dir=out,
        agent=agent,
        judge={"url": policy.url, "model": "scripted-policy"},
        progress=False,
    )
    assert policy.stats()["requests"] == before
    assert [b["metrics"] for b in again.benchmarks] == [b["metrics"] for b in report.benchmarks]


def test_aevaluate_awaits(data_dir, policy, toolbox, agent, tmp_path):
    report = asyncio.run(
        asearcher.aevaluate(
            data_dir,
            [policy.url],
            sample_tokenizer_path(),
            benchmarks="beta",
            toolbox=toolbox,
            k=2,
            output_dir=tmp_path,
            agent=agent,
            progress=False,
        )
    )
    assert [b["name"] for b in report.benchmarks] == ["beta"]
    assert (tmp_path / "beta" / "trajectories.jsonl").exists()


def test_bad_inputs_name_what_is_wrong(data_dir, policy, toolbox, tmp_path):
    with pytest.raises(ConfigError, match="gamma"):
        asearcher.evaluate(
            data_dir,
            [policy.url],
            sample_tokenizer_path(),
            benchmarks=["gamma"],
            toolbox=toolbox,
            output_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(ConfigError, match="kk"):
        asearcher.evaluate(
            data_dir,
            [policy.url],
            sample_tokenizer_path(),
            rollout={"kk": 1},
            toolbox=toolbox,
            output_dir=tmp_path,
            progress=False,
        )
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "test.jsonl").write_text('{"question": "q?"}\n')
    with pytest.raises(BadLineError, match=r"test.jsonl:1"):
        asearcher.evaluate(
            bad,
            [policy.url],
            sample_tokenizer_path(),
            toolbox=toolbox,
            output_dir=tmp_path,
            progress=False,
        )


def test_cli_eval(data_dir, policy, sample_index, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--data-dir",
            str(data_dir),
            "--benchmarks",
            "alpha",
            "--server",
            policy.url,
            "--tokenizer",
            str(sample_tokenizer_path()),
            "--index",
            str(sample_index.path),
            "--k",
            "2",
            "--output-dir",
            str(tmp_path),
            "--max-questions",
            "2",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.splitlines()[1].startswith("alpha ")
    assert (tmp_path / "results.json").exists()


def test_cli_eval_from_a_config_file_with_overrides(
    data_dir, policy, sample_index, tmp_path, capsys
):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"data_dir: {data_dir}\nk: 1\nbenchmarks: [alpha]\nmax_questions: 1\n")
    out_dir = tmp_path / "out"
    rc = main(
        [
            "eval",
            "--config",
            str(cfg),
            "--server",
            policy.url,
            "--tokenizer",
            str(sample_tokenizer_path()),
            "--index",
            str(sample_index.path),
            "--output-dir",
            str(out_dir),
            "--quiet",
            "k=2",
            "max_questions=2",
        ]
    )
    assert rc == 0, capsys.readouterr()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["k"] == 2
    assert [b["questions"] for b in results["benchmarks"]] == [2]
    rc = main(["eval", "--server", policy.url, "--tokenizer", "t", "--index", "i", "k=0"])
    assert rc == 1  # no data_dir, k=0: a ConfigError, reported
