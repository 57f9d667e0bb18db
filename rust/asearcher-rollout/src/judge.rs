//! The LLM-as-judge reward: [`JudgeConfig`] (where the judge is, how it is asked, how hard to
//! try) and [`JudgeScorer`], a [`Scorer`] stage that asks an OpenAI-compatible chat model whether
//! each trajectory's answer matches the gold answers and records `rewards["judge"]` = 1 or 0.
//!
//! The prompt holds a line `Ground truth: <gold answer>` and a line `Response: <answer>` (the
//! scripted judge's convention, and a plain one for real judges); the judge replies with JSON
//! `{"rationale": ..., "judgement": "correct" | "incorrect"}`, read leniently (code fences,
//! surrounding prose, any case). With several gold answers the judge is asked about each in turn
//! until one is judged correct (the max over gold answers, as the rule metrics do). A verdict
//! that cannot be read after `max_retries` retries scores 0 and is recorded on the trajectory
//! (error kind `"reward"`, with the judge's raw reply, truncated).

use crate::client::openai::{ChatClient, ChatConfig};
use crate::client::ChatModel;
use crate::reward::Scorer;
use crate::{Result, RolloutError};
use asearcher_agent::trajectory::{Trajectory, TrajectoryError};
use asearcher_tokenizer::ChatMessage;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The key the judge's score is recorded under.
pub const JUDGE_KEY: &str = "judge";

/// Most retries a config may ask for.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// Characters of a judge reply kept in a recorded error.
const RAW_REPLY_CHARS: usize = 500;

/// The default prompt; `{question}`, `{ground_truth}` and `{response}` are filled in.
pub const DEFAULT_JUDGE_PROMPT: &str = "You are grading the answer of a question-answering \
agent. Decide whether the response gives the same answer as the ground truth (wording, case and \
articles may differ; a response that hedges between several answers is incorrect).\n\
Reply with JSON only: {\"rationale\": \"<one sentence>\", \"judgement\": \"correct\" or \
\"incorrect\"}.\n\n\
Question: {question}\n\
Ground truth: {ground_truth}\n\
Response: {response}\n";

/// Where the judge is and how it is asked. Only `url` and `model` have no default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Base URL of the OpenAI-compatible server (`http://host:port`, a trailing `/v1` is fine).
    pub url: String,
    /// Model name sent in every request.
    pub model: String,
    /// Environment variable holding the API key; none: no `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra calls after a failed one (unreadable verdict or transport error), at most 10.
    /// Default 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Timeout of one call, in seconds. Default 60.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Tokens the judge may write per verdict. Default 512.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature of the judge. Default 0.
    #[serde(default)]
    pub temperature: f32,
    /// Prompt template with `{question}`, `{ground_truth}` and `{response}`.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Judge calls in flight at once, over all groups. Default 16.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
}

fn default_max_retries() -> u32 {
    3
}
fn default_timeout() -> f64 {
    60.0
}
fn default_max_tokens() -> u32 {
    512
}
fn default_prompt() -> String {
    DEFAULT_JUDGE_PROMPT.to_string()
}
fn default_max_concurrent() -> usize {
    16
}

impl JudgeConfig {
    /// A config with defaults for everything but the address and the model.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        JudgeConfig {
            url: url.into(),
            model: model.into(),
            api_key_env: None,
            max_retries: default_max_retries(),
            timeout_s: default_timeout(),
            max_tokens: default_max_tokens(),
            temperature: 0.0,
            prompt: default_prompt(),
            max_concurrent: default_max_concurrent(),
        }
    }

    /// Checks the values; the error names the field (as `judge.<field>`).
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, msg: String| Err(RolloutError::config(format!("judge.{field}"), msg));
        if self.max_retries > MAX_RETRIES_LIMIT {
            return bad(
                "max_retries",
                format!(
                    "{} is over the limit of {MAX_RETRIES_LIMIT}",
                    self.max_retries
                ),
            );
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return bad("timeout_s", "must be a positive number of seconds".into());
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if self.max_concurrent == 0 {
            return bad("max_concurrent", "must be at least 1".into());
        }
        for slot in ["{ground_truth}", "{response}"] {
            if !self.prompt.contains(slot) {
                return bad("prompt", format!("the template has no `{slot}`"));
            }
        }
        Ok(())
    }

    /// The chat client this config describes (one HTTP attempt per call: the judge's own retry
    /// loop counts every call).
    pub fn client(&self) -> Result<ChatClient> {
        let mut chat = ChatConfig::new(self.url.clone(), self.model.clone());
        chat.api_key_env = self.api_key_env.clone();
        chat.timeout_secs = self.timeout_s;
        chat.max_attempts = 1;
        ChatClient::new(chat).map_err(|e| match e {
            RolloutError::Config { field, message } => {
                RolloutError::config(format!("judge.{}", judge_field(&field)), message)
            }
            other => other,
        })
    }
}

/// The judge config's name for a chat config field.
fn judge_field(chat_field: &str) -> &str {
    match chat_field {
        "base_url" => "url",
        "timeout_secs" => "timeout_s",
        other => other,
    }
}

