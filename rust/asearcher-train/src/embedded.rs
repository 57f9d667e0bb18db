//! The in-process tch `Generator` as a rollout backend: maps the engine's requests onto the
//! generator (sampling, request id, stop strings and ids), re-sends aborted generations (a weight
//! update with `abort_in_flight`) with the tokens produced so far, as the server pool does, and
//! takes versions from the generator's per-token `output_versions`.

use asearcher_rollout::client::pool::resend_seed;
use asearcher_rollout::client::{FinishReason, GenOutput, GenRequest, LlmBackend};
use asearcher_rollout::{Result, RolloutError};
use asearcher_torch::generate as gen;
use asearcher_torch::TorchError;
use async_trait::async_trait;
use std::sync::Arc;

/// Re-sends of an aborted generation before the partial output is returned (as the pool's
/// default `max_resends`).
const MAX_RESENDS: u32 = 16;

/// The embedded generator as an [`LlmBackend`].
pub struct EmbeddedBackend {
    handle: gen::GeneratorHandle,
    /// The model directory, for the backend's identity.
    model: Option<String>,
}

impl EmbeddedBackend {
    pub fn new(handle: gen::GeneratorHandle) -> Self {
        Self {
            handle,
            model: None,
        }
    }

    /// Names the model directory the generator was loaded from (its identity in fingerprints).
    pub fn with_model(mut self, model_dir: &std::path::Path) -> Self {
        let dir = model_dir
            .canonicalize()
            .unwrap_or_else(|_| model_dir.to_path_buf());
        self.model = Some(dir.display().to_string());
        self
    }

    async fn call(&self, req: &GenRequest) -> Result<gen::GenerateOutput> {
        let request = generator_request(req);
        let rid = request.rid.clone();
        // Dropping this future (a cancelled trajectory) must not leave the request running.
        let guard = AbortOnDrop {
            handle: &self.handle,
            rid: &rid,
            armed: true,
        };
        let result = self.handle.generate(request).await;
        guard.disarm();
        result.map_err(|e| {
            let server = self.describe();
            let message = e.to_string();
            match e {
                TorchError::EngineStopped(_) => RolloutError::Connection { server, message },
                _ => RolloutError::Protocol { server, message },
            }
        })
    }
}

/// Aborts the generator's request when the waiting future is dropped early.
struct AbortOnDrop<'a> {
    handle: &'a gen::GeneratorHandle,
    rid: &'a str,
    armed: bool,
}

impl AbortOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.handle.abort(self.rid);
        }
    }
}

/// The generator's request for one engine request (SGLang sampling names -> the generator's).
fn generator_request(req: &GenRequest) -> gen::GenerateRequest {
    let s = &req.sampling;
    gen::GenerateRequest {
        rid: req.rid.clone(),
        input_ids: req.input_ids.as_ref().clone(),
        params: gen::SamplingParams {
            max_new_tokens: s.max_new_tokens as usize,
            temperature: f64::from(s.temperature),
            top_p: f64::from(s.top_p),
            top_k: i64::from(s.top_k),
            stop: s.stop.clone(),
            stop_token_ids: s.stop_token_ids.clone(),
            ignore_eos: false,
            seed: s.seed,
        },
    }
}

/// The request that continues `req` after an abort: prompt + tokens so far, the rest of the
/// budget, a fresh request id.
fn resend_request(req: &GenRequest, out: &GenOutput) -> GenRequest {
    let mut input = Vec::with_capacity(req.input_ids.len() + out.output_ids.len());
    input.extend_from_slice(&req.input_ids);
    input.extend_from_slice(&out.output_ids);
    let mut sampling = req.sampling.clone();
    sampling.max_new_tokens = sampling
        .max_new_tokens
        .saturating_sub(out.output_ids.len() as u32);
    sampling.seed = resend_seed(&req.sampling, out.resends);
    GenRequest {
        rid: format!("{}~r{}", req.rid, out.resends),
        affinity: req.affinity,
        input_ids: Arc::new(input),
        sampling,
    }
}

fn finish_of(f: &gen::FinishReason) -> FinishReason {
    match f {
        gen::FinishReason::Stop { .. } => FinishReason::Stop,
        gen::FinishReason::Length => FinishReason::Length,
        gen::FinishReason::Abort { .. } => FinishReason::Abort,
    }
}

#[async_trait]
impl LlmBackend for EmbeddedBackend {
    async fn generate(&self, req: GenRequest) -> Result<GenOutput> {
        let budget = req.sampling.max_new_tokens as usize;
        let mut out = GenOutput {
            output_ids: Vec::new(),
            logprobs: Vec::new(),
            versions: Vec::new(),
            finish: FinishReason::Abort,
            server: self.describe(),
            resends: 0,
        };
        let mut part = req.clone();
        loop {
            let raw = self.call(&part).await?;
            let produced = raw.output_ids.len();
            out.finish = finish_of(&raw.finish);
            out.output_ids.extend(raw.output_ids);
            out.logprobs.extend(raw.output_logprobs);
            out.versions.extend(raw.output_versions);
            if out.finish != FinishReason::Abort {
                return Ok(out);
            }
            if out.output_ids.len() >= budget {
                out.finish = FinishReason::Length;
                return Ok(out);
            }
            if out.resends >= MAX_RESENDS {
                tracing::warn!(rid = req.rid, "embedded generation still aborted after {MAX_RESENDS} re-sends; returning the partial output");
                return Ok(out);
            }
            out.resends += 1;
            if produced == 0 {
                // Aborted before any progress (a weight update in progress): wait a little.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            part = resend_request(&req, &out);
        }
    }

    fn version(&self) -> u64 {
        self.handle.version()
    }

    fn describe(&self) -> String {
        "embedded generator".into()
    }

    async fn identity(&self) -> String {
        match &self.model {
            Some(dir) => format!("{dir}@{}", self.handle.version()),
            None => asearcher_config::fingerprint::UNKNOWN.into(),
        }
    }
}

/// A tokenizer as the generator's detokenizer (for stop strings); special tokens are kept so
/// stop strings such as `<|im_end|>` match.
pub struct TokenizerDetok(Arc<asearcher_tokenizer::Tokenizer>);

impl TokenizerDetok {
    pub fn new(tokenizer: Arc<asearcher_tokenizer::Tokenizer>) -> Self {
        Self(tokenizer)
    }
}

impl gen::Detokenize for TokenizerDetok {
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, false).unwrap_or_default()
    }
}
