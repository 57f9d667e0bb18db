//! Supervised steps (warm start): the token-mean negative log-likelihood of the tokens with loss
//! mask 1, accumulated over packed micro-batches, clipped, one AdamW step.
//!
//! The NLL uses the chunked LM-head kernels rather than a `[tokens, vocab]` log-softmax: the
//! target logprobs come from `token_logprobs` (no grad), their gradient `-mask / n` is pushed
//! through the LM head chunk by chunk by `token_logprobs_backward_into`, and `attach_gradients`
//! routes it into the model graph and the LM head weight. Logprobs are at temperature 1 (the
//! plain likelihood; `ppo.temperature` only concerns sampled data).

use super::batch::{shift_for_training, TARGET};
use super::Learner;
use crate::{Result, TrainError};
use asearcher_agent::packing::TrainingSequence;
use asearcher_torch::kernels::{
    attach_gradients, token_logprobs, token_logprobs_backward_into, LmHead, PassOutputs,
};
use asearcher_torch::train::{accumulate_gradients, pack_row, PackedRow, TokenSequence};
use serde::Serialize;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What one supervised step did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftStats {
    /// Token-mean NLL over the loss tokens (before the update).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the update.
    pub lr: f64,
    /// Sequences with at least one loss token.
    pub sequences: usize,
    /// Tokens counted in the loss.
    pub loss_tokens: usize,
    /// Packed micro-batches that ran.
    pub micro_batches: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

impl Learner {
    /// One supervised step on `seqs` (see the module doc). A batch without loss tokens is an
    /// error; a non-finite gradient norm skips the update (and `steps` does not advance).
    pub fn sft_step(&mut self, seqs: &[TrainingSequence]) -> Result<SftStats> {
        let started = Instant::now();
        let shifted: Vec<TokenSequence> = seqs
            .iter()
            .filter_map(|s| shift_for_training(s, 0.0))
            .collect();
        if shifted.is_empty() {
            return Err(TrainError::Data(format!(
                "sft batch of {} sequences has no token with loss mask 1 after the first",
                seqs.len()
            )));
        }
        let all: Vec<usize> = (0..shifted.len()).collect();
        let rows: Vec<PackedRow> = self
            .pack(&shifted, &all)?
            .iter()
            .map(|g| pack_row(&shifted, g, self.model.device()))
            .collect::<std::result::Result<_, _>>()?;
        let tokens: Vec<i64> = rows
            .iter()
            .map(|r| r.loss_mask.sum(Kind::Int64).int64_value(&[]))
            .collect();
        self.optimizer.zero_grad();
        let acc = accumulate_gradients(&tokens, |i| self.nll(&rows[i]))?;
        let (grad_norm, lr) = self.clip_and_step()?;
        Ok(SftStats {
            loss: acc.loss,
            grad_norm,
            lr,
            sequences: shifted.len(),
            loss_tokens: acc.tokens as usize,
            micro_batches: acc.micro_batches,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Token-mean NLL of a packed row's loss tokens, differentiable into the model.
    fn nll(&self, row: &PackedRow) -> asearcher_torch::Result<Tensor> {
        let hidden = self.hidden(row)?;
        let weight = self.model.lm_head_weight();
        let (h, w) = (hidden.detach(), weight.detach());
        let targets = row.fields[TARGET].reshape([-1]);
        let head = LmHead {
            hidden: &h,
            weight: &w,
            targets: &targets,
            temperature: 1.0,
        };
        let mask = row.loss_mask.reshape([-1]).to_kind(Kind::Float);
        let n = mask.sum(Kind::Float).clamp_min(1.0);
        let _guard = tch::no_grad_guard();
        let (logp, _) = token_logprobs(&head, self.chunk(), false)?;
        let loss = -(&logp * &mask).sum(Kind::Float) / &n;
        let grad_logp = -(&mask / &n);
        let mut out = PassOutputs::allocate(&head, false, true);
        token_logprobs_backward_into(&head, &grad_logp, None, self.chunk(), &mut out)?;
        drop(_guard);
        let (gh, gw) = (
            out.grad_hidden.expect("allocated"),
            out.grad_weight.expect("allocated"),
        );
        Ok(attach_gradients(&loss, &[(&hidden, &gh), (&weight, &gw)]))
    }
}
