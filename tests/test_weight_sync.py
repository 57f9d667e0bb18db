"""Weight sync by collective broadcast (asearcher.distributed.weight_sync): the sender the
trainer's rank 0 runs, over gloo, against a receiver that speaks SGLang's (or vLLM's) HTTP API
and joins the group as a one-GPU server would. Every received tensor equals the sent one;
names, dtypes, shapes, order, buckets and versions are those announced."""

from __future__ import annotations

import time

import pytest
import torch
from asearcher.distributed.weight_sync import WeightBroadcaster
from asearcher.exceptions import WeightSyncError
from asearcher.testing import WeightUpdateReceiver


def weights(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        ("model.embed_tokens.weight", torch.randn(50, 16, generator=g).to(torch.bfloat16)),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(16, 16, generator=g)),
        ("model.layers.0.self_attn.q_proj.bias", torch.randn(16, generator=g)),
        ("model.norm.weight", torch.rand(16, generator=g).to(torch.bfloat16)),
        ("lm_head.weight", torch.randn(50, 16, generator=g)),
    ]


def test_sglang_protocol_delivers_every_tensor_in_buckets_with_its_version():
    with WeightUpdateReceiver("sglang") as a, WeightUpdateReceiver("sglang") as b:
        sender = WeightBroadcaster([a.url, b.url], bucket_bytes=2048, timeout_s=30)
        for version in (1, 2):
            sent = weights(version)
            nbytes = sender.send(iter(sent), version)
            assert nbytes == sum(t.numel() * t.element_size() for _, t in sent)
            for r in (a, b):
                assert r.weight_version == str(version)
                for name, t in sent:
                    assert r.tensors[name].dtype == t.dtype
                    assert torch.equal(r.tensors[name], t), name
        names = [n for n, _ in weights(0)]
        for r, offset in ((a, 1), (b, 2)):
            init = [body for route, body in r.calls if route == "/init_weights_update_group"]
            assert len(init) == 1  # the group is opened once
            assert (init[0]["rank_offset"], init[0]["world_size"]) == (offset, 3)
            assert init[0]["backend"] == "gloo" and init[0]["group_name"] == "weight_update_group"
            route_name = "/update_weights_from_distributed"
            updates = [body for route, body in r.calls if route == route_name]
            assert len(updates) > 2, "the 2 KiB bucket splits each update"
            first = [n for body in updates[: len(updates) // 2] for n in body["names"]]
            assert first == names and r.received == names * 2  # announced order = arrival order
            assert updates[0]["dtypes"][0] == "bfloat16" and updates[0]["shapes"][0] == [50, 16]
            assert [u["weight_version"] for u in updates] == ["1"] * (len(updates) // 2) + ["2"] * (
                len(updates) // 2
            )


def test_vllm_protocol_wraps_each_update_in_start_and_finish():
    with WeightUpdateReceiver("vllm") as r:
        sender = WeightBroadcaster([r.url], protocol="vllm", bucket_bytes=4096, timeout_s=30)
        sent = weights(3)
        sender.send(sent, 7)
        routes = [route for route, _ in r.calls]
        assert routes[0] == "/init_weight_transfer_engine"
        assert routes[1] == "/start_weight_update" and routes[-1] == "/finish_weight_update"
        assert set(routes[2:-1]) == {"/update_weights"}
        info = r.calls[2][1]["update_info"]
        assert info["dtype_names"][0] == "bfloat16" and info["packed"] is False
        assert all(torch.equal(r.tensors[n], t) for n, t in sent)
        assert r.calls[0][1]["init_info"]["rank_offset"] == 1


def test_a_server_that_refuses_the_update_keeps_its_weights_and_is_named():
    with WeightUpdateReceiver("sglang") as r:
        sender = WeightBroadcaster([r.url], timeout_s=30)
        sender.send(weights(1), 1)
        r.fail_updates = True
        with pytest.raises(WeightSyncError, match=r.url):
            sender.send(weights(2), 2)
        assert r.weight_version == "1"
        assert all(torch.equal(r.tensors[n], t) for n, t in weights(1))


def test_an_unreachable_server_fails_within_the_timeout():
    sender = WeightBroadcaster(["http://127.0.0.1:9"], timeout_s=3)
    started = time.monotonic()
    with pytest.raises(WeightSyncError, match="127.0.0.1:9"):
        sender.send(weights(0), 1)
    assert time.monotonic() - started < 20
