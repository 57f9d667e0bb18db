"""Tensor functions implemented in Rust on libtorch, applied to ``torch.Tensor`` (CPU or CUDA).

Tensors cross into Rust by data pointer, shape, strides, dtype and device, with no copy; the
Rust side never keeps them past the call. Outputs are allocated here and written in place by
Rust, with the GIL released, on the calling thread (CUDA work runs on the current stream).

RL loss kernels (see ``docs/kernels.md``):

- :func:`token_logprobs`: chunked logprobs (and entropies) of target tokens from hidden states
  and the LM head, never materialising the ``[tokens, vocab]`` log-softmax; its backward
  recomputes logits chunk by chunk, so any loss written in PyTorch can follow it.
- :func:`fused_ppo_loss`: the PPO-family loss over the LM head with gradients computed during the
  forward pass (Liger-style); backward only scales the stored gradients.
- :func:`ppo_loss`: the same loss on logprob tensors.
- :func:`group_advantages`, :func:`token_advantages`: critic-free advantages.
"""

from __future__ import annotations

from typing import Literal, overload

import torch

from . import _core
from .exceptions import TensorError

DIAGNOSTIC_NAMES: tuple[str, ...] = tuple(_core.DIAGNOSTIC_NAMES)
"""Keys of the diagnostics dict returned by the loss functions."""


def _view(t: torch.Tensor) -> tuple:
    dev = t.device
    return (t.data_ptr(), list(t.shape), list(t.stride()), str(t.dtype), dev.type, dev.index)


def _opt_view(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else _view(t)


@overload
def _tensor(name: str, t: object, *, optional: Literal[False] = False) -> torch.Tensor: ...
@overload
def _tensor(name: str, t: object, *, optional: bool) -> torch.Tensor | None: ...
def _tensor(name: str, t: object, *, optional: bool = False) -> torch.Tensor | None:
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        raise TensorError(f"tensor `{name}`: must be a torch.Tensor, got {type(t).__name__}")
    return t


@overload
def _const(name: str, t: object, *, optional: Literal[False] = False) -> torch.Tensor: ...
@overload
def _const(name: str, t: object, *, optional: bool) -> torch.Tensor | None: ...
def _const(name: str, t: object, *, optional: bool = False) -> torch.Tensor | None:
    """A contiguous, detached input that carries no gradient."""
    t = _tensor(name, t, optional=optional)
    return None if t is None else t.detach().contiguous()


# ----------------------------------------------------------------------------------------------
# Advantages


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    normalize_std: bool = False,
    eps: float = 1e-6,
    reward_scale: float = 1.0,
    reward_bias: float = 0.0,
    reward_clip: float | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-relative (GRPO) advantages of 1-D ``rewards`` (groups: consecutive runs of
    ``group_size``). Rewards are first shaped as ``clip((r + reward_bias) * reward_scale,
    -reward_clip, reward_clip)``; each is then centred on its group's mean and, with
    ``normalize_std``, divided by the group's unbiased std (+ ``eps``).

    ``valid`` (bool-like, shape of ``rewards``) marks sequences that count; invalid ones (zero
    length, all tokens masked) are left out of their group's statistics and get 0. Groups with
    no valid member, or one, get 0 (never NaN). Returns rewards' dtype (float32 for integer
    rewards) on rewards' device."""
    rewards = _tensor("rewards", rewards)
    if rewards.requires_grad:
        raise TensorError("tensor `rewards`: must not require grad (advantages are constants)")
    rewards = rewards.contiguous()
    valid = _const("valid", valid, optional=True)
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    out = torch.empty(rewards.shape, dtype=dtype, device=rewards.device)
    _core.shaped_group_advantages_into(
        _view(rewards),
        _opt_view(valid),
        _view(out),
        group_size,
        normalize_std,
        eps,
        reward_scale,
        reward_bias,
        reward_clip,
    )
    return out


