//! Chunked LM-head passes: token logprobs and entropies from hidden states and the LM head
//! weight without materialising the `[tokens, vocab]` float32 log-softmax, and the fused
//! loss-and-gradient pass that computes `grad_hidden` and `grad_weight` during the forward
//! (Liger-style), so peak extra memory is about `chunk x vocab`.
//!
//! Per chunk: `z = hidden_chunk @ W^T` (GEMM in the input dtype, fp32 accumulation; cast to
//! float32), `z /= T`, `logp_all = z - logsumexp(z)`, `p = exp(logp_all)`,
//! `H = -sum(p * logp_all)`. With per-token weights `g_lp = dL/dlogp`, `g_ent = dL/dH`:
//! `dL/dz = g_lp * (onehot(y) - p) - g_ent * p * (logp_all + H)`, then
//! `grad_hidden_chunk = (dL/dz / T) @ W` and `grad_W += (dL/dz / T)^T @ hidden_chunk`
//! (accumulated in the weight's dtype, as Liger does).

use super::head::{diagnostics, evaluate_head, Diagnostics, TokenInputs, TokenTerms};
use super::spec::LossSpec;
use crate::{Result, TorchError};
use tch::{Kind, Tensor};

/// Working-memory budget of one chunk on the CPU when the caller gives no chunk size (bytes).
/// Tuned on the CPU benchmark: chunks much below ~100 tokens at vocab 152k lose GEMM efficiency.
pub const DEFAULT_CHUNK_BUDGET_BYTES: i64 = 128 << 20;

/// Working-memory budget of one chunk on CUDA (bytes): larger, because each chunk re-reads and
/// re-writes `grad_W`, which costs more than a small chunk's GEMMs on a GPU.
pub const DEFAULT_CUDA_CHUNK_BUDGET_BYTES: i64 = 1 << 30;

/// The default chunk budget for tensors on `device`.
pub fn default_chunk_budget(device: tch::Device) -> i64 {
    if device.is_cuda() {
        DEFAULT_CUDA_CHUNK_BUDGET_BYTES
    } else {
        DEFAULT_CHUNK_BUDGET_BYTES
    }
}

fn bad(name: &str, msg: impl Into<String>) -> TorchError {
    TorchError::BadTensor {
        name: name.into(),
        msg: msg.into(),
    }
}

/// Tokens per chunk that keep the chunk's `[chunk, vocab]` buffers within `budget_bytes`
/// (two float32 buffers, plus two more in the input dtype when it is not float32), at least 8.
pub fn chunk_tokens_for_budget(vocab: i64, kind: Kind, budget_bytes: i64) -> i64 {
    let extra = if kind == Kind::Float {
        0
    } else {
        2 * kind.elt_size_in_bytes() as i64
    };
    let per_token = vocab.max(1) * (8 + extra);
    (budget_bytes / per_token).max(8)
}

/// The LM head inputs: `hidden [N, H]`, `weight [V, H]` (same float dtype and device) and
/// `targets [N]` (integer ids in `0..V`), with the sampling temperature.
#[derive(Debug, Clone, Copy)]
pub struct LmHead<'a> {
    pub hidden: &'a Tensor,
    pub weight: &'a Tensor,
    pub targets: &'a Tensor,
    pub temperature: f64,
}

