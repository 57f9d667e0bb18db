//! From scored groups to training sequences: rewards checked (unscored trajectories left out),
//! zero-variance groups filtered, GRPO advantages per group, trajectories packed into sequences,
//! the version-spread cap applied, and every sequence shifted for next-token prediction
//! (position `t` carries the target, loss mask, behaviour logprob and advantage of token `t + 1`).

use super::config::{LearnerConfig, SpreadPolicy};
use super::StepStats;
use crate::{Result, TrainError};
use asearcher_agent::packing::TrainingSequence;
use asearcher_agent::trajectory::Trajectory;
use asearcher_rollout::scheduler::Group;
use asearcher_torch::train::{TokenSequence, TokenValues};
use asearcher_torch::{shaped_group_advantages, token_advantages, GroupAdvantageSpec};
use std::collections::{BTreeMap, BTreeSet};
use tch::{Device, Kind, Tensor};

/// Field names of the shifted sequences.
pub(super) const TARGET: &str = "target";
pub(super) const BEHAV: &str = "behav";
pub(super) const ADV: &str = "adv";

/// Epsilon of the token-level advantage normalisation.
const TOKEN_NORM_EPS: f64 = 1e-5;

/// Turns `groups` into shifted training sequences, filling the batch counters of `stats`.
pub(super) fn prepare_ppo_batch(
    groups: &[Group],
    version: u64,
    cfg: &LearnerConfig,
    stats: &mut StepStats,
) -> Result<Vec<TokenSequence>> {
    Ok(prepare_owned(groups, version, cfg, stats)?.0)
}

/// [`prepare_ppo_batch`], also returning the index in `groups` of each sequence's group.
pub(super) fn prepare_owned(
    groups: &[Group],
    version: u64,
    cfg: &LearnerConfig,
    stats: &mut StepStats,
) -> Result<(Vec<TokenSequence>, Vec<usize>)> {
    stats.groups = groups.len();
    record_rewards(groups, stats);
    let mut seqs = Vec::new();
    let mut owners = Vec::new();
    let mut staleness = Staleness::default();
    for (gi, group) in groups.iter().enumerate() {
        let scored: Vec<(&Trajectory, f64)> = group
            .trajectories
            .iter()
            .filter_map(|t| t.reward.map(|r| (t, r)))
            .collect();
        stats.trajectories_no_reward += group.trajectories.len() - scored.len();
        if let Some((t, r)) = scored.iter().find(|(_, r)| !r.is_finite()) {
            return Err(TrainError::Data(format!(
                "trajectory `{}` has a non-finite reward {r}",
                t.id
            )));
        }
        if scored.is_empty() {
            continue;
        }
        // No reward variance among the scored trajectories: no GRPO signal. With the filter on
        // the engine drops such groups earlier; this catches ties hidden by unscored ones.
        if cfg.filter_zero_variance && scored.iter().all(|(_, r)| *r == scored[0].1) {
            stats.groups_filtered_zero_variance += 1;
            continue;
        }
        let advantages = group_advantages(&scored, cfg)?;
        for ((traj, _), adv) in scored.iter().zip(advantages) {
            let before = seqs.len();
            trajectory_sequences(traj, adv, version, cfg, stats, &mut staleness, &mut seqs)?;
            if seqs.len() > before {
                stats.trajectories += 1;
            }
        }
        owners.resize(seqs.len(), gi);
    }
    stats.sequences = seqs.len();
    stats.staleness_mean = staleness.mean();
    stats.staleness_max = staleness.max;
    Ok((seqs, owners))
}

/// Mean and std of every reward in the batch (before any filtering).
fn record_rewards(groups: &[Group], stats: &mut StepStats) {
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.trajectories.iter().filter_map(|t| t.reward))
        .collect();
    if rewards.is_empty() {
        return;
    }
    let n = rewards.len() as f64;
    stats.reward_mean = rewards.iter().sum::<f64>() / n;
    let var = rewards
        .iter()
        .map(|r| (r - stats.reward_mean).powi(2))
        .sum::<f64>()
        / n;
    stats.reward_std = var.sqrt();
}

/// GRPO advantages of one group's scored trajectories (shaped, centred, optionally std-scaled).
fn group_advantages(scored: &[(&Trajectory, f64)], cfg: &LearnerConfig) -> Result<Vec<f64>> {
    let rewards: Vec<f64> = scored.iter().map(|(_, r)| *r).collect();
    let spec = GroupAdvantageSpec {
        normalize_std: cfg.advantages.normalize_std,
        reward_scale: cfg.advantages.reward_scale,
        reward_bias: cfg.advantages.reward_bias,
        ..GroupAdvantageSpec::new(rewards.len() as i64)
    };
    let adv = shaped_group_advantages(&Tensor::from_slice(&rewards), None, &spec)?;
    Ok(Vec::<f64>::try_from(adv.to_kind(Kind::Double))?)
}

/// Policy version minus token version over the trained tokens.
#[derive(Default)]
struct Staleness {
    sum: u64,
    count: u64,
    max: u64,
}

