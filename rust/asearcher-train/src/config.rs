//! The training run's configuration: one document (TOML, YAML or JSON) with a section per part
//! of the system. Every field has a default and a doc line; an unknown key is refused with its
//! dotted path (`learner.ppo.eps_clipp`), and so is a bad value.

use crate::learner::LearnerConfig;
use crate::{Result, TrainError};
use asearcher_agent::agents::AgentConfig;
use asearcher_rollout::reward::RewardConfig;
use asearcher_rollout::scheduler::RolloutConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The policy model and where it runs.
    pub model: ModelConfig,
    /// Training questions.
    pub data: DataConfig,
    /// The agent's search tools.
    pub tools: ToolsConfig,
    /// The agent (kind, turns, prompts, sampling); see `asearcher.default_prompts`.
    pub agent: AgentConfig,
    /// The reward: the rule score (F1 by default, with the format gate), which recorded score
    /// trains (`primary`, or `weights`), the plugins' timeout.
    pub reward: RewardConfig,
    /// The rollout scheduler: group size, batch size (groups per step), `max_staleness` (eta;
    /// 0 is synchronous RL: each batch is generated entirely by the current policy), concurrency.
    pub rollout: RolloutConfig,
    /// Where generation runs and how new weights reach it.
    pub inference: InferenceConfig,
    /// The optimisation: loss, advantages, filters, optimizer, schedule, micro-batches.
    pub learner: LearnerConfig,
    /// Length of the run, outputs and checkpoints.
    pub run: RunConfig,
}

/// The policy model and where it runs.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// HF model directory (config.json, safetensors, tokenizer files). Required.
    pub path: PathBuf,
    /// Tokenizer directory; default: `path`.
    pub tokenizer: Option<PathBuf>,
    /// Device of the learner and of the embedded generator: `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// Parameter dtype: `float32`, `bfloat16` or `float16`.
    pub dtype: String,
}

impl ModelConfig {
    /// The parsed `device` and `dtype`; errors name `model.device` / `model.dtype`.
    pub fn device_and_kind(&self) -> Result<(tch::Device, tch::Kind)> {
        device_and_kind(&self.device, &self.dtype, "model.")
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            tokenizer: None,
            device: "cpu".into(),
            dtype: "float32".into(),
        }
    }
}

/// The training questions and how they are drawn.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training questions, jsonl (`question`, `answer`/`answers`, optional `id`). Required.
    pub train: PathBuf,
    /// Passes over the questions; the run ends when they are used up (unless `run.steps` ends
    /// it first).
    pub epochs: u32,
    /// Shuffle the questions each epoch (seeded by `run.seed` and the epoch).
    pub shuffle: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            epochs: 1,
            shuffle: true,
        }
    }
}

/// How the agent's search tool ranks passages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SearchKind {
    /// BM25 over `tools.index`.
    #[default]
    Bm25,
    /// The dense index (`tools.dense_index`, default `<index>/dense`).
    Dense,
    /// BM25 and dense fused by weighted reciprocal rank fusion.
    Hybrid,
}

/// The agent's search tools.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// A local BM25 index directory (`asearcher.tools.LocalSearch.build`), used for search and
    /// for page access. Ignored when a toolbox is given from Python.
    pub index: Option<PathBuf>,
    /// Documents per search.
    pub top_k: usize,
    /// `bm25`, `dense` or `hybrid`; pages always come from the BM25 index when there is one.
    pub search: SearchKind,
    /// The dense index (`asearcher index build --dense`); default `<index>/dense`.
    pub dense_index: Option<PathBuf>,
    /// The dense index's encoder directory; default: the one it was built with.
    pub dense_model: Option<PathBuf>,
    /// Search the dense index's HNSW graph instead of every vector.
    pub hnsw: bool,
    /// Hybrid: the reciprocal rank fusion weight of the BM25 ranking.
    pub bm25_weight: f32,
    /// Hybrid: the reciprocal rank fusion weight of the dense ranking.
    pub dense_weight: f32,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            index: None,
            top_k: 5,
            search: SearchKind::Bm25,
            dense_index: None,
            dense_model: None,
            hnsw: false,
            bm25_weight: 1.0,
            dense_weight: 1.0,
        }
    }
}