impl LmHead<'_> {
    /// Checks shapes, dtypes, devices, target range and temperature; errors name the input.
    pub fn validate(&self) -> Result<()> {
        let (h, w, y) = (self.hidden, self.weight, self.targets);
        if h.dim() != 2 {
            return Err(bad(
                "hidden",
                format!("expected [N, H], got shape {:?}", h.size()),
            ));
        }
        if w.dim() != 2 || w.size()[1] != h.size()[1] {
            return Err(bad(
                "weight",
                format!("expected [V, {}], got shape {:?}", h.size()[1], w.size()),
            ));
        }
        if !matches!(
            h.kind(),
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(bad(
                "hidden",
                format!("expected a float dtype, got {:?}", h.kind()),
            ));
        }
        if w.kind() != h.kind() {
            return Err(bad(
                "weight",
                format!("dtype {:?} differs from hidden {:?}", w.kind(), h.kind()),
            ));
        }
        if w.device() != h.device() || y.device() != h.device() {
            let name = if w.device() != h.device() {
                "weight"
            } else {
                "targets"
            };
            return Err(bad(name, "on a different device than hidden"));
        }
        if y.size() != [h.size()[0]] {
            return Err(bad(
                "targets",
                format!("expected [{}], got shape {:?}", h.size()[0], y.size()),
            ));
        }
        if !matches!(y.kind(), Kind::Int64 | Kind::Int) {
            return Err(bad(
                "targets",
                format!("expected int64 or int32, got {:?}", y.kind()),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TorchError::config(
                "temperature",
                format!("must be a finite positive number, got {}", self.temperature),
            ));
        }
        if y.numel() > 0 {
            let (lo, hi) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
            let v = w.size()[0];
            if lo < 0 || hi >= v {
                return Err(bad(
                    "targets",
                    format!("ids must lie in 0..{v}, got {lo}..={hi}"),
                ));
            }
        }
        Ok(())
    }

    fn tokens(&self) -> i64 {
        self.hidden.size()[0]
    }

    fn resolve_chunk(&self, chunk_tokens: Option<i64>) -> Result<i64> {
        match chunk_tokens {
            Some(c) if c <= 0 => Err(TorchError::config(
                "chunk_tokens",
                format!("must be positive, got {c}"),
            )),
            Some(c) => Ok(c),
            None => Ok(chunk_tokens_for_budget(
                self.weight.size()[0],
                self.hidden.kind(),
                default_chunk_budget(self.hidden.device()),
            )),
        }
    }
}

/// Where a chunked pass writes its results (caller-owned, contiguous, possibly borrowed views).
#[derive(Debug)]
pub struct PassOutputs {
    /// `[N]` float32.
    pub logp: Tensor,
    /// `[N]` float32, if wanted.
    pub entropy: Option<Tensor>,
    /// `[N, H]` in hidden's dtype, when gradients are computed.
    pub grad_hidden: Option<Tensor>,
    /// `[V, H]` in weight's dtype, when gradients are computed (overwritten, not accumulated).
    pub grad_weight: Option<Tensor>,
}

impl PassOutputs {
    /// Freshly allocated outputs for `head`.
    pub fn allocate(head: &LmHead, entropy: bool, grads: bool) -> PassOutputs {
        let n = head.tokens();
        let dev = head.hidden.device();
        PassOutputs {
            logp: Tensor::empty([n], (Kind::Float, dev)),
            entropy: entropy.then(|| Tensor::empty([n], (Kind::Float, dev))),
            grad_hidden: grads.then(|| head.hidden.empty_like()),
            grad_weight: grads.then(|| head.weight.empty_like()),
        }
    }

    fn check(&self, head: &LmHead) -> Result<()> {
        let n = head.tokens();
        let want = |name: &str, t: &Tensor, shape: &[i64], kind: Kind| {
            if t.size() != shape || t.kind() != kind || !t.is_contiguous() {
                return Err(bad(
                    name,
                    format!(
                        "expected a contiguous {kind:?} tensor of shape {shape:?}, got {:?} {:?}",
                        t.kind(),
                        t.size()
                    ),
                ));
            }
            Ok(())
        };
        want("logp_out", &self.logp, &[n], Kind::Float)?;
        if let Some(e) = &self.entropy {
            want("entropy_out", e, &[n], Kind::Float)?;
        }
        if let Some(g) = &self.grad_hidden {
            want(
                "grad_hidden_out",
                g,
                &head.hidden.size(),
                head.hidden.kind(),
            )?;
        }
        if let Some(g) = &self.grad_weight {
            want(
                "grad_weight_out",
                g,
                &head.weight.size(),
                head.weight.kind(),
            )?;
        }
        Ok(())
    }
}

