"""RL loss kernels (asearcher.ops) against straightforward PyTorch references: full logits,
log_softmax, gather, the PPO formula written out, and loss.backward()."""

from __future__ import annotations

import contextlib

import pytest
import torch
from asearcher.exceptions import ConfigError, TensorError
from asearcher.ops import (
    fused_ppo_loss,
    group_advantages,
    ppo_loss,
    token_advantages,
    token_logprobs,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# References


def ref_head(hidden, weight, targets, temperature):
    """Full logits -> log_softmax -> gather; entropies. Float32 math."""
    logits = hidden.float() @ weight.float().T / temperature
    lsm = torch.log_softmax(logits, dim=-1)
    logp = lsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(lsm.exp() * lsm).sum(-1)
    return logp, ent


def ref_ppo(logp, prox, behav, adv, mask, seq, cfg, entropy=None, ref=None):
    """The PPO-family loss written out on flat tensors; `seq` gives each token's sequence."""
    valid = mask.bool()
    zero = torch.zeros_like(logp)
    n_seq = int(seq.max()) + 1 if seq.numel() else 0
    if prox is None:
        w_eff = w = torch.ones_like(logp)
        base = behav
        over = torch.zeros_like(valid)
    else:
        base = prox
        log_w = torch.where(valid, prox - behav, zero)
        if cfg.get("is_level") == "sequence":
            w = torch.empty_like(logp)
            for s in range(n_seq):
                sel = seq == s
                n = valid[sel].sum().clamp(min=1)
                w[sel] = torch.exp(log_w[sel].sum() / n)
        else:
            w = log_w.exp()
        cap = cfg.get("behav_weight_cap", 5.0)
        over = (w > cap) & valid if cap is not None else torch.zeros_like(valid)
        if cap is None:
            w_eff = w
        elif cfg.get("behav_weight_mode", "mask") == "mask":
            w_eff = torch.where(over, zero, w)
        else:
            w_eff = w.clamp(max=cap)
    eps = cfg.get("eps_clip", 0.2)
    eps_h = cfg.get("eps_clip_high") or eps
    ratio = torch.exp(logp - base)
    s1 = -adv * ratio
    s2 = -adv * torch.clamp(ratio, 1 - eps, 1 + eps_h)
    loss_tok = torch.maximum(s1, s2)
    clipped = s2 > s1
    dual_flag = torch.zeros_like(valid)
    if cfg.get("dual_clip") is not None:
        bound = -cfg["dual_clip"] * adv
        dual_flag = (loss_tok > bound) & (adv < 0)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, bound), loss_tok)
    per_tok = w_eff * loss_tok
    kl_coef = cfg.get("kl_coef", 0.0)
    if kl_coef:
        d = logp - ref
        est = cfg.get("kl_estimator", "k1")
        kl = d if est == "k1" else 0.5 * d * d if est == "k2" else torch.exp(-d) + d - 1
        other = kl_coef * kl
    else:
        other = zero
    if cfg.get("entropy_coef", 0.0):
        other = other - cfg["entropy_coef"] * entropy
    pg = torch.where(valid, per_tok, zero)
    other = torch.where(valid, other, zero)
    agg = cfg.get("aggregation", "token-mean")
    norm = cfg.get("normalizer")
    if agg == "token-mean":
        loss = (pg.sum() + other.sum()) / (norm or max(int(valid.sum()), 1))
    else:
        total, n_nonempty = logp.sum() * 0, 0
        for s in range(n_seq):
            sel = seq == s
            n = int(valid[sel].sum())
            if n == 0:
                continue
            n_nonempty += 1
            part = pg[sel].sum() + other[sel].sum()
            total = total + (part / n if agg == "seq-mean-token-mean" else part)
        loss = total / (norm or max(n_nonempty, 1))
    nv = max(int(valid.sum()), 1)
    log_r = (logp - base).detach()
    diag = {
        "n_valid_tokens": float(valid.sum()),
        "clip_frac": float((clipped & valid).sum()) / nv,
        "dual_clip_frac": float((dual_flag & valid).sum()) / nv,
        "behav_weight_mean": float(torch.where(valid, w, zero).sum()) / nv,
        "behav_weight_max": float(torch.where(valid, w, zero).max()) if w.numel() else 0.0,
        "behav_weight_capped_frac": float(over.sum()) / nv,
        "approx_kl": float(torch.where(valid, log_r.exp() - 1 - log_r, zero).sum()) / nv,
    }
    return loss, diag


