//! Entry points over borrowed [`TensorView`]s for the Python bindings: inputs are read in place
//! and results are written into caller-allocated outputs. No tensor built from a view outlives
//! the call.

use super::chunked::{
    fused_linear_loss_into, run_chunks, token_logprobs_backward_into, LmHead, PassOutputs,
};
use super::head::{ppo_loss, TokenInputs, DIAGNOSTIC_NAMES};
use super::spec::LossSpec;
use crate::{Result, TensorView, TorchError};
use tch::Tensor;

/// Views of the LM head inputs.
#[derive(Debug, Clone, Copy)]
pub struct HeadViews<'a> {
    pub hidden: &'a TensorView,
    pub weight: &'a TensorView,
    pub targets: &'a TensorView,
    pub temperature: f64,
}

/// Views of the per-token loss inputs (see [`TokenInputs`]).
#[derive(Debug, Clone, Copy)]
pub struct TokenViews<'a> {
    pub advantages: &'a TensorView,
    pub loss_mask: &'a TensorView,
    pub behav_logp: &'a TensorView,
    pub prox_logp: Option<&'a TensorView>,
    pub ref_logp: Option<&'a TensorView>,
    pub seq_ids: Option<&'a TensorView>,
}

/// Views the loss and diagnostics are written to: a 0-d or `[1]` float32 and a float32
/// `[DIAGNOSTIC_NAMES.len()]`.
#[derive(Debug, Clone, Copy)]
pub struct LossOutViews<'a> {
    pub loss: &'a TensorView,
    pub diagnostics: &'a TensorView,
}

unsafe fn opt(v: Option<&TensorView>) -> Result<Option<Tensor>> {
    // SAFETY: forwarded from the caller's contract.
    v.map(|v| unsafe { v.as_tensor() }).transpose()
}

struct OwnedTokens {
    advantages: Tensor,
    loss_mask: Tensor,
    behav_logp: Tensor,
    prox_logp: Option<Tensor>,
    ref_logp: Option<Tensor>,
    seq_ids: Option<Tensor>,
}

impl OwnedTokens {
    unsafe fn new(v: &TokenViews) -> Result<Self> {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            Ok(OwnedTokens {
                advantages: v.advantages.as_tensor()?,
                loss_mask: v.loss_mask.as_tensor()?,
                behav_logp: v.behav_logp.as_tensor()?,
                prox_logp: opt(v.prox_logp)?,
                ref_logp: opt(v.ref_logp)?,
                seq_ids: opt(v.seq_ids)?,
            })
        }
    }

    fn inputs(&self) -> TokenInputs<'_> {
        TokenInputs {
            advantages: &self.advantages,
            loss_mask: &self.loss_mask,
            behav_logp: &self.behav_logp,
            prox_logp: self.prox_logp.as_ref(),
            ref_logp: self.ref_logp.as_ref(),
            seq_ids: self.seq_ids.as_ref(),
        }
    }
}

unsafe fn head_tensors(h: &HeadViews) -> Result<(Tensor, Tensor, Tensor)> {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        Ok((
            h.hidden.as_tensor()?,
            h.weight.as_tensor()?,
            h.targets.as_tensor()?,
        ))
    }
}

fn write_loss(out: &LossOutViews, loss: &Tensor, diag: &Tensor) -> Result<()> {
    // SAFETY: the caller of the public entry point guarantees the outputs are live.
    let (mut l, mut d) = unsafe { (out.loss.as_tensor()?, out.diagnostics.as_tensor()?) };
    if l.numel() != 1 {
        return Err(TorchError::BadTensor {
            name: out.loss.name.clone(),
            msg: format!("expected one element, got shape {:?}", l.size()),
        });
    }
    if d.size() != [DIAGNOSTIC_NAMES.len() as i64] {
        return Err(TorchError::BadTensor {
            name: out.diagnostics.name.clone(),
            msg: format!(
                "expected [{}], got shape {:?}",
                DIAGNOSTIC_NAMES.len(),
                d.size()
            ),
        });
    }
    l.f_copy_(&loss.reshape(l.size()))?;
    d.f_copy_(diag)?;
    Ok(())
}

