"""Weight sync by collective broadcast into inference servers, through their own weight-update
HTTP APIs (no file system in between).

The trainer's global rank 0 is rank 0 of a separate process group (its own TCP store, a
``PrefixStore`` named after the group) that every server GPU joins as rank
``rank_offset + tp_rank``, ``rank_offset = 1 + server_index * server_world_size``. Each update
is a sequence of buckets of at most ``bucket_bytes``: for every bucket the HTTP call that
announces it (names, dtypes, shapes, in order) is posted to every server, the tensors are
broadcast one by one in that order while the calls are pending, and the replies are awaited
before the next bucket (one bucket pending at most).

Protocols:

- ``sglang``: ``POST /init_weights_update_group`` {master_address, master_port, rank_offset,
  world_size, group_name, backend}; ``POST /update_weights_from_distributed`` {names, dtypes,
  shapes, group_name, flush_cache, abort_all_requests, weight_version}.
- ``vllm`` (its native weight transfer, server started with ``--weight-transfer-config
  '{"backend":"nccl"}'``): ``POST /init_weight_transfer_engine`` {init_info: {master_address,
  master_port, rank_offset, world_size}}, then per update ``/start_weight_update``, one
  ``/update_weights`` {update_info: {names, dtype_names, shapes, packed: false}} per bucket,
  ``/finish_weight_update``.

On GPUs the group is NCCL; on the CPU it is gloo (the same sender, which is how it is tested
against :class:`asearcher.testing.WeightUpdateReceiver`). Every HTTP call and collective has a
timeout; a failure raises :class:`asearcher.exceptions.WeightSyncError` naming the server.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..exceptions import WeightSyncError

PROTOCOLS = ("sglang", "vllm")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POSTs ``body``; a transport error, an HTTP error or ``success: false`` raises a
    WeightSyncError naming ``url``."""
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            text = r.read().decode() or "{}"
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise WeightSyncError(f"{url}: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise WeightSyncError(f"{url}: {e}") from None
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        reply = {"message": text}
    if isinstance(reply, dict) and reply.get("success") is False:
        raise WeightSyncError(f"{url}: refused: {reply.get('message', reply)}")
    return reply if isinstance(reply, dict) else {"reply": reply}


class _Pending:
    """An HTTP call running on its own thread while this one broadcasts."""

    def __init__(self, url: str, body: dict[str, Any], timeout_s: float) -> None:
        self.url = url
        self.error: BaseException | None = None
        self.reply: dict[str, Any] | None = None
        self._thread = threading.Thread(
            target=self._run, args=(body, timeout_s), daemon=True, name="weight-sync-http"
        )
        self._thread.start()

    def _run(self, body: dict[str, Any], timeout_s: float) -> None:
        try:
            self.reply = post_json(self.url, body, timeout_s)
        except BaseException as e:  # re-raised by wait() on the caller's thread
            self.error = e

    def wait(self, timeout_s: float) -> dict[str, Any]:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise WeightSyncError(f"{self.url}: no reply within {timeout_s:.0f} s")
        if self.error is not None:
            raise self.error
        return self.reply or {}


def _wait_all(pending: Sequence[_Pending], timeout_s: float) -> None:
    errors = []
    for p in pending:
        try:
            p.wait(timeout_s)
        except WeightSyncError as e:
            errors.append(str(e))
    if errors:
        raise WeightSyncError("; ".join(errors))


def new_process_group(
    store: dist.Store, rank: int, world_size: int, backend: str, timeout_s: float
) -> Any:
    """A process group outside torch.distributed's registry (the torchrun group is not
    touched): gloo on the CPU, NCCL on GPUs."""
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"weight-sync backend must be gloo or nccl, got {backend!r}")


