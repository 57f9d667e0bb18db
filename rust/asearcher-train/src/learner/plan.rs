//! The buffer stage's hand-off to a data-parallel learner (the FSDP ranks under torchrun).
//!
//! [`plan_ppo_step`] builds the very sequences the tch learner trains on (same code: rewards
//! checked, zero-variance groups filtered, GRPO advantages, version-spread cap, shift for
//! next-token prediction, token normalisation) and the same `ppo.minibatches` split; then each
//! minibatch is divided across `world` ranks with every group's sequences on one rank, balanced
//! by tokens (longest-processing-time greedy: the heaviest group goes to the lightest rank), and
//! each rank's share is packed into micro-batches of at most `micro_batch_tokens` tokens.
//! Every rank gets the same number of micro-batches per minibatch: a rank with fewer gets empty
//! ones, which it still runs (forward and backward with a zero loss) so that the collectives of
//! all ranks line up.
//!
//! A micro-batch is one packed row: sequences laid end to end with position ids restarting at 0
//! for each, which is how Hugging Face models tell packed sequences apart.

use super::batch::{
    adv_abs_mean, float_field, int_field, normalize_token_advantages, prepare_owned, ADV, BEHAV,
    TARGET,
};
use super::{LearnerConfig, StepStats};
use crate::{Result, TrainError};
use asearcher_rollout::scheduler::Group;
use asearcher_torch::train::{pack_by_tokens, Oversize, TokenSequence};

/// One packed row of sequences, shifted for training (position `t` carries the target, mask,
/// behaviour logprob and advantage of token `t + 1`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackedMicroBatch {
    pub input_ids: Vec<i64>,
    /// Restart at 0 for every sequence.
    pub position_ids: Vec<i64>,
    pub targets: Vec<i64>,
    /// 1 where the position's target is a generated token that counts in the loss.
    pub loss_mask: Vec<u8>,
    /// Behaviour logprobs (those the tokens were sampled with).
    pub behav: Vec<f32>,
    pub advantages: Vec<f32>,
    /// Length of each packed sequence, in order.
    pub seq_lens: Vec<usize>,
    /// Positions with `loss_mask` 1.
    pub loss_tokens: usize,
}

impl PackedMicroBatch {
    /// A padding micro-batch (no tokens) for a rank with less work.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
}

/// What every rank trains on in one PPO step.
#[derive(Debug, Clone, Default)]
pub struct PpoPlan {
    /// The batch counters (groups, filters, sequences, tokens, rewards, staleness, advantages);
    /// the learner adds the loss, gradient norm, learning rate and diagnostics.
    pub stats: StepStats,
    /// Loss tokens of each minibatch over all ranks (the denominator of its token-mean).
    pub minibatch_loss_tokens: Vec<usize>,
    /// `ranks[r][m]`: the micro-batches of rank `r` in minibatch `m`; the same count for every
    /// rank within a minibatch.
    pub ranks: Vec<Vec<Vec<PackedMicroBatch>>>,
}

impl PpoPlan {
    /// True when there is nothing to train on (every group filtered or unscored).
    pub fn is_empty(&self) -> bool {
        self.minibatch_loss_tokens.is_empty()
    }
}

/// Plans one PPO step on `groups` for `world` data-parallel ranks (see the module doc).
pub fn plan_ppo_step(
    groups: &[Group],
    version: u64,
    cfg: &LearnerConfig,
    world: usize,
) -> Result<PpoPlan> {
    if world == 0 {
        return Err(TrainError::config("world_size", "must be at least 1"));
    }
    let mut stats = StepStats::default();
    let (mut seqs, owners) = prepare_owned(groups, version, cfg, &mut stats)?;
    let mut plan = PpoPlan {
        ranks: vec![Vec::new(); world],
        ..PpoPlan::default()
    };
    if seqs.is_empty() {
        stats.skipped = true;
        plan.stats = stats;
        return Ok(plan);
    }
    if cfg.advantages.token_normalize {
        normalize_token_advantages(&mut seqs)?;
    }
    stats.adv_abs_mean = adv_abs_mean(&seqs);
    stats.loss_tokens = seqs.iter().map(TokenSequence::loss_tokens).sum();
    stats.total_tokens = seqs.iter().map(TokenSequence::len).sum();
    let parts = cfg.ppo.minibatches.min(seqs.len());
    for p in 0..parts {
        let members: Vec<usize> = (p * seqs.len() / parts..(p + 1) * seqs.len() / parts).collect();
        let lengths: Vec<usize> = members.iter().map(|&i| seqs[i].len()).collect();
        let member_owners: Vec<usize> = members.iter().map(|&i| owners[i]).collect();
        let shares = partition_groups(&lengths, &member_owners, world);
        let mut per_rank = Vec::with_capacity(world);
        for share in shares {
            let indices: Vec<usize> = share.iter().map(|&j| members[j]).collect();
            per_rank.push(pack_share(&seqs, &indices, cfg.micro_batch_tokens)?);
        }
        let count = per_rank.iter().map(Vec::len).max().unwrap_or(0).max(1);
        for (rank, mut micro) in per_rank.into_iter().enumerate() {
            stats.micro_batches += micro.len();
            micro.resize(count, PackedMicroBatch::default());
            plan.ranks[rank].push(micro);
        }
        plan.minibatch_loss_tokens
            .push(members.iter().map(|&i| seqs[i].loss_tokens()).sum());
    }
    plan.stats = stats;
    Ok(plan)
}

