//! The learner's settings ([`LearnerConfig`]): the PPO loss, advantages, batch filters, the
//! version-spread cap, the optimizer, the learning-rate schedule and micro-batching, with
//! validation that names a bad value by its dotted path (`learner.ppo.eps_clip`).

use crate::{Result, TrainError};
use asearcher_torch::kernels::{CapMode, LossSpec};
use asearcher_torch::train::{AdamWConfig, LrSchedule};
use serde::{Deserialize, Serialize};

/// Everything one learner step needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// Which learner trains: `tch` (in this process, on `model.device`) or `fsdp` (PyTorch FSDP2
    /// over a Hugging Face model, one process per GPU under `torchrun`; see docs/scale.md).
    pub backend: LearnerBackend,
    /// Settings of the `fsdp` backend (ignored by `tch`).
    pub fsdp: FsdpConfig,
    /// The PPO-family loss.
    pub ppo: PpoConfig,
    /// How rewards become advantages.
    pub advantages: AdvantageConfig,
    /// The cap on how many policy versions one trajectory's generated tokens may come from.
    pub version_spread: VersionSpreadConfig,
    /// AdamW hyper-parameters (the learning rate comes from `schedule`).
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule over optimizer steps (holds the peak `lr`).
    pub schedule: LrSchedule,
    /// Maximum global gradient L2 norm (gradients are scaled down above it).
    pub grad_clip: f64,
    /// Token budget of one packed micro-batch (a longer sequence gets a micro-batch of its own).
    pub micro_batch_tokens: usize,
    /// Tokens per chunk of the fused LM-head kernels (`None`: sized from a memory budget).
    pub chunk_tokens: Option<usize>,
    /// Not a setting (never read from or written to a file): whether groups with no reward
    /// variance among their scored trajectories are skipped. The trainer sets it to the
    /// effective `rollout.filter_zero_variance`, so that one knob decides for engine and
    /// learner alike (the learner catches ties hidden by unscored trajectories).
    #[serde(skip, default = "skip_zero_variance_default")]
    #[schemars(skip)]
    pub filter_zero_variance: bool,
    /// Parameters left untrained: every parameter whose HF name contains one of these strings
    /// (e.g. `["embed_tokens"]` keeps the (tied) embeddings fixed, so tokens that are never
    /// targets keep their random embeddings instead of being pushed out of reach).
    pub frozen: Vec<String>,
}

impl asearcher_config::Document for LearnerConfig {
    const MOVED: &'static [(&'static str, &'static str)] = &[(
        "filter_zero_variance",
        "`rollout.filter_zero_variance` (groups are filtered once, in the engine)",
    )];
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            backend: LearnerBackend::Tch,
            fsdp: FsdpConfig::default(),
            ppo: PpoConfig::default(),
            advantages: AdvantageConfig::default(),
            version_spread: VersionSpreadConfig::default(),
            optimizer: AdamWConfig::default(),
            schedule: LrSchedule::default(),
            grad_clip: 1.0,
            micro_batch_tokens: 4096,
            chunk_tokens: None,
            frozen: Vec::new(),
            filter_zero_variance: true,
        }
    }
}

fn skip_zero_variance_default() -> bool {
    true
}

/// Which learner trains.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LearnerBackend {
    /// The embedded tch learner: one process, one device.
    #[default]
    Tch,
    /// PyTorch FSDP2 ranks under `torchrun` (`torchrun ... -m asearcher train CONFIG`); the
    /// rollout engine runs on global rank 0.
    Fsdp,
}

/// Settings of the FSDP2 learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FsdpConfig {
    /// Dtype the sharded parameters are all-gathered in for forward and backward (the stored
    /// master weights and the optimizer state stay float32): `bfloat16`, `float16` or `float32`.
    pub param_dtype: String,
    /// Dtype gradients are reduce-scattered in: `float32` (recommended) or `bfloat16`.
    pub reduce_dtype: String,
    /// Recompute each decoder layer's activations in backward instead of keeping them (needed
    /// for 32k-token micro-batches; costs about one extra forward).
    pub activation_checkpointing: bool,
    /// Attention implementation of the Hugging Face model: `sdpa`, `flash_attention_2`,
    /// `eager` (packed micro-batches are separated by position ids in all three).
    pub attn_implementation: String,
    /// Dtype of the weights sent to the inference servers after each step.
    pub export_dtype: String,
    /// Seconds a collective may wait for the other ranks before the run fails with an error
    /// naming the operation (a dead rank never hangs the others).
    pub timeout_s: f64,
    /// Seconds the other ranks wait for rank 0's next command (rank 0 may wait that long for
    /// the rollouts to fill a batch); a rank 0 that dies ends the job earlier through torchrun.
    pub idle_timeout_s: f64,
}

