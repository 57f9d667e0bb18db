//! OpenAI-compatible protocol (vLLM and others): [`OpenAiCompletionsServer`] generates from
//! token ids over `POST /v1/completions` (the token ids of the output come back through vLLM's
//! `return_tokens_as_token_ids`; vLLM's `/pause` and `/resume` bracket weight updates), and
//! [`ChatClient`] speaks `POST /v1/chat/completions` for
//! judges and chat-API agents, with bounded retries. API keys come from environment variables,
//! go out as `Authorization: Bearer`, and are never logged or shown by `Debug`.

use super::http::{backoff, excerpt, ApiKey, Endpoint};
use super::{ChatModel, FinishReason, GenRequest, RawOutput, ServerProtocol};
use crate::{Result, RolloutError};
use asearcher_tokenizer::ChatMessage;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// One server behind `/v1/completions`.
#[derive(Debug, Clone)]
pub struct OpenAiCompletionsServer {
    http: Endpoint,
    model: String,
}

impl OpenAiCompletionsServer {
    /// `model`: the served model name sent in every request; `api_key_env`: the environment
    /// variable holding the API key, if the server needs one.
    pub fn new(
        address: &str,
        model: &str,
        api_key_env: Option<&str>,
        timeout: Duration,
    ) -> Result<Self> {
        let key = ApiKey::from_optional_env("api_key_env", api_key_env)?;
        Ok(OpenAiCompletionsServer {
            http: Endpoint::new(address, timeout, key)?,
            model: model.to_string(),
        })
    }
}

impl OpenAiCompletionsServer {
    /// vLLM's RL control: `POST /pause?mode=abort` stops the scheduler and ends in-flight
    /// requests as `abort` with what they produced (the pool re-sends them after `/resume`).
    pub async fn pause_generation(&self) -> Result<()> {
        self.http
            .post("/pause?mode=abort", &json!({}))
            .await
            .map(drop)
    }

    /// vLLM's RL control: `POST /resume` restarts the scheduler after `/pause`.
    pub async fn resume_generation(&self) -> Result<()> {
        self.http.post("/resume", &json!({})).await.map(drop)
    }
}

/// The `/v1/completions` body for one request.
pub(crate) fn completions_body(model: &str, req: &GenRequest) -> Value {
    let s = &req.sampling;
    let mut body = json!({
        "model": model,
        "prompt": req.input_ids.as_slice(),
        "max_tokens": s.max_new_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "stop": s.stop,
        "stop_token_ids": s.stop_token_ids,
        "logprobs": 1,
        "return_tokens_as_token_ids": true,
        "include_stop_str_in_output": true,
        "skip_special_tokens": false,
    });
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    body
}

#[async_trait]
impl ServerProtocol for OpenAiCompletionsServer {
    fn address(&self) -> &str {
        self.http.address()
    }

    async fn generate(&self, req: &GenRequest) -> Result<RawOutput> {
        let body = completions_body(&self.model, req);
        let answer = self.http.post("/v1/completions", &body).await?;
        parse_completion(self.address(), &answer)
    }

    async fn health(&self) -> Result<()> {
        self.http.get_ok("/health").await
    }

    async fn identity(&self) -> Option<String> {
        let models = self.http.get_json("/v1/models").await.ok()?;
        Some(models.get("data")?.get(0)?.get("id")?.as_str()?.to_string())
    }

    /// The OpenAI API has no abort endpoint; vLLM aborts a request when its connection closes,
    /// which happens when the pool drops the call.
    async fn abort(&self, _rid: &str) -> Result<()> {
        Ok(())
    }
}

/// Parses `choices[0]` of a `/v1/completions` answer.
pub(crate) fn parse_completion(server: &str, answer: &Value) -> Result<RawOutput> {
    let broken = |message: String| RolloutError::Protocol {
        server: server.to_string(),
        message,
    };
    let choice = answer.pointer("/choices/0").ok_or_else(|| {
        broken(format!(
            "/v1/completions answer has no choices[0]: {}",
            excerpt(&answer.to_string())
        ))
    })?;
    let logprobs = token_logprobs(choice).map_err(&broken)?;
    let output_ids = completion_ids(choice).map_err(&broken)?;
    if output_ids.len() != logprobs.len() {
        return Err(broken(format!(
            "{} output token ids but {} logprobs.token_logprobs",
            output_ids.len(),
            logprobs.len()
        )));
    }
    let finish = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("abort") => FinishReason::Abort,
        other => {
            return Err(broken(format!(
                "choices[0].finish_reason is {other:?}, expected stop, length or abort"
            )))
        }
    };
    Ok(RawOutput {
        output_ids,
        logprobs,
        versions: None,
        weight_version: None,
        finish,
    })
}

fn token_logprobs(choice: &Value) -> std::result::Result<Vec<f32>, String> {
    let list = choice
        .pointer("/logprobs/token_logprobs")
        .and_then(Value::as_array)
        .ok_or(
            "choices[0].logprobs.token_logprobs is missing (the request asked for logprobs: 1)",
        )?;
    list.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64().map(|f| f as f32).ok_or_else(|| {
                format!("choices[0].logprobs.token_logprobs[{i}] = {x} is not a number")
            })
        })
        .collect()
}