/// Per-chunk gradient weights: `(dL/dlogp, dL/dentropy)` for tokens `start..start + n`, given
/// the chunk's logprobs and entropies.
pub type ChunkGrads<'f> = dyn FnMut(i64, &Tensor, &Tensor) -> Result<(Tensor, Option<Tensor>)> + 'f;

/// Runs the chunked pass. With `grads`, computes gradients into `out.grad_hidden` and
/// `out.grad_weight` (both required then).
pub fn run_chunks(
    head: &LmHead,
    chunk_tokens: Option<i64>,
    out: &mut PassOutputs,
    mut grads: Option<&mut ChunkGrads>,
) -> Result<()> {
    head.validate()?;
    out.check(head)?;
    let chunk = head.resolve_chunk(chunk_tokens)?;
    let _guard = tch::no_grad_guard();
    let n = head.tokens();
    if grads.is_some() {
        let gw = out
            .grad_weight
            .as_mut()
            .ok_or_else(|| bad("grad_weight_out", "missing"))?;
        if n == 0 {
            let _ = gw.f_zero_()?;
        }
        if out.grad_hidden.is_none() {
            return Err(bad("grad_hidden_out", "missing"));
        }
    }
    let targets = head.targets.to_kind(Kind::Int64);
    let w_t = head.weight.tr();
    let w_for_grad_hidden = weight_for_grad_hidden(head.weight, grads.is_some());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let h = head.hidden.narrow(0, start, len);
        let y = targets.narrow(0, start, len).unsqueeze(1);
        let mut z = h.f_mm(&w_t)?;
        if z.kind() != Kind::Float {
            z = z.to_kind(Kind::Float);
        }
        if head.temperature != 1.0 {
            let _ = z.f_div_scalar_(head.temperature)?;
        }
        let (lp, mut p) = log_softmax_in_place(&mut z, &y)?;
        let ent = -p.unsqueeze(1).bmm(&z.unsqueeze(2)).reshape([len]);
        out.logp.narrow(0, start, len).f_copy_(&lp)?;
        if let Some(e) = &out.entropy {
            e.narrow(0, start, len).f_copy_(&ent)?;
        }
        if let Some(f) = grads.as_mut() {
            let (g_lp, g_ent) = f(start, &lp, &ent)?;
            logits_grad_in_place(
                &mut z,
                &mut p,
                &y,
                &ent,
                &g_lp,
                g_ent.as_ref(),
                head.temperature,
            )?;
            let gz = if p.kind() == head.weight.kind() {
                p
            } else {
                p.to_kind(head.weight.kind())
            };
            let gh = out
                .grad_hidden
                .as_ref()
                .expect("checked above")
                .narrow(0, start, len);
            let _ = gz.f_mm_out(&gh, &w_for_grad_hidden)?;
            let gw = out.grad_weight.as_mut().expect("checked above");
            if start == 0 {
                let _ = gz.tr().f_mm_out(gw, &h)?; // the first chunk initialises grad_W
            } else {
                let _ = gw.f_addmm_(&gz.tr(), &h)?;
            }
        }
        start += len;
    }
    Ok(())
}

/// The `[V, H]` operand of `grad_hidden = dL/dz @ W`. On the CPU, bf16/fp16 GEMMs of this shape
/// with a row-major `W` hit a slow path in libtorch (about 25x slower than with a column-major
/// operand, measured at V = 151,936), so there the product uses a transposed contiguous copy of
/// `W` (one copy per call, the size of `W`). CUDA and float32 use `W` as is.
fn weight_for_grad_hidden(weight: &Tensor, grads: bool) -> Tensor {
    let reduced = matches!(weight.kind(), Kind::BFloat16 | Kind::Half);
    if grads && reduced && weight.device() == tch::Device::Cpu {
        weight.tr().contiguous().tr()
    } else {
        weight.shallow_clone()
    }
}

