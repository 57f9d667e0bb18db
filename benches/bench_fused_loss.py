"""Fused PPO loss (asearcher.ops.fused_ppo_loss) vs the naive PyTorch version (full logits,
log_softmax, gather, decoupled PPO, backward): wall time and peak extra memory of one
forward+backward at a Qwen2.5-0.5B-sized LM head (vocab 151,936, H=896).

Every (implementation, token count) case runs in a fresh subprocess. Memory: on CPU the peak
RSS above the RSS just before the call (the kernel's high-water mark is reset through
/proc/self/clear_refs); on CUDA torch.cuda.max_memory_allocated above the allocation before the
call. Time: median of --reps runs after one warm-up.

    python benches/bench_fused_loss.py                       # CPU, 256/1024/2048 tokens
    python benches/bench_fused_loss.py --device cuda --tokens 2048,8192,16384 --dtype bfloat16
    python benches/bench_fused_loss.py --write-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from docs_section import replace_section

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_inputs(torch, n, vocab, hidden, dtype, device):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g).to(dtype).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(dtype).to(device).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=g).to(device)
    adv = torch.randn(n, generator=g).to(device)
    mask = (torch.rand(n, generator=g) > 0.1).to(device)
    behav = (-torch.rand(n, generator=g) * 5 - 5).to(device)
    prox = behav + (torch.randn(n, generator=g) * 0.1).to(device)
    return h, w, y, adv, mask, behav, prox


def naive_step(torch, h, w, y, adv, mask, behav, prox, eps=0.2, cap=5.0):
    logits = (h @ w.T).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, y[:, None]).squeeze(-1)
    ratio = torch.exp(logp - prox)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    wgt = torch.exp(prox - behav)
    keep = mask & (wgt <= cap)
    loss = torch.where(keep, pg * wgt, torch.zeros_like(pg)).sum() / mask.sum().clamp(min=1)
    loss.backward()
    return loss


def fused_step(torch, h, w, y, adv, mask, behav, prox, chunk=None):
    from asearcher.ops import fused_ppo_loss

    loss, _ = fused_ppo_loss(h, w, y, adv, mask, behav_logp=behav, prox_logp=prox, chunk_size=chunk)
    loss.backward()
    return loss


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    inputs = make_inputs(torch, args.tokens, args.vocab, args.hidden, dtype, dev)
    h, w = inputs[0], inputs[1]

    def step():
        h.grad = w.grad = None
        if args.impl == "naive":
            return naive_step(torch, *inputs)
        return fused_step(torch, *inputs, chunk=args.chunk_size)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    h.grad = w.grad = None
    gc.collect()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        step()
        peak = rss_bytes("VmHWM") - base
    times = []
    for _ in range(args.reps):
        h.grad = w.grad = None
        gc.collect()
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    grads = (w.numel() + h.numel()) * w.element_size()
    print(
        json.dumps(
            {
                "impl": args.impl,
                "tokens": args.tokens,
                "time_s": statistics.median(times),
                "times": times,
                "peak_extra_bytes": peak,
                "grad_bytes": grads,
                "loss": float(loss),
            }
        )
    )


def run_case(args, impl: str, tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--tokens", str(tokens)]
    for k in ("device", "dtype", "vocab", "hidden", "reps"):
        cmd += [f"--{k}", str(getattr(args, k))]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ)
    if any((ROOT / "python" / "asearcher").glob("_core*.so")):  # a dev build of this checkout
        env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(args) -> str:
    import torch

    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} (CPU, {threads} threads)"


def table(args, rows) -> str:
    mib = 1 << 20
    lines = [
        "| Tokens | Naive time (s) | Fused time (s) | Time ratio | Naive peak extra (MiB) | "
        "Fused peak extra (MiB) | Memory ratio | Naive excl. grads (MiB) | "
        "Fused excl. grads (MiB) | Ratio excl. grads |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for naive, fused in rows:
        g = naive["grad_bytes"]
        ne, fe = naive["peak_extra_bytes"] - g, fused["peak_extra_bytes"] - g
        lines.append(
            f"| {naive['tokens']:,} | {naive['time_s']:.2f} | {fused['time_s']:.2f} | "
            f"{fused['time_s'] / naive['time_s']:.2f} | {naive['peak_extra_bytes'] / mib:,.0f} | "
            f"{fused['peak_extra_bytes'] / mib:,.0f} | "
            f"{fused['peak_extra_bytes'] / naive['peak_extra_bytes']:.3f} | "
            f"{ne / mib:,.0f} | {fe / mib:,.0f} | {fe / max(ne, 1):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tokens", default="256,1024,2048")
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=None, help="default: the kernel's budget")
    p.add_argument("--write-docs", type=Path, default=None, help="update this benchmarks.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="fused", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.tokens = int(args.tokens)
        worker(args)
        return
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        pair = tuple(run_case(args, impl, n) for impl in ("naive", "fused"))
        print(json.dumps(pair), flush=True)
        rows.append(pair)
    cmd = "python benches/bench_fused_loss.py " + " ".join(sys.argv[1:])
    report = (
        f"Measured {time.strftime('%Y-%m-%d')} on {machine(args)}; {args.dtype}, vocab "
        f"{args.vocab:,}, H={args.hidden}, decoupled PPO with token-mean, median of "
        f"{args.reps} runs after a warm-up, each case in a fresh process.\n"
        f"Command: `{cmd.strip()}`\n\n{table(args, rows)}\n"
    )
    print(report)
    if args.write_docs:
        write_docs(args.write_docs, args.device, report)


NOTES = """
Notes: naive = `h @ W.T` -> `log_softmax` -> `gather` -> the PPO formula -> `backward()` in
PyTorch; fused = `asearcher.ops.fused_ppo_loss` with the default chunk size, then `backward()`.
"Peak extra" is the peak above the memory in use just before the call and includes the gradients
both must produce (`weight.grad` [V, H] and `hidden.grad` [N, H]); "excl. grads" subtracts them,
leaving the working memory. Both runs give the same loss.
"""


def write_docs(path: Path, device: str, report: str) -> None:
    start, end = (
        f"<!-- bench:fused-loss:{device} start -->",
        f"<!-- bench:fused-loss:{device} end -->",
    )
    title = "CPU" if device == "cpu" else "CUDA"
    replace_section(f"## Fused loss kernel ({title})\n\n{report}{NOTES}", (start, end), path)


if __name__ == "__main__":
    main()
