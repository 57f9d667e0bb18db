//! Tests of the learner on a tiny random Qwen model on the CPU: micro-batching exactness,
//! learning from rewards, on-policy sanity, batch filters and caps, SFT and the config.

use super::batch::{self, BEHAV};
use super::*;
use asearcher_agent::agent::GenFinish;
use asearcher_agent::packing::TrainingSequence;
use asearcher_agent::trajectory::{Trajectory, TurnRecord};
use asearcher_rollout::questions::Question;
use asearcher_torch::model::QwenConfig;
use asearcher_torch::train::{LrSchedule, TokenValues};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 24;

fn tiny_model(seed: u64) -> QwenModel {
    // One intra-op thread: the models are tiny and tests run in parallel on few cores.
    tch::set_num_threads(1);
    let json = serde_json::json!({
        "model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "max_position_embeddings": 128,
        "rope_theta": 10000.0, "eos_token_id": 2, "torch_dtype": "float32",
        "initializer_range": 0.3
    });
    let config = QwenConfig::from_json(&json.to_string(), Path::new("config.json")).unwrap();
    QwenModel::init_random(config, seed, Device::Cpu, Kind::Float).unwrap()
}

fn config(lr: f64) -> LearnerConfig {
    LearnerConfig {
        schedule: LrSchedule {
            lr,
            ..LrSchedule::default()
        },
        micro_batch_tokens: 4096,
        ..LearnerConfig::default()
    }
}

/// Logprobs of each token of `ids` given the tokens before it (index 0 gets 0).
fn model_logprobs(model: &QwenModel, ids: &[u32]) -> Vec<f32> {
    let _guard = tch::no_grad_guard();
    let t = ids.len() as i64;
    let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let hidden = model
        .forward_hidden(&input, &pos, &AttentionMask::Causal)
        .unwrap();
    let logp = model
        .logits(&hidden)
        .log_softmax(-1, Kind::Float)
        .squeeze_dim(0);
    let mut out = vec![0.0];
    for (k, &id) in ids.iter().enumerate().skip(1) {
        out.push(logp.double_value(&[k as i64 - 1, id as i64]) as f32);
    }
    out
}

/// Samples `n` tokens after `prompt` from the model; returns the tokens and their logprobs.
fn sample(model: &QwenModel, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let _guard = tch::no_grad_guard();
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let t = ids.len() as i64;
        let input =
            Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).unsqueeze(0);
        let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        let hidden = model
            .forward_hidden(&input, &pos, &AttentionMask::Causal)
            .unwrap();
        let probs = model
            .logits(&hidden.select(1, t - 1))
            .softmax(-1, Kind::Float);
        ids.push(probs.multinomial(1, true).int64_value(&[0, 0]) as u32);
    }
    let logp = model_logprobs(model, &ids);
    (ids[prompt.len()..].to_vec(), logp[prompt.len()..].to_vec())
}

fn turn(prompt: &[u32], output: &[u32], logprobs: &[f32], versions: &[u64]) -> TurnRecord {
    TurnRecord {
        role: "act".into(),
        prompt_prefix_len: 0,
        prompt_ids: prompt.to_vec(),
        output_ids: output.to_vec(),
        output_logprobs: logprobs.to_vec(),
        output_versions: versions.to_vec(),
        output_text: String::new(),
        finish: GenFinish::Stop,
        action: None,
        issues: vec![],
        tool: None,
        server: None,
        resends: 0,
        gen_latency_ms: 0.0,
    }
}

fn trajectory(q: &str, sample: u32, turns: Vec<TurnRecord>, reward: Option<f64>) -> Trajectory {
    let mut t = Trajectory::new(q, sample, "question", vec![], "test");
    t.turns = turns;
    t.reward = reward;
    t
}

fn group(index: u64, trajectories: Vec<Trajectory>) -> Group {
    Group {
        index,
        question: Arc::new(Question::new(format!("q{index}"), "question", vec![])),
        epoch: 0,
        admitted_version: 0,
        attempts: vec![1; trajectories.len()],
        trajectories,
    }
}

