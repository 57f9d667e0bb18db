//! Tiny random Qwen checkpoints for the unit tests of this module (no Python needed).

use super::config::QwenConfig;
use super::weights::expected_shapes;
use std::path::Path;
use tch::{Kind, Tensor};

/// A config.json for a tiny model; `qwen3` adds q/k norms and a head_dim unlike hidden/heads.
pub fn tiny_config(qwen3: bool, tied: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model_type": if qwen3 { "qwen3" } else { "qwen2" },
        "vocab_size": 37, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": tied, "max_position_embeddings": 128,
        "rope_theta": 10000.0, "eos_token_id": 2, "torch_dtype": "float32"
    });
    if qwen3 {
        v["head_dim"] = 6.into();
    }
    v
}

/// Writes `config` and random weights of the right shapes into `dir`.
pub fn write_tiny(dir: &Path, config: &serde_json::Value, seed: i64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let parsed = QwenConfig::from_json(&config.to_string(), &dir.join("config.json")).unwrap();
    tch::manual_seed(seed);
    let tensors: Vec<(String, Tensor)> = expected_shapes(&parsed)
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.ends_with("norm.weight") {
                Tensor::rand(&shape, (Kind::Float, tch::Device::Cpu)) + 0.5
            } else {
                Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu)) * 0.3
            };
            (name, t)
        })
        .collect();
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

/// Largest absolute difference between two tensors, as f64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