/// Token ids from `choices[0].token_ids`, else from `logprobs.tokens` written as
/// `"token_id:123"` (vLLM's `return_tokens_as_token_ids`).
fn completion_ids(choice: &Value) -> std::result::Result<Vec<u32>, String> {
    if let Some(Value::Array(ids)) = choice.get("token_ids") {
        return ids
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("choices[0].token_ids[{i}] = {x} is not a token id"))
            })
            .collect();
    }
    let tokens = choice
        .pointer("/logprobs/tokens")
        .and_then(Value::as_array)
        .ok_or("choices[0] has neither token_ids nor logprobs.tokens")?;
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_str()
                .and_then(|s| s.strip_prefix("token_id:"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "choices[0].logprobs.tokens[{i}] = {} is not \"token_id:<id>\": the \
                         server must support return_tokens_as_token_ids (vLLM: it is a request \
                         option; enable it) or return choices[0].token_ids",
                        excerpt(&t.to_string())
                    )
                })
        })
        .collect()
}

/// Where a [`ChatClient`] sends its requests and how hard it tries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// Base URL of the server (`http://host:port`; a trailing `/v1` is accepted). No default.
    pub base_url: String,
    /// Model name sent in every request. No default.
    pub model: String,
    /// Environment variable that holds the API key; none: no `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Timeout of one HTTP call, in seconds. Default 120.
    #[serde(default = "default_chat_timeout")]
    pub timeout_secs: f64,
    /// Calls per `chat()` at most (1 = no retry); only transient errors (connection, timeout,
    /// 5xx, 429) are retried. Default 4.
    #[serde(default = "default_chat_attempts")]
    pub max_attempts: u32,
    /// First back-off between attempts, in milliseconds; doubles each time. Default 500.
    #[serde(default = "default_chat_backoff_base")]
    pub backoff_base_ms: u64,
    /// Longest back-off, in milliseconds. Default 8000.
    #[serde(default = "default_chat_backoff_max")]
    pub backoff_max_ms: u64,
}

fn default_chat_timeout() -> f64 {
    120.0
}
fn default_chat_attempts() -> u32 {
    4
}
fn default_chat_backoff_base() -> u64 {
    500
}
fn default_chat_backoff_max() -> u64 {
    8000
}

impl ChatConfig {
    /// A config with the defaults for everything but the address and the model.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ChatConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            timeout_secs: default_chat_timeout(),
            max_attempts: default_chat_attempts(),
            backoff_base_ms: default_chat_backoff_base(),
            backoff_max_ms: default_chat_backoff_max(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return Err(RolloutError::config(
                "timeout_secs",
                "must be a positive number of seconds",
            ));
        }
        if self.max_attempts == 0 {
            return Err(RolloutError::config("max_attempts", "must be at least 1"));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(RolloutError::config(
                "backoff_base_ms",
                format!(
                    "{} exceeds backoff_max_ms {}",
                    self.backoff_base_ms, self.backoff_max_ms
                ),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(RolloutError::config("model", "must not be empty"));
        }
        Ok(())
    }
}

/// A chat model behind `/v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: Endpoint,
    config: ChatConfig,
}

impl ChatClient {
    pub fn new(config: ChatConfig) -> Result<Self> {
        config.validate()?;
        let key = ApiKey::from_optional_env("api_key_env", config.api_key_env.as_deref())?;
        let base = config.base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let http = Endpoint::new(base, Duration::from_secs_f64(config.timeout_secs), key).map_err(
            |e| match e {
                RolloutError::Config { message, .. } => RolloutError::config("base_url", message),
                other => other,
            },
        )?;
        Ok(ChatClient { http, config })
    }

    async fn chat_once(&self, body: &Value) -> Result<String> {
        let answer = self.http.post("/v1/chat/completions", body).await?;
        match answer.pointer("/choices/0/message/content") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(RolloutError::Protocol {
                server: self.http.address().to_string(),
                message: format!(
                    "/v1/chat/completions answer has no choices[0].message.content string: {}",
                    excerpt(&answer.to_string())
                ),
            }),
        }
    }
}

#[async_trait]
impl ChatModel for ChatClient {
    async fn chat(
        &self,
        messages: &[ChatMessage],
        max_tokens: u32,
        temperature: f32,
    ) -> Result<String> {
        let body = json!({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        });
        let base = Duration::from_millis(self.config.backoff_base_ms);
        let max = Duration::from_millis(self.config.backoff_max_ms);
        let mut attempt = 1;
        loop {
            match self.chat_once(&body).await {
                Err(e) if e.is_transient() && attempt < self.config.max_attempts => {
                    let wait = backoff(attempt, base, max);
                    tracing::debug!(server = self.http.address(), attempt, error = %e, ?wait, "chat call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "chat model {} at {}",
            self.config.model,
            self.http.address()
        )
    }
}
