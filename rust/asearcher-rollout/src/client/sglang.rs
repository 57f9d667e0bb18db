//! SGLang's native protocol: `POST /generate` with token ids in and token ids, logprobs, the
//! finish reason and the policy version out; `GET /health`; `POST /abort_request`; and the
//! weight-update endpoints the trainer drives (`/pause_generation`, `/continue_generation`,
//! `/update_weights_from_disk`). Our embedded model server speaks the same protocol and adds
//! `meta_info.output_token_versions` (the version of every output token).

use super::http::{excerpt, Endpoint};
use super::{FinishReason, GenRequest, RawOutput, ServerProtocol};
use crate::{Result, RolloutError};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Duration;

/// One SGLang (or SGLang-compatible) server.
#[derive(Debug, Clone)]
pub struct SglangServer {
    http: Endpoint,
}

impl SglangServer {
    /// `address`: the base URL (`http://host:port`); `timeout` bounds every call.
    pub fn new(address: &str, timeout: Duration) -> Result<Self> {
        Ok(SglangServer {
            http: Endpoint::new(address, timeout, None)?,
        })
    }

    /// Pauses generation (SGLang's default mode aborts in-flight requests: they end with
    /// finish reason `abort` and the pool re-sends them).
    pub async fn pause_generation(&self) -> Result<()> {
        let answer = self.http.post("/pause_generation", &json!({})).await?;
        self.check_success(&answer)
    }

    pub async fn continue_generation(&self) -> Result<()> {
        let answer = self.http.post("/continue_generation", &json!({})).await?;
        self.check_success(&answer)
    }

    /// Loads new weights from `model_path` (HF layout, on the server's disk) and, if given,
    /// tags them with `weight_version` (sent as a decimal string, which SGLang and our server
    /// both take).
    pub async fn update_weights_from_disk(
        &self,
        model_path: &str,
        weight_version: Option<u64>,
    ) -> Result<()> {
        let mut body = json!({ "model_path": model_path });
        if let Some(v) = weight_version {
            body["weight_version"] = Value::String(v.to_string());
        }
        let answer = self.http.post("/update_weights_from_disk", &body).await?;
        self.check_success(&answer)
    }

    /// `{"success": false, "message"}` in a 200 answer is a refusal.
    fn check_success(&self, answer: &Value) -> Result<()> {
        if answer.get("success").and_then(Value::as_bool) == Some(false) {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the server refused without a message");
            return Err(RolloutError::Status {
                server: self.http.address().to_string(),
                status: 200,
                body: format!("success: false: {}", excerpt(message)),
            });
        }
        Ok(())
    }
}

/// The `/generate` body for one request. Only keys that both SGLang and our model server
/// accept (ours refuses unknown keys). Typed and borrowing, so the prompt ids are written
/// straight from the request (no JSON value per token).
#[derive(Debug, Serialize)]
pub(crate) struct GenerateBody<'a> {
    input_ids: &'a [u32],
    rid: &'a str,
    sampling_params: SamplingBody<'a>,
    return_logprob: bool,
}

#[derive(Debug, Serialize)]
struct SamplingBody<'a> {
    temperature: f32,
    top_p: f32,
    top_k: i32,
    max_new_tokens: u32,
    stop: &'a [String],
    stop_token_ids: &'a [u32],
    skip_special_tokens: bool,
    no_stop_trim: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampling_seed: Option<u64>,
}

pub(crate) fn generate_body(req: &GenRequest) -> GenerateBody<'_> {
    let s = &req.sampling;
    GenerateBody {
        input_ids: req.input_ids.as_slice(),
        rid: &req.rid,
        sampling_params: SamplingBody {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            max_new_tokens: s.max_new_tokens,
            stop: &s.stop,
            stop_token_ids: &s.stop_token_ids,
            skip_special_tokens: false,
            no_stop_trim: true,
            sampling_seed: s.seed,
        },
        return_logprob: true,
    }
}

#[async_trait]
impl ServerProtocol for SglangServer {
    fn address(&self) -> &str {
        self.http.address()
    }

    async fn generate(&self, req: &GenRequest) -> Result<RawOutput> {
        let answer = self.http.post("/generate", &generate_body(req)).await?;
        parse_generate(self.address(), &answer)
    }

    async fn health(&self) -> Result<()> {
        self.http.get_ok("/health").await
    }

    async fn identity(&self) -> Option<String> {
        let info = self.http.get_json("/get_model_info").await.ok()?;
        let path = info.get("model_path")?.as_str()?;
        Some(match info.get("weight_version").and_then(|v| v.as_str()) {
            Some(version) => format!("{path}@{version}"),
            None => path.to_string(),
        })
    }

