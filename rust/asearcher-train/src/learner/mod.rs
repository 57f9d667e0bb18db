//! The learner: one optimizer step from scored groups (decoupled PPO with GRPO advantages) or
//! from supervised sequences, on a [`QwenModel`] held with `requires_grad` and its AdamW state.
//!
//! A PPO step: unscored trajectories are left out, zero-variance groups filtered, group-relative
//! advantages computed, trajectories packed into sequences, the version-spread cap applied
//! ([`batch`]); advantages are optionally normalised over all loss tokens; sequences are split
//! into `ppo.minibatches` minibatches and each packed into micro-batches of at most
//! `micro_batch_tokens` tokens; with `ppo.decoupled` the proximal logprobs of every micro-batch
//! are computed first with the pre-step weights (no grad). Each minibatch then accumulates the
//! fused-kernel PPO loss over its micro-batches (each a token-mean, weighted by its share of the
//! minibatch's loss tokens by `accumulate_gradients`, which equals the minibatch's token-mean;
//! `LossSpec.normalizer` is therefore left unset, as it would scale twice), clips the gradient
//! norm and takes an AdamW step at `schedule.lr_at(steps)`.
//!
//! `steps` counts optimizer updates actually taken: a minibatch whose gradient norm is not finite
//! and a step with nothing to train on take none (`skipped` in the stats).

mod batch;
pub mod config;
pub mod plan;
mod sft;
#[cfg(test)]
mod tests;

pub use config::{
    AdvantageConfig, CapModeName, FsdpConfig, LearnerBackend, LearnerConfig, PpoConfig,
    SpreadPolicy, VersionSpreadConfig,
};
pub use sft::SftStats;

use crate::Result;
use asearcher_rollout::scheduler::Group;
use asearcher_torch::kernels::{fused_linear_loss_autograd, token_logprobs, LmHead, TokenInputs};
use asearcher_torch::model::{AttentionMask, QwenModel};
use asearcher_torch::train::{
    accumulate_gradients, clip_grad_norm, no_decay_for_norms_and_biases, pack_by_tokens, pack_row,
    AdamW, Oversize, PackedRow, TokenSequence,
};
use batch::{ADV, BEHAV, TARGET};
use serde::Serialize;
use std::time::Instant;
use tch::Tensor;

/// What one PPO step did. Token statistics are over the loss tokens, weighted by tokens across
/// micro-batches; `loss` and the diagnostics come from the forward passes before each update.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StepStats {
    /// Token-mean PPO loss over the batch.
    pub loss: f64,
    /// Largest pre-clip gradient norm over the minibatches.
    pub grad_norm: f64,
    /// Learning rate of the first update.
    pub lr: f64,
    /// Groups given.
    pub groups: usize,
    /// Groups skipped because all their scored rewards were equal (no signal; only with
    /// `rollout.filter_zero_variance` on).
    pub groups_filtered_zero_variance: usize,
    /// Trajectories trained on.
    pub trajectories: usize,
    /// Trajectories left out because they had no reward.
    pub trajectories_no_reward: usize,
    /// Trajectories dropped by the version-spread cap (`policy = "drop"`).
    pub trajectories_version_dropped: usize,
    /// Generated tokens masked out by the version-spread cap (`policy = "mask"`).
    pub tokens_version_masked: usize,
    /// Training sequences (a trajectory whose context was rewritten gives several).
    pub sequences: usize,
    /// Packed micro-batches that ran, over all minibatches.
    pub micro_batches: usize,
    /// Tokens counted in the loss.
    pub loss_tokens: usize,
    /// Tokens forwarded (prompts included).
    pub total_tokens: usize,
    /// Mean of all rewards given (before filtering).
    pub reward_mean: f64,
    /// Population std of all rewards given (before filtering).
    pub reward_std: f64,
    /// Mean |advantage| over loss tokens (after token normalisation).
    pub adv_abs_mean: f64,
    /// Fraction of loss tokens where the clipped term was active.
    pub clip_frac: f64,
    /// Mean behaviour importance weight `exp(prox - behav)` before capping (1 for plain PPO).
    pub behav_weight_mean: f64,
    /// Largest behaviour importance weight.
    pub behav_weight_max: f64,
    /// Fraction of loss tokens whose weight was above the cap (masked or clamped).
    pub behav_weight_capped_frac: f64,
    /// k3 estimate of KL(proximal || current).
    pub approx_kl: f64,
    /// Mean entropy of the current policy over loss tokens.
    pub entropy_mean: f64,
    /// Mean of policy version minus token version over the trained generated tokens.
    pub staleness_mean: f64,
    /// Largest policy version minus token version over the trained generated tokens.
    pub staleness_max: u64,
    /// Most distinct versions in one trajectory (before the cap).
    pub version_spread_max: usize,
    /// Seconds of packing and the proximal pass.
    pub seconds_prox: f64,
    /// Seconds of the training passes (forward, backward, clipping, optimizer).
    pub seconds_train: f64,
    /// True when no optimizer update was taken (nothing to train on, or no finite gradient norm).
    pub skipped: bool,
}