/// Turns the logits `z` into the log-softmax in place; returns the target logprobs `[n]` and the
/// probabilities `[n, V]` (one exp pass over the chunk).
fn log_softmax_in_place(z: &mut Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let max = z.f_amax([1i64].as_slice(), true)?;
    let _ = z.f_sub_(&max)?;
    let mut p = z.f_exp()?;
    let sum = p.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
    let _ = z.f_sub_(&sum.f_log()?)?;
    let _ = p.f_div_(&sum)?;
    let lp = z.f_gather(1, y, false)?.squeeze_dim(1);
    Ok((lp, p))
}

/// Turns `p` into `dL/dz` (divided by the temperature); `z` holds the log-softmax and is
/// overwritten.
fn logits_grad_in_place(
    z: &mut Tensor,
    p: &mut Tensor,
    y: &Tensor,
    ent: &Tensor,
    g_lp: &Tensor,
    g_ent: Option<&Tensor>,
    temperature: f64,
) -> Result<()> {
    let g_lp = g_lp.to_kind(Kind::Float).unsqueeze(1);
    match g_ent {
        Some(ge) => {
            let _ = z.f_add_(&ent.unsqueeze(1))?;
            let _ = z.f_mul_(&ge.to_kind(Kind::Float).unsqueeze(1))?;
            let _ = z.f_add_(&g_lp)?;
            let _ = p.f_mul_(z)?;
        }
        None => {
            let _ = p.f_mul_(&g_lp)?;
        }
    }
    let _ = p.f_neg_()?;
    let _ = p.f_scatter_add_(1, y, &g_lp)?;
    if temperature != 1.0 {
        let _ = p.f_div_scalar_(temperature)?;
    }
    Ok(())
}

/// Token logprobs (and entropies) of `targets` under `softmax(hidden @ W^T / T)`, computed chunk by
/// chunk without gradients. Returns float32 `[N]` tensors.
pub fn token_logprobs(
    head: &LmHead,
    chunk_tokens: Option<i64>,
    with_entropy: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut out = PassOutputs::allocate(head, with_entropy, false);
    run_chunks(head, chunk_tokens, &mut out, None)?;
    Ok((out.logp, out.entropy))
}

/// Backward of [`token_logprobs`]: given `grad_logp [N]` (and optionally `grad_entropy [N]`),
/// recomputes the logits chunk by chunk and writes `grad_hidden`, `grad_weight` into `out`.
pub fn token_logprobs_backward_into(
    head: &LmHead,
    grad_logp: &Tensor,
    grad_entropy: Option<&Tensor>,
    chunk_tokens: Option<i64>,
    out: &mut PassOutputs,
) -> Result<()> {
    let n = head.tokens();
    for (name, g) in [
        ("grad_logp", Some(grad_logp)),
        ("grad_entropy", grad_entropy),
    ] {
        if let Some(g) = g {
            if g.size() != [n] {
                return Err(bad(
                    name,
                    format!("expected [{n}], got shape {:?}", g.size()),
                ));
            }
        }
    }
    let mut f = |s: i64, lp: &Tensor, _: &Tensor| {
        let len = lp.size()[0];
        Ok((
            grad_logp.narrow(0, s, len),
            grad_entropy.map(|g| g.narrow(0, s, len)),
        ))
    };
    run_chunks(head, chunk_tokens, out, Some(&mut f))
}

/// Result of [`fused_linear_loss`].
#[derive(Debug)]
pub struct FusedOutput {
    /// Scalar float32 loss.
    pub loss: Tensor,
    /// `[N, H]` in hidden's dtype.
    pub grad_hidden: Tensor,
    /// `[V, H]` in weight's dtype.
    pub grad_weight: Tensor,
    /// `[N]` float32 current logprobs.
    pub logp: Tensor,
    /// `[N]` float32 entropies.
    pub entropy: Tensor,
    pub diagnostics: Diagnostics,
}