/// Groups of sampled trajectories (single turn, version `v`), rewarded by `reward(output)`.
fn sampled_groups(
    model: &QwenModel,
    groups: usize,
    per_group: usize,
    len: impl Fn(usize) -> usize,
    reward: impl Fn(&[u32]) -> f64,
) -> Vec<Group> {
    tch::manual_seed(11);
    (0..groups)
        .map(|g| {
            let prompt: Vec<u32> = vec![1, 3 + g as u32, 4];
            let trajs = (0..per_group)
                .map(|k| {
                    let (out, lp) = sample(model, &prompt, len(g * per_group + k));
                    let versions = vec![0; out.len()];
                    let r = reward(&out);
                    let t = turn(&prompt, &out, &lp, &versions);
                    trajectory(&format!("q{g}"), k as u32, vec![t], Some(r))
                })
                .collect();
            group(g as u64, trajs)
        })
        .collect()
}

/// The accumulated gradients of the first minibatch of a PPO step (no optimizer step).
fn ppo_gradients(learner: &mut Learner, groups: &[Group], version: u64) -> (Vec<Tensor>, usize) {
    let mut stats = StepStats::default();
    let mut seqs = batch::prepare_ppo_batch(groups, version, &learner.cfg, &mut stats).unwrap();
    if learner.cfg.advantages.token_normalize {
        batch::normalize_token_advantages(&mut seqs).unwrap();
    }
    let minibatches = learner.pack_minibatches(&seqs).unwrap();
    let micro = minibatches[0].len();
    learner
        .accumulate_ppo(&minibatches[0], &mut DiagSums::default())
        .unwrap();
    let grads = learner
        .params
        .iter()
        .map(|(_, p)| p.grad().copy())
        .collect();
    (grads, micro)
}

fn assert_grads_close(a: &[Tensor], b: &[Tensor], rtol: f64) {
    let mut largest: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        let scale = x.abs().max().double_value(&[]);
        largest = largest.max(scale);
        let diff = (x - y).abs().max().double_value(&[]);
        assert!(
            diff <= rtol * scale + 1e-9,
            "grad diff {diff} vs scale {scale}"
        );
    }
    assert!(largest > 1e-4, "gradients are not trivially zero");
}

#[test]
fn micro_batched_gradient_equals_single_batch_gradient() {
    let model = tiny_model(1);
    let groups = sampled_groups(&model, 2, 4, |i| 3 + i % 5, |out| out[0] as f64);
    let mut big = Learner::new(tiny_model(1), config(1e-3)).unwrap();
    let mut small = Learner::new(
        tiny_model(1),
        LearnerConfig {
            micro_batch_tokens: 16,
            ..config(1e-3)
        },
    )
    .unwrap();
    let (g_big, n_big) = ppo_gradients(&mut big, &groups, 1);
    let (g_small, n_small) = ppo_gradients(&mut small, &groups, 1);
    assert_eq!(n_big, 1);
    assert!(n_small >= 3, "{n_small} micro-batches");
    assert_grads_close(&g_big, &g_small, 1e-4);
}

/// Mean over trajectories of the summed logprob of their generated tokens under `model`.
fn mean_seq_logprob(model: &QwenModel, trajs: &[&Trajectory]) -> f64 {
    let total: f64 = trajs
        .iter()
        .map(|t| {
            let tr = &t.turns[0];
            let ids: Vec<u32> = tr
                .prompt_ids
                .iter()
                .chain(&tr.output_ids)
                .copied()
                .collect();
            let lp = model_logprobs(model, &ids);
            lp[tr.prompt_ids.len()..]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>()
        })
        .sum();
    total / trajs.len() as f64
}

