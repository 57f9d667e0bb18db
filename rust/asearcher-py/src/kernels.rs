//! RL loss kernels on torch tensors handed over by data pointer: chunked LM-head logprobs and
//! their backward, the fused PPO loss over the LM head, and the PPO loss on logprobs. Outputs
//! are allocated by `asearcher.ops` and written in place; the GIL is released while Rust works,
//! on the calling thread (so CUDA work lands on the caller's current stream).

use crate::errors::torch_err;
use crate::tensors::{opt_view, view, ViewTuple};
use asearcher_torch::kernels::views::{self, FusedOutViews, HeadViews, LossOutViews, TokenViews};
use asearcher_torch::kernels::{LossSpec, DIAGNOSTIC_NAMES};
use asearcher_torch::TensorView;
use pyo3::prelude::*;

/// `(eps_clip, eps_clip_high, dual_clip, behav_weight_cap, behav_weight_mode, is_level,
/// aggregation, normalizer, kl_coef, kl_estimator, entropy_coef)` as built by `asearcher.ops`.
type SpecTuple = (
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    String,
    String,
    String,
    Option<f64>,
    f64,
    String,
    f64,
);

/// `(advantages, loss_mask, behav_logp, prox_logp, ref_logp, seq_ids)`.
type TokenTuple = (
    ViewTuple,
    ViewTuple,
    ViewTuple,
    Option<ViewTuple>,
    Option<ViewTuple>,
    Option<ViewTuple>,
);

fn spec(t: SpecTuple) -> PyResult<LossSpec> {
    let (eps_clip, eps_clip_high, dual_clip, cap, mode, level, agg, normalizer, kl, est, ent) = t;
    let parse = || -> asearcher_torch::Result<LossSpec> {
        let s = LossSpec {
            eps_clip,
            eps_clip_high,
            dual_clip,
            behav_weight_cap: cap,
            cap_mode: mode.parse()?,
            is_level: level.parse()?,
            aggregation: agg.parse()?,
            normalizer,
            kl_coef: kl,
            kl_estimator: est.parse()?,
            entropy_coef: ent,
        };
        s.validate()?;
        Ok(s)
    };
    parse().map_err(torch_err)
}

struct Tokens {
    advantages: TensorView,
    loss_mask: TensorView,
    behav_logp: TensorView,
    prox_logp: Option<TensorView>,
    ref_logp: Option<TensorView>,
    seq_ids: Option<TensorView>,
}

impl Tokens {
    fn new(t: TokenTuple) -> PyResult<Self> {
        Ok(Tokens {
            advantages: view("advantages", t.0)?,
            loss_mask: view("loss_mask", t.1)?,
            behav_logp: view("behav_logp", t.2)?,
            prox_logp: opt_view("prox_logp", t.3)?,
            ref_logp: opt_view("ref_logp", t.4)?,
            seq_ids: opt_view("seq_ids", t.5)?,
        })
    }

    fn views(&self) -> TokenViews<'_> {
        TokenViews {
            advantages: &self.advantages,
            loss_mask: &self.loss_mask,
            behav_logp: &self.behav_logp,
            prox_logp: self.prox_logp.as_ref(),
            ref_logp: self.ref_logp.as_ref(),
            seq_ids: self.seq_ids.as_ref(),
        }
    }
}

/// Writes chunked token logprobs (and entropies) of `targets` under `hidden @ weight^T / T`.
#[pyfunction]
#[pyo3(signature = (hidden, weight, targets, logp_out, entropy_out, temperature, chunk_tokens))]
#[allow(clippy::too_many_arguments)]
fn token_logprobs_into(
    py: Python<'_>,
    hidden: ViewTuple,
    weight: ViewTuple,
    targets: ViewTuple,
    logp_out: ViewTuple,
    entropy_out: Option<ViewTuple>,
    temperature: f64,
    chunk_tokens: Option<i64>,
) -> PyResult<()> {
    let (h, w, y) = (
        view("hidden", hidden)?,
        view("weight", weight)?,
        view("targets", targets)?,
    );
    let lp = view("logp_out", logp_out)?;
    let ent = opt_view("entropy_out", entropy_out)?;
    let head = HeadViews {
        hidden: &h,
        weight: &w,
        targets: &y,
        temperature,
    };
    // SAFETY: the Python caller keeps every tensor alive for the call; no view outlives it.
    py.detach(|| unsafe { views::token_logprobs_views(&head, chunk_tokens, &lp, ent.as_ref()) })
        .map_err(torch_err)
}

/// Backward of the chunked logprobs: writes `grad_hidden_out`, `grad_weight_out`.
#[pyfunction]
#[pyo3(signature = (hidden, weight, targets, grad_logp, grad_entropy, grad_hidden_out, grad_weight_out, temperature, chunk_tokens))]
#[allow(clippy::too_many_arguments)]
fn token_logprobs_backward_into(
    py: Python<'_>,
    hidden: ViewTuple,
    weight: ViewTuple,
    targets: ViewTuple,
    grad_logp: ViewTuple,
    grad_entropy: Option<ViewTuple>,
    grad_hidden_out: ViewTuple,
    grad_weight_out: ViewTuple,
    temperature: f64,
    chunk_tokens: Option<i64>,
) -> PyResult<()> {
    let (h, w, y) = (
        view("hidden", hidden)?,
        view("weight", weight)?,
        view("targets", targets)?,
    );
    let gl = view("grad_logp", grad_logp)?;
    let ge = opt_view("grad_entropy", grad_entropy)?;
    let gh = view("grad_hidden_out", grad_hidden_out)?;
    let gw = view("grad_weight_out", grad_weight_out)?;
    let head = HeadViews {
        hidden: &h,
        weight: &w,
        targets: &y,
        temperature,
    };
    // SAFETY: the Python caller keeps every tensor alive for the call; no view outlives it.
    py.detach(|| unsafe {
        views::token_logprobs_backward_views(&head, &gl, ge.as_ref(), chunk_tokens, &gh, &gw)
    })
    .map_err(torch_err)
}