/// The fused PPO-family loss over the LM head, with its gradients, into caller-owned outputs
/// (`out.entropy`, `out.grad_hidden` and `out.grad_weight` must be present). The token inputs are
/// flat `[N]` (or `[B, T]` with `B * T = N`). Returns the loss and the diagnostics.
pub fn fused_linear_loss_into(
    head: &LmHead,
    tokens: &TokenInputs,
    spec: &LossSpec,
    chunk_tokens: Option<i64>,
    out: &mut PassOutputs,
) -> Result<(Tensor, Diagnostics)> {
    let _guard = tch::no_grad_guard();
    if tokens.advantages.device() != head.hidden.device() {
        return Err(bad("advantages", "on a different device than hidden"));
    }
    let terms = TokenTerms::prepare(tokens, spec)?;
    if terms.len() != head.tokens() {
        return Err(bad(
            "advantages",
            format!("has {} tokens, hidden has {}", terms.len(), head.tokens()),
        ));
    }
    let mut f = |s: i64, lp: &Tensor, ent: &Tensor| {
        let t = terms.narrow(s, lp.size()[0]);
        let h = evaluate_head(lp, Some(ent), &t, spec)?;
        Ok((h.grad_logp, h.grad_entropy))
    };
    run_chunks(head, chunk_tokens, out, Some(&mut f))?;
    let entropy = out
        .entropy
        .as_ref()
        .ok_or_else(|| bad("entropy_out", "missing"))?;
    let full = evaluate_head(&out.logp, Some(entropy), &terms, spec)?;
    let diag = diagnostics(&full, &out.logp, Some(entropy), &terms);
    Ok((full.value.sum(Kind::Float), diag))
}

/// [`fused_linear_loss_into`] with freshly allocated outputs.
pub fn fused_linear_loss(
    head: &LmHead,
    tokens: &TokenInputs,
    spec: &LossSpec,
    chunk_tokens: Option<i64>,
) -> Result<FusedOutput> {
    let mut out = PassOutputs::allocate(head, true, true);
    let (loss, diagnostics) = fused_linear_loss_into(head, tokens, spec, chunk_tokens, &mut out)?;
    Ok(FusedOutput {
        loss,
        grad_hidden: out.grad_hidden.expect("allocated"),
        grad_weight: out.grad_weight.expect("allocated"),
        logp: out.logp,
        entropy: out.entropy.expect("allocated"),
        diagnostics,
    })
}

/// A scalar whose value is `value` and whose backward delivers each `(input, grad)` pair's
/// `grad` into `input` (`(input * grad.detach()).sum()` terms, with their value cancelled).
pub fn attach_gradients(value: &Tensor, pairs: &[(&Tensor, &Tensor)]) -> Tensor {
    let mut surrogate = value.detach().to_kind(Kind::Float);
    for (input, grad) in pairs {
        let term = (*input * grad.detach().to_kind(input.kind())).sum(Kind::Float);
        surrogate = surrogate + &term - term.detach();
    }
    surrogate
}

/// The fused loss for the Rust trainer: `hidden` is the model's output (requires grad, `[N, H]`)
/// and `weight` the LM head parameter. The returned scalar's `backward()` sends `grad_hidden` into
/// the model graph and `grad_weight` into `weight.grad`.
pub fn fused_linear_loss_autograd(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    temperature: f64,
    tokens: &TokenInputs,
    spec: &LossSpec,
    chunk_tokens: Option<i64>,
) -> Result<(Tensor, Diagnostics)> {
    let (h, w) = (hidden.detach(), weight.detach());
    let head = LmHead {
        hidden: &h,
        weight: &w,
        targets,
        temperature,
    };
    let out = fused_linear_loss(&head, tokens, spec, chunk_tokens)?;
    let loss = attach_gradients(
        &out.loss,
        &[(hidden, &out.grad_hidden), (weight, &out.grad_weight)],
    );
    Ok((loss, out.diagnostics))
}
