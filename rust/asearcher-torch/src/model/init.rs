//! Fresh, randomly initialised Qwen models (the tinyworld model, tests): HF-style initialisation,
//! normal(0, initializer_range) for matrices and embeddings, ones for norms, zeros for biases,
//! seeded so the same config and seed give the same weights. An optional
//! `embedding_initializer_range` in config.json sets the embedding's (and LM head's) std apart:
//! with tied embeddings, larger ones let a tiny model copy tokens it was never trained to emit.

use super::config::QwenConfig;
use super::qwen::QwenModel;
use super::weights::expected_shapes;
use crate::{Result, TorchError};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Standard deviation used when config.json has no `initializer_range`.
const DEFAULT_INIT_STD: f64 = 0.02;

/// The weights of a fresh model of `config`, in HF names, float32 on the CPU.
pub fn random_weights(config: &QwenConfig, seed: u64) -> Vec<(String, Tensor)> {
    let std = config
        .raw
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(DEFAULT_INIT_STD);
    let embed_std = config
        .raw
        .get("embedding_initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(std);
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    expected_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let opts = (Kind::Float, Device::Cpu);
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(&shape, opts)
            } else if name.ends_with(".bias") {
                Tensor::zeros(&shape, opts)
            } else if name.contains("embed_tokens") || name.starts_with("lm_head") {
                Tensor::randn(&shape, opts) * embed_std
            } else {
                Tensor::randn(&shape, opts) * std
            };
            (name, t)
        })
        .collect()
}

impl QwenModel {
    /// A fresh model of `config` with seeded random weights (see the module doc).
    pub fn init_random(config: QwenConfig, seed: u64, device: Device, kind: Kind) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = random_weights(&config, seed).into_iter().collect();
        QwenModel::from_tensors(config, tensors, device, kind)
    }
}

/// Writes `config_json` (a Qwen config.json) and seeded random weights into `dir` in HF layout.
pub fn write_random_checkpoint(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TorchError::io(dir, e))?;
    let path = dir.join("config.json");
    let config = QwenConfig::from_json(config_json, &path)?;
    std::fs::write(&path, config_json).map_err(|e| TorchError::io(&path, e))?;
    let model = QwenModel::init_random(config, seed, Device::Cpu, Kind::Float)?;
    model.save_hf(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::tiny_config;

    #[test]
    fn seeded_init_is_deterministic_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config(false, true).to_string();
        write_random_checkpoint(dir.path(), &cfg, 7).unwrap();
        let loaded = QwenModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        let again = QwenModel::init_random(
            QwenConfig::from_json(&cfg, &dir.path().join("config.json")).unwrap(),
            7,
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let other =
            QwenModel::init_random(loaded.config().clone(), 8, Device::Cpu, Kind::Float).unwrap();
        for ((name, a), ((_, b), (_, c))) in loaded.named_parameters().iter().zip(
            again
                .named_parameters()
                .iter()
                .zip(other.named_parameters().iter()),
        ) {
            assert!(a.equal(b), "{name} differs for the same seed");
            if !name.ends_with("norm.weight") && !name.ends_with(".bias") {
                assert!(!a.equal(c), "{name} equal for different seeds");
                let std = a.std(true).double_value(&[]);
                assert!((0.01..0.03).contains(&std), "{name} std {std}");
            }
        }
    }
}
