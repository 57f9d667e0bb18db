"""The typed configs (``asearcher.config``, generated from the Rust schema): fresh generated
files, defaults equal to Rust's, discoverable docs, files and ``a.b.c=v`` overrides read by
Rust, dotted-key errors from every entry point and from the command line, before any model is
loaded; and progress lines (not carriage returns) when output is a log."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asearcher
import pytest
from asearcher import _core, config
from asearcher.data import sample_questions_path, sample_tokenizer_path
from asearcher.exceptions import AsearcherIOError, BadLineError, ConfigError
from asearcher.testing import start_scripted_policy_server

REPO = Path(__file__).resolve().parents[1]
ROOTS = json.loads(_core.config_schema())["roots"]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config", REPO / "scripts" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_config"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_fresh():
    stale = _generator().stale()
    assert not stale, f"stale generated files {stale}: run python scripts/gen_config.py"


@pytest.mark.parametrize("root", ROOTS)
def test_dataclass_defaults_equal_rusts(root):
    cls = getattr(config, root)
    assert cls().to_dict() == _core.config_defaults(root)


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def test_every_option_is_discoverable_with_its_doc():
    cfg = config.TrainConfig()
    shown = str(cfg)
    for key in _leaves(cfg.to_dict()):
        assert key.rsplit(".", 1)[-1] in shown, key
    # help(): the class docstring lists each field with Rust's doc line.
    doc = inspect.getdoc(config.PpoConfig)
    assert "eps_clip" in doc and "Lower clip" in doc
    names = {f.name for f in dataclasses.fields(config.TrainConfig)}
    assert names == {"model", "data", "tools", "agent", "reward", "rollout", "inference"} | {
        "learner",
        "run",
    }
    assert isinstance(cfg.learner.ppo, config.PpoConfig)
    assert cfg.learner.ppo.eps_clip == 0.2
    # str() is TOML that reads back as the same config.
    tomllib = pytest.importorskip("tomllib")
    assert _drop_nones(tomllib.loads(shown)) == _drop_nones(cfg.to_dict())


def _drop_nones(d):
    if isinstance(d, dict):
        return {k: _drop_nones(v) for k, v in d.items() if v is not None}
    return d


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg" / "run.toml"
    path.parent.mkdir()
    path.write_text(
        textwrap.dedent(
            """
            [model]
            path = "model"
            [data]
            train = "train.jsonl"
            [rollout]
            group_size = 2
            max_concurrent = 8
            """
        )
    )
    return path


def test_files_and_overrides_are_read_by_rust(tmp_path):
    path = _write_config(tmp_path)
    cfg = config.TrainConfig.from_file(path, "learner.ppo.eps_clip=0.3", "rollout.group_size=4")
    assert cfg.learner.ppo.eps_clip == 0.3
    assert cfg.rollout.group_size == 4
    assert cfg.rollout.max_concurrent == 8
    assert Path(cfg.model.path) == path.parent / "model"  # relative to the file
    assert Path(cfg.run.out_dir) == path.parent / "runs/train"  # the default, resolved too
    again = cfg.override("learner.schedule.lr=1e-4", "run.steps=null", "agent.max_turns=3")
    assert again.learner.schedule.lr == 1e-4
    assert again.run.steps is None
    assert again.agent.max_turns == 3
    assert cfg.learner.schedule.lr != 1e-4  # override() returns a copy
    assert cfg.replace(run=cfg.run.replace(steps=9)).run.steps == 9
    assert config.TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_and_json_files(tmp_path):
    (tmp_path / "c.yaml").write_text("k: 2\ndata_dir: bench\nrollout:\n  max_concurrent: 4\n")
    cfg = config.EvalConfig.from_file(tmp_path / "c.yaml", "judge={url: 'http://x', model: m}")
    assert cfg.k == 2 and cfg.rollout.max_concurrent == 4
    assert Path(cfg.data_dir) == tmp_path / "bench"
    assert isinstance(cfg.judge, config.JudgeConfig) and cfg.judge.max_retries == 3
    (tmp_path / "p.json").write_text('{"max_attempts": 2}')
    assert config.PoolConfig.from_file(tmp_path / "p.json").max_attempts == 2


@pytest.mark.parametrize(
    ("setting", "key", "why"),
    [
        ("learner.ppo.eps_clipp=0.3", "learner.ppo.eps_clipp", "did you mean `eps_clip`"),
        ("rollout.group_size=abc", "rollout.group_size", "abc"),
        ("rollout.group_size=0", "rollout.group_size", "at least 1"),
        ("learner.ppo.eps_clip.x=1", "learner.ppo.eps_clip", "not a table"),
        ("run.steps", "run.steps", "no `=`"),
        ("zzz.a=1", "zzz", "unknown key"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, setting, key, why):
    path = _write_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        config.TrainConfig.from_file(path, setting)
    assert f"`{key}`" in str(err.value) and why in str(err.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(AsearcherIOError, match="nope.toml"):
        config.TrainConfig.from_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1")
    with pytest.raises(ConfigError, match="bad.yaml"):
        config.TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match="model.path"):
        config.TrainConfig().validate()
    with pytest.raises(ConfigError, match="part of a larger config"):
        config.PpoConfig.from_file(bad)
    with pytest.raises(ConfigError, match=r"`rollout\.group_sise`.*unknown key"):
        config.TrainConfig.from_dict({"rollout": {"group_sise": 2}})


def test_cli_override_errors_come_before_any_model_is_loaded(tmp_path):
    path = _write_config(tmp_path)  # model/ does not exist: loading it would fail differently
    cmd = [sys.executable, "-m", "asearcher.cli", "train", str(path), "--quiet"]
    for setting, key in [
        ("learner.ppo.eps_clipp=0.3", "learner.ppo.eps_clipp"),
        ("rollout.group_size=0", "rollout.group_size"),
    ]:
        done = subprocess.run(
            [*cmd, "learner.ppo.eps_clip=0.3", setting], capture_output=True, text=True
        )
        assert done.returncode == 1, done.stderr
        assert f"`{key}`" in done.stderr, done.stderr
        assert "config.json" not in done.stderr, done.stderr


def test_cli_config_shows_a_resolved_config(tmp_path):
    path = _write_config(tmp_path)
    run = [sys.executable, "-m", "asearcher.cli", "config"]
    done = subprocess.run(
        [*run, "train", str(path), "rollout.group_size=4", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(done.stdout)
    assert shown["rollout"]["group_size"] == 4
    assert Path(shown["model"]["path"]) == path.parent / "model"
    done = subprocess.run([*run, "pool"], capture_output=True, text=True, check=True)
    assert "max_attempts = 6" in done.stdout


def test_typed_configs_go_through_the_entry_points_validated_by_rust(tmp_path):
    tok = sample_tokenizer_path()
    questions = sample_questions_path()
    urls = ["http://127.0.0.1:9"]
    with pytest.raises(ConfigError, match="group_size"):
        asearcher.RolloutEngine(questions, urls, tok, config=config.RolloutConfig(group_size=0))
    with pytest.raises(ConfigError, match=r"agent\.max_turnz"):
        asearcher.RolloutEngine(questions, urls, tok, agent={"max_turnz": 2})
    with pytest.raises(ConfigError, match="request_timeout_secs"):
        asearcher.InferencePool(urls, config=config.PoolConfig(request_timeout_secs=-1.0))
    bench = tmp_path / "data" / "b"
    bench.mkdir(parents=True)
    (bench / "test.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ConfigError, match=r"`k`"):
        asearcher.evaluate(config.EvalConfig(data_dir=str(tmp_path / "data"), k=0), urls, tok)


def test_the_same_bad_question_line_raises_the_same_class_everywhere(tmp_path):
    """One error mapping: a malformed questions line is a BadLineError naming file:line whether
    it reaches Rust through the rollout engine, an evaluation or the trainer."""
    bench = tmp_path / "data" / "b"
    bench.mkdir(parents=True)
    bad = bench / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    tok = sample_tokenizer_path()
    urls = ["http://127.0.0.1:9"]
    raised = []
    with pytest.raises(BadLineError, match=r"test.jsonl:2") as e1:
        asearcher.RolloutEngine(bad, urls, tok)
    raised.append(type(e1.value))
    with pytest.raises(BadLineError, match=r"test.jsonl:2") as e2:
        asearcher.evaluate(tmp_path / "data", urls, tok, progress=False)
    raised.append(type(e2.value))
    with pytest.raises(BadLineError, match=r"test.jsonl:2") as e3:
        start_scripted_policy_server(answers=bad)
    raised.append(type(e3.value))
    assert len(set(raised)) == 1  # the trainer's case is in test_training.py


def test_progress_is_plain_lines_when_stderr_is_a_log():
    script = textwrap.dedent(
        """
        import time
        from asearcher._progress import progress_bar
        bar = progress_bar(total=40, desc="work", unit="it")
        for _ in range(40):
            time.sleep(0.01)
            bar.update(1)
            bar.set_postfix(loss="0.5", refresh=False)
        bar.close()
        """
    )
    env = {**os.environ, "ASEARCHER_PROGRESS_INTERVAL": "0.1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 2 <= len(lines) <= 12, lines
    assert all(line.startswith("work: ") for line in lines), lines
    assert "40/40" in lines[-1]


@pytest.mark.parametrize(
    ("setting", "old", "new"),
    [
        ("learner.filter_zero_variance=true", "learner.filter_zero_variance", "rollout."),
        ("rollout.seed=3", "rollout.seed", "run.seed"),
    ],
)
def test_old_keys_are_refused_naming_the_new_one(tmp_path, setting, old, new):
    path = _write_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        config.TrainConfig.from_file(path, setting)
    assert f"`{old}`" in str(err.value) and new in str(err.value)
    with pytest.raises(ConfigError, match="run.seed"):
        asearcher.RolloutEngine(
            sample_questions_path(),
            ["http://127.0.0.1:9"],
            sample_tokenizer_path(),
            config={"seed": 1},
        )


def test_one_knob_each_for_filtering_seed_and_concurrency():
    cfg = config.TrainConfig()
    assert not hasattr(cfg.learner, "filter_zero_variance")
    assert not hasattr(cfg.rollout, "seed")
    assert cfg.rollout.filter_zero_variance is None  # auto: on in training for groups of 2+
    assert cfg.inference.max_running is None  # follows rollout.max_concurrent


def test_trainer_primary_keyword_points_at_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"reward\.primary"):
        asearcher.Trainer(_write_config(tmp_path), primary="f1")


def test_engine_configs_may_be_files(tmp_path):
    (tmp_path / "rollout.toml").write_text("group_size = 0\n")
    with pytest.raises(ConfigError, match="group_size"):
        asearcher.RolloutEngine(
            sample_questions_path(),
            ["http://127.0.0.1:9"],
            sample_tokenizer_path(),
            config=tmp_path / "rollout.toml",
        )
    (tmp_path / "pool.yaml").write_text("max_attemps: 2\n")
    with pytest.raises(ConfigError, match="did you mean `max_attempts`"):
        asearcher.InferencePool(["http://127.0.0.1:9"], config=tmp_path / "pool.yaml")


def test_tool_clients_take_typed_settings_with_keywords_on_top(retrieval_server):
    from asearcher.tools import PageReader, RetrievalClient, WebSearch

    settings = config.RetrievalSettings(endpoints=[retrieval_server], retries=0)
    client = RetrievalClient(config=settings)
    assert client.endpoints == [retrieval_server]
    assert client.search("university", k=2)
    with pytest.raises(ConfigError, match="timeout_s"):
        RetrievalClient(config=settings, timeout=-1.0)
    with pytest.raises(ConfigError, match="reader_url"):
        PageReader(config=config.PageReaderSettings(mode="jina"))
    with pytest.raises(ConfigError, match="'direct', 'jina'"):
        PageReader(mode="bogus")
    with pytest.raises(ConfigError, match="did you mean `timeout_s`"):
        PageReader(config={"timeout": 3})
    missing = config.WebSearchSettings(api_key_env="ASEARCHER_NO_SUCH_KEY")
    assert missing.validate() == missing  # checks need no secret
    with pytest.raises(ConfigError, match="ASEARCHER_NO_SUCH_KEY"):
        WebSearch(config=missing)
