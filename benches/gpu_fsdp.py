"""The FSDP2 learner on one GPU (prepared for a lent H100/H200): a Qwen2.5-shaped model with random
weights (0.5B by default, ``--size 1.5b``), bf16 compute with fp32 master weights, activation
checkpointing on; one sequence per micro-batch of 8k, 16k and 32k tokens (1/8 prompt, 7/8
generated, fresh random ids), fused LM-head kernels vs materialized float32 logits. Reports
seconds per PPO step (proximal + training, the 2nd step timed), training tokens/s, peak CUDA
memory (torch.cuda.max_memory_allocated), and the disk weight sync (full state dict gathered,
bf16 safetensors written) in seconds per GB.

    python benches/gpu_fsdp.py --out results.json            # one process, world size 1
    python benches/gpu_fsdp.py --write-docs                  # also updates docs/benchmarks.md

Runs without torchrun (a one-rank group on loopback); needs transformers and the asearcher wheel.
``--device cpu --size tiny --tokens 256`` runs the same code on the CPU in seconds (the test
suite does, so the script is known to work before a GPU is at hand; peak memory is then the
process's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MARKERS = ("<!-- bench:fsdp-gpu start -->", "<!-- bench:fsdp-gpu end -->")

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True),
}  # fmt: skip
VOCAB = 151_936


def write_model(directory: Path, size: str, device: torch.device) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=40_960, **SIZES[size])
    with device:
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    del model
    _empty_cache(device)
    return directory


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated, or on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def groups_of(tokens: int, seed: int) -> list[list[str]]:
    from test_fsdp import _trajectory, _turn

    rng = random.Random(seed)
    prompt = [rng.randrange(3, VOCAB) for _ in range(tokens // 8)]
    out_len = tokens - len(prompt)
    trajs = []
    for k in range(2):  # one group of two (rewards 0 and 1), each one sequence
        out = [rng.randrange(3, VOCAB) for _ in range(out_len)]
        lps = [rng.uniform(-12.5, -11.5) for _ in out]
        trajs.append(_trajectory("q", k, [_turn(prompt, out, lps, 0)], float(k)))
    return [trajs]


def measure(model_dir: Path, tokens: int, head: str, device: torch.device) -> dict:
    from asearcher import _core
    from asearcher.config import LearnerConfig
    from asearcher.distributed import FsdpLearner, plan_ppo_step

    cfg = LearnerConfig.from_dict(
        {"schedule": {"lr": 1e-6}, "micro_batch_tokens": tokens, "fsdp": {"timeout_s": 1800.0}}
    ).to_dict()
    config = {"model": {"path": str(model_dir), "device": device.type}, "learner": cfg}
    _empty_cache(device)
    learner = FsdpLearner(config, device=device, head=head)
    try:
        row: dict = {"tokens": tokens, "head": head}
        for step in range(2):
            groups = [[_core.Trajectory.from_json(t) for t in g] for g in groups_of(tokens, step)]
            plan, _ = plan_ppo_step(groups, 1, cfg, 1)
            _sync(device)
            started = time.perf_counter()
            stats = learner.ppo_step(plan, 1)
            _sync(device)
            row["seconds"] = time.perf_counter() - started
        row["trained_tokens"] = 2 * tokens
        row["tokens_per_s"] = 2 * tokens / row["seconds"]
        row["peak_gib"] = _peak_gib(device)
        row["loss"] = stats["loss"]
        with tempfile.TemporaryDirectory() as out:
            _sync(device)
            started = time.perf_counter()
            learner.export_hf(out)
            seconds = time.perf_counter() - started
            gb = sum(p.stat().st_size for p in Path(out).glob("*.safetensors")) / 1e9
        row["sync_s_per_gb"] = seconds / gb
    except torch.OutOfMemoryError:
        row = {"tokens": tokens, "head": head, "oom": True}
    finally:
        del learner
        _empty_cache(device)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| Tokens / micro-batch | LM head | s / step | Training tokens/s | Peak GiB "
        "| Disk sync s/GB |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['tokens']:,} | {r['head']} | OOM | - | - | - |")
            continue
        lines.append(
            f"| {r['tokens']:,} | {r['head']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} "
            f"| {r['peak_gib']:.1f} | {r['sync_s_per_gb']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--tokens", default="8192,16384,32768")
    ap.add_argument("--heads", default="fused,materialized")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()
    from asearcher.distributed import init_distributed

    info = init_distributed(args.device, 1800.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "model", args.size, info.device)
        for tokens in (int(t) for t in args.tokens.split(",")):
            for head in args.heads.split(","):
                rows.append(measure(model, tokens, head, info.device))
                print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    device = torch.cuda.get_device_name(0) if info.device.type == "cuda" else "CPU"
    if args.out:
        args.out.write_text(json.dumps({"device": device, "size": args.size, "rows": rows}))
    if args.write_docs:
        from docs_section import replace_section

        block = (
            "## FSDP2 learner on one GPU (`benches/gpu_fsdp.py`)\n\n"
            f"{device}, torch {torch.__version__}; Qwen2.5-{args.size}-shaped random model, bf16 "
            "compute, fp32 master weights and AdamW state, activation checkpointing; one "
            "sequence per micro-batch, 2 sequences per step, 7/8 of tokens generated.\n\n"
            f"{text}\n"
        )
        replace_section(block, MARKERS)


if __name__ == "__main__":
    main()
