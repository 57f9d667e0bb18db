"""The training loop end to end on real parts: a tiny random Qwen model with real gradients, the
embedded generator, the sample BM25 index, questions from the sample file. Covers the Python
API (callbacks, stop and resume, plot), synchronous mode, config errors, weight sync to our
model server over HTTP, and kill -9 at random moments followed by resume: no step repeated or
skipped, no question lost or trained on twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import asearcher
import pytest
import torch
from asearcher.exceptions import ConfigError, WeightSyncError
from asearcher.tools import LocalSearch
from run_files import first_questions, latest_step, read_jsonl
from tiny_models import make_tiny_qwen

N_QUESTIONS = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen(
        tmp_path_factory.mktemp("model") / "m", hidden_size=32, intermediate_size=64
    )


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return first_questions(tmp_path_factory.mktemp("q"), N_QUESTIONS)


def make_config(model_dir: Path, questions: Path, index: LocalSearch, out: Path, **over) -> dict:
    cfg = {
        "model": {"path": str(model_dir)},
        "data": {"train": str(questions), "epochs": 1},
        "tools": {"index": str(index.path), "top_k": 2},
        "agent": {"kind": "search_r1", "max_turns": 2, "sampling": {"max_new_tokens": 12}},
        "rollout": {
            "group_size": 2,
            "batch_size": 2,
            "max_staleness": 2,
            "max_concurrent": 8,
            "filter_zero_variance": False,
        },
        "inference": {"max_context": 2048},
        "learner": {
            "micro_batch_tokens": 2048,
            "schedule": {"kind": "constant", "lr": 1e-3},
        },
        "run": {"out_dir": str(out), "checkpoint_every": 1, "keep_last": 2},
    }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def question_ids(questions: Path) -> list[str]:
    """Ids as the engine gives them: the line's `id`, else `<file stem>-<line number>`."""
    return [q.get("id") or f"{questions.stem}-{i + 1}" for i, q in enumerate(read_jsonl(questions))]


