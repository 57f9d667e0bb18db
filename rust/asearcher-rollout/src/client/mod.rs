//! Inference clients. [`LlmBackend`] is what the runner generates through: token ids in, token
//! ids + logprobs + per-token policy versions out. [`pool::ServerPool`] implements it over many
//! servers speaking one [`ServerProtocol`] ([`sglang::SglangServer`] for SGLang's native
//! `/generate`, [`openai::OpenAiCompletionsServer`] for vLLM-style `/v1/completions`), with
//! least-loaded balancing, sticky per-trajectory affinity, health checks, failover, retries with
//! back-off, timeouts, and re-sending of aborted generations. [`openai::ChatClient`] speaks
//! `/v1/chat/completions` (LLM judges). The embedded tch generator implements [`LlmBackend`] in
//! `asearcher-py`.

mod http;
pub mod openai;
pub mod pool;
pub mod sglang;
#[cfg(test)]
mod test_servers;
#[cfg(test)]
mod tests;

use crate::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Sampling parameters of one request, in SGLang's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// `-1`: no top-k.
    pub top_k: i32,
    pub max_new_tokens: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Seed of this request's sampler (SGLang's `sampling_seed`, vLLM's `seed`): the same seed,
    /// prompt and weights draw the same tokens on servers with deterministic sampling. `None`:
    /// the server's own randomness. Set by [`crate::runner::RunContext::sampling_seed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The seed of request `rid` in a run seeded with `seed`: a stable hash (FNV-1a, then a
/// SplitMix64 finaliser), the same on every machine and Rust version.
pub fn request_seed(seed: u64, rid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in rid.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Unique request id (used for `/abort_request`).
    pub rid: String,
    /// Sticky-routing key (the trajectory); requests with the same key go to the same server
    /// while it is healthy, so its KV cache of the shared prefix is reused.
    pub affinity: Option<u64>,
    pub input_ids: Arc<Vec<u32>>,
    pub sampling: SamplingParams,
}

/// Why one server call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    /// Aborted by the server (a weight update, `/abort_request`); the output is partial.
    Abort,
}

/// What one server call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutput {
    pub output_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// Per-token versions when the server reports them (ours: `meta_info.output_token_versions`);
    /// otherwise `None` and `weight_version` (SGLang's `meta_info.weight_version`) if given.
    pub versions: Option<Vec<u64>>,
    pub weight_version: Option<u64>,
    pub finish: FinishReason,
}

/// One server, one protocol: a single HTTP call, no retries (the pool does those).
#[async_trait]
pub trait ServerProtocol: Send + Sync {
    /// The server's base URL, as given (used in errors, logs and stats).
    fn address(&self) -> &str;
    async fn generate(&self, req: &GenRequest) -> Result<RawOutput>;
    async fn health(&self) -> Result<()>;
    /// Asks the server to abort a request (best effort).
    async fn abort(&self, rid: &str) -> Result<()>;
    /// What the server serves (model path and weight version), for fingerprints; `None` when
    /// it cannot tell or cannot be reached.
    async fn identity(&self) -> Option<String> {
        None
    }
}

/// A finished generation: all tokens (across re-sends), each with its behaviour logprob and the
/// policy version that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    pub output_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub versions: Vec<u64>,
    /// Never `Abort` unless the backend gave up re-sending (`max_resends`).
    pub finish: FinishReason,
    /// The server that produced the last part.
    pub server: String,
    pub resends: u32,
}

/// What the runner generates through.
#[async_trait]
pub trait LlmBackend: Send + Sync {
    async fn generate(&self, req: GenRequest) -> Result<GenOutput>;
    /// The trajectory with this affinity key ended: forget its routing state.
    fn release(&self, _affinity: u64) {}
    /// The policy version now served, as far as the backend knows (used for tokens a server
    /// reports no version for).
    fn version(&self) -> u64 {
        0
    }
    /// Short description for logs and stats (`"pool of 4 sglang servers"`).
    fn describe(&self) -> String;
    /// What is served (model path, weight version), for the fingerprint of an output directory;
    /// [`asearcher_config::fingerprint::UNKNOWN`] when the backend cannot tell. Never an address:
    /// the same model behind another URL is the same model.
    async fn identity(&self) -> String {
        asearcher_config::fingerprint::UNKNOWN.into()
    }
}

/// A chat model behind `/v1/chat/completions` (LLM judges, prompt-based agents through a chat
/// API). Implemented by [`openai::ChatClient`].
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The assistant's reply text. Retries (bounded) are the implementation's business.
    async fn chat(
        &self,
        messages: &[asearcher_tokenizer::ChatMessage],
        max_tokens: u32,
        temperature: f32,
    ) -> Result<String>;
    fn describe(&self) -> String;
}
