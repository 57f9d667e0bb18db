"""The FSDP2 learner: a Hugging Face causal LM sharded with ``fully_shard`` across the ranks of a
``torchrun`` job, trained with asearcher's decoupled PPO on the plans of the Rust buffer stage.

Global rank 0 holds the Rust training loop; the loop calls this learner's methods there
(``ppo_step``, ``export_hf``, ``save_state``...), and rank 0 sends each call as a command to
the other ranks (a broadcast on a gloo control group), which run :meth:`FsdpLearner.serve`.
Every rank then does its part of the same collectives.

What a step does on every rank, for its share of the plan:

- proximal logprobs of every micro-batch with the pre-step weights (decoupled PPO);
- per minibatch: each micro-batch's token-mean loss, scaled by its share of the minibatch's loss
  tokens over all ranks and by the world size (FSDP averages gradients over ranks), so the
  accumulated gradient is the full minibatch's token-mean gradient; then global gradient-norm
  clipping and AdamW at the schedule's rate.

The LM head runs inside the model's root forward (where FSDP has its weight unsharded) through
asearcher's fused kernels, on the hidden states of the loss tokens only: no ``[tokens, vocab]``
float32 tensor exists, and prompt and tool tokens never reach the head.
"""

from __future__ import annotations

import json
import os
import time
import types
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .. import _core
from ..ops import fused_ppo_loss, ppo_loss, token_logprobs

# Largest safetensors file of an export; bigger models get shards and an index, as HF writes.
MAX_SHARD_BYTES = 5 * 2**30

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Keys of the token-weighted diagnostic sums reduced over ranks (same as the tch learner).
_DIAG = (
    "clip_frac",
    "behav_weight_mean",
    "behav_weight_capped_frac",
    "approx_kl",
    "entropy_mean",
)


class Command:
    """The names of the commands rank 0 sends to the other ranks."""

    STEP = "ppo_step"
    EXPORT = "export_hf"
    SYNC = "push_weights"
    SAVE = "save_state"
    LOAD = "load_state"
    STOP = "shutdown"


def _head_forward(
    self: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    keep: torch.Tensor,
    head: Callable[[torch.Tensor, torch.Tensor], Any],
) -> Any:
    """Replaces the causal LM's forward: decoder hidden states, the rows of ``keep`` only, then
    ``head(hidden, lm_head.weight)`` inside the root forward (its FSDP unit is unsharded here)."""
    out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    return head(hidden, self.get_output_embeddings().weight)