/// The fused PPO loss over the LM head: writes loss, diagnostics, logp, entropy and gradients.
/// `outs` is `(loss, diagnostics, logp, entropy, grad_hidden, grad_weight)`.
#[pyfunction]
#[pyo3(signature = (hidden, weight, targets, tokens, outs, spec_args, temperature, chunk_tokens))]
#[allow(clippy::too_many_arguments)]
fn fused_ppo_loss_into(
    py: Python<'_>,
    hidden: ViewTuple,
    weight: ViewTuple,
    targets: ViewTuple,
    tokens: TokenTuple,
    outs: (
        ViewTuple,
        ViewTuple,
        ViewTuple,
        ViewTuple,
        ViewTuple,
        ViewTuple,
    ),
    spec_args: SpecTuple,
    temperature: f64,
    chunk_tokens: Option<i64>,
) -> PyResult<()> {
    let (h, w, y) = (
        view("hidden", hidden)?,
        view("weight", weight)?,
        view("targets", targets)?,
    );
    let tok = Tokens::new(tokens)?;
    let s = spec(spec_args)?;
    let loss = view("loss_out", outs.0)?;
    let diag = view("diagnostics_out", outs.1)?;
    let lp = view("logp_out", outs.2)?;
    let ent = view("entropy_out", outs.3)?;
    let gh = view("grad_hidden_out", outs.4)?;
    let gw = view("grad_weight_out", outs.5)?;
    let head = HeadViews {
        hidden: &h,
        weight: &w,
        targets: &y,
        temperature,
    };
    let out = FusedOutViews {
        loss: LossOutViews {
            loss: &loss,
            diagnostics: &diag,
        },
        logp: &lp,
        entropy: &ent,
        grad_hidden: &gh,
        grad_weight: &gw,
    };
    // SAFETY: the Python caller keeps every tensor alive for the call; no view outlives it.
    py.detach(|| unsafe {
        views::fused_linear_loss_views(&head, &tok.views(), &s, chunk_tokens, &out)
    })
    .map_err(torch_err)
}

/// The PPO loss on logprobs: writes loss, diagnostics, dloss/dlogp (and dloss/dentropy).
/// `outs` is `(loss, diagnostics, grad_logp, grad_entropy)`.
#[pyfunction]
#[pyo3(signature = (logp, entropy, tokens, outs, spec_args))]
fn ppo_loss_into(
    py: Python<'_>,
    logp: ViewTuple,
    entropy: Option<ViewTuple>,
    tokens: TokenTuple,
    outs: (ViewTuple, ViewTuple, ViewTuple, Option<ViewTuple>),
    spec_args: SpecTuple,
) -> PyResult<()> {
    let lp = view("logp", logp)?;
    let ent = opt_view("entropy", entropy)?;
    let tok = Tokens::new(tokens)?;
    let s = spec(spec_args)?;
    let loss = view("loss_out", outs.0)?;
    let diag = view("diagnostics_out", outs.1)?;
    let gl = view("grad_logp_out", outs.2)?;
    let ge = opt_view("grad_entropy_out", outs.3)?;
    let out = LossOutViews {
        loss: &loss,
        diagnostics: &diag,
    };
    // SAFETY: the Python caller keeps every tensor alive for the call; no view outlives it.
    py.detach(|| unsafe {
        views::ppo_loss_views(&lp, ent.as_ref(), &tok.views(), &s, &out, &gl, ge.as_ref())
    })
    .map_err(torch_err)
}

/// Tokens per chunk for a vocabulary, dtype name and memory budget (bytes).
#[pyfunction]
fn chunk_tokens_for_budget(vocab: i64, dtype: String, budget_bytes: i64) -> PyResult<i64> {
    let v = TensorView {
        name: "hidden".into(),
        data_ptr: 0,
        shape: vec![],
        strides: vec![],
        dtype,
        device: asearcher_torch::DeviceSpec::Cpu,
    };
    let kind = v.kind().map_err(torch_err)?;
    Ok(asearcher_torch::kernels::chunk_tokens_for_budget(
        vocab,
        kind,
        budget_bytes,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(token_logprobs_into, m)?)?;
    m.add_function(wrap_pyfunction!(token_logprobs_backward_into, m)?)?;
    m.add_function(wrap_pyfunction!(fused_ppo_loss_into, m)?)?;
    m.add_function(wrap_pyfunction!(ppo_loss_into, m)?)?;
    m.add_function(wrap_pyfunction!(chunk_tokens_for_budget, m)?)?;
    m.add("DIAGNOSTIC_NAMES", DIAGNOSTIC_NAMES.to_vec())?;
    m.add(
        "DEFAULT_CHUNK_BUDGET_BYTES",
        asearcher_torch::kernels::DEFAULT_CHUNK_BUDGET_BYTES,
    )?;
    m.add(
        "DEFAULT_CUDA_CHUNK_BUDGET_BYTES",
        asearcher_torch::kernels::DEFAULT_CUDA_CHUNK_BUDGET_BYTES,
    )?;
    Ok(())
}
