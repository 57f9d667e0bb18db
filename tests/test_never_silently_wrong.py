"""Never silently wrong: every path that used to print a plausible result with exit code 0 (a
resumed run of another setup, failures counted as done, a dead tool, a plugin that always
raises, cache keys by path, a trainer that filtered everything, a tokenizer without a chat
template, a refused resume that still wrote) now fails loudly, counts the failures, or hits.
Real parts throughout: the scripted policy server on loopback, the sample BM25 index, our
retrieval server protocol, a tiny random Qwen model for training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import asearcher
import pytest
from asearcher.cli import main
from asearcher.data import sample_questions_path, sample_tokenizer_path
from asearcher.exceptions import (
    BadLineError,
    ConfigError,
    DataError,
    ResumeMismatchError,
    RunFailedError,
    SystematicFailureError,
    TrainingDataError,
)
from asearcher.testing import start_scripted_policy_server
from asearcher.tools import LocalSearch, ResultCache, Toolbox
from conftest import free_port
from tiny_models import make_tiny_qwen


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    lines = sample_questions_path().read_text().splitlines()
    (root / "alpha").mkdir()
    (root / "alpha" / "test.jsonl").write_text("\n".join(lines[:2]) + "\n")
    return root


@pytest.fixture(scope="module")
def policy():
    with start_scripted_policy_server(answers=sample_questions_path(), wrong_rate=0.3) as srv:
        yield srv


def prompt_file(tmp: Path) -> Path:
    """An eval config whose prompt ends in a line break (the scripted server reads the question
    to the end of its line)."""
    prompt = asearcher.default_prompts("asearcher")["prompt"] + "\n"
    path = tmp / "eval.json"
    path.write_text(json.dumps({"agent": {"max_turns": 8, "prompts": {"prompt": prompt}}}))
    return path


def eval_cli(data_dir: Path, out: Path, server: str, *extra: str, tools: list[str]) -> int:
    return main(
        [
            "eval",
            "--config",
            str(prompt_file(out.parent)),
            "--data-dir",
            str(data_dir),
            "--server",
            server,
            "--tokenizer",
            str(sample_tokenizer_path()),
            *tools,
            "--k",
            "2",
            "--output-dir",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_1_a_resume_with_another_agent_or_turns_is_refused_and_writes_nothing(
    data_dir, policy, sample_index, tmp_path, capsys
):
    out = tmp_path / "out"
    tools = ["--index", str(sample_index.path)]
    assert eval_cli(data_dir, out, policy.url, tools=tools) == 0
    before = files_of(out)
    capsys.readouterr()
    assert eval_cli(data_dir, out, policy.url, "--agent", "search_r1", tools=tools) == 1
    err = capsys.readouterr().err
    assert 'agent.kind: "asearcher" -> "search_r1"' in err, err
    assert "--restart" in err and "--allow-changes" in err
    assert eval_cli(data_dir, out, policy.url, "--max-turns", "3", tools=tools) == 1
    assert "agent.max_turns: 8 -> 3" in capsys.readouterr().err
    assert files_of(out) == before, "a refused resume changes nothing on disk"
    # Unchanged: resumed, nothing re-run, the same metrics.
    assert eval_cli(data_dir, out, policy.url, tools=tools) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["benchmarks"][0]["ran"] == 0 and results["benchmarks"][0]["resumed"] == 4
    saved = json.loads(before["results.json"])
    assert results["benchmarks"][0]["metrics"] == saved["benchmarks"][0]["metrics"]
    # Deliberately: --restart starts over with the other agent.
    assert eval_cli(
        data_dir, out, policy.url, "--agent", "search_r1", "--restart", tools=tools
    ) in (
        0,
        1,
    )
    trajectories = (out / "alpha" / "trajectories.jsonl").read_text().splitlines()
    assert {json.loads(t)["agent"] for t in trajectories} == {"search_r1"}


def test_2_failures_are_not_done_a_rerun_with_the_right_server_runs_them(
    data_dir, policy, sample_index, tmp_path, capsys
):
    out = tmp_path / "out"
    tools = ["--index", str(sample_index.path)]
    dead = f"http://127.0.0.1:{free_port()}"
    assert eval_cli(data_dir, out, dead, tools=tools) == 1
    err = capsys.readouterr().err
    assert "every trajectory failed (4 of 4)" in err and "inference" in err, err
    assert json.loads((out / "results.json").read_text())["benchmarks"][0]["failed"] == 4
    assert eval_cli(data_dir, out, policy.url, tools=tools) == 0
    b = json.loads((out / "results.json").read_text())["benchmarks"][0]
    assert (b["resumed"], b["ran"], b["failed"]) == (0, 4, 0)
    reruns = [
        json.loads(t) for t in (out / "alpha" / "trajectories.jsonl").read_text().splitlines()
    ]
    assert all(t["earlier_errors"][0]["kind"] == "inference" for t in reruns[4:])
    shown = repr(asearcher.load_trajectories(out / "alpha" / "trajectories.jsonl")[0])
    assert "Some(" not in shown and "answer=None" in shown, shown


def test_3_a_dead_retrieval_server_fails_the_run(data_dir, policy, tmp_path, capsys):
    out = tmp_path / "out"
    dead = f"http://127.0.0.1:{free_port()}"
    rc = eval_cli(data_dir, out, policy.url, tools=["--retrieval", dead])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "tool call" in err and ("tools.*" in err or "toolbox" in err), err


def test_4_a_plugin_that_always_raises_shows_as_errors(data_dir, policy, sample_index, tmp_path):
    def brevity(trajectory):
        raise ValueError("no")

    prompt = asearcher.default_prompts("asearcher")["prompt"] + "\n"
    report = asearcher.evaluate(
        data_dir,
        [policy.url],
        sample_tokenizer_path(),
        toolbox=Toolbox(sample_index, pages=sample_index),
        agent={"max_turns": 8, "prompts": {"prompt": prompt}},
        k=2,
        output_dir=tmp_path / "out",
        plugins=[brevity],
        progress=False,
    )
    b = report["alpha"]
    assert b["reward_errors"]["brevity"] == 4 and b["with_reward_errors"] == 4
    table = report.table()
    assert "brevity avg@2" in table and "error" in table and "reward err" in table, table
    assert "brevity" in report.metric_keys()
    assert "error" in report._repr_html_()


def test_5_cache_replay_hits_the_same_index_under_another_path(sample_index, tmp_path):
    copy = tmp_path / "elsewhere" / "index"
    shutil.copytree(sample_index.path, copy)
    cache = tmp_path / "cache.jsonl"
    live = Toolbox(LocalSearch(str(sample_index.path) + "/"), cache=ResultCache(cache))
    first = live.search("capital of France")
    for spelling in (str(copy), str(copy) + "/", str(copy.parent / "." / "index")):
        replay = Toolbox(LocalSearch(spelling), cache=ResultCache(cache, mode="replay"))
        again = replay.search("capital of France")
        assert again.cached and again.text == first.text, spelling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen(
        tmp_path_factory.mktemp("model") / "m", hidden_size=32, intermediate_size=64
    )


def train_config(model_dir: Path, index: LocalSearch, out: Path, tmp: Path, **over) -> dict:
    questions = tmp / "train.jsonl"
    questions.write_text("\n".join(sample_questions_path().read_text().splitlines()[:6]) + "\n")
    cfg = {
        "model": {"path": str(model_dir)},
        "data": {"train": str(questions)},
        "tools": {"index": str(index.path), "top_k": 2},
        "agent": {"kind": "search_r1", "max_turns": 2, "sampling": {"max_new_tokens": 8}},
        "rollout": {"group_size": 2, "batch_size": 2, "max_concurrent": 8},
        "inference": {"max_context": 1024},
        "learner": {"micro_batch_tokens": 1024, "schedule": {"kind": "constant", "lr": 1e-3}},
        "run": {"out_dir": str(out), "steps": 1},
    }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def test_6_a_trainer_that_filtered_every_group_says_why(model_dir, sample_index, tmp_path):
    # A random model never answers right: every group has zero reward variance.
    cfg = train_config(model_dir, sample_index, tmp_path / "run", tmp_path)
    with pytest.raises(TrainingDataError) as e:
        asearcher.Trainer(cfg).fit(progress=False)
    msg = str(e.value)
    assert "zero reward variance" in msg and "rollout.filter_zero_variance" in msg, msg
    assert "groups filtered" in msg
    assert "scored 0 on every sample" in msg and "Start from a stronger model" in msg, msg


def test_7_a_tokenizer_without_a_chat_template_is_named(policy, sample_index, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(sample_tokenizer_path(), tok)
    cfg_file = tok / "tokenizer_config.json"
    config = json.loads(cfg_file.read_text())
    config.pop("chat_template", None)
    cfg_file.write_text(json.dumps(config))
    (tok / "chat_template.jinja").unlink(missing_ok=True)
    questions = [json.loads(line) for line in sample_questions_path().read_text().splitlines()[:8]]
    with (
        pytest.raises(asearcher.AsearcherError) as e,
        asearcher.RolloutEngine(
            questions, [policy.url], tok, toolbox=Toolbox(sample_index), config={"group_size": 2}
        ) as engine,
    ):
        while engine.next_batch(2):
            pass
    assert "chat template" in str(e.value).lower(), e.value


def test_8_a_refused_train_resume_writes_nothing_and_a_changed_lr_is_refused(
    model_dir, sample_index, tmp_path
):
    out = tmp_path / "run"
    cfg = train_config(
        model_dir, sample_index, out, tmp_path, rollout={"filter_zero_variance": False}
    )
    asearcher.Trainer(cfg).fit(progress=False)
    config_before = (out / "config.json").read_bytes()
    fingerprint_before = (out / "fingerprint.json").read_bytes()
    for section, change, key in (
        ("rollout", {"group_size": 4, "max_concurrent": 8}, "rollout.group_size"),
        ("learner", {"schedule": {"kind": "constant", "lr": 5e-4}}, "learner.schedule.lr"),
    ):
        changed = json.loads(json.dumps(cfg))
        changed[section].update(change)
        changed["run"]["steps"] = 2
        with pytest.raises(ResumeMismatchError) as e:
            asearcher.Trainer(changed)
        assert key in str(e.value), e.value
        assert (out / "config.json").read_bytes() == config_before
        assert (out / "fingerprint.json").read_bytes() == fingerprint_before
    # Deliberately, with the change recorded.
    changed["run"]["allow_changes"] = True
    trainer = asearcher.Trainer(changed)
    assert trainer.resumed_step == 1
    history = json.loads((out / "fingerprint.json").read_text())["history"]
    assert any(c["key"] == "learner.schedule.lr" for c in history[0]["changes"])
    # A missing data file: refused before the output directory exists.
    missing = json.loads(json.dumps(cfg))
    missing["data"]["train"] = str(tmp_path / "nope.jsonl")
    missing["run"]["out_dir"] = str(tmp_path / "never")
    with pytest.raises(asearcher.AsearcherError, match="nope.jsonl"):
        asearcher.Trainer(missing)
    assert not (tmp_path / "never").exists()


def test_8_forgetting_the_toolbox_stops_the_run(data_dir, policy, tmp_path):
    prompt = asearcher.default_prompts("asearcher")["prompt"] + "\n"
    with pytest.raises((SystematicFailureError, RunFailedError)) as e:
        asearcher.evaluate(
            data_dir,
            [policy.url],
            sample_tokenizer_path(),
            agent={"max_turns": 8, "prompts": {"prompt": prompt}},
            k=2,
            output_dir=tmp_path / "out",
            progress=False,
        )
    assert "toolbox" in str(e.value), e.value


def test_duplicate_passage_ids_are_reported_at_build_time(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": "p1", "contents": "alpha"}, {"id": "p2", "contents": "beta"}]
    rows += [{"id": "p1", "contents": "gamma"}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["index", "build", str(corpus), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    assert "1 passages reuse an earlier passage's id" in capsys.readouterr().out


def test_data_errors_are_labelled_data_errors_and_write_nothing(
    policy, model_dir, sample_index, tmp_path, capsys
):
    # An empty benchmark used to score "n 0" with exit code 0; a question id twice was a
    # ConfigError. Both are DataErrors naming the file, before anything is written.
    lines = sample_questions_path().read_text().splitlines()
    cases = {
        "empty": "\n\n",
        "twice": "\n".join([json.dumps({**json.loads(lines[0]), "id": "q1"})] * 2) + "\n",
        "bad": lines[0] + "\n{not json\n",
    }
    for name, text in cases.items():
        data = tmp_path / name
        (data / "bench").mkdir(parents=True)
        (data / "bench" / "test.jsonl").write_text(text)
        out = tmp_path / f"out-{name}"
        assert eval_cli(data, out, policy.url, tools=["--index", str(sample_index.path)]) == 1
        err = capsys.readouterr().err
        assert str(data / "bench" / "test.jsonl") in err, (name, err)
        assert not out.exists(), f"{name}: nothing is written for bad data"
        with pytest.raises(DataError) as e:
            asearcher.evaluate(
                data, [policy.url], sample_tokenizer_path(), output_dir=out, progress=False
            )
        assert not isinstance(e.value, ConfigError), (name, type(e.value))
        assert isinstance(e.value, ValueError)
    assert "no questions" in str(_eval_error(tmp_path / "empty", policy))
    assert "question id `q1` occurs twice" in str(_eval_error(tmp_path / "twice", policy))
    assert isinstance(_eval_error(tmp_path / "bad", policy), BadLineError)
    # Training on an empty data file: the file is named, no run directory is made.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = train_config(model_dir, sample_index, tmp_path / "run", tmp_path)
    cfg["data"]["train"] = str(empty)
    with pytest.raises(DataError, match="no questions") as e:
        asearcher.Trainer(cfg).fit(progress=False)
    assert str(empty) in str(e.value)
    assert not (tmp_path / "run").exists()


def _eval_error(data: Path, policy) -> Exception:
    with pytest.raises(DataError) as e:
        asearcher.evaluate(data, [policy.url], sample_tokenizer_path(), progress=False)
    return e.value


def test_a_methods_work_with_asyncio_run(policy, sample_index):
    import asyncio

    prompt = asearcher.default_prompts("asearcher")["prompt"] + "\n"
    questions = [json.loads(line) for line in sample_questions_path().read_text().splitlines()[:2]]
    with asearcher.RolloutEngine(
        questions,
        [policy.url],
        sample_tokenizer_path(),
        toolbox=Toolbox(sample_index, pages=sample_index),
        agent={"max_turns": 8, "prompts": {"prompt": prompt}},
        config={"group_size": 1, "max_staleness": None},
    ) as engine:
        groups = asyncio.run(engine.anext_batch(2))  # made before the loop runs
    assert len(groups) == 2


def test_each_training_step_counts_its_failures_per_plugin(model_dir, sample_index, tmp_path):
    def always_raises(trajectory):
        raise ValueError("no")

    cfg = train_config(
        model_dir, sample_index, tmp_path / "run", tmp_path, rollout={"filter_zero_variance": False}
    )
    result = asearcher.Trainer(cfg, plugins=[always_raises]).fit(progress=False)
    errors = result.history[0]["errors"]
    assert errors["reward_errors"]["always_raises"] == 4, errors
    assert errors["failed"] == 0 and errors["with_tool_errors"] >= 0


def test_search_into_a_closed_pipe_prints_no_traceback(sample_index):
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "asearcher",
        "search",
        str(sample_index.path),
        "war river city world",  # ~270 KB of results: more than a pipe buffers
        "-k",
        "2000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # what `| head -1` reads, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