/// Where generation runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InferenceBackend {
    /// The in-process continuous-batching generator; weights are swapped in memory.
    #[default]
    Embedded,
    /// SGLang servers (or ours, `asearcher serve model`): generation through `/generate`;
    /// weights through the disk or by broadcast.
    Sglang,
    /// vLLM servers: generation through `/v1/completions` on token ids; weights by broadcast
    /// through vLLM's weight-transfer API (`weight_sync = "distributed"`), bracketed by its
    /// `/pause` and `/resume`.
    Vllm,
}

/// Where generation runs and how new weights reach it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `embedded`, `sglang` or `vllm`.
    pub backend: InferenceBackend,
    /// Server base URLs (`sglang` and `vllm` backends).
    pub servers: Vec<String>,
    /// `vllm`: the model name the servers serve, sent as `model` in every request (`null`:
    /// `model.path` as written, vLLM's default name for a model served from that path).
    pub served_model: Option<String>,
    /// Where new weights are written for the servers (HF layout, one directory per version);
    /// they must be able to read it. Default: `<run.out_dir>/weights`.
    pub weights_dir: Option<PathBuf>,
    /// Weight versions kept in `weights_dir` (older ones are deleted).
    pub keep_weights: usize,
    /// A weight update interrupts in-flight generations, which are re-sent with their tokens so
    /// far and continue on the new weights (KV cache recomputed). `false` (embedded only): they
    /// continue on the new weights with the cache they have.
    pub interrupt: bool,
    /// Embedded generator: most requests decoded together (`null`: `rollout.max_concurrent`,
    /// so one setting bounds concurrency; set it lower only to cap the decode batch's memory).
    pub max_running: Option<usize>,
    /// Embedded generator: most tokens of one request (0: the model's limit, capped at 32768).
    pub max_context: usize,
    /// Timeout of one server call, seconds (`sglang`).
    pub timeout_s: f64,
    /// How new weights reach the servers: `disk` (HF safetensors under `weights_dir`, loaded
    /// with `/update_weights_from_disk`) or `distributed` (broadcast from the trainer's rank 0
    /// into the servers' GPUs with `/init_weights_update_group` and
    /// `/update_weights_from_distributed`; needs `learner.backend = "fsdp"`).
    pub weight_sync: WeightSyncMode,
    /// `distributed` sync: most megabytes announced and broadcast per bucket.
    pub sync_bucket_mb: usize,
    /// `distributed` sync: the address the servers reach the trainer's rank 0 at (`null`: the
    /// `MASTER_ADDR` of torchrun, else 127.0.0.1).
    pub sync_master_addr: Option<String>,
    /// `distributed` sync: the port of the weight-update group's store (0: a free one).
    pub sync_master_port: u16,
    /// `distributed` sync: GPUs of each server (its tensor x pipeline parallel size); server
    /// `i` joins the group as ranks `1 + i * server_world_size ...`.
    pub server_world_size: usize,
    /// Weight syncs to the servers that may fail in a row before the run stops with the error
    /// (a failed sync is recorded in the step's `sync_error` and the servers keep serving the
    /// previous weights, so training drifts off-policy; the same failure every step is
    /// systematic). Default 3.
    pub max_failed_syncs: u32,
}