impl Default for FsdpConfig {
    fn default() -> Self {
        FsdpConfig {
            param_dtype: "bfloat16".into(),
            reduce_dtype: "float32".into(),
            activation_checkpointing: true,
            attn_implementation: "sdpa".into(),
            export_dtype: "bfloat16".into(),
            timeout_s: 600.0,
            idle_timeout_s: 86_400.0,
        }
    }
}

impl FsdpConfig {
    /// Checks the dtypes, the attention implementation and the timeout.
    pub fn validate(&self) -> Result<()> {
        const DTYPES: &[&str] = &["float32", "bfloat16", "float16"];
        for (key, value) in [
            ("param_dtype", &self.param_dtype),
            ("reduce_dtype", &self.reduce_dtype),
            ("export_dtype", &self.export_dtype),
        ] {
            if !DTYPES.contains(&value.as_str()) {
                return Err(TrainError::config(
                    format!("learner.fsdp.{key}"),
                    format!("`{value}` is not one of {}", DTYPES.join(", ")),
                ));
            }
        }
        const ATTN: &[&str] = &["sdpa", "flash_attention_2", "flash_attention_3", "eager"];
        if !ATTN.contains(&self.attn_implementation.as_str()) {
            return Err(TrainError::config(
                "learner.fsdp.attn_implementation",
                format!(
                    "`{}` is not one of {}",
                    self.attn_implementation,
                    ATTN.join(", ")
                ),
            ));
        }
        positive("learner.fsdp.timeout_s", self.timeout_s)?;
        positive("learner.fsdp.idle_timeout_s", self.idle_timeout_s)
    }
}

/// Settings of the (decoupled) PPO loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Lower clip: the ratio is clipped to `[1 - eps_clip, 1 + eps_clip_high]`.
    pub eps_clip: f64,
    /// Upper clip (clip-higher); `None` means `eps_clip`.
    pub eps_clip_high: Option<f64>,
    /// Cap of the behaviour importance weight `exp(prox - behav)`; `None` leaves it uncapped.
    pub behav_weight_cap: Option<f64>,
    /// What happens above the cap: `mask` drops the token from the loss, `clamp` uses the cap.
    pub cap_mode: CapModeName,
    /// true: proximal logprobs are recomputed by the trainer before the update (decoupled PPO);
    /// false: plain PPO with the ratio taken against the behaviour logprobs.
    pub decoupled: bool,
    /// Sampling temperature the logprobs are computed under (that of the generator).
    pub temperature: f64,
    /// Coefficient of the entropy bonus (subtracted from the loss).
    pub entropy_coef: f64,
    /// Optimizer updates per step, each on its share of the sequences; the proximal policy stays
    /// the policy before the step.
    pub minibatches: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            eps_clip: 0.2,
            eps_clip_high: None,
            behav_weight_cap: Some(5.0),
            cap_mode: CapModeName::Mask,
            decoupled: true,
            temperature: 1.0,
            entropy_coef: 0.0,
            minibatches: 1,
        }
    }
}

/// `cap_mode` as written in the config.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CapModeName {
    /// Tokens whose behaviour weight exceeds the cap contribute nothing (they still count in the
    /// token-mean's denominator).
    #[default]
    Mask,
    /// The weight is clamped to the cap.
    Clamp,
}

/// How rewards become advantages (group-relative, GRPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// Divide each group's centred rewards by the group's (unbiased) std.
    pub normalize_std: bool,
    /// Rewards are shaped as `(reward + reward_bias) * reward_scale` before centring.
    pub reward_scale: f64,
    /// Added to every reward before scaling (cancels out in the centring; kept for logging parity).
    pub reward_bias: f64,
    /// Centre and scale the per-token advantages over all loss tokens of the batch.
    pub token_normalize: bool,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        AdvantageConfig {
            normalize_std: false,
            reward_scale: 1.0,
            reward_bias: 0.0,
            token_normalize: true,
        }
    }
}

