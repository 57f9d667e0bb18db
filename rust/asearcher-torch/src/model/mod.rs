//! The Qwen2 / Qwen2.5 / Qwen3 decoder: configuration ([`config`]), HF checkpoint reading and
//! writing ([`weights`]), the model and its full-sequence forward pass ([`qwen`]), and the KV
//! cache with the generator's prefill/decode passes ([`cache`]).

pub mod cache;
pub mod config;
pub mod init;
pub mod qwen;
pub mod weights;

pub use cache::KvCache;
pub use config::{ModelType, QwenConfig, RopeConfig, RopeScaling};
pub use init::{random_weights, write_random_checkpoint};
pub use qwen::{AttentionMask, QwenModel};
pub use weights::{read_hf_weights, save_hf, DEFAULT_MAX_SHARD_BYTES};

#[cfg(test)]
mod testutil;