/// Chunked token logprobs (and entropies) written into `logp_out` (and `entropy_out`).
///
/// # Safety
/// Every view must describe live memory for the duration of the call, outputs unaliased.
pub unsafe fn token_logprobs_views(
    head: &HeadViews,
    chunk_tokens: Option<i64>,
    logp_out: &TensorView,
    entropy_out: Option<&TensorView>,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (h, w, y) = unsafe { head_tensors(head)? };
    let lm = LmHead {
        hidden: &h,
        weight: &w,
        targets: &y,
        temperature: head.temperature,
    };
    // SAFETY: as above.
    let mut out = unsafe {
        PassOutputs {
            logp: logp_out.as_tensor()?,
            entropy: opt(entropy_out)?,
            grad_hidden: None,
            grad_weight: None,
        }
    };
    run_chunks(&lm, chunk_tokens, &mut out, None)
}

/// Backward of the chunked logprobs: writes `grad_hidden_out` and `grad_weight_out`.
///
/// # Safety
/// Every view must describe live memory for the duration of the call, outputs unaliased.
pub unsafe fn token_logprobs_backward_views(
    head: &HeadViews,
    grad_logp: &TensorView,
    grad_entropy: Option<&TensorView>,
    chunk_tokens: Option<i64>,
    grad_hidden_out: &TensorView,
    grad_weight_out: &TensorView,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let (h, w, y) = head_tensors(head)?;
        let lm = LmHead {
            hidden: &h,
            weight: &w,
            targets: &y,
            temperature: head.temperature,
        };
        let (gl, ge) = (grad_logp.as_tensor()?, opt(grad_entropy)?);
        let mut out = PassOutputs {
            logp: Tensor::zeros([h.size()[0]], (tch::Kind::Float, h.device())),
            entropy: None,
            grad_hidden: Some(grad_hidden_out.as_tensor()?),
            grad_weight: Some(grad_weight_out.as_tensor()?),
        };
        token_logprobs_backward_into(&lm, &gl, ge.as_ref(), chunk_tokens, &mut out)
    }
}

/// Outputs of the fused pass.
#[derive(Debug, Clone, Copy)]
pub struct FusedOutViews<'a> {
    pub loss: LossOutViews<'a>,
    pub logp: &'a TensorView,
    pub entropy: &'a TensorView,
    pub grad_hidden: &'a TensorView,
    pub grad_weight: &'a TensorView,
}

/// The fused PPO-family loss over the LM head with its gradients, into the output views.
///
/// # Safety
/// Every view must describe live memory for the duration of the call, outputs unaliased.
pub unsafe fn fused_linear_loss_views(
    head: &HeadViews,
    tokens: &TokenViews,
    spec: &LossSpec,
    chunk_tokens: Option<i64>,
    out: &FusedOutViews,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let (h, w, y) = head_tensors(head)?;
        let lm = LmHead {
            hidden: &h,
            weight: &w,
            targets: &y,
            temperature: head.temperature,
        };
        let owned = OwnedTokens::new(tokens)?;
        let mut pass = PassOutputs {
            logp: out.logp.as_tensor()?,
            entropy: Some(out.entropy.as_tensor()?),
            grad_hidden: Some(out.grad_hidden.as_tensor()?),
            grad_weight: Some(out.grad_weight.as_tensor()?),
        };
        let (loss, diag) =
            fused_linear_loss_into(&lm, &owned.inputs(), spec, chunk_tokens, &mut pass)?;
        write_loss(&out.loss, &loss, &diag.values)
    }
}

/// The PPO-family loss on logprob tensors, with `dloss/dlogp` (and `dloss/dentropy`).
///
/// # Safety
/// Every view must describe live memory for the duration of the call, outputs unaliased.
pub unsafe fn ppo_loss_views(
    logp: &TensorView,
    entropy: Option<&TensorView>,
    tokens: &TokenViews,
    spec: &LossSpec,
    out: &LossOutViews,
    grad_logp_out: &TensorView,
    grad_entropy_out: Option<&TensorView>,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let (lp, ent) = (logp.as_tensor()?, opt(entropy)?);
        let owned = OwnedTokens::new(tokens)?;
        let res = ppo_loss(&lp, ent.as_ref(), &owned.inputs(), spec)?;
        write_loss(out, &res.loss, &res.diagnostics.values)?;
        grad_logp_out.as_tensor()?.f_copy_(&res.grad_logp)?;
        if let (Some(o), Some(g)) = (grad_entropy_out, res.grad_entropy.as_ref()) {
            o.as_tensor()?.f_copy_(g)?;
        }
        Ok(())
    }
}
