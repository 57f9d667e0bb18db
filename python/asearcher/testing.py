"""The test kit: doubles for the services a test cannot run here, speaking their real
protocols, and test hooks. Not part of the training API; tests, benchmarks and examples import
it explicitly.

- :func:`start_scripted_policy_server`: a deterministic LLM test double that answers SGLang's
  ``/generate`` by fixed rules (search, then answer from what it read), with an OpenAI-chat LLM
  judge at ``/v1/chat/completions`` (``asearcher serve scripted-policy`` on the command line);
- :func:`score_with_plugins`: runs reward plugins on recorded trajectories through the same
  batching path the rollout engine uses;
- :func:`emit_test_event`: emits a Rust ``tracing`` event (checks the logging bridge);
- :class:`WeightUpdateReceiver`: the receiving side of SGLang's (or vLLM's) weight update by
  collective broadcast, over gloo on the CPU (SGLang and vLLM need GPUs); it joins the group
  the trainer's sender opens and records every tensor, call and version it receives. In front
  of our model server (``serving=``) it is a whole SGLang or vLLM server: it generates, pauses
  and resumes through that server and loads every update it receives into it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

from . import _core
from ._core import ScriptedPolicyHandle
from ._loopback import LoopbackServer


def _spread(name: str, value: int | tuple[int, int] | Sequence[int]) -> int | list[int]:
    """A count given as a number or as an inclusive ``(min, max)`` range."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return [int(value[0]), int(value[1])]
    from .exceptions import ConfigError

    raise ConfigError(
        f"invalid setting `{name}`: give a number or a (min, max) pair, got {value!r}"
    )


def scripted_policy_config(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answers: Mapping[str, str | Sequence[str]] | str | PathLike[str] | None = None,
    searches: int | tuple[int, int] = 1,
    wrong_rate: float = 0.0,
    garbage_rate: float = 0.0,
    think_tokens: int | tuple[int, int] = 0,
    latency_ms: float = 0.0,
    ms_per_token: float = 0.0,
    tokens_per_s_total: float | None = None,
    judge_garbage_rate: float = 0.0,
    seed: int = 0,
    served_model_name: str = "scripted-policy",
) -> dict[str, Any]:
    """The scripted server's config as the JSON object the Rust side reads
    (``ScriptedPolicyConfig``); ``answers`` is a mapping question -> answer(s) or the path of a
    questions jsonl (``{"question", "answer"}`` per line)."""
    cfg: dict[str, Any] = {
        "host": host,
        "port": port,
        "searches": _spread("searches", searches),
        "wrong_rate": wrong_rate,
        "garbage_rate": garbage_rate,
        "think_tokens": _spread("think_tokens", think_tokens),
        "latency_ms": latency_ms,
        "ms_per_token": ms_per_token,
        "tokens_per_s_total": tokens_per_s_total,
        "judge_garbage_rate": judge_garbage_rate,
        "seed": seed,
        "served_model_name": served_model_name,
    }
    if isinstance(answers, Mapping):
        cfg["answers"] = {q: [a] if isinstance(a, str) else list(a) for q, a in answers.items()}
    elif answers is not None:
        cfg["questions_file"] = str(answers)
    return cfg


def start_scripted_policy_server(
    tokenizer: str | PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answers: Mapping[str, str | Sequence[str]] | str | PathLike[str] | None = None,
    searches: int | tuple[int, int] = 1,
    wrong_rate: float = 0.0,
    garbage_rate: float = 0.0,
    think_tokens: int | tuple[int, int] = 0,
    latency_ms: float = 0.0,
    ms_per_token: float = 0.0,
    tokens_per_s_total: float | None = None,
    judge_garbage_rate: float = 0.0,
    seed: int = 0,
    served_model_name: str = "scripted-policy",
) -> ScriptedPolicyHandle:
    """Starts the scripted policy server (an LLM test double) in the background.

    It answers SGLang's ``/generate`` by rules over the decoded prompt: search the question
    (``searches`` times, a number or a ``(min, max)`` range chosen per question), then answer
    with a gold answer from ``answers`` if an observation contains it, else the first document
    title of the last observation. ``wrong_rate`` / ``garbage_rate`` make some replies wrong or
    protocol-breaking (chosen by request id), ``think_tokens`` pads the ``<think>``, and
    ``latency_ms`` + ``ms_per_token`` (+ a shared ``tokens_per_s_total``) delay replies without
    using CPU. ``/v1/chat/completions`` is an LLM judge. ``tokenizer`` defaults to the bundled
    sample tokenizer. The handle has ``.address``, ``.url``, ``.port``, ``.stats()`` and
    ``.stop()``, and is a context manager. Rules and endpoints: docs/serving.md.
    """
    if tokenizer is None:
        from .data import sample_tokenizer_path

        tokenizer = sample_tokenizer_path()
    cfg = scripted_policy_config(
        host=host,
        port=port,
        answers=answers,
        searches=searches,
        wrong_rate=wrong_rate,
        garbage_rate=garbage_rate,
        think_tokens=think_tokens,
        latency_ms=latency_ms,
        ms_per_token=ms_per_token,
        tokens_per_s_total=tokens_per_s_total,
        judge_garbage_rate=judge_garbage_rate,
        seed=seed,
        served_model_name=served_model_name,
    )
    return _core.start_scripted_policy_server(str(tokenizer), json.dumps(cfg))