#[test]
fn ppo_steps_raise_the_logprob_of_rewarded_sequences() {
    let model = tiny_model(2);
    let raw = sampled_groups(&model, 4, 6, |_| 5, |_| 0.0);
    // Reward the token that appears in the most (but not all) trajectories.
    let contains = |t: &Trajectory, x: u32| t.turns[0].output_ids.contains(&x);
    let all: Vec<&Trajectory> = raw.iter().flat_map(|g| &g.trajectories).collect();
    let x = (0..VOCAB as u32)
        .filter(|&x| all.iter().any(|t| !contains(t, x)))
        .max_by_key(|&x| all.iter().filter(|t| contains(t, x)).count())
        .unwrap();
    let mut groups = raw.clone();
    for t in groups.iter_mut().flat_map(|g| &mut g.trajectories) {
        t.reward = Some(if contains(t, x) { 1.0 } else { 0.0 });
    }
    let all: Vec<&Trajectory> = groups.iter().flat_map(|g| &g.trajectories).collect();
    let (good, bad): (Vec<&Trajectory>, Vec<&Trajectory>) =
        all.iter().partition(|t| t.reward == Some(1.0));
    assert!(
        good.len() >= 3 && bad.len() >= 3,
        "{} / {}",
        good.len(),
        bad.len()
    );
    let before = (
        mean_seq_logprob(&model, &good),
        mean_seq_logprob(&model, &bad),
    );

    let mut learner = Learner::new(model, config(1e-2)).unwrap();
    for _ in 0..8 {
        let stats = learner.ppo_step(&groups, 0).unwrap();
        assert!(!stats.skipped && stats.loss.is_finite());
    }
    assert_eq!(learner.steps(), 8);
    let after = (
        mean_seq_logprob(learner.model(), &good),
        mean_seq_logprob(learner.model(), &bad),
    );
    let gain_good = after.0 - before.0;
    let gain_bad = after.1 - before.1;
    assert!(
        gain_good > 0.5 && gain_good > gain_bad + 0.5,
        "rewarded {before:?} -> {after:?}"
    );
}

#[test]
fn on_policy_step_has_unit_weights_and_no_clipping() {
    let model = tiny_model(3);
    let groups = sampled_groups(&model, 3, 4, |i| 2 + i % 4, |out| out.len() as f64);
    let mut learner = Learner::new(model, config(1e-3)).unwrap();
    let stats = learner.ppo_step(&groups, 0).unwrap();
    assert!(!stats.skipped);
    assert!((stats.behav_weight_mean - 1.0).abs() < 1e-4, "{stats:?}");
    assert!((stats.behav_weight_max - 1.0).abs() < 1e-4, "{stats:?}");
    assert!(stats.approx_kl.abs() < 1e-7, "{stats:?}");
    assert_eq!(stats.clip_frac, 0.0);
    assert_eq!(stats.behav_weight_capped_frac, 0.0);
    assert!(stats.entropy_mean > 0.1 && stats.grad_norm > 0.0);
    assert_eq!(stats.loss_tokens, (0..12).map(|i| 2 + i % 4).sum::<usize>());
    assert_eq!(learner.steps(), 1);
}

#[test]
fn minibatches_update_against_the_pre_step_proximal_policy() {
    let model = tiny_model(3);
    let groups = sampled_groups(&model, 2, 4, |i| 2 + i % 4, |out| out.len() as f64);
    let mut cfg = config(5e-2);
    cfg.ppo.minibatches = 2;
    let mut learner = Learner::new(model, cfg).unwrap();
    let stats = learner.ppo_step(&groups, 0).unwrap();
    assert_eq!(learner.steps(), 2, "one update per minibatch");
    assert_eq!(stats.micro_batches, 2);
    // Behaviour = proximal for both minibatches: the proximal pass ran before the first update.
    assert!((stats.behav_weight_mean - 1.0).abs() < 1e-4, "{stats:?}");
    // The second minibatch sees a policy that moved away from the proximal one.
    assert!(stats.approx_kl > 1e-7, "{stats:?}");

    let mut plain = config(1e-3);
    plain.ppo.decoupled = false;
    let mut learner = Learner::new(tiny_model(3), plain).unwrap();
    let stats = learner.ppo_step(&groups, 0).unwrap();
    assert_eq!(stats.behav_weight_mean, 1.0);
    assert!(
        stats.approx_kl.abs() < 1e-7,
        "on-policy data: ratio to behaviour is 1"
    );
}

