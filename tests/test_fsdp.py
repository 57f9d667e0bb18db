"""The FSDP2 learner (asearcher.distributed) under real torchrun processes on the CPU (gloo):
one optimizer step on 2 ranks equals the same step on 1 rank and the embedded tch learner's
step on the same scored groups, for Qwen2 (untied) and Qwen3 (tied); the plan's partition."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import asearcher
import pytest
import torch
from asearcher import _core
from asearcher.config import LearnerConfig
from asearcher.distributed import plan_ppo_step, tch_ppo_step
from safetensors.torch import load_file
from tiny_models import make_tiny_qwen

pytest.importorskip("transformers")

WORKER = Path(__file__).parent / "distributed" / "ppo_step_worker.py"


def _turn(prompt: list[int], output: list[int], logprobs: list[float], prefix: int) -> dict:
    return {
        "role": "agent",
        "prompt_prefix_len": prefix,
        "prompt_ids": prompt,
        "output_ids": output,
        "output_logprobs": logprobs,
        "output_versions": [0] * len(output),
        "output_text": "",
        "finish": "stop",
        "action": None,
        "issues": [],
        "tool": None,
        "server": None,
        "resends": 0,
        "gen_latency_ms": 0.0,
    }


def _trajectory(q: str, sample: int, turns: list[dict], reward: float) -> str:
    return json.dumps(
        {
            "id": f"{q}#{sample}",
            "question_id": q,
            "sample": sample,
            "question": q,
            "answers": [],
            "agent": "test",
            "turns": turns,
            "answer": None,
            "stop_reason": "answered",
            "rewards": {},
            "reward": reward,
            "errors": [],
            "started_at": 0.0,
            "elapsed_s": 0.0,
            "metadata": {},
        }
    )


def make_groups(vocab: int, seed: int = 0) -> list[list[str]]:
    """Four groups of three: varied lengths, a two-turn trajectory (tool tokens in between,
    masked), one zero-variance group (filtered)."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    def lps(n: int) -> list[float]:
        return [rng.uniform(-7.0, -4.0) for _ in range(n)]

    groups = []
    for g in range(4):
        trajs = []
        for k in range(3):
            prompt, out = ids(4 + g), ids(3 + (g * 3 + k * 2) % 9)
            turns = [_turn(prompt, out, lps(len(out)), 0)]
            if (g, k) == (1, 2):
                tool, out2 = ids(5), ids(4)
                turns.append(_turn(tool, out2, lps(4), len(prompt) + len(out)))
            reward = 0.5 if g == 3 else float((g + k) % 3) / 2
            trajs.append(_trajectory(f"q{g}", k, turns, reward))
        groups.append(trajs)
    return groups


LEARNER = {
    "schedule": {"lr": 1e-3},
    "micro_batch_tokens": 24,
    "ppo": {"minibatches": 2},
    "fsdp": {"param_dtype": "float32", "export_dtype": "float32", "timeout_s": 120.0},
}


def run_fsdp(tmp: Path, model: Path, groups, nproc: int, name: str, **extra) -> Path:
    out = tmp / name
    spec = tmp / f"{name}.json"
    spec.write_text(
        json.dumps(
            {
                "model": str(model),
                "groups": groups,
                "version": 1,
                "learner": LEARNER,
                "out": str(out),
                **extra,
            }
        )
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        str(spec),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load_weights(directory: Path) -> dict:
    """Every tensor of an HF export, sharded or not."""
    out: dict = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_weights_close(a: Path, b: Path, rtol: float) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert set(wa) == set(wb)
    for name in wa:
        diff = (wa[name] - wb[name]).norm() / wb[name].norm().clamp_min(1e-12)
        assert diff <= rtol, f"{name}: relative difference {float(diff):.2e}"


@pytest.mark.parametrize(
    ("variant", "tied"), [("qwen2", False), ("qwen3", True)], ids=["qwen2-untied", "qwen3-tied"]
)
def test_fsdp_step_on_two_ranks_equals_one_rank_and_the_tch_learner(tmp_path, variant, tied):
    model = make_tiny_qwen(
        tmp_path / "model", variant, tie_word_embeddings=tied, hidden_size=32, layers=2
    )
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    groups = make_groups(vocab)
    cfg = LearnerConfig.from_dict(LEARNER).to_dict()
    trajs = [[_core.Trajectory.from_json(t) for t in g] for g in groups]
    tch_stats = tch_ppo_step(model, trajs, 1, cfg, tmp_path / "tch")
    one = run_fsdp(tmp_path, model, groups, 1, "one")
    two = run_fsdp(tmp_path, model, groups, 2, "two")

    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(two / "model.safetensors"))
    moved = max(float((after[n] - before[n]).abs().max()) for n in after)
    assert moved > 1e-4, "the step changed nothing"
    assert_weights_close(two, one, 1e-5)
    assert_weights_close(two, tmp_path / "tch", 1e-5)

    s1 = json.loads((one / "stats.json").read_text())["stats"]
    s2 = json.loads((two / "stats.json").read_text())["stats"]
    for key in ("loss", "grad_norm", "lr", "clip_frac", "behav_weight_mean", "approx_kl"):
        assert s2[key] == pytest.approx(tch_stats[key], rel=1e-4, abs=1e-6), key
        assert s1[key] == pytest.approx(tch_stats[key], rel=1e-4, abs=1e-6), key
    assert s2["skipped"] is False
    assert tch_stats["groups_filtered_zero_variance"] == 1