/// How new weights reach inference servers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WeightSyncMode {
    /// Written to disk in HF layout and loaded by each server.
    #[default]
    Disk,
    /// Broadcast by collective (NCCL on GPUs, gloo on the CPU) through the servers' own
    /// weight-update API.
    Distributed,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            backend: InferenceBackend::Embedded,
            servers: Vec::new(),
            served_model: None,
            weights_dir: None,
            keep_weights: 2,
            interrupt: true,
            max_running: None,
            max_context: 0,
            timeout_s: 600.0,
            weight_sync: WeightSyncMode::Disk,
            sync_bucket_mb: 1024,
            sync_master_addr: None,
            sync_master_port: 0,
            server_world_size: 1,
            max_failed_syncs: 3,
        }
    }
}

/// Length of the run, outputs, checkpoints and the seed.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Output directory: `metrics.jsonl`, `batches.jsonl`, `trajectories.jsonl`,
    /// `checkpoints/`, `config.json`, the final model in `final/`.
    pub out_dir: PathBuf,
    /// Optimizer steps in all (a resumed run counts the steps already taken); `None`: until
    /// the data's epochs are used up.
    pub steps: Option<u64>,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Continue from the newest checkpoint in `out_dir` when there is one, and only when the
    /// run's fingerprint (`out_dir/fingerprint.json`: everything but the operational keys, with
    /// the model, data and index by content) matches; a difference is an error naming each key.
    pub resume: bool,
    /// Resume even though the fingerprint differs (a changed learning rate, say); the changes
    /// are recorded in the history of `fingerprint.json`.
    pub allow_changes: bool,
    /// Append every trained group's trajectories to `trajectories.jsonl`.
    pub save_trajectories: bool,
    /// The run's one seed: question order (with `data.shuffle`), the learner's RNG and the
    /// generation seeds (every request of the embedded generator is seeded from it and its
    /// request id; remote servers only with `deterministic`).
    pub seed: u64,
    /// Repeat exactly: the same config, data and seed give bit-identical batches, metrics and
    /// weights on the same machine. Needs `rollout.max_staleness = 0` (asynchronous collection
    /// depends on timing); groups are taken in question order (`rollout.ordered`), every request
    /// is seeded, and the embedded generator decodes one request at a time (a batched matrix
    /// product rounds differently from a single row's, so batching would make tokens depend on
    /// what else was running). Slower; remote servers must sample deterministically themselves
    /// (SGLang: `--enable-deterministic-inference`).
    pub deterministic: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("runs/train"),
            steps: None,
            checkpoint_every: 1,
            keep_last: 2,
            resume: true,
            allow_changes: false,
            save_trajectories: true,
            seed: 0,
            deterministic: false,
        }
    }
}

impl asearcher_config::Document for TrainConfig {
    const MOVED: &'static [(&'static str, &'static str)] = &[
        (
            "learner.filter_zero_variance",
            "`rollout.filter_zero_variance` (groups are filtered once, in the engine)",
        ),
        ("rollout.seed", "`run.seed` (one seed for the run)"),
    ];

    fn resolve_paths(&mut self, base: &Path) {
        TrainConfig::resolve_paths(self, base)
    }
}

impl TrainConfig {
    /// Reads a `.toml`, `.yaml`/`.yml` or `.json` file. Relative paths inside are taken relative
    /// to the file's directory.
    pub fn from_path(path: &Path) -> Result<Self> {
        Self::load(path, &[] as &[&str])
    }

