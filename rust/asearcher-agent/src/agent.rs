//! The agent contract: an agent is an I/O-free state machine. The rollout runner asks it for the
//! next step (generate from a prompt, call a tool, or stop), performs the step (inference server,
//! toolbox) and hands the result back. Agents never block, never do I/O and never panic on model
//! output; everything they decide is recorded by the runner on the trajectory.

use crate::protocol::{Action, ProtocolIssue};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Sampling of one generation (the runner adds the request id and affinity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1: off).
    pub top_p: f32,
    /// `-1` disables top-k.
    pub top_k: i32,
    /// Upper bound on new tokens of one turn; the agent may ask for fewer near its context budget.
    pub max_new_tokens: u32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            max_new_tokens: 1024,
        }
    }
}

/// A request to generate, made by the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateCall {
    /// What this generation is for (`"act"`, `"notes"`, `"read"`, `"answer"`...); recorded on the turn.
    pub role: String,
    /// The full prompt, in token ids.
    pub prompt_ids: Arc<Vec<u32>>,
    /// How many leading tokens of `prompt_ids` equal the previous turn's prompt + output
    /// (0 when the agent built a fresh prompt). Lets the record store only the new tokens.
    pub prefix_len: usize,
    /// Stop strings (the closing tags of the actions allowed now).
    pub stop: Vec<String>,
    /// Extra stop token ids (EOS ids are added by the runner).
    pub stop_token_ids: Vec<u32>,
    pub sampling: SamplingConfig,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenFinish {
    /// EOS, a stop token or a stop string.
    Stop,
    /// Hit `max_new_tokens` (or the server's context limit).
    Length,
    /// Aborted and not re-sent (only when the backend gives up re-sending).
    Abort,
}

/// What the backend generated for a [`GenerateCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub output_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub versions: Vec<u64>,
    pub finish: GenFinish,
    /// `output_ids` decoded by the agent's tokenizer (filled by the runner: the server's own text
    /// is never trusted, so parsing sees exactly the tokens the trainer will see).
    pub text: String,
}

/// A tool call the agent wants made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    Search,
    Access,
}

impl ToolKind {
    pub fn name(&self) -> &'static str {
        match self {
            ToolKind::Search => "search",
            ToolKind::Access => "access",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub kind: ToolKind,
    pub argument: String,
}

/// One retrieved document, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedDoc {
    pub url: String,
    /// `"Title"\ntext` (Search-R1 shape) or plain text.
    pub contents: String,
}

/// The result of a tool call, handed back to the agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolObservation {
    /// The toolbox's rendering in the ASearcher protocol (`[Doc k](url):` blocks or
    /// `>>>> Page n >>>>` chunks). Agents may re-render from `docs`/`chunks` instead.
    pub text: String,
    pub docs: Vec<ObservedDoc>,
    /// Page chunks (access), without headers; empty for a page with no text.
    pub chunks: Vec<String>,
    /// Set when the tool failed and the runner's policy is to let the agent go on; the agent
    /// shows the model a short error observation.
    pub error: Option<String>,
}

/// Why a trajectory ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The agent produced an answer.
    Answered,
    /// Turn limit reached without an answer (or after a forced answer phase that gave none).
    MaxTurns,
    /// The next prompt would exceed the context budget.
    ContextBudget,
    /// Too many generations broke the protocol.
    ProtocolFailures,
    /// The runner's wall-clock limit (set by the runner, never by an agent).
    Timeout,
    /// A tool or inference failure the runner did not retry (set by the runner).
    Error,
}

/// What the runner should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentStep {
    Generate(GenerateCall),
    Tool(ToolCall),
    Finish(StopReason),
}

/// How the agent read one generation; recorded on the turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TurnReading {
    pub action: Option<Action>,
    pub issues: Vec<ProtocolIssue>,
}

/// An agent: one per trajectory. `next_step` is called first and after every `on_generation` /
/// `on_tool`. A `Generate` step is always followed by `on_generation` with its result, a `Tool`
/// step by `on_tool`.
pub trait Agent: Send {
    /// The agent's name (`"asearcher"`, `"search_r1"`, `"reasoning"`), recorded on the trajectory.
    fn name(&self) -> &str;
    fn next_step(&mut self) -> AgentStep;
    fn on_generation(&mut self, call: &GenerateCall, generation: &Generation) -> TurnReading;
    fn on_tool(&mut self, call: &ToolCall, observation: &ToolObservation);
    /// The final answer, once there is one (the fallback answer of the reasoning agent included).
    fn answer(&self) -> Option<String>;
    /// Why the agent stopped with [`StopReason::Error`] (a prompt template that failed to
    /// render, an observation the tokenizer refused), for the trajectory's error list.
    fn error(&self) -> Option<String> {
        None
    }
}
