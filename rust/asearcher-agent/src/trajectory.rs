//! The trajectory record: everything one agent run did, turn by turn (prompt and output tokens,
//! logprobs, policy versions, parsed actions and protocol issues, tool calls with latency and
//! errors), its answer, rewards and errors. Serialised one trajectory per jsonl line; packed into
//! training sequences with [`Trajectory::to_sequences`].
//!
//! Prompts are stored as a delta: `prompt_prefix_len` tokens shared with the previous turn's
//! prompt + output, then the new tokens, so a 128-turn trajectory does not store its context 128
//! times.

use crate::agent::{GenFinish, StopReason};
use crate::protocol::{Action, ProtocolIssue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One tool call made after a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// `"search"` or `"access"`.
    pub tool: String,
    pub input: String,
    pub latency_ms: f64,
    pub cached: bool,
    /// The failure, when the call failed (after the toolbox's own retries).
    pub error: Option<String>,
    /// Characters of observation shown to the model.
    pub observation_chars: usize,
}

/// One generation and what followed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub role: String,
    /// Leading prompt tokens equal to the previous turn's prompt + output (0: a fresh prompt).
    pub prompt_prefix_len: usize,
    /// The prompt tokens after the shared prefix.
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub output_logprobs: Vec<f32>,
    pub output_versions: Vec<u64>,
    pub output_text: String,
    pub finish: GenFinish,
    pub action: Option<Action>,
    pub issues: Vec<ProtocolIssue>,
    pub tool: Option<ToolCallRecord>,
    /// Inference server that produced the (final part of the) output.
    pub server: Option<String>,
    /// Times the generation was aborted (weight update) and re-sent with its tokens so far.
    pub resends: u32,
    pub gen_latency_ms: f64,
}

/// A failure attached to a trajectory. The run goes on; the trajectory is kept, retried or dropped
/// as the scheduler is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryError {
    /// `"inference"`, `"tool"`, `"reward"`, `"timeout"`, `"agent"`.
    pub kind: String,
    pub message: String,
    /// A Python traceback, when a Python reward plugin raised.
    pub traceback: Option<String>,
    /// The turn it happened at, if any.
    pub turn: Option<usize>,
}

/// One agent run on one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// `"{question_id}#{sample}"`, unique within a run.
    pub id: String,
    pub question_id: String,
    /// Index of this sample in its group (0..n).
    pub sample: u32,
    pub question: String,
    /// Gold answers.
    pub answers: Vec<String>,
    pub agent: String,
    pub turns: Vec<TurnRecord>,
    pub answer: Option<String>,
    pub stop_reason: StopReason,
    /// Every score computed (`"f1"`, `"em"`, `"cem"`, `"judge"`, `"format"`, plugin names...).
    pub rewards: BTreeMap<String, f64>,
    /// The training reward (the configured primary score); `None` until scored or when scoring failed.
    pub reward: Option<f64>,
    pub errors: Vec<TrajectoryError>,
    /// Unix time (seconds) the run started and its wall-clock duration.
    pub started_at: f64,
    pub elapsed_s: f64,
    /// The question line's extra fields, kept for the user.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}