/// A micro-batch: its packed row and, for decoupled PPO, the proximal logprobs `[T]`.
struct MicroBatch {
    row: PackedRow,
    prox: Option<Tensor>,
    loss_tokens: i64,
}

/// Token-weighted sums of the kernel diagnostics.
#[derive(Default)]
struct DiagSums {
    tokens: f64,
    clip: f64,
    weight: f64,
    weight_max: f64,
    capped: f64,
    kl: f64,
    entropy: f64,
}

/// The model being trained, its optimizer and the step count.
pub struct Learner {
    model: QwenModel,
    params: Vec<(String, Tensor)>,
    optimizer: AdamW,
    cfg: LearnerConfig,
    steps: u64,
}

impl Learner {
    /// Validates `cfg`, turns `requires_grad` on and builds AdamW (no decay on norms and biases).
    pub fn new(mut model: QwenModel, cfg: LearnerConfig) -> Result<Self> {
        cfg.validate()?;
        model.set_requires_grad(true);
        let params = model.named_parameters();
        freeze(&params, &cfg.frozen)?;
        let trainable: Vec<(String, Tensor)> = params
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let optimizer = AdamW::new(
            &trainable,
            cfg.optimizer.clone(),
            no_decay_for_norms_and_biases,
        )?;
        Ok(Learner {
            model,
            params,
            optimizer,
            cfg,
            steps: 0,
        })
    }

    /// Names of the parameters that train (not frozen).
    pub fn trainable(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn model(&self) -> &QwenModel {
        &self.model
    }

    pub fn config(&self) -> &LearnerConfig {
        &self.cfg
    }

    /// Optimizer updates taken (PPO minibatches and SFT steps).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets the step count (after restoring a checkpoint), which drives the schedule.
    pub fn set_steps(&mut self, n: u64) {
        self.steps = n;
    }

    /// HF-named parameters, detached, sharing storage with the model (for weight sync).
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect()
    }

