//! Supervised warm start: fine-tunes a model on recorded trajectories (demonstrations) before RL.
//! Each trajectory becomes its training sequences (loss on the generated tokens only, exactly
//! the tokens the agent produced), sequences are shuffled each epoch with a seeded RNG, batched,
//! and trained on with the learner's supervised step. The result is an HF model directory with
//! the tokenizer files, ready for RL or evaluation.

use crate::learner::{Learner, LearnerConfig, SftStats};
use crate::{Result, TrainError};
use asearcher_agent::packing::TrainingSequence;
use asearcher_agent::trajectory::{read_jsonl, TornLine};
use asearcher_torch::model::QwenModel;
use asearcher_torch::train::TrainRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Settings of a warm start. Every field has a default except the paths.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WarmStartConfig {
    /// The model to start from (HF directory with tokenizer files).
    pub model: PathBuf,
    /// Trajectory jsonl files (as `asearcher.save_trajectories` writes them).
    pub trajectories: Vec<PathBuf>,
    /// Where the fine-tuned model is written.
    pub out_dir: PathBuf,
    /// Passes over the sequences.
    pub epochs: u32,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Keep only trajectories whose reward is at least this (`None`: all, mistakes included).
    pub min_reward: Option<f64>,
    /// Seed of the shuffling.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// `float32`, `bfloat16` or `float16`.
    pub dtype: String,
    /// Optimizer, schedule, clipping and micro-batch budget (the PPO settings are unused).
    pub learner: LearnerConfig,
}

impl asearcher_config::Document for WarmStartConfig {
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model);
        for t in &mut self.trajectories {
            fix(t);
        }
        fix(&mut self.out_dir);
    }
}

impl Default for WarmStartConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            trajectories: Vec::new(),
            out_dir: PathBuf::new(),
            epochs: 1,
            batch_size: 32,
            min_reward: None,
            seed: 0,
            device: "cpu".into(),
            dtype: "float32".into(),
            learner: LearnerConfig::default(),
        }
    }
}

impl WarmStartConfig {
    /// Parses a JSON value; unknown keys and bad values are named by their dotted path.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let cfg: WarmStartConfig = asearcher_config::deserialize_document(value, "")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.model.as_os_str().is_empty() {
            return Err(TrainError::config(
                "model",
                "required: the HF model directory",
            ));
        }
        if self.out_dir.as_os_str().is_empty() {
            return Err(TrainError::config("out_dir", "required"));
        }
        if self.trajectories.is_empty() {
            return Err(TrainError::config(
                "trajectories",
                "at least one trajectory jsonl file is required",
            ));
        }
        if self.epochs == 0 {
            return Err(TrainError::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", "must be at least 1"));
        }
        if self.learner.backend != crate::learner::LearnerBackend::Tch {
            return Err(TrainError::config(
                "learner.backend",
                "warm start runs on the embedded tch learner; leave backend = \"tch\"",
            ));
        }
        self.learner.validate()
    }
}

/// How a warm start went.
#[derive(Debug, Clone, Serialize)]
pub struct WarmStartSummary {
    pub steps: u64,
    pub trajectories: usize,
    pub trajectories_skipped: usize,
    pub sequences: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub out_dir: PathBuf,
}

/// The training sequences of every kept trajectory of `files`.
pub fn load_sequences(
    files: &[PathBuf],
    min_reward: Option<f64>,
) -> Result<(Vec<TrainingSequence>, usize, usize)> {
    let mut seqs = Vec::new();
    let (mut kept, mut skipped) = (0, 0);
    for file in files {
        let trajectories =
            read_jsonl(file, TornLine::Error).map_err(|e| TrainError::Data(e.to_string()))?;
        for t in trajectories {
            if min_reward.is_some_and(|m| t.reward.unwrap_or(f64::NEG_INFINITY) < m) {
                skipped += 1;
                continue;
            }
            let s = t.to_sequences().map_err(|e| {
                TrainError::Data(format!("trajectory `{}` in {}: {e}", t.id, file.display()))
            })?;
            seqs.extend(s.into_iter().filter(|s| s.generated_tokens() > 0));
            kept += 1;
        }
    }
    Ok((seqs, kept, skipped))
}

/// Runs the warm start; `on_step(step, total_steps, stats)` after every optimizer step.
pub fn warm_start(
    cfg: &WarmStartConfig,
    on_step: &mut dyn FnMut(u64, u64, &SftStats) -> bool,
) -> Result<WarmStartSummary> {
    cfg.validate()?;
    let (mut seqs, kept, skipped) = load_sequences(&cfg.trajectories, cfg.min_reward)?;
    if seqs.is_empty() {
        return Err(TrainError::Data(
            "no trajectory with generated tokens to train on".into(),
        ));
    }
    let (device, kind) = crate::config::device_and_kind(&cfg.device, &cfg.dtype, "")?;
    let model = QwenModel::load(&cfg.model, device, kind)?;
    let mut learner = Learner::new(model, cfg.learner.clone())?;
    let mut rng = TrainRng::new(cfg.seed, 0);
    let per_epoch = seqs.len().div_ceil(cfg.batch_size) as u64;
    let total = per_epoch * u64::from(cfg.epochs);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut step = 0u64;
    'epochs: for _ in 0..cfg.epochs {
        seqs.shuffle(&mut rng);
        for batch in seqs.chunks(cfg.batch_size) {
            let stats = learner.sft_step(batch)?;
            step += 1;
            if step == 1 {
                first_loss = stats.loss;
            }
            last_loss = stats.loss;
            if !on_step(step, total, &stats) {
                break 'epochs;
            }
        }
    }
    save_model(&learner, &cfg.model, &cfg.out_dir)?;
    Ok(WarmStartSummary {
        steps: step,
        trajectories: kept,
        trajectories_skipped: skipped,
        sequences: seqs.len(),
        first_loss,
        last_loss,
        out_dir: cfg.out_dir.clone(),
    })
}

/// The learner's model in HF layout plus the tokenizer files of `tokenizer_dir`.
fn save_model(learner: &Learner, tokenizer_dir: &Path, out: &Path) -> Result<()> {
    learner.model().save_hf(out)?;
    crate::trainer::copy_tokenizer_files(tokenizer_dir, out)
}
