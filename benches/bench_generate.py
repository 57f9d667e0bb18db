"""Benchmark asearcher's embedded generator against HF transformers ``model.generate()``.

Same weights, same prompts, greedy, a fixed number of new tokens for both (ours:
``ignore_eos=True``; HF: ``min_new_tokens`` = ``max_new_tokens``), one batch of ``--batch``
prompts of ``--prompt-len`` random ids, in the same process and on the same device. Reports
generated tokens per second (batch * new tokens / wall time of the whole call, prefill included),
the ratio, and how many of the greedy outputs are identical between the two.

Models (random weights, written once to ``--work-dir``):

* ``tiny``: the tests' tiny Qwen2 (hidden 64, 2 layers, vocab ~512);
* ``0.5b``: Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
  4864, vocab 151936, tied embeddings), stored in bfloat16 and run in ``--dtype``.

    python benches/bench_generate.py                 # CPU, both models
    python benches/bench_generate.py --quick         # fewer tokens and runs
    python benches/bench_generate.py --device cuda --dtype bfloat16 --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "tests"))

DOCS = ROOT / "docs" / "benchmarks.md"


def markers(device: str) -> tuple[str, str]:
    """The docs markers of this device type's section (CPU and CUDA results live side by side)."""
    tag = "generate" if device == "cpu" else f"generate:{device.split(':')[0]}"
    return f"<!-- bench:{tag} start -->", f"<!-- bench:{tag} end -->"


HALF_B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    eos_token_id=151643,
)


def make_model(name: str, work_dir: Path) -> Path:
    """Writes (once) the random checkpoint of `name` and returns its directory."""
    out = work_dir / f"bench-{name}"
    if (out / "config.json").exists():
        return out
    if name == "tiny":
        from tiny_models import make_tiny_qwen

        return make_tiny_qwen(out, "qwen2")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**HALF_B)).to(torch.bfloat16)
    model.save_pretrained(out)
    return out


def prompts_for(vocab: int, batch: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (batch, length), generator=g).tolist()


def timed(fn, runs: int, sync) -> tuple[float, object]:
    """Median wall seconds of `runs` calls of fn (after one warm-up call), and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_ours(path, prompts, new_tokens, args, sync):
    from asearcher import Generator

    with Generator(path, device=args.device, dtype=args.dtype, max_running=len(prompts)) as gen:

        def run():
            return gen.generate(
                prompts, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True
            )

        seconds, outs = timed(run, args.runs, sync)
    assert all(len(o.output_ids) == new_tokens for o in outs)
    return seconds, [o.output_ids for o in outs]


def bench_hf(path, prompts, new_tokens, args, sync):
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    ids = torch.tensor(prompts, device=args.device)
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    seconds, out = timed(run, args.runs, sync)
    gen = out[:, ids.shape[1] :].tolist()
    assert all(len(o) == new_tokens for o in gen)
    return seconds, gen


def machine_info(args) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()}"]
    if args.device.startswith("cuda"):
        parts.append(torch.cuda.get_device_name(torch.device(args.device)))
    parts.append(f"Python {platform.python_version()}, torch {torch.__version__}")
    parts.append(f"transformers {metadata.version('transformers')}")
    import asearcher

    parts.append(f"asearcher {asearcher.__version__} (release build)")
    return "; ".join(parts)


def render(rows, args, info) -> str:
    today = datetime.date.today().isoformat()
    start, end = markers(args.device)
    where = "CPU" if args.device == "cpu" else "CUDA"
    lines = [
        start,
        f"## Generation ({where}): asearcher Generator vs HF transformers `generate()`",
        "",
        f"Measured {today} on {info}.",
        f"Device `{args.device}`, dtype `{args.dtype}`, batch {args.batch}, prompt "
        f"{args.prompt_len} tokens, greedy, fixed new tokens per prompt (ours `ignore_eos`, "
        f"HF `min_new_tokens`); median of {args.runs} timed runs after a warm-up; "
        f"`torch.get_num_threads()` = {torch.get_num_threads()}.",
        "",
        "| Model | New tokens | asearcher (tokens/s) | HF (tokens/s) | asearcher / HF "
        "| Identical greedy outputs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['new_tokens']} | {r['ours']:,.1f} | {r['hf']:,.1f} "
            f"| {r['ratio']:.2f}x | {r['same']}/{args.batch} |"
        )
    lines += [
        "",
        "Tokens/s = batch x new tokens / wall time of one whole call (prefill included). Ours "
        "prefills the waiting prompts together in one padded pass and then runs one batched "
        "decode step per token on its KV cache; HF prefills the padded batch at once and decodes "
        "with its dynamic cache.",
        "Identical greedy outputs: prompts whose new tokens match exactly (random weights give "
        "near-tied logits, so rounding differences may flip a late token).",
        "Reproduce: `python benches/bench_generate.py"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
        + (" --quick" if args.quick else "")
        + f" --runs {args.runs} --write-docs`.",
        end,
    ]
    return "\n".join(lines)


def write_docs(section: str, device: str) -> None:
    start, end = markers(device)
    text = DOCS.read_text(encoding="utf-8")
    if start in text and end in text:
        pre, rest = text.split(start, 1)
        post = rest.split(end, 1)[1]
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--models", default="tiny,0.5b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=None, help="default 32 (quick: 16)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs (default 3, quick: 1)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "asearcher-bench"
    )
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    args.new_tokens = args.new_tokens or (16 if args.quick else 32)
    args.runs = args.runs or (1 if args.quick else 3)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    rows = []
    for name in args.models.split(","):
        path = make_model(name, args.work_dir)
        vocab = json.loads((path / "config.json").read_text())["vocab_size"]
        prompts = prompts_for(vocab, args.batch, args.prompt_len)
        ours_s, ours = bench_ours(path, prompts, args.new_tokens, args, sync)
        hf_s, hf = bench_hf(path, prompts, args.new_tokens, args, sync)
        total = args.batch * args.new_tokens
        row = dict(
            model=name,
            new_tokens=args.new_tokens,
            ours=total / ours_s,
            hf=total / hf_s,
            ratio=hf_s / ours_s,
            same=sum(a == b for a, b in zip(ours, hf, strict=True)),
        )
        rows.append(row)
        print(
            f"{name:>5}: asearcher {row['ours']:9.1f} tok/s  HF {row['hf']:9.1f} tok/s  "
            f"ratio {row['ratio']:.2f}x  identical {row['same']}/{args.batch}",
            flush=True,
        )
    section = render(rows, args, machine_info(args))
    print()
    print(section)
    if args.write_docs:
        write_docs(section, args.device)
        print(f"\nwrote {DOCS}")


if __name__ == "__main__":
    main()
