"""The ``asearcher`` console script. Each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import AsearcherError

if TYPE_CHECKING:
    from .config import TrainConfig


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _docs_json(docs: list) -> list[dict]:
    return [d.to_dict() for d in docs]


def _dense_dir(index: str, dense: str | None) -> Path:
    """The dense index: ``--dense-index``, else ``INDEX/dense``, else INDEX itself."""
    if dense:
        return Path(dense)
    nested = Path(index) / "dense"
    return nested if (nested / "dense.json").is_file() else Path(index)


def cmd_index_build(args: argparse.Namespace) -> int:
    from .tools import LocalSearch

    if args.dense and not args.overwrite and (Path(args.out) / "asearcher_index.json").is_file():
        existing = LocalSearch(args.out)
        if existing.built_from(args.corpus):
            print(f"BM25 index at {args.out} already built from {args.corpus}: kept")
            _build_dense(args)
            return 0
    _build_bm25(args)
    if args.dense:
        _build_dense(args)
    return 0


def _build_dense(args: argparse.Namespace) -> None:
    from .tools import DenseSearch

    out = Path(args.out) / "dense"
    index = DenseSearch.build(
        args.corpus,
        out,
        args.dense,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        overwrite=args.overwrite,
        on_bad_line="skip" if args.skip_bad_lines else "error",
        progress=not args.quiet,
    )
    stats = index.last_build or {}
    resumed = stats.get("resumed_shards", 0)
    print(
        f"encoded {stats.get('encoded_rows', 0)} of {len(index)} passages in "
        f"{stats.get('seconds', 0):.1f}s -> {out}"
        + (f" ({resumed} finished shards kept from an earlier run)" if resumed else "")
    )
    if args.hnsw:
        graph = DenseSearch.build_hnsw(out, progress=not args.quiet, device=args.device)
        info = graph.last_build or {}
        print(f"HNSW graph of {info.get('rows')} vectors in {info.get('seconds', 0):.1f}s")


def cmd_index_hnsw(args: argparse.Namespace) -> int:
    from .tools import DenseSearch

    where = _dense_dir(args.index, None)
    graph = DenseSearch.build_hnsw(
        where,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search,
        threads=args.threads or 0,
        progress=not args.quiet,
    )
    info = graph.last_build or {}
    print(
        f"HNSW graph of {info.get('rows')} vectors ({info.get('bytes', 0) / 2**20:.1f} MiB) in "
        f"{info.get('seconds', 0):.1f}s -> {where}"
    )
    return 0


def _build_bm25(args: argparse.Namespace) -> None:
    from .tools import LocalSearch

    index = LocalSearch.build(
        args.corpus,
        args.out,
        threads=args.threads,
        heap_mb=args.heap_mb,
        on_bad_line="skip" if args.skip_bad_lines else "error",
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    stats = index.last_build or {}
    print(
        f"indexed {stats.get('docs', len(index))} passages in {stats.get('seconds', 0):.1f}s "
        f"-> {args.out}"
        + (f" ({stats['skipped_lines']} bad lines skipped)" if stats.get("skipped_lines") else "")
        + (
            f" (warning: {stats['duplicate_ids']} passages reuse an earlier passage's id)"
            if stats.get("duplicate_ids")
            else ""
        )
    )


def cmd_index_info(args: argparse.Namespace) -> int:
    import json as _json

    from .tools import LocalSearch

    root = Path(args.index)
    if (root / "asearcher_index.json").is_file():
        print(f"{root}: BM25, {len(LocalSearch(root))} passages")
    dense = _dense_dir(args.index, None)
    if (dense / "dense.json").is_file():
        m = _json.loads((dense / "dense.json").read_text())
        rows = sum(s["rows"] for s in m["shards"])
        state = "complete" if m["complete"] else "unfinished (run the build again to resume)"
        graph = f", HNSW graph (M={m['hnsw']['connectivity']})" if m.get("hnsw") else ""
        print(f"{dense}: dense, {rows} passages x {m['dim']} ({m['model']['dir']}), {state}{graph}")
    return 0


def open_search(
    where: str,
    mode: str = "bm25",
    *,
    dense_index: str | None = None,
    model: str | None = None,
    search: str = "exact",
    device: str = "cpu",
    weights: tuple[float, float] = (1.0, 1.0),
    depth: int = 50,
):
    """The search backend and the page source that ``serve retrieval`` and ``search`` use:
    BM25 over ``where``, the dense index (``dense_index`` or ``where/dense``), or both fused
    (hybrid, weights for BM25 and dense); or the retrieval servers at the URL(s) ``where``."""
    from .tools import DenseSearch, HybridSearch, LocalSearch, RetrievalClient

    if where.startswith(("http://", "https://")):
        client = RetrievalClient(where.split(","))
        return client, client
    if mode not in ("bm25", "dense", "hybrid"):
        raise AsearcherError(f"mode {mode!r} is not one of bm25, dense, hybrid")
    bm25 = (
        LocalSearch(where)
        if mode != "dense" or Path(where, "asearcher_index.json").is_file()
        else None
    )
    if mode == "bm25":
        return bm25, bm25
    dense = DenseSearch(_dense_dir(where, dense_index), model=model, device=device, search=search)
    if mode == "dense":
        return dense, bm25 or dense
    hybrid = HybridSearch([(bm25, weights[0]), (dense, weights[1])], depth=depth)
    return hybrid, bm25


def _open_backend(where: str, mode: str = "bm25"):
    """A local index directory, or the URL(s) of retrieval servers (comma-separated)."""
    return open_search(where, mode)[0]


def cmd_search(args: argparse.Namespace) -> int:
    from .tools import Toolbox

    backend = _open_backend(args.index, args.mode)
    if args.json:
        _print_json(_docs_json(backend.search(args.query, k=args.k)))
    else:
        print(Toolbox(backend, top_k=args.k, doc_chars=args.doc_chars).search(args.query).text)
    return 0


def cmd_access(args: argparse.Namespace) -> int:
    from .tools import Toolbox

    backend = _open_backend(args.index)
    print(Toolbox(backend, pages=backend).access(args.url).text)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .tools import PageReader

    mode = "jina" if args.reader_url else "direct"
    reader = PageReader(
        mode=mode,
        reader_url=args.reader_url,
        timeout=args.timeout,
        allow_private=args.allow_private,
        allow_loopback=args.allow_loopback,
    )
    page = reader.read(args.url)
    print(f"# {page.title or page.url}\n")
    for i, chunk in enumerate(page.chunks(chunk_chars=args.chunk_chars), 1):
        print(f">>>> Page {i} >>>>\n\n{chunk}\n")
    return 0


def _weights(text: str) -> tuple[float, float]:
    try:
        bm25, dense = (float(w) for w in text.split(","))
    except ValueError:
        raise AsearcherError(f"--weights {text!r}: expected two numbers, BM25,DENSE") from None
    return bm25, dense


def cmd_serve_retrieval(args: argparse.Namespace) -> int:
    from . import _core

    index, pages = open_search(
        args.index,
        args.mode,
        dense_index=args.dense_index,
        model=args.model,
        search=args.search,
        device=args.device,
        weights=_weights(args.weights),
        depth=args.depth,
    )
    micro_batch = (
        args.micro_batch if args.micro_batch is not None else (0 if args.mode == "bm25" else 512)
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("asearcher").warning(
            "binding %s: the retrieval server has no authentication and will answer anyone "
            "who can reach this address",
            args.host,
        )

    def ready(url: str) -> None:
        print(f"retrieval server on {url} ({args.mode}: {index!r}); Ctrl-C stops it", flush=True)

    try:
        _core.serve_retrieval(
            index,
            pages=pages,
            host=args.host,
            port=args.port,
            default_topk=args.default_topk,
            micro_batch=micro_batch,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def cmd_serve_model(args: argparse.Namespace) -> int:
    from . import _core

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("asearcher").warning(
            "binding %s: the model server has no authentication and will answer anyone "
            "who can reach this address",
            args.host,
        )

    def ready(url: str) -> None:
        print(f"model server on {url} ({args.model}); Ctrl-C stops it", flush=True)

    try:
        _core.serve_model(
            str(args.model),
            host=args.host,
            port=args.port,
            device=args.device,
            dtype=args.dtype,
            max_running=args.max_running,
            max_context=args.max_context,
            served_model_name=args.served_model_name,
            on_ready=ready,
        )
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _spread_arg(text: str) -> int | tuple[int, int]:
    """``N`` or ``MIN,MAX``."""
    parts = text.split(",")
    try:
        if len(parts) == 1:
            return int(parts[0])
        if len(parts) == 2:
            return (int(parts[0]), int(parts[1]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}")


def cmd_serve_scripted_policy(args: argparse.Namespace) -> int:
    from . import _core
    from .data import sample_tokenizer_path
    from .testing import scripted_policy_config

    cfg = scripted_policy_config(
        host=args.host,
        port=args.port,
        answers=args.answers,
        searches=args.searches,
        wrong_rate=args.wrong_rate,
        garbage_rate=args.garbage_rate,
        think_tokens=args.think_tokens,
        latency_ms=args.latency_ms,
        ms_per_token=args.ms_per_token,
        tokens_per_s_total=args.tokens_per_s_total,
        judge_garbage_rate=args.judge_garbage_rate,
        seed=args.seed,
        served_model_name=args.served_model_name,
    )

    def ready(url: str) -> None:
        print(f"scripted policy server on {url}; Ctrl-C stops it", flush=True)

    try:
        _core.serve_scripted_policy(
            str(args.tokenizer or sample_tokenizer_path()), json.dumps(cfg), on_ready=ready
        )
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.tools:
        from .demo import run_demo

        return run_demo(workdir=args.workdir, questions=args.questions)
    from .tinyworld.job import JobSettings, run_job

    settings = JobSettings(size=args.size, seed=args.seed, world_seed=args.world_seed)
    if args.rl_steps is not None:
        settings.rl_steps = args.rl_steps
    if args.warm_start_epochs is not None:
        settings.warm_start_epochs = args.warm_start_epochs
    workdir = args.workdir or Path("runs/tinyworld")
    result = run_job(workdir, settings, progress=not args.quiet)
    gain = result.heldout_f1_rl - result.heldout_f1_warm_start
    print(
        f"held-out F1: random {result.heldout_f1_random:.3f} -> warm start "
        f"{result.heldout_f1_warm_start:.3f} -> RL {result.heldout_f1_rl:.3f} ({gain:+.3f})"
    )
    return 0


def _add_index_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or inspect a BM25 and dense index")
    isub = p.add_subparsers(dest="index_cmd", required=True)
    b = isub.add_parser(
        "build", help="build a BM25 index (and with --dense a dense one) from a jsonl corpus"
    )
    b.add_argument("corpus", help='jsonl corpus: {"id","contents"} or {"id","title","text"}')
    b.add_argument("--out", required=True, help="index directory to create")
    b.add_argument("--threads", type=int, default=None, help="indexing threads (default: cores)")
    b.add_argument("--heap-mb", type=int, default=None, help="indexing memory budget in MiB")
    b.add_argument("--skip-bad-lines", action="store_true", help="skip malformed lines, count them")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument(
        "--dense",
        metavar="MODEL_DIR",
        default=None,
        help="also encode the corpus with this BERT-family encoder (E5, MiniLM, BGE) into "
        "OUT/dense; a stopped build resumes when run again",
    )
    b.add_argument("--hnsw", action="store_true", help="with --dense: also build an HNSW graph")
    b.add_argument("--device", default="cpu", help="encoder device (cpu, cuda, cuda:1)")
    b.add_argument("--dtype", default="float32", help="encoder dtype (float32, bfloat16, float16)")
    b.add_argument("--batch-size", type=int, default=64, help="passages per encoder pass")
    b.add_argument("--shard-rows", type=int, default=16_384, help="passages per dense shard")
    b.set_defaults(func=cmd_index_build)
    h = isub.add_parser("hnsw", help="build an HNSW graph over a dense index's vectors")
    h.add_argument("index", help="the dense index, or an index directory holding dense/")
    h.add_argument("--connectivity", type=int, default=32, help="neighbours per node (M)")
    h.add_argument("--expansion-add", type=int, default=128, help="efConstruction")
    h.add_argument("--expansion-search", type=int, default=128, help="default efSearch")
    h.add_argument("--threads", type=int, default=None, help="insertion threads (default: cores)")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    h.set_defaults(func=cmd_index_hnsw)
    i = isub.add_parser("info", help="show an index's size")
    i.add_argument("index")
    i.set_defaults(func=cmd_index_info)


def _add_mode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=["bm25", "dense", "hybrid"],
        default="bm25",
        help="bm25, dense (the index's dense/ or --dense-index), or both fused by RRF",
    )
    p.add_argument("--dense-index", default=None, help="dense index (default: INDEX/dense)")
    p.add_argument("--model", default=None, help="encoder directory (default: the build's)")
    p.add_argument("--search", choices=["exact", "hnsw"], default="exact", help="dense search")
    p.add_argument("--device", default="cpu", help="encoder and vectors device")
    p.add_argument("--weights", default="1,1", help="hybrid RRF weights BM25,DENSE")
    p.add_argument("--depth", type=int, default=50, help="hybrid: hits fused from each part")


def _add_tool_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("search", help="search an index or a server, printed as the agent sees it")
    s.add_argument("index", help="index directory, or retrieval server URL(s), comma-separated")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=5, help="documents to return (default 5)")
    s.add_argument("--doc-chars", type=int, default=5000, help="characters kept per document")
    s.add_argument("--json", action="store_true", help="print documents as JSON")
    s.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="bm25")
    s.set_defaults(func=cmd_search)
    a = sub.add_parser("access", help="read a page of an index or a server by URL or id")
    a.add_argument("index", help="index directory, or retrieval server URL(s), comma-separated")
    a.add_argument("url")
    a.set_defaults(func=cmd_access)
    f = sub.add_parser("fetch", help="fetch a web page as readable text chunks")
    f.add_argument("url")
    f.add_argument(
        "--reader-url", default=None, help="Jina-style reader endpoint (key: JINA_API_KEY)"
    )
    f.add_argument("--timeout", type=float, default=30.0)
    f.add_argument("--chunk-chars", type=int, default=25_000)
    f.add_argument("--allow-private", action="store_true", help="permit private addresses")
    f.add_argument("--allow-loopback", action="store_true", help="permit loopback addresses")
    f.set_defaults(func=cmd_fetch)


def _add_serve_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a server")
    ssub = p.add_subparsers(dest="serve_cmd", required=True)
    r = ssub.add_parser("retrieval", help="Search-R1/ASearcher-compatible retrieval server")
    r.add_argument("--index", required=True, help="index directory (BM25, with dense/ inside)")
    r.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--default-topk", type=int, default=3, help="topk when a request has none")
    r.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="merge concurrent requests into searches of up to N queries "
        "(default: 512 in dense and hybrid mode, off for bm25)",
    )
    _add_mode_arguments(r)
    r.set_defaults(func=cmd_serve_retrieval)
    m = ssub.add_parser(
        "model", help="SGLang/OpenAI-compatible model server over the embedded generator"
    )
    m.add_argument("--model", required=True, type=Path, help="HF model directory (Qwen2/Qwen3)")
    m.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    m.add_argument("--port", type=int, default=30000, help="port (0 picks a free one)")
    m.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    m.add_argument("--max-running", type=int, default=32, help="requests decoded together")
    m.add_argument("--max-context", type=int, default=None, help="longest prompt + output")
    m.add_argument("--served-model-name", default=None, help="name in /v1/models (default: dir)")
    m.set_defaults(func=cmd_serve_model)
    _add_scripted_policy_parser(ssub)


def _add_scripted_policy_parser(ssub: argparse._SubParsersAction) -> None:
    s = ssub.add_parser(
        "scripted-policy",
        help="rule-based LLM test double: SGLang /generate and an OpenAI-chat judge",
    )
    s.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default: sample)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    s.add_argument(
        "--answers", type=Path, default=None, help='questions jsonl {"question","answer"}'
    )
    s.add_argument("--searches", type=_spread_arg, default=1, help="N or MIN,MAX (default 1)")
    s.add_argument("--wrong-rate", type=float, default=0.0, help="share of wrong answers")
    s.add_argument("--garbage-rate", type=float, default=0.0, help="share of broken replies")
    s.add_argument("--think-tokens", type=_spread_arg, default=0, help="N or MIN,MAX filler words")
    s.add_argument("--latency-ms", type=float, default=0.0, help="delay per request")
    s.add_argument("--ms-per-token", type=float, default=0.0, help="delay per output token")
    s.add_argument("--tokens-per-s-total", type=float, default=None, help="server-wide capacity")
    s.add_argument("--judge-garbage-rate", type=float, default=0.0, help="unparseable verdicts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--served-model-name", default="scripted-policy")
    s.set_defaults(func=cmd_serve_scripted_policy)


def _eval_backend(args: argparse.Namespace):
    """SGLang server URLs (``--server``, repeatable or comma-separated) or an embedded model."""
    if args.model:
        from .generation import Generator

        return Generator(args.model)
    return [u for s in args.server for u in s.split(",") if u]


def _eval_toolbox(args: argparse.Namespace):
    from .tools import Toolbox

    backend = _open_backend(args.index or args.retrieval)
    return Toolbox(backend, pages=backend)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .evaluation import evaluate

    overrides = [*args.overrides, *_eval_flag_overrides(args)]
    if args.config is not None:
        cfg = EvalConfig.from_file(args.config, *overrides)
    else:
        cfg = EvalConfig().override(*overrides)
    backend, toolbox = _eval_backend(args), _eval_toolbox(args)
    report = evaluate(cfg, backend, args.tokenizer, toolbox=toolbox, progress=not args.quiet)
    print(report.table(), end="")
    print(f"saved: {Path(cfg.output_dir) / 'results.json'}")
    return 0


def _eval_flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags that were given, as ``a.b.c=v`` overrides (they win over the config file)."""
    out = []

    def put(key: str, value: object) -> None:
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")

    put("data_dir", args.data_dir)
    if args.benchmarks is not None:
        put("benchmarks", [b for b in args.benchmarks.split(",") if b])
    put("k", args.k)
    put("output_dir", args.output_dir)
    put("agent.kind", args.agent)
    put("agent.max_turns", args.max_turns)
    put("rollout.max_concurrent", args.max_concurrent)
    put("max_questions", args.max_questions)
    put("warn_error_rate", args.warn_error_rate)
    put("seed", args.seed)
    if args.restart:
        put("resume", "restart")
    elif args.allow_changes:
        put("resume", "allow_changes")
    if args.judge_url:
        put("judge.url", args.judge_url)
        put("judge.model", args.judge_model or "judge")
        put("judge.api_key_env", args.judge_api_key_env)
    return out


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate an agent on QA benchmarks (Avg@k, Pass@k)")
    e.add_argument("--config", type=Path, default=None, help="an EvalConfig file (TOML/YAML/JSON)")
    e.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="EvalConfig settings, e.g. k=8"
    )
    e.add_argument("--data-dir", default=None, help="directory of <benchmark>/test.jsonl")
    e.add_argument("--benchmarks", default=None, help="comma-separated names (default: all)")
    policy = e.add_mutually_exclusive_group(required=True)
    policy.add_argument("--server", action="append", help="SGLang server URL (repeatable)")
    policy.add_argument("--model", help="model directory to run embedded")
    e.add_argument("--tokenizer", required=True, help="tokenizer directory")
    tools = e.add_mutually_exclusive_group(required=True)
    tools.add_argument("--index", help="local BM25 index directory")
    tools.add_argument("--retrieval", help="retrieval server URL(s), comma-separated")
    e.add_argument("--k", type=int, default=None, help="runs per question (default 4)")
    e.add_argument("--output-dir", default=None, help="results and trajectories (eval_out)")
    e.add_argument("--agent", default=None, help="asearcher (default), search_r1 or reasoning")
    e.add_argument("--max-turns", type=int, default=None, help="turns per trajectory")
    e.add_argument("--max-concurrent", type=int, default=None, help="trajectories at once")
    e.add_argument("--judge-url", default=None, help="OpenAI-compatible judge server URL")
    e.add_argument("--judge-model", default=None, help="the judge's model name")
    e.add_argument("--judge-api-key-env", default=None, help="env var holding the judge's key")
    e.add_argument("--max-questions", type=int, default=None, help="questions per benchmark")
    e.add_argument(
        "--seed", type=int, default=None, help="seed every request (repeatable sampled runs)"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    again = e.add_mutually_exclusive_group()
    again.add_argument(
        "--restart",
        action="store_true",
        help="delete the results already in --output-dir and start over",
    )
    again.add_argument(
        "--allow-changes",
        action="store_true",
        help="continue results of a different setup (the changes are recorded)",
    )
    e.add_argument(
        "--warn-error-rate",
        type=float,
        default=None,
        help="warn above this share of failed trajectories / tool calls / reward errors (0.1)",
    )
    e.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from .callbacks import default_callbacks
    from .config import TrainConfig as Config
    from .training import Trainer

    cfg = Config.from_file(args.config, *_train_overrides(args))
    if cfg.learner.backend == "fsdp":
        return _train_fsdp(args, cfg)
    trainer = Trainer(cfg)
    if trainer.resumed_step:
        print(f"resuming {trainer.out_dir} from step {trainer.resumed_step}")
    result = trainer.fit(callbacks=default_callbacks(), progress=not args.quiet)
    print(
        f"{result.steps} steps ({result.steps_this_run} in this run, ended by {result.ended_by}); "
        f"model -> {result.final_dir}; metrics -> {trainer.out_dir / 'metrics.jsonl'}; "
        f"plot -> {trainer.out_dir / 'training.svg'}"
    )
    return 0


def _train_fsdp(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """Every rank of a torchrun job runs this; rank 0 prints the summary."""
    from .callbacks import default_callbacks
    from .distributed import fit

    result = fit(
        cfg,
        callbacks=default_callbacks(),
        progress=not args.quiet,
    )
    if result is not None:
        out = result.final_dir.parent
        print(
            f"{result.steps} steps ({result.steps_this_run} in this run, ended by "
            f"{result.ended_by}); model -> {result.final_dir}; metrics -> {out / 'metrics.jsonl'}"
        )
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``a.b.c=v`` overrides, the shorthand flags last (they win)."""
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    if args.out is not None:
        overrides.append(f"run.out_dir={json.dumps(str(args.out.resolve()))}")
    if args.no_resume:
        overrides.append("run.resume=false")
    return overrides


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="asynchronous RL training from a TOML/YAML/JSON config (resumes from its checkpoints)",
    )
    t.add_argument("config", type=Path, help="the run's config (docs/config.md lists every key)")
    t.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings on top of the file, e.g. learner.ppo.eps_clip=0.3 rollout.group_size=4",
    )
    t.add_argument("--steps", type=int, default=None, help="override run.steps")
    t.add_argument("--out", type=Path, default=None, help="override run.out_dir")
    t.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


_CONFIG_KINDS = {
    "train": "TrainConfig",
    "eval": "EvalConfig",
    "warm-start": "WarmStartConfig",
    "rollout": "RolloutConfig",
    "agent": "AgentConfig",
    "pool": "PoolConfig",
}


def cmd_config(args: argparse.Namespace) -> int:
    from . import _core
    from . import config as typed
    from ._config import to_toml

    cls = getattr(typed, _CONFIG_KINDS[args.kind])
    file, overrides = args.file, list(args.overrides)
    if file is not None and "=" in str(file) and not file.exists():
        file, overrides = None, [str(file), *overrides]
    if file is None:  # the defaults (not validated: required paths are still empty)
        data = _core.apply_overrides(cls.defaults(), overrides)
    else:
        data = cls.from_file(file, *overrides).to_dict()
    print(json.dumps(data, indent=2) if args.json else to_toml(data), end="")
    return 0


def _add_config_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "config",
        help="show a config with every default filled in (validated), or the defaults",
    )
    c.add_argument("kind", choices=sorted(_CONFIG_KINDS), help="which config")
    c.add_argument("file", nargs="?", type=Path, default=None, help="a TOML/YAML/JSON file")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings on top")
    c.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    c.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asearcher", description="Search agents: tools, servers, training and evaluation."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="cmd")
    d = sub.add_parser(
        "demo",
        help="the main job: train a tiny search agent on tinyworld (warm start, then async RL)",
    )
    d.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to work (default: runs/tinyworld; with --tools a temp dir)",
    )
    d.add_argument("--size", default="default", choices=["small", "default"], help="tinyworld size")
    d.add_argument("--seed", type=int, default=0, help="training seed (and world seed)")
    d.add_argument(
        "--world-seed", type=int, default=None, help="the world's seed (default: --seed)"
    )
    d.add_argument("--rl-steps", type=int, default=None, help="RL steps (default 40)")
    d.add_argument("--warm-start-epochs", type=int, default=None, help="warm-start epochs")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument(
        "--tools",
        action="store_true",
        help="instead: index the sample corpus and walk questions through the search tools",
    )
    d.add_argument(
        "--questions", type=int, default=3, help="with --tools: questions to walk through"
    )
    d.set_defaults(func=cmd_demo)
    _add_index_parsers(sub)
    _add_tool_parsers(sub)
    _add_serve_parsers(sub)
    _add_eval_parser(sub)
    _add_train_parser(sub)
    _add_config_parser(sub)
    _add_synthesize_parser(sub)
    _add_filter_parser(sub)
    return parser


def cmd_synthesize(args: argparse.Namespace) -> int:
    from .config import SynthConfig
    from .synthesis import synthesize
    from .tools import Toolbox

    cfg = SynthConfig.from_file(args.config, *args.overrides)
    index, pages = open_search(args.index, args.mode)
    result = synthesize(
        args.seeds,
        args.out,
        cfg,
        toolbox=Toolbox(index, pages=pages, top_k=cfg.search_top_k),
        name=args.name,
        progress=not args.quiet,
    )
    report = result["report"]
    print(
        f"{result['accepted']} of {result['seeds']} seeds grew into harder questions "
        f"({result['resumed']} read back from an earlier run); "
        f"{report['commits']:.0f} edits committed of {report['candidates']:.0f} candidates; "
        f"mean hops {report['per_accepted']['hops']:.2f} -> {args.out}/qas.jsonl"
    )
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from .synthesis import filter_by_solve_rate

    result = filter_by_solve_rate(
        args.questions,
        args.out,
        _eval_backend(args),
        args.tokenizer,
        toolbox=_eval_toolbox(args),
        k=args.k,
        metric=args.metric,
        solved_at=args.solved_at,
        max_solve_rate=args.max_solve_rate,
        min_tool_calls=args.min_tool_calls,
        work_dir=args.work_dir,
        agent={"kind": args.agent, "max_turns": args.max_turns},
        progress=not args.quiet,
    )
    c = result["counts"]
    print(
        f"kept {c['kept']} of {sum(c.values())} questions -> {args.out} (dropped: "
        f"{c['unsolved']} unsolved, {c['too_easy']} too easy, {c['shortcut']} one-search)"
    )
    return 0


def _add_filter_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "filter", help="keep questions a policy solves sometimes, with searching (solve rate)"
    )
    f.add_argument("questions", help="QA jsonl (question, answer, optional id)")
    f.add_argument("--out", required=True, help="the kept questions (jsonl)")
    policy = f.add_mutually_exclusive_group(required=True)
    policy.add_argument("--server", action="append", help="SGLang server URL (repeatable)")
    policy.add_argument("--model", help="model directory to run embedded")
    f.add_argument("--tokenizer", required=True, help="tokenizer directory")
    tools = f.add_mutually_exclusive_group(required=True)
    tools.add_argument("--index", help="local BM25 index directory")
    tools.add_argument("--retrieval", help="retrieval server URL(s), comma-separated")
    f.add_argument("-k", type=int, default=16, help="samples per question (default 16)")
    f.add_argument("--metric", default="em", help="reward metric that decides solved (em)")
    f.add_argument("--solved-at", type=float, default=1.0, help="metric value counted solved")
    f.add_argument("--max-solve-rate", type=float, default=0.5, help="drop at this rate or more")
    f.add_argument("--min-tool-calls", type=int, default=2, help="median tool calls of successes")
    f.add_argument("--agent", default="asearcher", help="asearcher, search_r1 or reasoning")
    f.add_argument("--max-turns", type=int, default=32, help="turns per trajectory")
    f.add_argument("--work-dir", default=None, help="where samples are saved (default OUT.samples)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_filter)


def _add_synthesize_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "synthesize", help="grow seed QAs into harder multi-hop questions (resumable)"
    )
    s.add_argument("seeds", help="seeds jsonl: question, answer, optional id, facts, hops")
    s.add_argument("--out", required=True, help="output directory (a rerun resumes it)")
    s.add_argument("--config", type=Path, required=True, help="a SynthConfig file")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="SynthConfig settings")
    s.add_argument("--index", required=True, help="index directory (or retrieval server URLs)")
    s.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="bm25")
    s.add_argument("--name", default="synth", help="evaluation set name: OUT/NAME/test.jsonl")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synthesize)


def _flushed(rc: int) -> int:
    """Flushes stdout inside the command's error handling (a closed pipe surfaces here)."""
    sys.stdout.flush()
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `KEY=VALUE` overrides may come after options (`train run.toml --quiet a.b=1`).
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    import asearcher

    asearcher.set_log_level(args.log_level.upper())
    if args.version:
        print(f"asearcher {asearcher.__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return _flushed(args.func(args))
    except BrokenPipeError:
        # The reader went away (`asearcher search ... | head`): what it read is all it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except AsearcherError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