def test_fit_trains_checkpoints_plots_and_resumes(
    tmp_path, model_dir, questions_file, sample_index
):
    out = tmp_path / "run"
    cfg = make_config(model_dir, questions_file, sample_index, out, run={"steps": 3})
    seen: list[dict] = []
    trainer = asearcher.Trainer(cfg)
    assert trainer.resumed_step == 0
    result = trainer.fit(
        callbacks=[seen.append, asearcher.callbacks.PlotCallback()], progress=False
    )
    assert result.ended_by == "steps" and result.steps == 3
    assert [r["step"] for r in seen] == [1, 2, 3]
    assert [r["version"] for r in seen] == [1, 2, 3]
    for r in seen:
        assert r["groups"] == 2 and r["trajectories"] == 4
        assert r["learner"]["loss_tokens"] > 0
        # The gate bounds admission (eta = 2), not how long a trajectory runs; these are short.
        assert r["learner"]["staleness_max"] >= 0
        assert r["rollout"]["version"] == r["version"]
    assert (out / "training.svg").read_text().startswith("<svg")
    assert [r["step"] for r in asearcher.read_metrics(out)] == [1, 2, 3]
    # Trained weights differ from the initial ones.
    before = asearcher.QwenModel.load(model_dir)
    after = asearcher.QwenModel.load(result.final_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert (before.logits(ids) - after.logits(ids)).abs().max().item() > 1e-4
    # The same config resumes after the last step and stops early from a callback.
    cfg["run"]["steps"] = 6
    again = asearcher.Trainer(cfg)
    assert again.resumed_step == 3
    result = again.fit(callbacks=[lambda r: r["step"] < 5], progress=False)
    assert result.ended_by == "stopped" and result.steps == 5 and result.resumed_from == 3
    assert [r["step"] for r in asearcher.read_metrics(out)] == [1, 2, 3, 4, 5]


def test_synchronous_mode_trains_only_on_current_policy_tokens(
    tmp_path, model_dir, questions_file, sample_index
):
    cfg = make_config(
        model_dir,
        questions_file,
        sample_index,
        tmp_path / "sync",
        rollout={"max_staleness": 0},
        run={"steps": 3},
    )
    result = asearcher.Trainer(cfg).fit(progress=False)
    assert result.steps == 3
    for r in result.history:
        assert r["learner"]["staleness_max"] == 0
        assert r["learner"]["behav_weight_max"] == pytest.approx(1.0, abs=1e-2)


def _token_parity(trajectory, answers) -> float:
    """A reward that varies within a group of a random model (the parity of its sampled token
    ids): real advantages, real updates."""
    return float(sum(i for turn in trajectory.turns for i in turn["output_ids"]) % 2)


# Timings, paths and the engine's live snapshot (`rollout`: what was admitted, running or ready
# at that instant, which depends on timing): what differs between two identical runs.
_TIMING = re.compile(r"time|seconds|_s$|per_s|_ms$|elapsed|wall|^checkpoint$|^rollout$")


def _without_timings(record):
    if isinstance(record, dict):
        return {k: _without_timings(v) for k, v in record.items() if not _TIMING.search(k)}
    if isinstance(record, list):
        return [_without_timings(v) for v in record]
    return record


def _deterministic_run(model_dir, questions_file, sample_index, out: Path, seed: int):
    cfg = make_config(
        model_dir,
        questions_file,
        sample_index,
        out,
        rollout={"max_staleness": 0, "max_concurrent": 8},
        reward={"primary": "_token_parity"},
        run={"steps": 3, "deterministic": True, "seed": seed, "checkpoint_every": 3},
    )
    cfg["agent"]["sampling"]["temperature"] = 1.0
    result = asearcher.Trainer(cfg, plugins=[_token_parity]).fit(progress=False)
    tokens = [
        (t["id"], t["reward"], [turn["output_ids"] for turn in t["turns"]])
        for t in read_jsonl(out / "trajectories.jsonl")
    ]
    return result, [_without_timings(r) for r in result.history], tokens


def test_deterministic_runs_repeat_bit_for_bit(tmp_path, model_dir, questions_file, sample_index):
    first, metrics, tokens = _deterministic_run(
        model_dir, questions_file, sample_index, tmp_path / "a", seed=3
    )
    assert first.steps == 3
    assert any(r["learner"]["loss_tokens"] > 0 for r in first.history)
    again, metrics_again, tokens_again = _deterministic_run(
        model_dir, questions_file, sample_index, tmp_path / "b", seed=3
    )
    assert tokens_again == tokens
    assert metrics_again == metrics
    weights = [(r.final_dir / "model.safetensors").read_bytes() for r in (first, again)]
    assert weights[0] == weights[1]
    _, _, tokens_other = _deterministic_run(
        model_dir, questions_file, sample_index, tmp_path / "c", seed=4
    )
    assert tokens_other != tokens
    cfg = make_config(
        model_dir, questions_file, sample_index, tmp_path / "d", run={"deterministic": True}
    )
    with pytest.raises(ConfigError, match=r"run\.deterministic.*max_staleness"):
        asearcher.Trainer(cfg)


def test_config_errors_name_the_key(tmp_path, model_dir, questions_file, sample_index):
    cfg = make_config(model_dir, questions_file, sample_index, tmp_path / "bad")
    cfg["learner"]["ppo"] = {"eps_clipp": 0.3}
    with pytest.raises(ConfigError, match=r"learner\.ppo.*eps_clipp"):
        asearcher.Trainer(cfg)
    cfg = make_config(
        model_dir, questions_file, sample_index, tmp_path / "bad", rollout={"group_size": 0}
    )
    with pytest.raises(ConfigError, match=r"rollout\.group_size"):
        asearcher.Trainer(cfg)
    toml = tmp_path / "bad.toml"
    toml.write_text(
        f'[model]\npath = "{model_dir}"\n[data]\ntrain = "{questions_file}"\n[run]\nstepz = 1\n'
    )
    with pytest.raises(ConfigError, match=r"stepz"):
        asearcher.Trainer(toml)


def test_weights_reach_our_model_server_through_disk(
    tmp_path, model_dir, questions_file, sample_index
):
    with asearcher.start_model_server(model_dir, max_running=8) as server:
        cfg = make_config(
            model_dir,
            questions_file,
            sample_index,
            tmp_path / "srv",
            inference={"backend": "sglang", "servers": [server.url], "max_running": 8},
            rollout={"max_staleness": 0},  # each batch generated by the weights just pushed
            run={"steps": 3},
        )
        result = asearcher.Trainer(cfg).fit(progress=False)
        assert result.steps == 3
    weights = sorted(p.name for p in (tmp_path / "srv" / "weights").iterdir())
    assert weights == ["v00000002", "v00000003"]  # keep_weights = 2
    versions = {
        v
        for t in asearcher.load_trajectories(tmp_path / "srv" / "trajectories.jsonl")
        for turn in t.turns
        for v in turn["output_versions"]
    }
    assert versions == {0, 1, 2}, versions


def test_a_sync_that_fails_every_step_stops_the_run(
    tmp_path, model_dir, questions_file, sample_index
):
    # A server of another model shape: it generates, but cannot load the trained weights.
    other = make_tiny_qwen(tmp_path / "other", hidden_size=48, intermediate_size=64)
    with asearcher.start_model_server(other, max_running=8) as server:
        cfg = make_config(
            model_dir,
            questions_file,
            sample_index,
            tmp_path / "bad-sync",
            inference={"backend": "sglang", "servers": [server.url], "max_failed_syncs": 2},
            run={"steps": 5},
        )
        with pytest.raises(WeightSyncError, match="2 syncs failed in a row") as e:
            asearcher.Trainer(cfg).fit(progress=False)
        assert "max_failed_syncs" in str(e.value)
    records = asearcher.read_metrics(tmp_path / "bad-sync")
    assert [r["step"] for r in records] == [1]
    assert records[0]["sync_error"], records[0]


def _train_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "asearcher.cli", "train", str(config), "--quiet"]