def make_tokens(shape, seed, *, mask_p=0.3, empty_rows=()):
    g = gen(seed)
    adv = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) > mask_p
    for r in empty_rows:
        mask[r] = False
    behav = -torch.rand(shape, generator=g) * 3 - 0.2
    prox = behav + torch.randn(shape, generator=g) * 0.6
    ref = behav + torch.randn(shape, generator=g) * 0.3
    return adv, mask, behav, prox, ref


OPTION_SETS = [
    {},
    {"eps_clip_high": 0.28},
    {"dual_clip": 3.0},
    {"behav_weight_cap": 1.5, "behav_weight_mode": "mask"},
    {"behav_weight_cap": 1.5, "behav_weight_mode": "clamp"},
    {"behav_weight_cap": None},
    {"is_level": "sequence", "behav_weight_cap": 2.0},
    {"is_level": "sequence", "behav_weight_cap": 1.2, "behav_weight_mode": "clamp"},
    {"aggregation": "seq-mean-token-mean"},
    {"aggregation": "seq-mean-token-sum"},
    {"aggregation": "token-mean", "normalizer": 123.0},
    {"aggregation": "seq-mean-token-mean", "normalizer": 7.0},
    {"kl_coef": 0.1, "kl_estimator": "k1"},
    {"kl_coef": 0.1, "kl_estimator": "k2"},
    {"kl_coef": 0.1, "kl_estimator": "k3"},
    {"entropy_coef": 0.01},
    {"plain": True, "dual_clip": 2.0, "eps_clip_high": 0.3},
    {
        "eps_clip_high": 0.3,
        "dual_clip": 2.5,
        "is_level": "sequence",
        "aggregation": "seq-mean-token-sum",
        "kl_coef": 0.05,
        "kl_estimator": "k3",
        "entropy_coef": 0.02,
    },
]


def split_cfg(cfg):
    cfg = dict(cfg)
    plain = cfg.pop("plain", False)
    return plain, cfg


def check_diag(diag, want, tol=1e-5):
    for k, v in want.items():
        assert abs(float(diag[k]) - v) <= tol * max(1.0, abs(v)), (k, float(diag[k]), v)