    /// Reads a file, then applies `a.b.c=v` overrides (relative paths among them stay relative
    /// to the working directory), and validates.
    pub fn load<S: AsRef<str>>(path: &Path, overrides: &[S]) -> Result<Self> {
        let cfg: TrainConfig = asearcher_config::load(path, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a JSON value; unknown keys and bad values are named by their dotted path.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        Self::from_value_with(value, &[] as &[&str])
    }

    /// [`TrainConfig::from_value`] after `a.b.c=v` overrides.
    pub fn from_value_with<S: AsRef<str>>(
        value: serde_json::Value,
        overrides: &[S],
    ) -> Result<Self> {
        let cfg: TrainConfig = asearcher_config::from_value(value, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model.path);
        if let Some(t) = self.model.tokenizer.as_mut() {
            fix(t);
        }
        fix(&mut self.data.train);
        for p in [
            self.tools.index.as_mut(),
            self.tools.dense_index.as_mut(),
            self.tools.dense_model.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(w) = self.inference.weights_dir.as_mut() {
            fix(w);
        }
        fix(&mut self.run.out_dir);
    }

    /// Checks values across sections; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.model.path.as_os_str().is_empty() {
            return Err(TrainError::config(
                "model.path",
                "required: the HF model directory",
            ));
        }
        if self.data.train.as_os_str().is_empty() {
            return Err(TrainError::config(
                "data.train",
                "required: a jsonl file of questions",
            ));
        }
        if self.data.epochs == 0 {
            return Err(TrainError::config("data.epochs", "must be at least 1"));
        }
        self.rollout
            .validate()
            .map_err(|e| prefixed("rollout", &e.to_string()))?;
        self.agent
            .validate()
            .map_err(|e| TrainError::config("agent", e.to_string()))?;
        self.reward.validate()?;
        self.learner.validate()?;
        self.model.device_and_kind()?;
        self.validate_inference()?;
        if self.run.keep_last == 0 {
            return Err(TrainError::config("run.keep_last", "must be at least 1"));
        }
        self.validate_deterministic()
    }