def token_advantages(
    seq_adv: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    seq_ids: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Per-token advantages with gamma = lambda = 1: each valid token gets its sequence's
    advantage, masked tokens 0. ``loss_mask`` is ``[B, T]`` (row ``b`` is sequence ``b`` of
    ``seq_adv [B]``) or flat ``[N]`` with ``seq_ids [N]`` indexing ``seq_adv``. With
    ``normalize``, values are centred and divided by their unbiased std (+ ``eps``) over all
    valid tokens. Returns float32 of ``loss_mask``'s shape."""
    seq_adv = _const("seq_adv", seq_adv)
    loss_mask = _const("loss_mask", loss_mask)
    seq_ids = _const("seq_ids", seq_ids, optional=True)
    out = torch.empty(loss_mask.shape, dtype=torch.float32, device=loss_mask.device)
    _core.token_advantages_into(
        _view(seq_adv), _view(loss_mask), _opt_view(seq_ids), _view(out), normalize, eps
    )
    return out


# ----------------------------------------------------------------------------------------------
# LM head inputs


def _head_inputs(
    hidden: object, weight: object, targets: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Size]:
    """Flattens ``hidden [B, T, H] | [N, H]`` and ``targets`` to ``[N, H]`` and ``[N]``."""
    hidden = _tensor("hidden", hidden)
    weight = _tensor("weight", weight)
    targets = _tensor("targets", targets)
    if hidden.dim() not in (2, 3):
        raise TensorError(
            f"tensor `hidden`: expected [B, T, H] or [N, H], got shape {list(hidden.shape)}"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise TensorError(
            f"tensor `targets`: expected shape {list(hidden.shape[:-1])} "
            f"(hidden without its last dimension), got {list(targets.shape)}"
        )
    lead = targets.shape
    h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    return h2, weight.contiguous(), targets.detach().reshape(-1).contiguous(), lead


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if with_entropy else None
        _core.token_logprobs_into(
            _view(hidden.detach()),
            _view(weight.detach()),
            _view(targets),
            _view(logp),
            _opt_view(ent),
            temperature,
            chunk,
        )
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        if ent is None:
            return logp, None
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, targets = ctx.saved_tensors
        if grad_logp is None and grad_ent is None:
            return None, None, None, None, None, None
        if grad_logp is None:
            grad_logp = torch.zeros(hidden.shape[0], device=hidden.device)
        grad_logp = grad_logp.float().contiguous()
        if grad_ent is not None:
            grad_ent = grad_ent.float().contiguous()
        gh = torch.empty_like(hidden, memory_format=torch.contiguous_format)
        gw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        _core.token_logprobs_backward_into(
            _view(hidden.detach()),
            _view(weight.detach()),
            _view(targets),
            _view(grad_logp),
            _opt_view(grad_ent),
            _view(gh),
            _view(gw),
            ctx.temperature,
            ctx.chunk,
        )
        return gh, gw, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logprobs of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, float32 of
    ``targets``' shape, computed ``chunk_size`` tokens at a time (default:
    :func:`default_chunk_size`). ``hidden`` is ``[B, T, H]`` or ``[N, H]``
    (float32/bfloat16/float16, same dtype and device as ``weight [V, H]``); ``targets`` are
    integer ids of shape ``hidden.shape[:-1]``.

    Differentiable in ``hidden`` and ``weight``: backward recomputes the logits chunk by chunk,
    so any PyTorch loss can follow. With ``return_entropy``, also returns the entropies (also
    differentiable)."""
    h2, w, y, lead = _head_inputs(hidden, weight, targets)
    logp, ent = _TokenLogprobs.apply(h2, w, y, float(temperature), chunk_size, return_entropy)
    if return_entropy:
        return logp.reshape(lead), ent.reshape(lead)
    return logp.reshape(lead)


# ----------------------------------------------------------------------------------------------
# PPO losses


def _spec(
    eps_clip: float,
    eps_clip_high: float | None,
    dual_clip: float | None,
    behav_weight_cap: float | None,
    behav_weight_mode: str,
    is_level: str,
    aggregation: str,
    normalizer: float | None,
    kl_coef: float,
    kl_estimator: str,
    entropy_coef: float,
) -> tuple:
    return (
        float(eps_clip),
        None if eps_clip_high is None else float(eps_clip_high),
        None if dual_clip is None else float(dual_clip),
        None if behav_weight_cap is None else float(behav_weight_cap),
        behav_weight_mode,
        is_level,
        aggregation,
        None if normalizer is None else float(normalizer),
        float(kl_coef),
        kl_estimator,
        float(entropy_coef),
    )


def _token_tuple(advantages, loss_mask, behav_logp, prox_logp, ref_logp, seq_ids) -> tuple:
    tensors = (
        _const("advantages", advantages),
        _const("loss_mask", loss_mask),
        _const("behav_logp", behav_logp),
        _const("prox_logp", prox_logp, optional=True),
        _const("ref_logp", ref_logp, optional=True),
        _const("seq_ids", seq_ids, optional=True),
    )
    return tensors, tuple(_opt_view(t) for t in tensors)


def _diagnostics(values: torch.Tensor, with_entropy: bool) -> dict[str, torch.Tensor]:
    diag = dict(zip(DIAGNOSTIC_NAMES, values.unbind(0), strict=True))
    if not with_entropy:
        del diag["entropy_mean"]
    return diag


class _FusedPPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_views, spec, temperature, chunk):
        dev = hidden.device
        n = hidden.shape[0]
        loss = torch.empty((), dtype=torch.float32, device=dev)
        diag = torch.empty(len(DIAGNOSTIC_NAMES), dtype=torch.float32, device=dev)
        logp = torch.empty(n, dtype=torch.float32, device=dev)
        ent = torch.empty(n, dtype=torch.float32, device=dev)
        gh = torch.empty_like(hidden, memory_format=torch.contiguous_format)
        gw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        outs = tuple(_view(t) for t in (loss, diag, logp, ent, gh, gw))
        _core.fused_ppo_loss_into(
            _view(hidden.detach()),
            _view(weight.detach()),
            _view(targets),
            token_views,
            outs,
            spec,
            temperature,
            chunk,
        )
        ctx.grads = (gh, gw)
        ctx.mark_non_differentiable(diag, logp, ent)
        return loss, diag, logp, ent

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_ppo_loss: backward ran twice; its stored gradients are scaled in place "
                "and released after the first backward"
            )
        gh, gw = ctx.grads
        ctx.grads = None
        scale = grad_loss.to(torch.float32)
        return gh.mul_(scale), gw.mul_(scale), None, None, None, None, None


def fused_ppo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    behav_logp: torch.Tensor,
    prox_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    eps_clip: float = 0.2,
    eps_clip_high: float | None = None,
    dual_clip: float | None = None,
    behav_weight_cap: float | None = 5.0,
    behav_weight_mode: str = "mask",
    is_level: str = "token",
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO-family loss of the policy ``softmax(hidden @ weight.T / temperature)`` on
    ``targets``, with gradients for ``hidden`` and ``weight`` computed during the forward pass
    chunk by chunk (peak extra memory about ``chunk x vocab``; backward just scales them).

    Shapes: ``hidden [B, T, H]`` with per-token inputs ``[B, T]`` (rows are sequences), or
    ``hidden [N, H]`` with per-token inputs ``[N]`` (``seq_ids [N]`` needed for sequence-level
    options). Returns the scalar float32 loss and a dict of 0-d diagnostic tensors (see
    :data:`DIAGNOSTIC_NAMES`; no host sync). Settings are described in ``docs/kernels.md``."""
    h2, w, y, _ = _head_inputs(hidden, weight, targets)
    # `kept` holds the (possibly copied) token tensors alive while Rust reads their views.
    kept, views = _token_tuple(advantages, loss_mask, behav_logp, prox_logp, ref_logp, seq_ids)
    spec = _spec(
        eps_clip,
        eps_clip_high,
        dual_clip,
        behav_weight_cap,
        behav_weight_mode,
        is_level,
        aggregation,
        normalizer,
        kl_coef,
        kl_estimator,
        entropy_coef,
    )
    loss, diag, _, _ = _FusedPPOLoss.apply(h2, w, y, views, spec, float(temperature), chunk_size)
    del kept
    return loss, _diagnostics(diag, True)


class _PPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, entropy, token_views, spec):
        dev = logp.device
        loss = torch.empty((), dtype=torch.float32, device=dev)
        diag = torch.empty(len(DIAGNOSTIC_NAMES), dtype=torch.float32, device=dev)
        gl = torch.empty(logp.shape, dtype=torch.float32, device=dev)
        ge = None if entropy is None else torch.empty(logp.shape, dtype=torch.float32, device=dev)
        _core.ppo_loss_into(
            _view(logp.detach()),
            _opt_view(None if entropy is None else entropy.detach()),
            token_views,
            (_view(loss), _view(diag), _view(gl), _opt_view(ge)),
            spec,
        )
        ctx.grads = (gl, ge)
        ctx.dtypes = (logp.dtype, None if entropy is None else entropy.dtype)
        ctx.mark_non_differentiable(diag)
        return loss, diag

    @staticmethod
    def backward(ctx, grad_loss, _):
        gl, ge = ctx.grads
        scale = grad_loss.to(torch.float32)
        grad_logp = (gl * scale).to(ctx.dtypes[0])
        grad_ent = None if ge is None else (ge * scale).to(ctx.dtypes[1])
        return grad_logp, grad_ent, None, None