# ---------------------------------------------------------------------------------------------
# token_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("chunk", [3, None])
def test_token_logprobs_values_and_grads_fp32(temperature, batched, chunk):
    g = gen(1)
    shape = (3, 7) if batched else (19,)
    h, v = 16, 53
    hidden = torch.randn(*shape, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, v, shape, generator=g)
    c1, c2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    logp, ent = token_logprobs(
        hidden, weight, targets, temperature=temperature, chunk_size=chunk, return_entropy=True
    )
    assert logp.shape == shape and logp.dtype == torch.float32
    ((logp * c1).sum() + (ent * c2).sum()).backward()
    got = (logp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    rl, re = ref_head(hidden, weight, targets, temperature)
    ((rl * c1).sum() + (re * c2).sum()).backward()
    for a, b in zip(got, (rl.detach(), re.detach(), hidden.grad, weight.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_token_logprobs_without_entropy_composes_with_any_loss():
    g = gen(2)
    hidden = torch.randn(10, 8, generator=g).requires_grad_()
    weight = torch.randn(31, 8, generator=g).requires_grad_()
    targets = torch.randint(0, 31, (10,), generator=g)
    logp = token_logprobs(hidden, weight, targets, chunk_size=4)
    torch.sigmoid(logp).pow(2).mean().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    torch.sigmoid(ref_head(hidden, weight, targets, 1.0)[0]).pow(2).mean().backward()
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-6)


def test_token_logprobs_bf16():
    g = gen(3)
    hidden = torch.randn(12, 32, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(97, 32, generator=g) * 0.2).bfloat16().requires_grad_()
    targets = torch.randint(0, 97, (12,), generator=g)
    logp = token_logprobs(hidden, weight, targets, chunk_size=5)
    (logp * torch.linspace(0.5, 1.5, 12)).sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    rl, _ = ref_head(h32, w32, targets, 1.0)
    (rl * torch.linspace(0.5, 1.5, 12)).sum().backward()
    torch.testing.assert_close(logp.detach(), rl.detach(), rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(hidden.grad.float(), h32.grad, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(weight.grad.float(), w32.grad, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------------------------
# ppo_loss on logprobs


@pytest.mark.parametrize(
    "cfg", OPTION_SETS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_ppo_loss_matches_reference(cfg, layout):
    plain, cfg = split_cfg(cfg)
    b, t = 5, 9
    adv, mask, behav, prox, ref = make_tokens((b, t), 4, empty_rows=(2,))
    g = gen(5)
    logp0 = prox + torch.randn(b, t, generator=g) * 0.4
    ent0 = torch.rand(b, t, generator=g) * 2 + 0.1
    seq = torch.arange(b).repeat_interleave(t)
    if layout == "flat":  # shuffle tokens so sequences are not contiguous
        perm = torch.randperm(b * t, generator=g)
        adv, mask, behav, prox, ref, logp0, ent0 = (
            x.reshape(-1)[perm] for x in (adv, mask, behav, prox, ref, logp0, ent0)
        )
        seq = seq[perm]
    logp = logp0.clone().requires_grad_()
    ent = ent0.clone().requires_grad_()
    extra = {"seq_ids": seq} if layout == "flat" else {}
    loss, diag = ppo_loss(
        logp,
        None if plain else prox,
        behav,
        adv,
        mask,
        entropy=ent,
        ref_logp=ref,
        **extra,
        **cfg,
    )
    loss.backward()

    rlogp = logp0.reshape(-1).clone().requires_grad_()
    rent = ent0.reshape(-1).clone().requires_grad_()
    flat = (x.reshape(-1) for x in (adv, mask, behav, prox, ref))
    adv_f, mask_f, behav_f, prox_f, ref_f = flat
    want, want_diag = ref_ppo(
        rlogp, None if plain else prox_f, behav_f, adv_f, mask_f, seq.reshape(-1), cfg, rent, ref_f
    )
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp.grad.reshape(-1), rlogp.grad, rtol=1e-5, atol=1e-6)
    want_ent_grad = torch.zeros_like(rent) if rent.grad is None else rent.grad
    torch.testing.assert_close(ent.grad.reshape(-1), want_ent_grad, rtol=1e-5, atol=1e-7)
    assert logp.grad.abs().sum() > 0
    check_diag(diag, want_diag)
    ev = torch.where(mask.bool(), ent0, torch.zeros_like(ent0)).sum() / mask.sum()
    assert abs(float(diag["entropy_mean"]) - float(ev)) < 1e-5


def test_micro_batches_with_global_normalizer_match_full_batch():
    adv, mask, behav, prox, _ = make_tokens((6, 8), 6)
    logp0 = prox + torch.randn(6, 8, generator=gen(7)) * 0.3
    full_lp = logp0.clone().requires_grad_()
    full, _ = ppo_loss(full_lp, prox, behav, adv, mask)
    full.backward()
    parts_lp = logp0.clone().requires_grad_()
    total = sum(
        ppo_loss(parts_lp[s], prox[s], behav[s], adv[s], mask[s], normalizer=float(mask.sum()))[0]
        for s in (slice(0, 2), slice(2, 6))
    )
    total.backward()
    torch.testing.assert_close(total.detach(), full.detach())
    torch.testing.assert_close(parts_lp.grad, full_lp.grad)


# ---------------------------------------------------------------------------------------------
# fused_ppo_loss


FUSED_SETS = [OPTION_SETS[i] for i in (0, 1, 2, 4, 6, 9, 11, 14, 15, 16, 17)]


@pytest.mark.parametrize(
    "cfg", FUSED_SETS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_fused_ppo_loss_matches_reference(cfg, temperature):
    plain, cfg = split_cfg(cfg)
    g = gen(8)
    b, t, h, v = 4, 6, 12, 41
    hidden = torch.randn(b, t, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.4).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g)
    adv, mask, behav, prox, ref = make_tokens((b, t), 9, empty_rows=(1,))
    with torch.no_grad():  # keep ratios near 1 so clipping is exercised, not saturated
        cur, _ = ref_head(hidden, weight, targets, temperature)
    prox = cur + torch.randn(b, t, generator=g) * 0.3
    loss, diag = fused_ppo_loss(
        hidden,
        weight,
        targets,
        adv,
        mask,
        behav_logp=behav,
        prox_logp=None if plain else prox,
        ref_logp=ref,
        temperature=temperature,
        chunk_size=5,  # does not divide 24 tokens
        **cfg,
    )
    loss.backward()
    got = (loss.detach(), hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    rlogp, rent = ref_head(hidden, weight, targets, temperature)
    seq = torch.arange(b).repeat_interleave(t)
    flat = [x.reshape(-1) for x in (rlogp, adv, mask, behav, prox, ref, rent)]
    lp, a, m, bh, px, rf, en = flat
    want, want_diag = ref_ppo(lp, None if plain else px, bh, a, m, seq, cfg, en, rf)
    want.backward()
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], weight.grad, rtol=1e-5, atol=1e-6)
    assert got[2].abs().sum() > 0
    check_diag(diag, want_diag, tol=1e-4)
    ent_mean = float(torch.where(m.bool(), en, torch.zeros_like(en)).sum().detach() / m.sum())
    assert abs(float(diag["entropy_mean"]) - ent_mean) < 1e-4


def test_fused_flat_inputs_with_seq_ids_and_grad_scaling():
    g = gen(10)
    n, h, v = 17, 8, 29
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = torch.randn(v, h, generator=g).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    adv, mask, behav, prox, _ = make_tokens((n,), 11)
    seq = torch.randint(0, 4, (n,), generator=g)
    cfg = {"aggregation": "seq-mean-token-mean", "is_level": "sequence"}
    loss, _ = fused_ppo_loss(
        hidden, weight, targets, adv, mask, behav_logp=behav, prox_logp=prox, seq_ids=seq, **cfg
    )
    (loss * 3.0).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    lp, _ = ref_head(hidden, weight, targets, 1.0)
    want, _ = ref_ppo(lp, prox, behav, adv, mask, seq, cfg)
    (want * 3.0).backward()
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-6)


def test_fused_bf16_close_to_fp32_reference():
    g = gen(12)
    n, h, v = 20, 32, 101
    hidden = torch.randn(n, h, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.2).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    adv, mask, behav, _, _ = make_tokens((n,), 13)
    loss, _ = fused_ppo_loss(hidden, weight, targets, adv, mask, behav_logp=behav, chunk_size=6)
    loss.backward()
    assert weight.grad.dtype == torch.bfloat16
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().float().requires_grad_()
    lp, _ = ref_head(h32, w32, targets, 1.0)
    want, _ = ref_ppo(lp, None, behav, adv, mask, torch.zeros(n, dtype=torch.long), {})
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=2e-2, atol=2e-2)
    scale = w32.grad.abs().max()
    assert (weight.grad.float() - w32.grad).abs().max() < 3e-2 * scale
    assert (hidden.grad.float() - h32.grad).abs().max() < 3e-2 * h32.grad.abs().max()


@pytest.mark.parametrize("n", [0, 9])
def test_empty_or_fully_masked_gives_zero_loss_and_grads(n):
    g = gen(14)
    hidden = torch.randn(n, 8, generator=g).requires_grad_()
    weight = torch.randn(13, 8, generator=g).requires_grad_()
    targets = torch.randint(0, 13, (n,), generator=g)
    adv, _, behav, prox, _ = make_tokens((n,), 15)
    mask = torch.zeros(n, dtype=torch.bool)
    seq = torch.zeros(n, dtype=torch.long)
    for agg in ("token-mean", "seq-mean-token-mean"):
        hidden.grad = weight.grad = None
        loss, diag = fused_ppo_loss(
            hidden,
            weight,
            targets,
            adv,
            mask,
            behav_logp=behav,
            prox_logp=prox,
            seq_ids=seq,
            aggregation=agg,
            entropy_coef=0.1,
        )
        loss.backward()
        assert float(loss.detach()) == 0.0
        assert hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0
        assert all(torch.isfinite(diag[k]) for k in diag if k != "entropy_mean")
        lp = torch.randn(n, generator=g).requires_grad_()
        loss2, _ = ppo_loss(lp, prox, behav, adv, mask, seq_ids=seq, aggregation=agg)
        loss2.backward()
        assert float(loss2.detach()) == 0.0 and lp.grad.abs().sum() == 0


def test_bad_inputs_name_the_argument():
    hidden, weight = torch.randn(4, 8), torch.randn(11, 8)
    targets = torch.randint(0, 11, (4,))
    adv, mask, behav, prox, _ = make_tokens((4,), 16)
    with pytest.raises(TensorError, match="targets"):
        token_logprobs(hidden, weight, targets[:3])
    with pytest.raises(TensorError, match="targets"):
        token_logprobs(hidden, weight, targets + 20)
    with pytest.raises(TensorError, match="weight"):
        token_logprobs(hidden, weight.double(), targets)
    with pytest.raises(TensorError, match="weight"):
        token_logprobs(hidden, torch.randn(11, 7), targets)
    with pytest.raises(TensorError, match="hidden"):
        token_logprobs(torch.randn(8), weight, targets)
    with pytest.raises(TensorError, match="hidden"):
        token_logprobs([1.0], weight, targets)
    with pytest.raises(TensorError, match="loss_mask"):
        fused_ppo_loss(hidden, weight, targets, adv, mask[:3], behav_logp=behav)
    with pytest.raises(TensorError, match="advantages"):
        fused_ppo_loss(hidden, weight, targets, adv[:3], mask[:3], behav_logp=behav[:3])
    with pytest.raises(TensorError, match="seq_ids"):
        ppo_loss(prox, prox, behav, adv, mask, aggregation="seq-mean-token-sum")
    with pytest.raises(TensorError, match="ref_logp"):
        ppo_loss(prox, prox, behav, adv, mask, kl_coef=0.1)
    with pytest.raises(TensorError, match="prox_logp"):
        ppo_loss(prox, prox.long(), behav, adv, mask)
    with pytest.raises(ConfigError, match="aggregation"):
        ppo_loss(prox, prox, behav, adv, mask, aggregation="mean")
    with pytest.raises(ConfigError, match="dual_clip"):
        ppo_loss(prox, prox, behav, adv, mask, dual_clip=0.5)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        token_logprobs(hidden, weight, targets, chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    g = gen(17)
    n, h, v = 64, 32, 1000
    hc = torch.randn(n, h, generator=g).to(dtype)
    wc = (torch.randn(v, h, generator=g) * 0.2).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    adv, mask, behav, prox, _ = make_tokens((n,), 18)
    results = []
    for dev in ("cpu", "cuda"):
        hidden = hc.detach().to(dev).requires_grad_()
        weight = wc.detach().to(dev).requires_grad_()
        args = [x.to(dev) for x in (targets, adv, mask, behav, prox)]
        stream = torch.cuda.Stream() if dev == "cuda" else None
        if stream:  # run on a side stream: the kernels must follow the caller's current stream
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            loss, _ = fused_ppo_loss(
                hidden, weight, *args[:3], behav_logp=args[3], prox_logp=args[4], chunk_size=24
            )
            loss.backward()
        if stream:
            torch.cuda.synchronize()
        assert hidden.grad.device.type == dev
        results.append((loss.detach().cpu(), hidden.grad.float().cpu(), weight.grad.float().cpu()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Advantages


def ref_group_adv(r, g, valid, scale, bias, clip, normalize_std, eps):
    r = (r.double() + bias) * scale
    if clip is not None:
        r = r.clamp(-clip, clip)
    out = torch.zeros_like(r)
    for s in range(0, len(r), g):
        idx = [i for i in range(s, s + g) if valid[i]]
        if not idx:
            continue
        vals = r[idx]
        a = vals - vals.mean()
        if normalize_std and len(idx) > 1:
            a = a / (vals.std() + eps)
        elif normalize_std:
            a = a * 0
        out[idx] = a
    return out


@pytest.mark.parametrize("normalize_std", [False, True])
@pytest.mark.parametrize("shaping", [(1.0, 0.0, None), (2.0, -0.5, 1.2)])
def test_group_advantages_with_shaping_and_empty_sequences(normalize_std, shaping):
    scale, bias, clip = shaping
    g = gen(19)
    rewards = torch.rand(24, generator=g) * 2
    valid = torch.rand(24, generator=g) > 0.25
    valid[8:12] = False  # a fully empty group
    valid[13:16] = False  # a group with one valid member
    out = group_advantages(
        rewards,
        4,
        normalize_std=normalize_std,
        reward_scale=scale,
        reward_bias=bias,
        reward_clip=clip,
        valid=valid,
    )
    want = ref_group_adv(rewards, 4, valid, scale, bias, clip, normalize_std, 1e-6)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all() and out[8:16].abs().sum() == 0


@pytest.mark.parametrize("normalize", [False, True])
def test_token_advantages_broadcast_and_normalise(normalize):
    g = gen(20)
    seq_adv = torch.randn(5, generator=g)
    mask = torch.rand(5, 7, generator=g) > 0.3
    mask[3] = False
    out = token_advantages(seq_adv, mask, normalize=normalize)
    want = seq_adv[:, None].expand(5, 7) * mask
    if normalize:
        vals = want[mask]
        want = torch.where(mask, (want - vals.mean()) / (vals.std() + 1e-5), torch.zeros(()))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    seq_ids = torch.arange(5).repeat_interleave(7)
    flat = token_advantages(seq_adv, mask.reshape(-1), seq_ids=seq_ids, normalize=normalize)
    torch.testing.assert_close(flat, out.reshape(-1))
    with pytest.raises(TensorError, match="seq_ids"):
        token_advantages(seq_adv, mask.reshape(-1), seq_ids=seq_ids + 5)