/// The batch of the filter/cap tests: a zero-variance group, a group with an unscored
/// trajectory, and a group whose first trajectory spans versions 0, 1 and 2.
fn filter_groups() -> Vec<Group> {
    let prompt = [1, 2, 3];
    let plain = |q: &str, k: u32, r: Option<f64>| {
        let out = [5 + k, 6, 7, 8 + k, 9, 10];
        let t = turn(&prompt, &out, &[-3.0; 6], &[2; 6]);
        trajectory(q, k, vec![t], r)
    };
    let spread = turn(
        &prompt,
        &[11, 12, 13, 14, 15, 16],
        &[-3.0; 6],
        &[0, 0, 1, 1, 2, 2],
    );
    vec![
        group(0, (0..3).map(|k| plain("a", k, Some(1.0))).collect()),
        group(
            1,
            vec![
                plain("b", 0, Some(1.0)),
                plain("b", 1, Some(0.0)),
                plain("b", 2, None),
                plain("b", 3, Some(0.0)),
            ],
        ),
        group(
            2,
            vec![
                trajectory("c", 0, vec![spread], Some(1.0)),
                plain("c", 1, Some(0.0)),
                plain("c", 2, Some(0.5)),
            ],
        ),
    ]
}

fn capped_config(policy: SpreadPolicy) -> LearnerConfig {
    let mut cfg = config(1e-3);
    cfg.version_spread = VersionSpreadConfig {
        max_versions: Some(2),
        policy,
    };
    cfg.ppo.behav_weight_cap = None;
    cfg
}

#[test]
fn filters_and_version_cap_are_counted_exactly() {
    let groups = filter_groups();
    let mut drop = Learner::new(tiny_model(4), capped_config(SpreadPolicy::Drop)).unwrap();
    let s = drop.ppo_step(&groups, 2).unwrap();
    assert_eq!(
        (
            s.groups,
            s.groups_filtered_zero_variance,
            s.trajectories_no_reward
        ),
        (3, 1, 1)
    );
    assert_eq!((s.trajectories, s.trajectories_version_dropped), (5, 1));
    assert_eq!((s.tokens_version_masked, s.version_spread_max), (0, 3));
    assert_eq!((s.sequences, s.loss_tokens, s.total_tokens), (5, 30, 45));
    assert_eq!((s.staleness_max, s.staleness_mean), (0, 0.0));

    let mut mask = Learner::new(tiny_model(4), capped_config(SpreadPolicy::Mask)).unwrap();
    let s = mask.ppo_step(&groups, 2).unwrap();
    assert_eq!((s.trajectories, s.trajectories_version_dropped), (6, 0));
    assert_eq!((s.tokens_version_masked, s.loss_tokens), (2, 34));
    assert_eq!(s.staleness_max, 1);
    assert!((s.staleness_mean - 2.0 / 34.0).abs() < 1e-12);
    let rewards = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5];
    let mean = rewards.iter().sum::<f64>() / 9.0;
    assert!((s.reward_mean - mean).abs() < 1e-12);
}

/// `groups` with the behaviour logprob of generated token `token` of trajectory `c#0` changed.
fn with_behav_changed(token: usize) -> Vec<Group> {
    let mut groups = filter_groups();
    groups[2].trajectories[0].turns[0].output_logprobs[token] = -1.0;
    groups
}

#[test]
fn version_masked_tokens_contribute_no_gradient() {
    let cfg = capped_config(SpreadPolicy::Mask);
    let grads = |groups: &[Group]| {
        let mut learner = Learner::new(tiny_model(5), cfg.clone()).unwrap();
        ppo_gradients(&mut learner, groups, 2).0
    };
    let base = grads(&filter_groups());
    // Token 1 is from version 0 (masked): its behaviour logprob does not matter.
    assert_grads_close(&base, &grads(&with_behav_changed(1)), 1e-6);
    // Token 4 is from version 2 (trained): changing it changes the gradient.
    let changed = grads(&with_behav_changed(4));
    let diff: f64 = base
        .iter()
        .zip(&changed)
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(diff > 1e-6, "a trained token's weight must matter");
}