def ppo_loss(
    logp: torch.Tensor,
    prox_logp: torch.Tensor | None,
    behav_logp: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    seq_ids: torch.Tensor | None = None,
    eps_clip: float = 0.2,
    eps_clip_high: float | None = None,
    dual_clip: float | None = None,
    behav_weight_cap: float | None = 5.0,
    behav_weight_mode: str = "mask",
    is_level: str = "token",
    aggregation: str = "token-mean",
    normalizer: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO-family loss on current logprobs ``logp`` (``[B, T]`` or ``[N]``; differentiable),
    decoupled when ``prox_logp`` is given, plain PPO (ratio to ``behav_logp``) when it is None.
    ``entropy`` (same shape, differentiable) feeds the entropy bonus and ``entropy_mean``.
    Returns the scalar float32 loss and the diagnostics dict. Settings as in
    :func:`fused_ppo_loss`."""
    logp = _tensor("logp", logp)
    entropy = _tensor("entropy", entropy, optional=True)
    # `kept` holds the (possibly copied) token tensors alive while Rust reads their views.
    kept, views = _token_tuple(advantages, loss_mask, behav_logp, prox_logp, ref_logp, seq_ids)
    spec = _spec(
        eps_clip,
        eps_clip_high,
        dual_clip,
        behav_weight_cap,
        behav_weight_mode,
        is_level,
        aggregation,
        normalizer,
        kl_coef,
        kl_estimator,
        entropy_coef,
    )
    logp_c = logp.contiguous()
    ent_c = None if entropy is None else entropy.contiguous()
    loss, diag = _PPOLoss.apply(logp_c, ent_c, views, spec)
    del kept
    return loss, _diagnostics(diag, entropy is not None)


def default_chunk_size(
    vocab: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> int:
    """Tokens per chunk used when ``chunk_size`` is None: the chunk's ``[chunk, vocab]`` working
    buffers fit a budget of 128 MiB on CPU (``DEFAULT_CHUNK_BUDGET_BYTES``) or 1 GiB on CUDA
    (``DEFAULT_CUDA_CHUNK_BUDGET_BYTES``), and at least 8 tokens."""
    cuda = torch.device(device).type == "cuda"
    budget = _core.DEFAULT_CUDA_CHUNK_BUDGET_BYTES if cuda else _core.DEFAULT_CHUNK_BUDGET_BYTES
    return _core.chunk_tokens_for_budget(vocab, str(dtype), budget)


__all__ = [
    "DIAGNOSTIC_NAMES",
    "default_chunk_size",
    "fused_ppo_loss",
    "group_advantages",
    "ppo_loss",
    "token_advantages",
    "token_logprobs",
]