def broadcast(group: Any, tensor: torch.Tensor, timeout_s: float) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    group.broadcast([tensor], opts).wait(timedelta(seconds=timeout_s))


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WeightBroadcaster:
    """Rank 0 of the weight-update group with ``servers`` (base URLs).

    ``server_world_size`` is each server's GPU count (tensor x pipeline parallel);
    ``master_addr`` must be reachable from the servers (this host's address on their network).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        protocol: str = "sglang",
        server_world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 0,
        backend: str = "gloo",
        bucket_bytes: int = 1 << 30,
        timeout_s: float = 600.0,
        group_name: str = "weight_update_group",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if not servers:
            raise ValueError("no servers to send weights to")
        self.servers = [s.rstrip("/") for s in servers]
        self.protocol = protocol
        self.server_world_size = server_world_size
        self.world_size = 1 + len(self.servers) * server_world_size
        self.master_addr = master_addr
        self.master_port = master_port or free_port()
        self.backend = backend
        self.bucket_bytes = max(1, int(bucket_bytes))
        self.timeout_s = timeout_s
        self.group_name = group_name
        self.group: Any = None
        self._store: Any = None
        self.updates = 0

    def connect(self) -> None:
        """Asks every server to join the group and joins it as rank 0."""
        self._store = dist.TCPStore(
            self.master_addr,
            self.master_port,
            self.world_size,
            is_master=True,
            timeout=timedelta(seconds=self.timeout_s),
            wait_for_workers=False,
        )
        pending = [
            _Pending(f"{url}{self._init_route()}", self._init_body(i), self.timeout_s)
            for i, url in enumerate(self.servers)
        ]
        prefix = dist.PrefixStore(self.group_name, self._store)
        try:
            self.group = new_process_group(prefix, 0, self.world_size, self.backend, self.timeout_s)
        except RuntimeError as e:
            _wait_all(pending, 1.0)  # a server's own refusal says more than the timeout
            raise WeightSyncError(
                f"servers {', '.join(self.servers)} did not join the weight-update group "
                f"at {self.master_addr}:{self.master_port}: {e}"
            ) from None
        _wait_all(pending, self.timeout_s)

    def _init_route(self) -> str:
        return (
            "/init_weights_update_group"
            if self.protocol == "sglang"
            else ("/init_weight_transfer_engine")
        )

    def _init_body(self, index: int) -> dict[str, Any]:
        info = {
            "master_address": self.master_addr,
            "master_port": self.master_port,
            "rank_offset": 1 + index * self.server_world_size,
            "world_size": self.world_size,
        }
        if self.protocol == "vllm":
            return {"init_info": info}
        return {**info, "group_name": self.group_name, "backend": self.backend}

    def send(self, tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> int:
        """Broadcasts ``(name, tensor)`` pairs (HF names, in order; a lazy iterable is fine) as
        policy ``version``; returns the bytes sent."""
        if self.group is None:
            self.connect()
        if self.protocol == "vllm":
            self._post_all("/start_weight_update", {"is_checkpoint_format": True})
        sent, size = 0, 0
        bucket: list[tuple[str, torch.Tensor]] = []
        for name, t in tensors:
            t = t.detach()
            if self.backend == "gloo" and t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            nbytes = t.numel() * t.element_size()
            if bucket and size + nbytes > self.bucket_bytes:
                self._send_bucket(bucket, version)
                bucket, size = [], 0
            bucket.append((name, t))
            size += nbytes
            sent += nbytes
        if bucket:
            self._send_bucket(bucket, version)
        if self.protocol == "vllm":
            self._post_all("/finish_weight_update", {})
        self.updates += 1
        return sent

    def _bucket_call(self, bucket: list[tuple[str, torch.Tensor]], version: int) -> tuple:
        names = [n for n, _ in bucket]
        dtypes = [_dtype_name(t) for _, t in bucket]
        shapes = [list(t.shape) for _, t in bucket]
        if self.protocol == "vllm":
            info = {"names": names, "dtype_names": dtypes, "shapes": shapes, "packed": False}
            return "/update_weights", {"update_info": info}
        body = {
            "names": names,
            "dtypes": dtypes,
            "shapes": shapes,
            "group_name": self.group_name,
            "flush_cache": True,
            "abort_all_requests": False,
            "weight_version": str(version),
        }
        return "/update_weights_from_distributed", body

    def _send_bucket(self, bucket: list[tuple[str, torch.Tensor]], version: int) -> None:
        route, body = self._bucket_call(bucket, version)
        pending = [_Pending(f"{url}{route}", body, self.timeout_s) for url in self.servers]
        try:
            for _, t in bucket:
                broadcast(self.group, t, self.timeout_s)
        except RuntimeError as e:
            raise WeightSyncError(f"broadcast to {', '.join(self.servers)} failed: {e}") from None
        _wait_all(pending, self.timeout_s)

    def _post_all(self, route: str, body: dict[str, Any]) -> None:
        pending = [_Pending(f"{url}{route}", body, self.timeout_s) for url in self.servers]
        _wait_all(pending, self.timeout_s)