/// Splits items (sequences of `lengths` tokens, owned by the groups `owners`) across `world`
/// ranks with each owner's items on one rank, balancing total tokens: owners by descending
/// tokens, each to the rank with the fewest so far (the lowest rank on ties). Returns the item
/// indices of each rank, ascending. The heaviest rank exceeds the lightest by at most the
/// heaviest owner's tokens.
pub fn partition_groups(lengths: &[usize], owners: &[usize], world: usize) -> Vec<Vec<usize>> {
    let mut units: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &owner) in owners.iter().enumerate().take(lengths.len()) {
        match units.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, items)) => items.push(i),
            None => units.push((owner, vec![i])),
        }
    }
    let tokens = |items: &[usize]| items.iter().map(|&i| lengths[i]).sum::<usize>();
    units.sort_by_key(|(_, items)| std::cmp::Reverse(tokens(items)));
    let mut load = vec![0usize; world.max(1)];
    let mut out = vec![Vec::new(); world.max(1)];
    for (_, items) in units {
        let rank = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[rank] += tokens(&items);
        out[rank].extend(items);
    }
    for share in &mut out {
        share.sort_unstable();
    }
    out
}

/// Packs the sequences `indices` into micro-batches of at most `budget` tokens (a longer one
/// alone).
fn pack_share(
    seqs: &[TokenSequence],
    indices: &[usize],
    budget: usize,
) -> Result<Vec<PackedMicroBatch>> {
    let lengths: Vec<usize> = indices.iter().map(|&i| seqs[i].len()).collect();
    let bins = pack_by_tokens(&lengths, budget, Oversize::OwnBatch)?;
    Ok(bins
        .into_iter()
        .map(|bin| concat(seqs, bin.iter().map(|&j| indices[j])))
        .collect())
}

fn concat(seqs: &[TokenSequence], members: impl Iterator<Item = usize>) -> PackedMicroBatch {
    let mut m = PackedMicroBatch::default();
    for i in members {
        let s = &seqs[i];
        m.input_ids.extend(&s.input_ids);
        m.position_ids.extend(0..s.len() as i64);
        m.loss_mask.extend(s.loss_mask.iter().map(|&b| u8::from(b)));
        m.targets.extend(int_field(s, TARGET));
        m.behav.extend(float_field(s, BEHAV));
        m.advantages.extend(float_field(s, ADV));
        m.seq_lens.push(s.len());
        m.loss_tokens += s.loss_tokens();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(lengths: &[usize], share: &[usize]) -> usize {
        share.iter().map(|&i| lengths[i]).sum()
    }

    #[test]
    fn partition_keeps_groups_whole_and_balances_tokens() {
        // 6 groups of 2 sequences each, very different sizes.
        let lengths = [900, 800, 10, 20, 300, 310, 50, 60, 400, 420, 5, 7];
        let owners = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5];
        for world in 1..=4 {
            let shares = partition_groups(&lengths, &owners, world);
            assert_eq!(shares.len(), world);
            let mut all: Vec<usize> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
            for share in &shares {
                for &i in share {
                    let same: Vec<usize> = (0..lengths.len())
                        .filter(|&j| owners[j] == owners[i])
                        .collect();
                    assert!(same.iter().all(|j| share.contains(j)), "group split");
                }
            }
            let loads: Vec<usize> = shares.iter().map(|s| load(&lengths, s)).collect();
            let (max, min) = (loads.iter().max().unwrap(), loads.iter().min().unwrap());
            assert!(
                max - min <= 1700,
                "imbalance {loads:?} over the largest group"
            );
        }
    }

    #[test]
    fn partition_gives_a_rank_nothing_when_there_are_fewer_groups_than_ranks() {
        let shares = partition_groups(&[5, 6], &[0, 0], 3);
        assert_eq!(shares, vec![vec![0, 1], vec![], vec![]]);
    }
}