class FsdpLearner:
    """One rank's part of the FSDP2 learner.

    ``config`` is the whole train config as a dict (``model``, ``learner``...); the process
    group must be initialised (:func:`asearcher.distributed.init_distributed`). ``head`` is
    ``"fused"`` (the chunked kernels) or ``"materialized"``: full float32 logits, log_softmax
    and gather, the reference the fused path is tested and benchmarked against."""

    def __init__(
        self, config: dict[str, Any], *, device: torch.device, head: str = "fused"
    ) -> None:
        if head not in ("fused", "materialized"):
            raise ValueError(f"head must be fused or materialized, got {head!r}")
        self.head = head
        self.config = config
        self.learner = config["learner"]
        self.fsdp = self.learner["fsdp"]
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.steps = 0
        # Commands wait as long as rank 0 may wait for a batch; in-step collectives of the
        # default group keep `timeout_s`.
        idle = timedelta(seconds=float(self.fsdp["idle_timeout_s"]))
        self.control = dist.new_group(backend="gloo", timeout=idle)
        self.model, self.tied = self._build_model(Path(config["model"]["path"]))
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer()
        self._stopped = False
        self._busy = False
        self._broadcaster: Any = None
        self.max_shard_bytes = MAX_SHARD_BYTES

    # --------------------------------------------------------------------------------------
    # set-up

    def _build_model(self, path: Path) -> tuple[Any, bool]:
        """The model with its parameters on the meta device on every rank (no rank holds a full
        copy), sharded, then allocated shard by shard and filled from the checkpoint that rank 0
        alone reads (broadcast to the others). Buffers (rotary frequencies) are computed for
        real on every rank and kept."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_config = AutoConfig.from_pretrained(path)
        with _parameters_on_meta():
            model: Any = AutoModelForCausalLM.from_config(
                hf_config, dtype=torch.float32, attn_implementation=self.fsdp["attn_implementation"]
            )
        model.config.use_cache = False
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        if tied:
            model.tie_weights()
        buffers = {n: b.detach().to(self.device) for n, b in model.named_buffers()}
        self._freeze(model)
        if self.fsdp["activation_checkpointing"]:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.forward = types.MethodType(_head_forward, model)
        mesh = _mesh(self.device, self.world_size)
        policy = MixedPrecisionPolicy(
            param_dtype=_DTYPES[self.fsdp["param_dtype"]],
            reduce_dtype=_DTYPES[self.fsdp["reduce_dtype"]],
            cast_forward_inputs=True,
        )
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        if not tied:
            fully_shard(model.get_input_embeddings(), mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        model.to_empty(device=self.device)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        full: dict[str, Any] = _read_hf_weights(path, model, tied) if self.rank == 0 else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, full, options=options)
        return model, tied

    def _freeze(self, model: torch.nn.Module) -> None:
        for pattern in self.learner["frozen"]:
            hits = [p for n, p in model.named_parameters() if pattern in n]
            if not hits:
                raise ValueError(f"learner.frozen: `{pattern}` matches no parameter name")
            for p in hits:
                p.requires_grad_(False)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        opt = self.learner["optimizer"]
        decay = [p for n, p in self.params if _core.weight_decays(n)]
        no_decay = [p for n, p in self.params if not _core.weight_decays(n)]
        groups = [
            {"params": decay, "weight_decay": float(opt["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=float(self.learner["schedule"]["lr"]),
            betas=(float(opt["beta1"]), float(opt["beta2"])),
            eps=float(opt["eps"]),
            foreach=False,
        )

    # --------------------------------------------------------------------------------------
    # the commands (called by the Rust loop on rank 0, by serve() elsewhere)

    def set_steps(self, n: int) -> None:
        """Optimizer updates taken (drives the schedule); rank 0 sends it with each step."""
        self.steps = int(n)

    def ppo_step(self, plan: dict[str, Any], version: int) -> dict[str, Any]:
        shares = [
            {"micro": rank, "minibatch_loss_tokens": plan["minibatch_loss_tokens"]}
            for rank in plan["ranks"]
        ]
        return self._command(
            Command.STEP,
            {"steps": self.steps},
            lambda own: self._ppo_step_local(own, self.steps),
            shares,
        )

    def export_hf(self, directory: str) -> None:
        self._command(Command.EXPORT, {"dir": directory}, lambda _: self._export_local(directory))

    def push_weights(self, version: int) -> None:
        """Broadcasts the weights into the servers (``inference.weight_sync = "distributed"``):
        every rank gathers each parameter in the same order, rank 0 sends them in buckets."""
        self._command(Command.SYNC, {"version": version}, lambda _: self._push_local(version))

    def model_config_json(self) -> str:
        return self.model.config.to_json_string()

    def save_state(self, directory: str) -> None:
        self._command(Command.SAVE, {"dir": directory}, lambda _: self._save_state_local(directory))

    def load_state(self, directory: str) -> None:
        self._command(Command.LOAD, {"dir": directory}, lambda _: self._load_state_local(directory))

    def shutdown(self) -> None:
        """Tells the other ranks to leave :meth:`serve` (once). After a command failed half-way
        the other ranks are inside its collectives, so nothing is sent: they fail on their
        timeout, or torchrun ends them when this rank exits."""
        if not self._stopped and self.rank == 0 and not self._busy:
            self._stopped = True
            self._send(Command.STOP, {})

    def serve(self) -> None:
        """Ranks other than 0: run rank 0's commands until it says stop."""
        while True:
            cmd, args, share = self._receive()
            if cmd == Command.STOP:
                return
            if cmd == Command.STEP:
                self._ppo_step_local(share, args["steps"])
            elif cmd == Command.EXPORT:
                self._export_local(args["dir"])
            elif cmd == Command.SYNC:
                self._push_local(args["version"])
            elif cmd == Command.SAVE:
                self._save_state_local(args["dir"])
            elif cmd == Command.LOAD:
                self._load_state_local(args["dir"])
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd!r} from rank 0")

    # --------------------------------------------------------------------------------------
    # control messages

    def _command(
        self,
        cmd: str,
        args: dict[str, Any],
        local: Callable[[Any], Any],
        shares: list[Any] | None = None,
    ) -> Any:
        """Rank 0: sends ``cmd`` (and each rank its share), then does its own part. While it
        runs the learner is busy: a failure half-way leaves it so, and shutdown sends nothing."""
        self._busy = True
        result = local(self._send(cmd, args, shares))
        self._busy = False
        return result

    def _send(self, cmd: str, args: dict[str, Any], shares: list[Any] | None = None) -> Any:
        """Rank 0: the command to every rank, and each rank its share; returns rank 0's."""
        dist.broadcast_object_list([(cmd, args)], src=0, group=self.control)
        if shares is None:
            return None
        own: list[Any] = [None]
        dist.scatter_object_list(own, shares, src=0, group=self.control)
        return own[0]

    def _receive(self) -> tuple[str, dict[str, Any], Any]:
        message: list[Any] = [None]
        dist.broadcast_object_list(message, src=0, group=self.control)
        cmd, args = message[0]
        share = None
        if cmd == Command.STEP:
            own: list[Any] = [None]
            dist.scatter_object_list(own, None, src=0, group=self.control)
            share = own[0]
        return cmd, args, share

    # --------------------------------------------------------------------------------------
    # the PPO step

    def _ppo_step_local(self, share: dict[str, Any], steps: int) -> dict[str, Any]:
        self.steps = steps
        if self.device.type == "cuda":  # the Rust loop calls in from its own thread
            torch.cuda.set_device(self.device)
        ppo = self.learner["ppo"]
        started = time.perf_counter()
        minibatches = [[self._tensors(m) for m in micro] for micro in share["micro"]]
        if ppo["decoupled"]:
            for micro in minibatches:
                for m in micro:
                    m["prox"] = self._proximal(m)
        seconds_prox = time.perf_counter() - started
        started = time.perf_counter()
        sums = torch.zeros(2 + len(_DIAG), dtype=torch.float64)  # loss*n, n, diag*n...
        weight_max = 0.0
        grad_norm, lr, updates = 0.0, 0.0, 0
        for k, micro in enumerate(minibatches):
            total = int(share["minibatch_loss_tokens"][k])
            self.optimizer.zero_grad(set_to_none=True)
            for m in micro:
                loss, diag = self._loss(m)
                n = m["loss_tokens"]
                scale = (n / max(total, 1)) * self.world_size
                (loss * scale).backward()
                if n:
                    sums[0] += float(loss) * n
                    sums[1] += n
                    for j, key in enumerate(_DIAG):
                        value = float(diag[key])
                        if value == value:  # entropy may be NaN when not computed
                            sums[2 + j] += value * n
                    weight_max = max(weight_max, float(diag["behav_weight_max"]))
            norm, step_lr = self._clip_and_step()
            grad_norm = max(grad_norm, norm)
            if k == 0:
                lr = step_lr
            updates += int(norm == norm and norm != float("inf"))
        seconds_train = time.perf_counter() - started
        dist.all_reduce(sums, group=self.control)
        peak = torch.tensor([weight_max], dtype=torch.float64)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=self.control)
        n = max(float(sums[1]), 1.0)
        stats = {
            "loss": float(sums[0]) / n,
            "grad_norm": grad_norm,
            "lr": lr,
            "behav_weight_max": float(peak[0]),
            "seconds_prox": seconds_prox,
            "seconds_train": seconds_train,
            "skipped": updates == 0,
        }
        for j, key in enumerate(_DIAG):
            stats[key] = float(sums[2 + j]) / n
        return stats

    def _tensors(self, m: dict[str, Any]) -> dict[str, Any]:
        """A micro-batch's byte buffers as tensors on the device (an empty one: one dummy token
        with no loss, so this rank still joins the forward and backward collectives)."""
        if not m["input_ids"]:
            ids = torch.zeros(1, dtype=torch.int64)
            return {
                "input_ids": ids,
                "position_ids": ids.clone(),
                "keep": ids.clone(),
                "targets": ids.clone(),
                "behav": torch.zeros(1),
                "advantages": torch.zeros(1),
                "mask": torch.zeros(1, dtype=torch.bool),
                "loss_tokens": 0,
            }

        def buf(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.frombuffer(bytearray(m[key]), dtype=dtype)

        mask = buf("loss_mask", torch.uint8).bool()
        keep = mask.nonzero().squeeze(1)
        return {
            "input_ids": buf("input_ids", torch.int64),
            "position_ids": buf("position_ids", torch.int64),
            "keep": keep,
            "targets": buf("targets", torch.int64)[keep],
            "behav": buf("behav", torch.float32)[keep],
            "advantages": buf("advantages", torch.float32)[keep],
            "mask": torch.ones(keep.numel(), dtype=torch.bool),
            "loss_tokens": int(m["loss_tokens"]),
        }

    def _run(self, m: dict[str, Any], head: Callable[[torch.Tensor, torch.Tensor], Any]) -> Any:
        dev = self.device
        return self.model(
            m["input_ids"].unsqueeze(0).to(dev),
            m["position_ids"].unsqueeze(0).to(dev),
            m["keep"].to(dev),
            head,
        )

    def _chunk(self) -> int | None:
        chunk = self.learner.get("chunk_tokens")
        return None if chunk is None else int(chunk)

    def _proximal(self, m: dict[str, Any]) -> torch.Tensor:
        temperature = float(self.learner["ppo"]["temperature"])
        targets = m["targets"].to(self.device)

        def head(hidden: torch.Tensor, weight: torch.Tensor) -> Any:
            if self.head == "materialized":
                return _materialized(hidden, weight, targets, temperature)[0]
            return token_logprobs(
                hidden, weight, targets, temperature=temperature, chunk_size=self._chunk()
            )

        with torch.no_grad():
            return self._run(m, head).detach()

    def _loss(self, m: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ppo = self.learner["ppo"]
        dev = self.device
        inputs = {k: m[k].to(dev) for k in ("targets", "behav", "advantages", "mask")}
        prox = m.get("prox")

        settings = {
            "eps_clip": float(ppo["eps_clip"]),
            "eps_clip_high": ppo["eps_clip_high"],
            "behav_weight_cap": ppo["behav_weight_cap"],
            "behav_weight_mode": ppo["cap_mode"],
            "entropy_coef": float(ppo["entropy_coef"]),
        }

        def materialized(hidden: torch.Tensor, weight: torch.Tensor) -> Any:
            logp, entropy = _materialized(
                hidden, weight, inputs["targets"], float(ppo["temperature"])
            )
            return ppo_loss(
                logp,
                prox,
                inputs["behav"],
                inputs["advantages"],
                inputs["mask"],
                entropy=entropy,
                **settings,
            )

        def head(hidden: torch.Tensor, weight: torch.Tensor) -> Any:
            if self.head == "materialized":
                return materialized(hidden, weight)
            return fused_ppo_loss(
                hidden,
                weight,
                inputs["targets"],
                inputs["advantages"],
                inputs["mask"],
                behav_logp=inputs["behav"],
                prox_logp=prox,
                temperature=float(ppo["temperature"]),
                chunk_size=self._chunk(),
                **settings,
            )

        return self._run(m, head)

    def _clip_and_step(self) -> tuple[float, float]:
        params = [p for _, p in self.params]
        norm = torch.nn.utils.clip_grad_norm_(params, float(self.learner["grad_clip"]))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm_value = float(norm)
        lr = _core.lr_at(self.learner["schedule"], self.steps)
        if norm_value == norm_value and norm_value != float("inf"):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.steps += 1
        return norm_value, lr

    # --------------------------------------------------------------------------------------
    # weights and state

    def _export_local(self, directory: str) -> None:
        """Every rank gathers each full weight (the same collectives as a broadcast sync; a
        tied ``lm_head`` is the embedding's parameter and not written twice); rank 0 keeps
        them on the CPU and writes them."""
        tensors = {}
        for name, t in self._full_weights():
            if self.rank == 0:
                tensors[name] = t.cpu().contiguous()
        if self.rank != 0:
            return
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _save_sharded(tensors, out, self.max_shard_bytes)
        config = json.loads(self.model.config.to_json_string())
        config["torch_dtype"] = config["dtype"] = self.fsdp["export_dtype"]
        config["use_cache"] = True
        (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    def _full_weights(self) -> Any:
        """``(HF name, full tensor in the export dtype)`` per parameter; each ``full_tensor`` is
        a collective, so every rank walks the same parameters in the same order."""
        dtype = _DTYPES[self.fsdp["export_dtype"]]
        for name, p in self.model.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
            yield name.replace("_checkpoint_wrapped_module.", ""), full.detach().to(dtype)

    def _push_local(self, version: int) -> None:
        if self.rank != 0:
            for _ in self._full_weights():
                pass
            return
        if self._broadcaster is None:
            self._broadcaster = self._new_broadcaster()
        self._broadcaster.send(self._full_weights(), version)

    def _new_broadcaster(self) -> Any:
        from .weight_sync import WeightBroadcaster

        inf = self.config["inference"]
        addr = inf.get("sync_master_addr") or os.environ.get("MASTER_ADDR", "127.0.0.1")
        return WeightBroadcaster(
            inf["servers"],
            protocol="vllm" if inf.get("backend") == "vllm" else "sglang",
            server_world_size=int(inf["server_world_size"]),
            master_addr=addr,
            master_port=int(inf["sync_master_port"]),
            backend="nccl" if self.device.type == "cuda" else "gloo",
            bucket_bytes=int(inf["sync_bucket_mb"]) << 20,
            timeout_s=float(inf["timeout_s"]),
        )

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        return {
            "model": get_model_state_dict(self.model),
            "optim": get_optimizer_state_dict(self.model, self.optimizer),
        }

    def _save_state_local(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=os.path.join(directory, "learner"))
        dist.barrier(group=self.control)

    def _load_state_local(self, directory: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = os.path.join(directory, "learner")
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{path}: no sharded learner state in this checkpoint (was it written by the "
                'tch learner? resume it with learner.backend = "tch")'
            )
        state = self._state()
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])


def _save_sharded(tensors: dict[str, torch.Tensor], out: Path, max_bytes: int) -> None:
    """``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` files of at most
    ``max_bytes`` each (a larger tensor alone) with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


class _parameters_on_meta:
    """Within it, new module parameters are created on the meta device (buffers stay real)."""

    def __enter__(self) -> None:
        self._register = torch.nn.Module.register_parameter

        def register(module: torch.nn.Module, name: str, param: Any) -> None:
            self._register(module, name, param)
            current: Any = module._parameters[name]
            if current is not None:
                meta = current.to(torch.device("meta"))
                module._parameters[name] = type(current)(meta, requires_grad=param.requires_grad)

        setattr(torch.nn.Module, "register_parameter", register)  # noqa: B010

    def __exit__(self, *exc: object) -> None:
        setattr(torch.nn.Module, "register_parameter", self._register)  # noqa: B010


def _read_hf_weights(path: Path, model: Any, tied: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (every safetensors file of ``path``) as float32, checked against
    the model's parameter names: a missing or unexpected tensor is an error naming both."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update({k: v.float() for k, v in load_file(str(f)).items()})
    expected = set(model.state_dict().keys())
    if tied:
        weights.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: the checkpoint does not match the model built from its config.json "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return weights


def _materialized(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs and entropies through the full float32 ``[tokens, vocab]`` logits."""
    logits = (hidden.float() @ weight.float().T) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets.unsqueeze(1)).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _mesh(device: torch.device, world: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world,))