    /// The optimizer state as named tensors (see `AdamW::state_tensors`).
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state_tensors()
    }

    /// Restores the optimizer state; every tensor must be present and of the right shape.
    pub fn load_optimizer_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.optimizer.load_state_tensors(state)?;
        Ok(())
    }

    /// One PPO step on `groups` with the policy at `version` (see the module doc).
    pub fn ppo_step(&mut self, groups: &[Group], version: u64) -> Result<StepStats> {
        let mut stats = StepStats::default();
        let mut seqs = batch::prepare_ppo_batch(groups, version, &self.cfg, &mut stats)?;
        if seqs.is_empty() {
            stats.skipped = true;
            return Ok(stats);
        }
        if self.cfg.advantages.token_normalize {
            batch::normalize_token_advantages(&mut seqs)?;
        }
        stats.adv_abs_mean = batch::adv_abs_mean(&seqs);
        stats.loss_tokens = seqs.iter().map(TokenSequence::loss_tokens).sum();
        stats.total_tokens = seqs.iter().map(TokenSequence::len).sum();

        let started = Instant::now();
        let minibatches = self.pack_minibatches(&seqs)?;
        stats.seconds_prox = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut diag = DiagSums::default();
        let (mut loss_sum, mut tokens, mut updates) = (0.0, 0, 0);
        for (k, micro) in minibatches.iter().enumerate() {
            let acc = self.accumulate_ppo(micro, &mut diag)?;
            loss_sum += acc.loss * acc.tokens as f64;
            tokens += acc.tokens;
            stats.micro_batches += acc.micro_batches;
            let (norm, lr) = self.clip_and_step()?;
            stats.grad_norm = stats.grad_norm.max(norm);
            if k == 0 {
                stats.lr = lr;
            }
            updates += usize::from(norm.is_finite());
        }
        stats.seconds_train = started.elapsed().as_secs_f64();
        stats.skipped = updates == 0;
        stats.loss = loss_sum / tokens.max(1) as f64;
        diag.write_into(&mut stats);
        Ok(stats)
    }

    /// Splits `seqs` into `ppo.minibatches` contiguous shares, packs each into micro-batches and
    /// computes their proximal logprobs (decoupled PPO) with the current weights.
    fn pack_minibatches(&self, seqs: &[TokenSequence]) -> Result<Vec<Vec<MicroBatch>>> {
        let parts = self.cfg.ppo.minibatches.min(seqs.len());
        let mut out = Vec::with_capacity(parts);
        for p in 0..parts {
            let members: Vec<usize> =
                (p * seqs.len() / parts..(p + 1) * seqs.len() / parts).collect();
            let mut micro = Vec::new();
            for group in self.pack(seqs, &members)? {
                let row = pack_row(seqs, &group, self.model.device())?;
                let prox = if self.cfg.ppo.decoupled {
                    Some(self.proximal_logprobs(&row)?)
                } else {
                    None
                };
                let loss_tokens = group.iter().map(|&i| seqs[i].loss_tokens() as i64).sum();
                micro.push(MicroBatch {
                    row,
                    prox,
                    loss_tokens,
                });
            }
            out.push(micro);
        }
        Ok(out)
    }

    /// Packs `members` (indices into `seqs`) by `micro_batch_tokens`; returns indices into `seqs`.
    fn pack(&self, seqs: &[TokenSequence], members: &[usize]) -> Result<Vec<Vec<usize>>> {
        let lengths: Vec<usize> = members.iter().map(|&i| seqs[i].len()).collect();
        let groups = pack_by_tokens(&lengths, self.cfg.micro_batch_tokens, Oversize::OwnBatch)?;
        Ok(groups
            .into_iter()
            .map(|g| g.into_iter().map(|j| members[j]).collect())
            .collect())
    }

    /// Final hidden states `[T, H]` of a packed row.
    fn hidden(&self, row: &PackedRow) -> asearcher_torch::Result<Tensor> {
        let mask = AttentionMask::Packed(row.seq_ids.shallow_clone());
        let h = self
            .model
            .forward_hidden(&row.input_ids, &row.position_ids, &mask)?;
        let width = h.size()[2];
        Ok(h.reshape([-1, width]))
    }

    fn chunk(&self) -> Option<i64> {
        self.cfg.chunk_tokens.map(|c| c as i64)
    }

    /// Logprobs `[T]` of the row's targets under the current weights, without gradients.
    fn proximal_logprobs(&self, row: &PackedRow) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let hidden = self.hidden(row)?;
        let weight = self.model.lm_head_weight().detach();
        let targets = row.fields[TARGET].reshape([-1]);
        let head = LmHead {
            hidden: &hidden,
            weight: &weight,
            targets: &targets,
            temperature: self.cfg.ppo.temperature,
        };
        Ok(token_logprobs(&head, self.chunk(), false)?.0)
    }

    /// Zeroes the gradients and accumulates the PPO loss of one minibatch's micro-batches.
    fn accumulate_ppo(
        &mut self,
        micro: &[MicroBatch],
        diag: &mut DiagSums,
    ) -> Result<asearcher_torch::train::AccumulationStats> {
        self.optimizer.zero_grad();
        let tokens: Vec<i64> = micro.iter().map(|m| m.loss_tokens).collect();
        let spec = self.cfg.ppo.loss_spec(None);
        let weight = self.model.lm_head_weight();
        let acc = accumulate_gradients(&tokens, |i| {
            let m = &micro[i];
            let hidden = self.hidden(&m.row)?;
            let flat = |name: &str| m.row.fields[name].reshape([-1]);
            let (adv, behav, targets) = (flat(ADV), flat(BEHAV), flat(TARGET));
            let mask = m.row.loss_mask.reshape([-1]);
            let inputs = TokenInputs {
                advantages: &adv,
                loss_mask: &mask,
                behav_logp: &behav,
                prox_logp: m.prox.as_ref(),
                ref_logp: None,
                seq_ids: None,
            };
            let (loss, d) = fused_linear_loss_autograd(
                &hidden,
                &weight,
                &targets,
                self.cfg.ppo.temperature,
                &inputs,
                &spec,
                self.chunk(),
            )?;
            diag.add(&d.to_vec()?);
            Ok(loss)
        })?;
        Ok(acc)
    }

    /// Clips the gradient norm and, when finite, takes an AdamW step; returns (norm, lr).
    fn clip_and_step(&mut self) -> Result<(f64, f64)> {
        let norm = clip_grad_norm(&self.params, self.cfg.grad_clip)?;
        let lr = self.cfg.schedule.lr_at(self.steps);
        if norm.is_finite() {
            self.optimizer.step(lr)?;
            self.steps += 1;
        }
        Ok((norm, lr))
    }
}