#[test]
fn misaligned_trajectory_is_named() {
    let mut groups = filter_groups();
    groups[1].trajectories[0].turns[0].output_logprobs.pop();
    let mut learner = Learner::new(tiny_model(6), config(1e-3)).unwrap();
    let err = learner.ppo_step(&groups, 2).unwrap_err().to_string();
    assert!(
        err.contains("b#0") && err.contains("output_logprobs"),
        "{err}"
    );
    let mut groups = filter_groups();
    groups[2].trajectories[1].reward = Some(f64::NAN);
    let err = learner.ppo_step(&groups, 2).unwrap_err().to_string();
    assert!(err.contains("c#1") && err.contains("non-finite"), "{err}");
}

#[test]
fn nothing_to_train_on_skips_without_a_step() {
    let groups = vec![filter_groups().remove(0)];
    let mut learner = Learner::new(tiny_model(6), config(1e-3)).unwrap();
    let s = learner.ppo_step(&groups, 0).unwrap();
    assert!(s.skipped);
    assert_eq!((s.groups_filtered_zero_variance, s.sequences), (1, 0));
    assert_eq!(learner.steps(), 0);
}

fn sft_sequence(prompt: &[u32], answer: &[u32], tail: &[u32]) -> TrainingSequence {
    let input_ids: Vec<u32> = prompt.iter().chain(answer).chain(tail).copied().collect();
    let loss_mask = input_ids
        .iter()
        .enumerate()
        .map(|(i, _)| u8::from(i >= prompt.len() && i < prompt.len() + answer.len()))
        .collect();
    TrainingSequence {
        loss_mask,
        logprobs: vec![0.0; input_ids.len()],
        versions: vec![None; input_ids.len()],
        input_ids,
    }
}

#[test]
fn sft_loss_decreases_and_ignores_masked_tokens() {
    let batch = vec![
        sft_sequence(&[1, 2], &[7, 8, 9], &[3]),
        sft_sequence(&[1, 4, 5], &[10, 11], &[]),
        sft_sequence(&[6], &[12, 13, 14, 15], &[2, 2]),
    ];
    let mut changed = batch.clone();
    changed[0].input_ids[5] = 20; // a masked trailing target
    changed[2].input_ids[6] = 21;
    let mut a = Learner::new(tiny_model(7), config(1e-2)).unwrap();
    let mut b = Learner::new(tiny_model(7), config(1e-2)).unwrap();
    let first = a.sft_step(&batch).unwrap();
    let other = b.sft_step(&changed).unwrap();
    assert_eq!(first.loss_tokens, 9);
    assert!((first.loss - other.loss).abs() < 1e-6);
    assert!((first.grad_norm - other.grad_norm).abs() < 1e-6);
    let mut last = first.loss;
    for _ in 0..10 {
        last = a.sft_step(&batch).unwrap().loss;
    }
    assert!(last < 0.7 * first.loss, "{} -> {last}", first.loss);
    assert_eq!(a.steps(), 11);
}

#[test]
fn sft_loss_is_the_masked_token_mean_nll() {
    let batch = vec![
        sft_sequence(&[1, 2], &[7, 8, 9], &[3]),
        sft_sequence(&[6], &[12, 13], &[2]),
    ];
    let model = tiny_model(8);
    let mut expected = 0.0;
    for s in &batch {
        let lp = model_logprobs(&model, &s.input_ids);
        expected -= lp
            .iter()
            .zip(&s.loss_mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&x, _)| x as f64)
            .sum::<f64>();
    }
    expected /= 5.0;
    let mut learner = Learner::new(
        model,
        LearnerConfig {
            micro_batch_tokens: 5,
            ..config(1e-3)
        },
    )
    .unwrap();
    let stats = learner.sft_step(&batch).unwrap();
    assert_eq!(stats.micro_batches, 2);
    assert!(
        (stats.loss - expected).abs() < 1e-5,
        "{} vs {expected}",
        stats.loss
    );
}