def test_a_rank_with_no_sequence_still_joins_and_the_step_equals_the_tch_step(tmp_path):
    model = make_tiny_qwen(tmp_path / "model", "qwen2", hidden_size=32, layers=2)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    groups = make_groups(vocab)[:1]  # one group: rank 1 gets only empty micro-batches
    trajs = [[_core.Trajectory.from_json(t) for t in g] for g in groups]
    plan, _ = plan_ppo_step(trajs, 1, LearnerConfig.from_dict(LEARNER).to_dict(), 2)
    assert all(not mb["input_ids"] for m in plan["ranks"][1] for mb in m)
    tch_stats = tch_ppo_step(model, trajs, 1, LearnerConfig.from_dict(LEARNER), tmp_path / "tch")
    two = run_fsdp(tmp_path, model, groups, 2, "idle", max_shard_bytes=20_000)
    index = json.loads((two / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2  # a sharded export, as HF writes one
    assert_weights_close(two, tmp_path / "tch", 1e-5)
    assert asearcher.QwenModel.load(two).config["num_hidden_layers"] == 2  # our loader reads it
    stats = json.loads((two / "stats.json").read_text())["stats"]
    assert stats["loss"] == pytest.approx(tch_stats["loss"], rel=1e-4, abs=1e-6)
    assert stats["grad_norm"] == pytest.approx(tch_stats["grad_norm"], rel=1e-4)


def test_fused_head_equals_the_materialized_log_softmax_reference_under_fsdp(tmp_path):
    model = make_tiny_qwen(tmp_path / "model", "qwen2", hidden_size=32, layers=2)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    groups = make_groups(vocab, seed=3)
    fused = run_fsdp(tmp_path, model, groups, 2, "fused")
    reference = run_fsdp(tmp_path, model, groups, 2, "materialized", head="materialized")
    assert_weights_close(fused, reference, 1e-5)
    a = json.loads((fused / "stats.json").read_text())["stats"]
    b = json.loads((reference / "stats.json").read_text())["stats"]
    for key in ("loss", "grad_norm", "clip_frac", "approx_kl", "entropy_mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_plan_keeps_groups_whole_and_gives_every_rank_the_same_micro_batch_count(tmp_path):
    groups = make_groups(500)
    trajs = [[_core.Trajectory.from_json(t) for t in g] for g in groups]
    cfg = LearnerConfig.from_dict(LEARNER).to_dict()
    for world in (1, 2, 5):
        plan, batch = plan_ppo_step(trajs, 1, cfg, world)
        ranks = plan["ranks"]
        assert len(ranks) == world
        for m, total in enumerate(plan["minibatch_loss_tokens"]):
            counts = {len(r[m]) for r in ranks}
            assert len(counts) == 1, counts
            assert sum(mb["loss_tokens"] for r in ranks for mb in r[m]) == total
        assert sum(plan["minibatch_loss_tokens"]) == batch["loss_tokens"]
        if world == 5:  # three groups survive the filter: two ranks only pad
            idle = [r for r in ranks if all(not mb["input_ids"] for m in r for mb in m)]
            assert len(idle) >= 2


def test_a_rank_that_fails_ends_the_job_with_an_error_instead_of_hanging(tmp_path):
    model = make_tiny_qwen(tmp_path / "model", "qwen2", hidden_size=32, layers=1)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    with pytest.raises(AssertionError, match="unknown command"):
        run_fsdp(tmp_path, model, make_groups(vocab), 2, "dies", die_rank=1)


def test_two_ranks_broadcast_the_trained_weights_into_a_server_over_the_sglang_protocol(tmp_path):
    from asearcher.testing import WeightUpdateReceiver

    model = make_tiny_qwen(tmp_path / "model", "qwen3", tie_word_embeddings=True, hidden_size=32)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    with WeightUpdateReceiver("sglang") as server:
        inference = {
            "servers": [server.url],
            "server_world_size": 1,
            "sync_master_addr": "127.0.0.1",
            "sync_master_port": 0,
            "sync_bucket_mb": 1,
            "timeout_s": 60.0,
        }
        out = run_fsdp(
            tmp_path, model, make_groups(vocab), 2, "push", inference=inference, push_version=1
        )
        trained = load_file(str(out / "model.safetensors"))
        assert server.weight_version == "1"
        assert set(server.tensors) == set(trained)  # tied: lm_head.weight is not sent
        for name, t in trained.items():
            assert server.tensors[name].dtype == t.dtype
            assert torch.equal(server.tensors[name], t), name
        route_name = "/update_weights_from_distributed"
        calls = [body for route, body in server.calls if route == route_name]
        assert len(calls) >= 1 and server.received == [n for c in calls for n in c["names"]]


def test_the_cluster_example_is_a_valid_fsdp_config():
    from asearcher.config import TrainConfig

    example = Path(__file__).parent.parent / "examples" / "cluster.toml"
    cfg = TrainConfig.from_file(example)
    cfg.validate()
    assert (cfg.learner.backend, cfg.inference.backend) == ("fsdp", "sglang")


def test_fsdp_config_mistakes_are_named(tmp_path):
    import asearcher
    from asearcher.config import TrainConfig
    from asearcher.exceptions import ConfigError

    model = make_tiny_qwen(tmp_path / "model", "qwen2", hidden_size=32, layers=1)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "answer": "a"}\n')
    base = {"model": {"path": str(model)}, "data": {"train": str(questions)}}
    fsdp = {**base, "learner": {"backend": "fsdp"}}
    with pytest.raises(ConfigError, match="inference.backend"):
        asearcher.Trainer(fsdp)  # fsdp sends weights to servers: embedded inference refused
    servers = {"backend": "sglang", "servers": ["http://127.0.0.1:9"]}
    with pytest.raises(ConfigError, match="torchrun"):
        asearcher.Trainer({**fsdp, "inference": servers})
    with pytest.raises(ConfigError, match="inference.weight_sync"):
        asearcher.Trainer({**base, "inference": {**servers, "weight_sync": "distributed"}})
    with pytest.raises(ConfigError, match="learner.fsdp.param_dtype"):
        asearcher.Trainer({**base, "learner": {"fsdp": {"param_dtype": "fp8"}}})
    vllm = {**servers, "backend": "vllm"}
    with pytest.raises(ConfigError, match="inference.weight_sync") as e:
        asearcher.Trainer({**fsdp, "inference": vllm})  # vLLM loads no weights from disk
    assert '"distributed"' in str(e.value) and "--weight-transfer-config" in str(e.value)
    with pytest.raises(ConfigError, match="inference.served_model"):
        asearcher.Trainer({**base, "inference": {**servers, "served_model": "m"}})
    ok = TrainConfig.from_dict({**fsdp, "inference": {**vllm, "weight_sync": "distributed"}})
    ok.validate()


def test_the_gpu_benchmark_runs_on_the_cpu(tmp_path):
    # benches/gpu_fsdp.py waits for a lent GPU; its code path (model, plan, fused and
    # materialized heads, export) is checked here on a tiny model so it works when one comes.
    script = Path(__file__).resolve().parent.parent / "benches" / "gpu_fsdp.py"
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(script), "--device", "cpu", "--size", "tiny"]
    cmd += ["--tokens", "128", "--out", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["head"] for r in rows] == ["fused", "materialized"]
    for r in rows:
        assert r["seconds"] > 0 and r["sync_s_per_gb"] > 0, r
    # The same step through either head: the same loss.
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-4)