impl DiagSums {
    fn add(&mut self, values: &[(&'static str, f64)]) {
        let get = |name: &str| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0.0, |(_, v)| *v)
        };
        let n = get("n_valid_tokens");
        if n == 0.0 {
            return;
        }
        self.tokens += n;
        self.clip += n * get("clip_frac");
        self.weight += n * get("behav_weight_mean");
        self.weight_max = self.weight_max.max(get("behav_weight_max"));
        self.capped += n * get("behav_weight_capped_frac");
        self.kl += n * get("approx_kl");
        let entropy = get("entropy_mean");
        if entropy.is_finite() {
            self.entropy += n * entropy;
        }
    }

    fn write_into(&self, stats: &mut StepStats) {
        let n = self.tokens.max(1.0);
        stats.clip_frac = self.clip / n;
        stats.behav_weight_mean = self.weight / n;
        stats.behav_weight_max = self.weight_max;
        stats.behav_weight_capped_frac = self.capped / n;
        stats.approx_kl = self.kl / n;
        stats.entropy_mean = self.entropy / n;
    }
}

/// Turns gradients off for the parameters matching `patterns` (shallow clones share the flag with
/// the model's tensors); a pattern matching nothing is an error naming it.
fn freeze(params: &[(String, Tensor)], patterns: &[String]) -> Result<()> {
    for pattern in patterns {
        let mut hits = 0;
        for (name, t) in params {
            if name.contains(pattern.as_str()) {
                let _ = t.set_requires_grad(false);
                hits += 1;
            }
        }
        if hits == 0 {
            return Err(crate::TrainError::config(
                "learner.frozen",
                format!("`{pattern}` matches no parameter name"),
            ));
        }
    }
    Ok(())
}