#[test]
fn weights_share_storage_and_optimizer_state_round_trips() {
    let mut learner = Learner::new(tiny_model(9), config(1e-2)).unwrap();
    let weights = learner.weights();
    let before: Vec<Tensor> = weights.iter().map(|(_, t)| t.copy()).collect();
    learner
        .sft_step(&[sft_sequence(&[1, 2], &[7, 8, 9], &[])])
        .unwrap();
    let moved = weights
        .iter()
        .zip(&before)
        .any(|((_, now), old)| !now.equal(old));
    assert!(moved, "weights() must see the update");
    assert!(weights.iter().all(|(_, t)| !t.requires_grad()));
    let state = learner.optimizer_state();
    let mut fresh = Learner::new(tiny_model(9), config(1e-2)).unwrap();
    fresh.load_optimizer_state(&state).unwrap();
    let restored = fresh.optimizer_state();
    assert_eq!(restored.len(), state.len());
    for ((n, a), (_, b)) in state.iter().zip(&restored) {
        assert!(a.equal(b), "{n}");
    }
    let err = fresh
        .load_optimizer_state(&state[1..])
        .unwrap_err()
        .to_string();
    assert!(!err.is_empty());
}

#[test]
fn config_errors_name_the_dotted_field() {
    let err = |json: &str| LearnerConfig::from_json(json).unwrap_err().to_string();
    let e = err(r#"{"ppo": {"eps_clipp": 0.2}}"#);
    assert!(e.contains("learner.ppo") && e.contains("eps_clipp"), "{e}");
    let e = err(r#"{"ppo": {"eps_clip": 1.5}}"#);
    assert!(e.contains("learner.ppo.eps_clip"), "{e}");
    let e = err(r#"{"ppo": {"cap_mode": "squash"}}"#);
    assert!(e.contains("learner.ppo.cap_mode"), "{e}");
    let e = err(r#"{"version_spread": {"max_versions": 0}}"#);
    assert!(e.contains("learner.version_spread.max_versions"), "{e}");
    let e = err(r#"{"schedule": {"min_lr_ratio": 2.0}}"#);
    assert!(e.contains("learner.schedule.min_lr_ratio"), "{e}");
    let e = err(r#"{"optimizer": {"beta1": 1.0}}"#);
    assert!(e.contains("learner.optimizer.beta1"), "{e}");
    let e = err(r#"{"grad_clip": 0}"#);
    assert!(e.contains("learner.grad_clip"), "{e}");
    let e = err(r#"{"micro_batch_tokens": 0}"#);
    assert!(e.contains("learner.micro_batch_tokens"), "{e}");
    let e = err(r#"{"ppo": {"minibatches": 0}}"#);
    assert!(e.contains("learner.ppo.minibatches"), "{e}");
    let e = err(r#"{"filter_zero_variance": true}"#);
    assert!(
        e.contains("learner.filter_zero_variance") && e.contains("rollout.filter_zero_variance"),
        "{e}"
    );
    let text = serde_json::to_string(&LearnerConfig::default()).unwrap();
    assert_eq!(
        LearnerConfig::from_json(&text).unwrap(),
        LearnerConfig::default()
    );
    let cfg =
        LearnerConfig::from_json(r#"{"version_spread": {"max_versions": 2, "policy": "mask"}}"#)
            .unwrap();
    assert_eq!(cfg.version_spread.policy, SpreadPolicy::Mask);
}

#[test]
fn shifted_sequence_predicts_the_next_token() {
    let s = TrainingSequence {
        input_ids: vec![1, 2, 7, 8, 3],
        loss_mask: vec![0, 0, 1, 1, 0],
        logprobs: vec![0.0, 0.0, -0.5, -0.25, 0.0],
        versions: vec![None, None, Some(1), Some(1), None],
    };
    let t = batch::shift_for_training(&s, 2.0).unwrap();
    assert_eq!(t.loss_mask, vec![false, true, true, false, false]);
    assert_eq!(t.fields["target"], TokenValues::Int(vec![2, 7, 8, 3, 0]));
    assert_eq!(
        t.fields[BEHAV],
        TokenValues::Float(vec![0.0, -0.5, -0.25, 0.0, 0.0])
    );
    assert_eq!(
        t.fields["adv"],
        TokenValues::Float(vec![0.0, 2.0, 2.0, 0.0, 0.0])
    );
}

#[test]
fn frozen_parameters_stay_fixed_while_the_rest_train() {
    let batch = vec![
        sft_sequence(&[1, 2], &[7, 8, 9], &[3]),
        sft_sequence(&[6], &[12, 13, 14, 15], &[2, 2]),
    ];
    let cfg = LearnerConfig {
        frozen: vec!["embed_tokens".into()],
        ..config(1e-2)
    };
    let mut learner = Learner::new(tiny_model(7), cfg).unwrap();
    let before: Vec<(String, Tensor)> = learner
        .weights()
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect();
    assert!(!learner
        .trainable()
        .iter()
        .any(|n| n.contains("embed_tokens")));
    for _ in 0..3 {
        learner.sft_step(&batch).unwrap();
    }
    for ((name, old), (_, new)) in before.iter().zip(learner.weights().iter()) {
        let same = old.equal(&new.detach());
        assert_eq!(same, name.contains("embed_tokens"), "{name}");
    }
    let bad = LearnerConfig {
        frozen: vec!["no_such_weight".into()],
        ..config(1e-2)
    };
    let err = Learner::new(tiny_model(7), bad).err().unwrap().to_string();
    assert!(
        err.contains("learner.frozen") && err.contains("no_such_weight"),
        "{err}"
    );
}

#[test]
fn data_parallel_plan_has_the_tch_batch_and_one_micro_batch_count_per_minibatch() {
    let groups = filter_groups();
    let mut cfg = capped_config(SpreadPolicy::Mask);
    cfg.micro_batch_tokens = 8;
    let reference = Learner::new(tiny_model(4), cfg.clone())
        .unwrap()
        .ppo_step(&groups, 2)
        .unwrap();
    for (world, minibatches) in [(1, 1), (2, 1), (3, 2), (4, 1)] {
        cfg.ppo.minibatches = minibatches;
        let plan = plan::plan_ppo_step(&groups, 2, &cfg, world).unwrap();
        let s = &plan.stats;
        assert_eq!(
            (s.groups, s.groups_filtered_zero_variance, s.trajectories),
            (
                reference.groups,
                reference.groups_filtered_zero_variance,
                reference.trajectories
            )
        );
        assert_eq!(
            (
                s.sequences,
                s.loss_tokens,
                s.total_tokens,
                s.tokens_version_masked
            ),
            (
                reference.sequences,
                reference.loss_tokens,
                reference.total_tokens,
                reference.tokens_version_masked
            )
        );
        assert!((s.adv_abs_mean - reference.adv_abs_mean).abs() < 1e-9);
        assert_eq!(plan.ranks.len(), world);
        assert_eq!(plan.minibatch_loss_tokens.len(), minibatches);
        for m in 0..minibatches {
            let counts: Vec<usize> = plan.ranks.iter().map(|r| r[m].len()).collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
            let tokens: usize = plan
                .ranks
                .iter()
                .map(|r| r[m].iter().map(|mb| mb.loss_tokens).sum::<usize>())
                .sum();
            assert_eq!(tokens, plan.minibatch_loss_tokens[m]);
        }
        assert_eq!(
            plan.minibatch_loss_tokens.iter().sum::<usize>(),
            s.loss_tokens
        );
        for mb in plan.ranks.iter().flatten().flatten() {
            assert!(
                mb.len() <= 8 || mb.seq_lens.len() == 1,
                "over budget: {mb:?}"
            );
            assert_eq!(mb.seq_lens.iter().sum::<usize>(), mb.len());
            assert_eq!(
                mb.loss_mask.iter().filter(|&&m| m == 1).count(),
                mb.loss_tokens
            );
            let restarts = mb.position_ids.iter().filter(|&&p| p == 0).count();
            assert_eq!(restarts, mb.seq_lens.len());
        }
    }
    // Two groups survive the filter: with four ranks, two ranks have no sequence at all and
    // run only empty (padding) micro-batches.
    cfg.ppo.minibatches = 1;
    let plan = plan::plan_ppo_step(&groups, 2, &cfg, 4).unwrap();
    let idle = plan
        .ranks
        .iter()
        .filter(|r| r[0].iter().all(|mb| mb.is_empty()))
        .count();
    assert_eq!(idle, 2);
}