/// A verdict read from a judge reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Incorrect,
}

/// Reads `{"judgement": "correct" | "incorrect"}` from a reply: the whole reply, or the first JSON
/// object in it that has a `judgement` (or `judgment`) string, inside code fences or prose.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    reply
        .match_indices('{')
        .filter_map(|(i, _)| first_json_value(&reply[i..]))
        .find_map(|v| verdict_of(&v))
}

fn first_json_value(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
        .ok()
}

fn verdict_of(value: &Value) -> Option<Verdict> {
    let obj = value.as_object()?;
    let judgement = obj
        .get("judgement")
        .or_else(|| obj.get("judgment"))?
        .as_str()?;
    match judgement.trim().to_lowercase().as_str() {
        "correct" => Some(Verdict::Correct),
        "incorrect" => Some(Verdict::Incorrect),
        _ => None,
    }
}

/// Fills the template. Newlines in the answer become spaces so the `Response:` line holds all of it.
pub fn render_prompt(template: &str, question: &str, ground_truth: &str, response: &str) -> String {
    let response = response.split_whitespace().collect::<Vec<_>>().join(" ");
    template
        .replace("{question}", question)
        .replace("{ground_truth}", ground_truth)
        .replace("{response}", &response)
}

/// What the judge said about one trajectory.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Scored(f64),
    /// No verdict could be had; the message says why (with the raw reply, truncated).
    Failed(String),
}

/// The LLM judge as a scoring stage (see the module docs).
pub struct JudgeScorer {
    model: Arc<dyn ChatModel>,
    cfg: JudgeConfig,
    permits: Arc<Semaphore>,
}

impl JudgeScorer {
    /// A judge over `model` (the config's `url`, `model` and `api_key_env` are not used).
    pub fn new(model: Arc<dyn ChatModel>, cfg: JudgeConfig) -> Result<Self> {
        cfg.validate()?;
        let permits = Arc::new(Semaphore::new(cfg.max_concurrent));
        Ok(Self {
            model,
            cfg,
            permits,
        })
    }

    /// A judge over the chat client the config describes.
    pub fn from_config(cfg: JudgeConfig) -> Result<Self> {
        cfg.validate()?;
        let client = cfg.client()?;
        Self::new(Arc::new(client), cfg)
    }

    pub fn config(&self) -> &JudgeConfig {
        &self.cfg
    }

    /// Judges one trajectory: 0 without an answer (no call), else the max over gold answers.
    async fn judge(&self, t: &Trajectory) -> Outcome {
        let Some(answer) = t.answer.as_deref().filter(|a| !a.trim().is_empty()) else {
            return Outcome::Scored(0.0);
        };
        for gold in &t.answers {
            match self.ask(&t.question, gold, answer).await {
                Ok(Verdict::Correct) => return Outcome::Scored(1.0),
                Ok(Verdict::Incorrect) => {}
                Err(message) => return Outcome::Failed(message),
            }
        }
        Outcome::Scored(0.0)
    }

    /// One verdict, with up to `max_retries` retries after an unreadable reply or a failed call.
    async fn ask(
        &self,
        question: &str,
        gold: &str,
        answer: &str,
    ) -> std::result::Result<Verdict, String> {
        let prompt = render_prompt(&self.cfg.prompt, question, gold, answer);
        let messages = [ChatMessage::new("user", prompt)];
        let mut last = String::new();
        for attempt in 0..=self.cfg.max_retries {
            if attempt > 0 {
                tokio::time::sleep(retry_pause(attempt)).await;
            }
            match self.call(&messages).await {
                Ok(reply) => match parse_verdict(&reply) {
                    Some(v) => return Ok(v),
                    None => last = format!("unreadable verdict: {}", truncate(&reply)),
                },
                Err(e) if e.is_transient() => last = format!("judge call failed: {e}"),
                Err(e) => return Err(format!("judge call failed: {e}")),
            }
            tracing::debug!(attempt, error = %last, "judge attempt failed");
        }
        Err(format!(
            "no verdict after {} calls; last: {last}",
            self.cfg.max_retries + 1
        ))
    }

    async fn call(&self, messages: &[ChatMessage]) -> Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| RolloutError::Stopped)?;
        self.model
            .chat(messages, self.cfg.max_tokens, self.cfg.temperature)
            .await
    }
}

fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt.min(6)))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(RAW_REPLY_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[async_trait]
impl Scorer for JudgeScorer {
    /// Judges the batch concurrently (bounded by `max_concurrent` calls over all batches).
    async fn score(&self, batch: &mut [Trajectory]) {
        let outcomes = futures::future::join_all(batch.iter().map(|t| self.judge(t))).await;
        for (t, outcome) in batch.iter_mut().zip(outcomes) {
            match outcome {
                Outcome::Scored(score) => {
                    t.rewards.insert(JUDGE_KEY.into(), score);
                }
                Outcome::Failed(message) => {
                    t.rewards.insert(JUDGE_KEY.into(), 0.0);
                    let message = format!("reward `{JUDGE_KEY}` failed: {message}");
                    t.errors
                        .push(TrajectoryError::new("reward", message).at_stage(JUDGE_KEY));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