/// The version-spread cap: how stale a trajectory's tokens may be relative to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VersionSpreadConfig {
    /// Most distinct policy versions a trajectory's generated tokens may come from (`None`: off).
    pub max_versions: Option<u32>,
    /// What happens to a trajectory over the cap: `drop` it, or `mask` its tokens that are not
    /// from its newest `max_versions` versions out of the loss.
    pub policy: SpreadPolicy,
}

impl Default for VersionSpreadConfig {
    fn default() -> Self {
        VersionSpreadConfig {
            max_versions: None,
            policy: SpreadPolicy::Drop,
        }
    }
}

/// What the version-spread cap does to a trajectory over it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SpreadPolicy {
    /// The whole trajectory is left out of the batch.
    #[default]
    Drop,
    /// Its tokens from older versions are masked out of the loss.
    Mask,
}

fn finite(field: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be finite, got {v}"),
        ))
    }
}

fn positive(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TrainError::config(
            field,
            format!("must be a finite number > 0, got {v}"),
        ))
    }
}

/// Re-labels an error of a nested torch config (`beta1`) with its dotted path.
fn nested(prefix: &str, e: asearcher_torch::TorchError) -> TrainError {
    match e {
        asearcher_torch::TorchError::Config { name, msg } => {
            TrainError::config(format!("{prefix}.{name}"), msg)
        }
        other => TrainError::config(prefix, other.to_string()),
    }
}

impl LearnerConfig {
    /// Parses JSON (unknown keys are errors naming their path) and validates.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| TrainError::config("learner", e.to_string()))?;
        let cfg: LearnerConfig = asearcher_config::deserialize_document(value, "learner")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value; the error names the first bad one by its dotted path.
    pub fn validate(&self) -> Result<()> {
        self.ppo.validate()?;
        self.fsdp.validate()?;
        let a = &self.advantages;
        finite("learner.advantages.reward_scale", a.reward_scale)?;
        if a.reward_scale == 0.0 {
            return Err(TrainError::config(
                "learner.advantages.reward_scale",
                "must not be 0 (every advantage would be 0)",
            ));
        }
        finite("learner.advantages.reward_bias", a.reward_bias)?;
        if self.version_spread.max_versions == Some(0) {
            return Err(TrainError::config(
                "learner.version_spread.max_versions",
                "must be at least 1 (or null to turn the cap off)",
            ));
        }
        self.optimizer
            .validate()
            .map_err(|e| nested("learner.optimizer", e))?;
        self.schedule
            .validate()
            .map_err(|e| nested("learner.schedule", e))?;
        positive("learner.grad_clip", self.grad_clip)?;
        if self.micro_batch_tokens == 0 {
            return Err(TrainError::config(
                "learner.micro_batch_tokens",
                "must be > 0",
            ));
        }
        if self.chunk_tokens == Some(0) {
            return Err(TrainError::config(
                "learner.chunk_tokens",
                "must be > 0 (or null for the default)",
            ));
        }
        Ok(())
    }
}

impl PpoConfig {
    /// Checks the loss settings (through [`LossSpec::validate`]) and the step settings.
    pub fn validate(&self) -> Result<()> {
        self.loss_spec(None)
            .validate()
            .map_err(|e| nested("learner.ppo", e))?;
        positive("learner.ppo.temperature", self.temperature)?;
        finite("learner.ppo.entropy_coef", self.entropy_coef)?;
        if self.minibatches == 0 {
            return Err(TrainError::config(
                "learner.ppo.minibatches",
                "must be >= 1",
            ));
        }
        Ok(())
    }

    /// The kernel's loss settings (token-level weights, token-mean, no KL).
    pub fn loss_spec(&self, normalizer: Option<f64>) -> LossSpec {
        LossSpec {
            eps_clip: self.eps_clip,
            eps_clip_high: self.eps_clip_high,
            behav_weight_cap: self.behav_weight_cap,
            cap_mode: match self.cap_mode {
                CapModeName::Mask => CapMode::Mask,
                CapModeName::Clamp => CapMode::Clamp,
            },
            entropy_coef: self.entropy_coef,
            normalizer,
            ..LossSpec::default()
        }
    }
}