    fn validate_deterministic(&self) -> Result<()> {
        if !self.run.deterministic {
            return Ok(());
        }
        if !self.is_synchronous() {
            return Err(TrainError::config(
                "run.deterministic",
                format!(
                    "needs rollout.max_staleness = 0 (got {}): with asynchronous collection, \
                     which policy version generates which tokens depends on timing",
                    self.rollout
                        .max_staleness
                        .map_or("null".to_string(), |e| e.to_string())
                ),
            ));
        }
        match self.inference.max_running {
            Some(n) if n > 1 && self.inference.backend == InferenceBackend::Embedded => {
                Err(TrainError::config(
                    "inference.max_running",
                    format!(
                        "{n} with run.deterministic: the embedded generator then decodes one \
                         request at a time (a batch rounds differently from a single row); \
                         leave max_running unset or set it to 1"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_inference(&self) -> Result<()> {
        let inf = &self.inference;
        let fsdp = self.learner.backend == crate::learner::LearnerBackend::Fsdp;
        match inf.backend {
            _ if inf.weight_sync == WeightSyncMode::Distributed && !fsdp => Err(TrainError::config(
                "inference.weight_sync",
                "`distributed` sync is sent by the fsdp learner's rank 0 (learner.backend = \
                 \"fsdp\"); with the tch learner use `disk` (SGLang servers)",
            )),
            _ if inf.weight_sync == WeightSyncMode::Distributed
                && (inf.sync_bucket_mb == 0 || inf.server_world_size == 0) =>
            {
                Err(TrainError::config(
                    "inference.sync_bucket_mb",
                    "sync_bucket_mb and server_world_size must be at least 1",
                ))
            }
            InferenceBackend::Embedded if fsdp => Err(TrainError::config(
                "inference.backend",
                "the `fsdp` learner sends its weights to inference servers: set \
                 inference.backend = \"sglang\" (or \"vllm\") and inference.servers (SGLang, \
                 vLLM, or `asearcher serve model` for a small model)",
            )),
            InferenceBackend::Embedded if !inf.servers.is_empty() => Err(TrainError::config(
                "inference.servers",
                "servers are given but inference.backend is `embedded`; set backend = \
                 \"sglang\" or \"vllm\"",
            )),
            InferenceBackend::Sglang | InferenceBackend::Vllm if inf.servers.is_empty() => {
                Err(TrainError::config(
                    "inference.servers",
                    "a server backend needs at least one server URL",
                ))
            }
            InferenceBackend::Sglang | InferenceBackend::Vllm if !inf.interrupt => {
                Err(TrainError::config(
                    "inference.interrupt",
                    "servers always interrupt in-flight generation on a weight update",
                ))
            }
            InferenceBackend::Vllm if inf.weight_sync == WeightSyncMode::Disk => {
                Err(TrainError::config(
                    "inference.weight_sync",
                    "vLLM has no HTTP API that loads weights from disk; set weight_sync = \
                     \"distributed\" (needs learner.backend = \"fsdp\"; start each server with \
                     VLLM_SERVER_DEV_MODE=1 and --weight-transfer-config '{\"backend\":\"nccl\"}'), \
                     or serve the model with SGLang for disk sync",
                ))
            }
            _ if inf.served_model.is_some() && inf.backend != InferenceBackend::Vllm => {
                Err(TrainError::config(
                    "inference.served_model",
                    "is the model name of vLLM servers; it is only used with backend = \"vllm\"",
                ))
            }
            _ if inf.max_running == Some(0) => Err(TrainError::config(
                "inference.max_running",
                "must be at least 1",
            )),
            _ if inf.keep_weights == 0 => Err(TrainError::config(
                "inference.keep_weights",
                "must be at least 1",
            )),
            _ if !(inf.timeout_s.is_finite() && inf.timeout_s > 0.0) => Err(TrainError::config(
                "inference.timeout_s",
                "must be a positive number of seconds",
            )),
            _ => Ok(()),
        }
    }

    /// `vllm` backend: the model name its servers serve (`inference.served_model`, else
    /// `model.path` as written); `None` for other backends.
    pub fn vllm_model(&self) -> Option<String> {
        (self.inference.backend == InferenceBackend::Vllm).then(|| {
            self.inference
                .served_model
                .clone()
                .unwrap_or_else(|| self.model.path.display().to_string())
        })
    }

    /// The tokenizer directory.
    pub fn tokenizer_dir(&self) -> &Path {
        self.model.tokenizer.as_deref().unwrap_or(&self.model.path)
    }

    /// Requests the embedded generator decodes together: 1 with `run.deterministic`, else
    /// `inference.max_running`, else `rollout.max_concurrent`.
    pub fn max_running(&self) -> usize {
        if self.run.deterministic {
            return 1;
        }
        self.inference
            .max_running
            .unwrap_or(self.rollout.max_concurrent)
    }

    /// The seed of every generation request: `run.seed` for the embedded generator (its
    /// sampling then does not depend on batching) and, with `run.deterministic`, for servers.
    pub fn sampling_seed(&self) -> Option<u64> {
        let embedded = self.inference.backend == InferenceBackend::Embedded;
        (embedded || self.run.deterministic).then_some(self.run.seed)
    }

    /// Whether the run is synchronous RL (eta = 0: every batch generated by the current policy).
    pub fn is_synchronous(&self) -> bool {
        self.rollout.max_staleness == Some(0)
    }
}

/// Parses a device (`cpu`, `cuda:N`) and a dtype name; errors name `{prefix}device` /
/// `{prefix}dtype`.
pub(crate) fn device_and_kind(
    device: &str,
    dtype: &str,
    prefix: &str,
) -> Result<(tch::Device, tch::Kind)> {
    let d = asearcher_torch::parse_device(device)
        .map_err(|e| TrainError::config(format!("{prefix}device"), e.to_string()))?;
    let k = asearcher_torch::parse_dtype(dtype)
        .map_err(|e| TrainError::config(format!("{prefix}dtype"), e.to_string()))?;
    Ok((d, k))
}

/// A section's error (`invalid rollout config `batch_size`: ...`) re-rooted at the section.
fn prefixed(section: &str, message: &str) -> TrainError {
    let field = message
        .split('`')
        .nth(1)
        .map(|f| format!("{section}.{f}"))
        .unwrap_or_else(|| section.to_string());
    let detail = message.split_once(": ").map_or(message, |(_, m)| m);
    TrainError::config(field, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> serde_json::Value {
        json!({"model": {"path": "m"}, "data": {"train": "q.jsonl"}})
    }

    #[test]
    fn defaults_fill_everything_but_the_required_paths() {
        let cfg = TrainConfig::from_value(minimal()).unwrap();
        assert_eq!(cfg.rollout.max_staleness, Some(4));
        assert_eq!(cfg.inference.backend, InferenceBackend::Embedded);
        let err = TrainConfig::from_value(json!({"data": {"train": "q"}})).unwrap_err();
        assert!(err.to_string().contains("model.path"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named_by_their_path() {
        let mut v = minimal();
        v["learner"] = json!({"ppo": {"eps_clipp": 0.2}});
        let err = TrainConfig::from_value(v).unwrap_err().to_string();
        assert!(err.contains("learner.ppo"), "{err}");
        assert!(err.contains("eps_clipp"), "{err}");
        let mut v = minimal();
        v["rollout"] = json!({"max_concurent": 3});
        let err = TrainConfig::from_value(v).unwrap_err().to_string();
        assert!(
            err.contains("rollout") && err.contains("max_concurent"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut v = minimal();
        v["rollout"] = json!({"group_size": 0});
        let err = TrainConfig::from_value(v).unwrap_err().to_string();
        assert!(err.contains("rollout.group_size"), "{err}");
        let mut v = minimal();
        v["inference"] = json!({"backend": "sglang"});
        let err = TrainConfig::from_value(v).unwrap_err().to_string();
        assert!(err.contains("inference.servers"), "{err}");
        let mut v = minimal();
        v["model"]["device"] = json!("tpu");
        let err = TrainConfig::from_value(v).unwrap_err().to_string();
        assert!(err.contains("model.device"), "{err}");
    }

    #[test]
    fn deterministic_needs_synchronous_collection_and_one_row_decoding() {
        let mut v = minimal();
        v["run"] = json!({"deterministic": true});
        let err = TrainConfig::from_value(v.clone()).unwrap_err().to_string();
        assert!(
            err.contains("run.deterministic") && err.contains("max_staleness"),
            "{err}"
        );
        v["rollout"] = json!({"max_staleness": 0, "max_concurrent": 16});
        let cfg = TrainConfig::from_value(v.clone()).unwrap();
        assert_eq!(cfg.max_running(), 1, "one request at a time");
        assert_eq!(cfg.sampling_seed(), Some(0));
        v["inference"] = json!({"max_running": 4});
        let err = TrainConfig::from_value(v.clone()).unwrap_err().to_string();
        assert!(err.contains("inference.max_running"), "{err}");
        let mut async_run = minimal();
        async_run["run"] = json!({"seed": 9});
        let cfg = TrainConfig::from_value(async_run).unwrap();
        assert_eq!(cfg.max_running(), cfg.rollout.max_concurrent);
        assert_eq!(
            cfg.sampling_seed(),
            Some(9),
            "embedded requests are always seeded"
        );
    }

    #[test]
    fn toml_and_yaml_files_resolve_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("run.toml");
        std::fs::write(
            &toml_path,
            "[model]\npath = \"model\"\n[data]\ntrain = \"train.jsonl\"\n[rollout]\nmax_staleness = 0\n",
        )
        .unwrap();
        let cfg = TrainConfig::from_path(&toml_path).unwrap();
        assert_eq!(cfg.model.path, dir.path().join("model"));
        assert!(cfg.is_synchronous());
        let yaml_path = dir.path().join("run.yaml");
        std::fs::write(
            &yaml_path,
            "model:\n  path: /abs/model\ndata:\n  train: t.jsonl\nrun:\n  stepz: 3\n",
        )
        .unwrap();
        let err = TrainConfig::from_path(&yaml_path).unwrap_err().to_string();
        assert!(err.contains("run") && err.contains("stepz"), "{err}");
    }
}