impl Staleness {
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

/// Appends the shifted sequences of one trajectory (after the version-spread cap) to `out`.
fn trajectory_sequences(
    traj: &Trajectory,
    adv: f64,
    version: u64,
    cfg: &LearnerConfig,
    stats: &mut StepStats,
    staleness: &mut Staleness,
    out: &mut Vec<TokenSequence>,
) -> Result<()> {
    let mut seqs = traj
        .to_sequences()
        .map_err(|e| TrainError::Data(format!("trajectory `{}`: {e}", traj.id)))?;
    let versions: BTreeSet<u64> = seqs.iter().flat_map(generated_versions).collect();
    stats.version_spread_max = stats.version_spread_max.max(versions.len());
    if let Some(k) = cfg.version_spread.max_versions {
        if versions.len() > k as usize {
            match cfg.version_spread.policy {
                SpreadPolicy::Drop => {
                    stats.trajectories_version_dropped += 1;
                    return Ok(());
                }
                SpreadPolicy::Mask => {
                    let oldest_kept = *versions.iter().rev().nth(k as usize - 1).expect("k <= len");
                    for s in &mut seqs {
                        stats.tokens_version_masked += mask_older_than(s, oldest_kept);
                    }
                }
            }
        }
    }
    for s in &seqs {
        if let Some(shifted) = shift_for_training(s, adv as f32) {
            for v in generated_versions(s) {
                let lag = version.saturating_sub(v);
                staleness.sum += lag;
                staleness.count += 1;
                staleness.max = staleness.max.max(lag);
            }
            out.push(shifted);
        }
    }
    Ok(())
}

/// Versions of the generated tokens that count in the loss (the first token never does: nothing
/// predicts it).
fn generated_versions(s: &TrainingSequence) -> impl Iterator<Item = u64> + '_ {
    s.loss_mask
        .iter()
        .zip(&s.versions)
        .skip(1)
        .filter(|(m, _)| **m == 1)
        .filter_map(|(_, v)| *v)
}

/// Masks generated tokens whose version is older than `oldest_kept` (or unknown); returns how many.
fn mask_older_than(s: &mut TrainingSequence, oldest_kept: u64) -> usize {
    let mut masked = 0;
    for (m, v) in s.loss_mask.iter_mut().zip(&s.versions) {
        if *m == 1 && v.is_none_or(|v| v < oldest_kept) {
            *m = 0;
            masked += 1;
        }
    }
    masked
}

/// The sequence as the loss sees it: position `t` predicts token `t + 1`, so the target, loss
/// mask, behaviour logprob and advantage of position `t` are those of token `t + 1` (the last
/// position predicts nothing). `None` when no token counts.
pub(super) fn shift_for_training(s: &TrainingSequence, adv: f32) -> Option<TokenSequence> {
    let n = s.len();
    if n < 2 || !s.loss_mask[1..].contains(&1) {
        return None;
    }
    let next = |t: usize| (t + 1 < n).then_some(t + 1);
    let loss_mask: Vec<bool> = (0..n)
        .map(|t| next(t).is_some_and(|u| s.loss_mask[u] == 1))
        .collect();
    let target: Vec<i64> = (0..n)
        .map(|t| next(t).map_or(0, |u| s.input_ids[u] as i64))
        .collect();
    let behav: Vec<f32> = (0..n)
        .map(|t| next(t).map_or(0.0, |u| s.logprobs[u]))
        .collect();
    let advs: Vec<f32> = loss_mask
        .iter()
        .map(|&m| if m { adv } else { 0.0 })
        .collect();
    let mut fields = BTreeMap::new();
    fields.insert(TARGET.to_string(), TokenValues::Int(target));
    fields.insert(BEHAV.to_string(), TokenValues::Float(behav));
    fields.insert(ADV.to_string(), TokenValues::Float(advs));
    Some(TokenSequence {
        input_ids: s.input_ids.iter().map(|&i| i as i64).collect(),
        loss_mask,
        fields,
    })
}

/// Centres the advantages over every loss token of the batch and divides by their std.
pub(super) fn normalize_token_advantages(seqs: &mut [TokenSequence]) -> Result<()> {
    let mut seq_adv = Vec::with_capacity(seqs.len());
    let (mut mask, mut ids) = (Vec::new(), Vec::new());
    for (k, s) in seqs.iter().enumerate() {
        let first = s.loss_mask.iter().position(|&m| m);
        seq_adv.push(first.map_or(0.0, |t| float_field(s, ADV)[t]));
        mask.extend(s.loss_mask.iter().map(|&m| m as u8));
        ids.extend(std::iter::repeat_n(k as i64, s.len()));
    }
    let per_token = token_advantages(
        &Tensor::from_slice(&seq_adv),
        &Tensor::from_slice(&mask).to_kind(Kind::Bool),
        Some(&Tensor::from_slice(&ids)),
        true,
        TOKEN_NORM_EPS,
    )?
    .to_device(Device::Cpu);
    let all = Vec::<f32>::try_from(per_token)?;
    let mut at = 0;
    for s in seqs.iter_mut() {
        let n = s.len();
        s.fields.insert(
            ADV.to_string(),
            TokenValues::Float(all[at..at + n].to_vec()),
        );
        at += n;
    }
    Ok(())
}

/// Mean |advantage| over the loss tokens.
pub(super) fn adv_abs_mean(seqs: &[TokenSequence]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for s in seqs {
        for (a, &m) in float_field(s, ADV).iter().zip(&s.loss_mask) {
            if m {
                sum += a.abs() as f64;
                n += 1;
            }
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// A float field of a shifted sequence (empty if it holds integers).
pub(super) fn float_field<'a>(s: &'a TokenSequence, name: &str) -> &'a [f32] {
    match &s.fields[name] {
        TokenValues::Float(v) => v,
        TokenValues::Int(_) => &[],
    }
}

/// An integer field of a shifted sequence (empty if it holds floats).
pub(super) fn int_field<'a>(s: &'a TokenSequence, name: &str) -> &'a [i64] {
    match &s.fields[name] {
        TokenValues::Int(v) => v,
        TokenValues::Float(_) => &[],
    }
}