def score_with_plugins(plugins: Sequence[Any], records: Sequence[str], **kwargs: Any) -> Any:
    """Scores trajectory records (JSON lines) with reward plugins on the shared tokio runtime,
    as the rollout engine would (batched per plugin); returns each record's scores or errors."""
    return _core._test_score_with_plugins(list(plugins), list(records), **kwargs)


def emit_test_event(level: str, message: str) -> None:
    """Emits a Rust ``tracing`` event at ``level`` (for tests of the logging bridge)."""
    _core.emit_test_event(level, message)


class WeightUpdateReceiver(LoopbackServer):
    """A one-GPU SGLang or vLLM server's weight-update endpoints, on loopback, over gloo.

    ``with WeightUpdateReceiver("sglang") as r: ...``; ``r.url`` is its base URL. It joins the
    weight-update group when asked (``/init_weights_update_group`` or
    ``/init_weight_transfer_engine``), then receives each announced bucket by broadcast from
    rank 0, in the announced order, into freshly allocated tensors of the announced dtypes and
    shapes. ``tensors`` holds the latest tensor by name, ``received`` every name in arrival
    order, ``calls`` every ``(route, body)`` (forwarded calls with an empty body),
    ``weight_version`` the last version applied.
    With ``fail_updates`` set, an update is received and then refused (``success: false``,
    the old weights kept), as a server whose load failed answers.

    ``serving``: the URL of our model server (:func:`asearcher.start_model_server`) and
    ``model_dir`` the directory it was started from. Every route the receiver does not answer
    itself is forwarded to that server (so ``/generate`` or ``/v1/completions`` generate there),
    vLLM's ``/pause`` and ``/resume`` become its ``/pause_generation`` and
    ``/continue_generation``, and each complete update (SGLang: a bucket call; vLLM:
    ``/finish_weight_update``) is written as safetensors and loaded into it with
    ``/update_weights_from_disk``: it then generates with the weights it received.
    """

    def __init__(
        self,
        protocol: str = "sglang",
        *,
        timeout_s: float = 60.0,
        serving: str | None = None,
        model_dir: str | PathLike[str] | None = None,
    ) -> None:
        import tempfile
        import threading
        from pathlib import Path

        if (serving is None) != (model_dir is None):
            raise ValueError("serving and model_dir go together")
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.serving = serving.rstrip("/") if serving else None
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.loads = 0
        self._since_load: set[str] = set()
        self._expected: set[str] | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="asearcher-receiver-")
        self.tensors: dict[str, Any] = {}
        self.received: list[str] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.weight_version: str | None = None
        self.fail_updates = False
        self._group: Any = None
        self._store: Any = None
        self._lock = threading.Lock()
        self._serve(self._handler())

    def close(self) -> None:
        self._shutdown()
        self._scratch.cleanup()

    def __enter__(self) -> WeightUpdateReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _join(self, info: dict[str, Any]) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        from .distributed.weight_sync import new_process_group

        self._store = dist.TCPStore(
            info["master_address"],
            int(info["master_port"]),
            int(info["world_size"]),
            is_master=False,
            timeout=timedelta(seconds=self.timeout_s),
        )
        prefix = dist.PrefixStore(info.get("group_name", "weight_update_group"), self._store)
        self._group = new_process_group(
            prefix, int(info["rank_offset"]), int(info["world_size"]), "gloo", self.timeout_s
        )

    def _receive(self, names: list[str], dtypes: list[str], shapes: list[list[int]]) -> None:
        import torch

        from .distributed.weight_sync import broadcast

        if self._group is None:
            raise RuntimeError("update before the weight-update group was initialised")
        for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
            t = torch.empty(shape, dtype=getattr(torch, dtype))
            broadcast(self._group, t, self.timeout_s)
            self.received.append(name)
            if not self.fail_updates:
                self.tensors[name] = t
                self._since_load.add(name)

    OWN_ROUTES = (
        "/init_weights_update_group",
        "/init_weight_transfer_engine",
        "/update_weights_from_distributed",
        "/start_weight_update",
        "/update_weights",
        "/finish_weight_update",
        "/get_weight_version",
    )

    def _route(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append((route, body))
            if route in ("/init_weights_update_group", "/init_weight_transfer_engine"):
                self._join(body.get("init_info", body))
            elif route == "/update_weights_from_distributed":
                self._receive(body["names"], body["dtypes"], body["shapes"])
                if self.fail_updates:
                    return {"success": False, "message": "load failed; old weights kept"}
                self.weight_version = body.get("weight_version")
                self._load_into_serving(self.weight_version)
            elif route == "/update_weights":
                info = body["update_info"]
                self._receive(info["names"], info["dtype_names"], info["shapes"])
            elif route == "/finish_weight_update":
                if self.fail_updates:
                    return {"success": False, "message": "load failed; old weights kept"}
                self._load_into_serving(None)
            elif route == "/get_weight_version":
                return {"weight_version": self.weight_version}
            return {"success": True, "message": "ok"}

    def _load_into_serving(self, version: str | None) -> None:
        """Once every weight of the model has arrived (an update may come in several
        buckets), writes them as a model directory and loads it into the model server behind
        this receiver (nothing without one)."""
        if self.serving is None or self.model_dir is None:
            return
        import shutil
        from pathlib import Path

        from safetensors.torch import save_file

        from .distributed.weight_sync import post_json

        if not self._weight_names() <= self._since_load:
            return
        self._since_load.clear()

        self.loads += 1
        out = Path(self._scratch.name) / f"update-{self.loads}"
        out.mkdir()
        shutil.copy(self.model_dir / "config.json", out / "config.json")
        save_file(dict(self.tensors), str(out / "model.safetensors"), metadata={"format": "pt"})
        body: dict[str, Any] = {"model_path": str(out)}
        if version is not None:
            body["weight_version"] = version
        post_json(f"{self.serving}/update_weights_from_disk", body, self.timeout_s)

    def _weight_names(self) -> set[str]:
        """The tensor names of the served model's checkpoint (read once)."""
        if self._expected is None:
            from safetensors import safe_open

            assert self.model_dir is not None
            self._expected = set()
            for f in self.model_dir.glob("*.safetensors"):
                with safe_open(str(f), "pt") as weights:
                    self._expected.update(weights.keys())
        return self._expected

    def _forward(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        """A request this receiver does not answer, sent on to the model server (vLLM's
        pause and resume in our server's names)."""
        import urllib.error
        import urllib.request

        assert self.serving is not None
        route, _, query = path.partition("?")
        self.calls.append((route, {}))
        if route == "/pause":
            mode = dict(p.partition("=")[::2] for p in query.split("&") if p).get("mode")
            path, data = "/pause_generation", json.dumps({"mode": mode or "abort"}).encode()
        elif route == "/resume":
            path, data = "/continue_generation", b"{}"
        req = urllib.request.Request(
            f"{self.serving}{path}",
            data,
            {"Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _handler(self) -> Any:
        from ._loopback import JsonHandler

        receiver = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.0"  # as before: one request per connection

            def _forwarded(self, method: str, data: bytes | None) -> bool:
                own = self.path.partition("?")[0] in receiver.OWN_ROUTES
                if receiver.serving is None or own:
                    return False
                status, reply = receiver._forward(method, self.path, data)
                self.send_bytes(status, reply)
                return True

            def do_POST(self) -> None:
                data = self.read_body()
                if self._forwarded("POST", data):
                    return
                body = json.loads(data or b"{}")
                try:
                    self.send_json(200, receiver._route(self.path, body))
                except Exception as e:  # reported to the sender as the server would
                    self.send_json(500, {"success": False, "message": str(e)})

            def do_GET(self) -> None:
                if not self._forwarded("GET", None):
                    self.send_json(200, receiver._route(self.path, {}))

        return Handler


__all__ = [
    "ScriptedPolicyHandle",
    "WeightUpdateReceiver",
    "emit_test_event",
    "score_with_plugins",
    "scripted_policy_config",
    "start_scripted_policy_server",
]