def test_kill_9_at_any_moment_then_resume_is_exact(
    tmp_path, model_dir, questions_file, sample_index
):
    out = tmp_path / "killed"
    cfg = make_config(model_dir, questions_file, sample_index, out)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(cfg))
    total_steps = N_QUESTIONS // 2
    env = {**os.environ, "ASEARCHER_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    kills, mid_run_kills, resumed_with_pending = 0, 0, 0
    rng = __import__("random").Random(7)
    while kills < 4:
        before = latest_step(out)
        if before >= total_steps:
            break
        proc = subprocess.Popen(
            _train_cmd(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        # Wait for this run to checkpoint a new step, then kill it a random moment later, in the
        # middle of whatever it is doing (training, saving, generating).
        deadline = time.monotonic() + 120
        while latest_step(out) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            reached = latest_step(out)
            mid_run_kills += 0 < reached < total_steps
            state = json.loads(
                (out / "checkpoints" / f"step-{reached:08d}" / "trainer_state.json").read_text()
            )
            resumed_with_pending += state["user"]["pending_groups"] > 0
        proc.communicate(timeout=60)
    final = subprocess.run(_train_cmd(config), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    assert mid_run_kills >= 1 and resumed_with_pending >= 1, (
        kills,
        mid_run_kills,
        resumed_with_pending,
    )
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, total_steps + 1))
    batches = read_jsonl(out / "batches.jsonl")
    assert [b["step"] for b in batches] == list(range(1, total_steps + 1))
    trained = Counter(g["question_id"] for b in batches for g in b["groups"])
    assert sorted(trained) == sorted(question_ids(questions_file))
    assert set(trained.values()) == {1}, trained
    for b in batches:
        for g in b["groups"]:
            assert sorted(g["samples"]) == [0, 1]
    trajectories = asearcher.load_trajectories(out / "trajectories.jsonl")
    assert Counter(t.question_id for t in trajectories) == Counter({q: 2 for q in trained})


def test_cli_overrides_reach_the_run_and_a_typed_warm_start_reads_its_trajectories(
    tmp_path, model_dir, questions_file, sample_index
):
    from asearcher.config import LearnerConfig, LrSchedule, WarmStartConfig

    out = tmp_path / "cli"
    config = tmp_path / "run.toml"
    cfg = make_config(model_dir, questions_file, sample_index, out)
    config.write_text(
        "\n".join(
            f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
            for section, values in cfg.items()
            if section not in ("agent", "learner")
        )
        + '\n[agent]\nkind = "search_r1"\nmax_turns = 2\n[agent.sampling]\nmax_new_tokens = 12\n'
    )
    env = {**os.environ, "ASEARCHER_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [*_train_cmd(config), "learner.ppo.eps_clip=0.3", "rollout.group_size=2", "run.steps=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["learner"]["ppo"]["eps_clip"] == 0.3 and saved["run"]["steps"] == 1
    assert [r["step"] for r in asearcher.read_metrics(out)] == [1]
    ws = asearcher.warm_start(
        WarmStartConfig(
            model=str(model_dir),
            trajectories=[str(out / "trajectories.jsonl")],
            out_dir=str(tmp_path / "ws"),
            batch_size=2,
            learner=LearnerConfig(
                micro_batch_tokens=2048, schedule=LrSchedule(kind="constant", lr=1e-3)
            ),
        ),
        progress=False,
    )
    assert ws.steps >= 1 and ws.trajectories >= 1
    assert (tmp_path / "ws" / "config.json").exists()
    with pytest.raises(ConfigError, match="trajectories"):
        asearcher.warm_start(WarmStartConfig(model=str(model_dir)), [], tmp_path / "x")


def test_a_bad_question_line_is_the_same_bad_line_error_as_in_the_engine(
    tmp_path, model_dir, sample_index
):
    from asearcher.exceptions import BadLineError

    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    cfg = make_config(model_dir, bad, sample_index, tmp_path / "out")
    with pytest.raises(BadLineError, match=r"train.jsonl:2"):
        asearcher.Trainer(cfg)


def test_the_plot_draws_reference_lines_and_benchmark_bands(tmp_path):
    from asearcher.plotting import plot_training

    records = [{"step": i, "reward_mean": i / 10, "f1_mean": i / 20} for i in range(1, 6)]
    (svg, *_) = plot_training(
        records,
        tmp_path / "p.svg",
        refs=[("warm start", 0.61)],
        bands=[("benchmark warm start", 0.55, 0.72)],
    )
    text = svg.read_text(encoding="utf-8")
    assert "warm start 0.610" in text
    assert "benchmark warm start 0.550-0.720" in text
    band = re.search(r'<rect [^>]*height="([\d.]+)" fill="#7f7f7f" fill-opacity', text)
    assert band and float(band.group(1)) > 5, "the band spans its interval on the y axis"