    async fn abort(&self, rid: &str) -> Result<()> {
        self.http
            .post("/abort_request", &json!({ "rid": rid }))
            .await
            .map(|_| ())
    }
}

/// Parses one `/generate` answer.
pub(crate) fn parse_generate(server: &str, answer: &Value) -> Result<RawOutput> {
    let broken = |message: String| RolloutError::Protocol {
        server: server.to_string(),
        message,
    };
    let meta = answer
        .get("meta_info")
        .filter(|m| m.is_object())
        .ok_or_else(|| {
            broken(format!(
                "/generate answer has no `meta_info` object: {}",
                excerpt(&answer.to_string())
            ))
        })?;
    let entries = logprob_entries(meta).map_err(&broken)?;
    let output_ids = match answer.get("output_ids") {
        Some(v) if !v.is_null() => token_ids(v).map_err(&broken)?,
        _ => entries.iter().map(|e| e.1).collect(),
    };
    let logprobs: Vec<f32> = entries.iter().map(|e| e.0).collect();
    if logprobs.len() != output_ids.len() {
        return Err(broken(format!(
            "{} output ids but {} entries in meta_info.output_token_logprobs",
            output_ids.len(),
            logprobs.len()
        )));
    }
    if let Some(i) = entries
        .iter()
        .zip(&output_ids)
        .position(|(e, id)| e.1 != *id)
    {
        return Err(broken(format!(
            "output_ids[{i}] is {} but meta_info.output_token_logprobs[{i}] is for token {}",
            output_ids[i], entries[i].1
        )));
    }
    let versions = token_versions(meta).map_err(&broken)?;
    if let Some(v) = &versions {
        if v.len() != output_ids.len() {
            return Err(broken(format!(
                "{} output ids but {} meta_info.output_token_versions",
                output_ids.len(),
                v.len()
            )));
        }
    }
    Ok(RawOutput {
        output_ids,
        logprobs,
        versions,
        weight_version: weight_version(meta.get("weight_version")),
        finish: finish_reason(meta.get("finish_reason")).map_err(&broken)?,
    })
}

fn token_ids(v: &Value) -> std::result::Result<Vec<u32>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("`output_ids` is not a list: {}", excerpt(&v.to_string())))?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("output_ids[{i}] = {x} is not a token id"))
        })
        .collect()
}

/// `meta_info.output_token_logprobs`: `[[logprob, token_id, text|null], ...]`.
fn logprob_entries(meta: &Value) -> std::result::Result<Vec<(f32, u32)>, String> {
    let field = "meta_info.output_token_logprobs";
    let list = match meta.get("output_token_logprobs") {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "`{field}` is not a list: {}",
                excerpt(&other.to_string())
            ))
        }
        None => {
            return Err(format!(
                "no `{field}` (the request asked for return_logprob)"
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let lp = e.get(0).and_then(Value::as_f64);
            let id = e
                .get(1)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok());
            match (lp, id) {
                (Some(lp), Some(id)) => Ok((lp as f32, id)),
                _ => Err(format!(
                    "{field}[{i}] = {} is not [logprob, token_id, text]",
                    excerpt(&e.to_string())
                )),
            }
        })
        .collect()
}

/// Our extension `meta_info.output_token_versions`; absent or null means not reported.
fn token_versions(meta: &Value) -> std::result::Result<Option<Vec<u64>>, String> {
    match meta.get("output_token_versions") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                version_number(x).ok_or_else(|| {
                    format!("meta_info.output_token_versions[{i}] = {x} is not a version number")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!(
            "meta_info.output_token_versions is not a list: {}",
            excerpt(&other.to_string())
        )),
    }
}

fn version_number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `meta_info.weight_version`: an integer or its decimal string. SGLang's default is the
/// string `"default"`, which carries no number: then `None`.
fn weight_version(v: Option<&Value>) -> Option<u64> {
    v.and_then(version_number)
}

/// `meta_info.finish_reason`: `{"type": "stop"|"length"|"abort", ...}` or a plain string.
fn finish_reason(v: Option<&Value>) -> std::result::Result<FinishReason, String> {
    let kind = match v {
        Some(Value::Object(o)) => o.get("type").and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match kind {
        Some("stop") => Ok(FinishReason::Stop),
        Some("length") => Ok(FinishReason::Length),
        Some("abort") => Ok(FinishReason::Abort),
        Some(other) => Err(format!(
            "unknown meta_info.finish_reason type {other:?} (stop, length, abort)"
        )),
        None => Err(format!(
            "meta_info.finish_reason does not say why generation ended: {}",
            v.map_or_else(|| "missing".to_string(), |x| excerpt(&x.to_string()))
        )),
    }
}
