//! The trajectory record: everything one agent run did, turn by turn (prompt and output tokens,
//! logprobs, policy versions, parsed actions and protocol issues, tool calls with latency and
//! errors), its answer, rewards and errors. Serialised one trajectory per jsonl line; packed into
//! training sequences with [`Trajectory::to_sequences`].
//!
//! Prompts are stored as a delta: `prompt_prefix_len` tokens shared with the previous turn's
//! prompt + output, then the new tokens, so a 128-turn trajectory does not store its context 128
//! times.

use crate::agent::{
    GenFinish, GenerateCall, Generation, StopReason, ToolCall, ToolObservation, TurnReading,
};
use crate::agents::{ROLE_ACT, ROLE_ANSWER};
use crate::packing::{pack_turns, MisalignedTurn, TrainingSequence, TurnTokens};
use crate::protocol::{Action, ParsedTurn, ProtocolIssue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

mod html;
#[cfg(test)]
mod tests;

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
    /// The observation text the tool returned (what the agent was shown: the rendered
    /// documents, or the page's parts), or the error message the agent observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<String>,
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
    /// What failed within its kind: the reward stage (a plugin's name, `judge`, `primary`), the
    /// tool (`search`, `access`). Reports count errors per stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

impl TrajectoryError {
    /// An error of `kind` with its message (no traceback, turn or stage).
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        TrajectoryError {
            kind: kind.into(),
            message: message.into(),
            traceback: None,
            turn: None,
            stage: None,
        }
    }

    /// The same error, attributed to `stage`.
    pub fn at_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }
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
    /// The errors of earlier runs of this sample that failed and were run again (an evaluation
    /// resumed over failed trajectories keeps what went wrong before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_errors: Vec<TrajectoryError>,
    /// Unix time (seconds) the run started and its wall-clock duration.
    pub started_at: f64,
    pub elapsed_s: f64,
    /// The question line's extra fields, kept for the user.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl ToolCallRecord {
    /// The record of a tool call and what the agent was shown (`observation_chars`).
    pub fn new(
        call: &ToolCall,
        observation: &ToolObservation,
        latency_ms: f64,
        cached: bool,
    ) -> Self {
        ToolCallRecord {
            tool: call.kind.name().to_string(),
            input: call.argument.clone(),
            latency_ms,
            cached,
            error: observation.error.clone(),
            observation_chars: observation.text.chars().count()
                + observation
                    .chunks
                    .iter()
                    .map(|c| c.chars().count())
                    .sum::<usize>(),
            observation: Some(observation_text(observation)),
        }
    }
}

/// The text of an observation: its rendered text, else its chunks, else its error.
fn observation_text(o: &ToolObservation) -> String {
    if !o.text.is_empty() {
        o.text.clone()
    } else if !o.chunks.is_empty() {
        o.chunks.join("\n\n")
    } else {
        o.error.clone().unwrap_or_default()
    }
}

impl TurnRecord {
    /// The record of one generation: the prompt stored as a delta against `prev_full` (the
    /// previous turn's prompt + output; empty for the first turn), see [`delta`].
    pub fn new(
        call: &GenerateCall,
        generation: &Generation,
        reading: TurnReading,
        prev_full: &[u32],
    ) -> Self {
        let (prompt_prefix_len, prompt_ids) = delta(prev_full, &call.prompt_ids);
        TurnRecord {
            role: call.role.clone(),
            prompt_prefix_len,
            prompt_ids,
            output_ids: generation.output_ids.clone(),
            output_logprobs: generation.logprobs.clone(),
            output_versions: generation.versions.clone(),
            output_text: generation.text.clone(),
            finish: generation.finish,
            action: reading.action,
            issues: reading.issues,
            tool: None,
            server: None,
            resends: 0,
            gen_latency_ms: 0.0,
        }
    }

    /// Whether this turn breaks the protocol (no runnable action where one was due).
    pub fn failed(&self) -> bool {
        is_action_role(&self.role) && self.action.is_none()
    }
}

/// Roles whose generation must hold an action (the others write notes or summaries).
pub fn is_action_role(role: &str) -> bool {
    role == ROLE_ACT || role == ROLE_ANSWER
}

/// A prompt as a delta against the previous turn's prompt + output: the length of their common
/// prefix and the prompt tokens after it. Reconstruct with `prev_full[..len] ++ tail`.
pub fn delta(prev_full: &[u32], prompt: &[u32]) -> (usize, Vec<u32>) {
    let len = prev_full
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    (len, prompt[len..].to_vec())
}

/// Reading or writing a trajectory jsonl file failed; names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a trajectory: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("trajectory `{id}`: cannot serialise: {msg}")]
    Serialise { id: String, msg: String },
}

/// What to do with a torn line: a line cut short (truncated JSON), as a writer killed mid-line
/// leaves behind (later appends then follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TornLine {
    /// Skip it: the trajectory it held is lost, the rest of the file is read.
    #[default]
    Skip,
    /// Fail with its line number.
    Error,
}

impl Trajectory {
    /// A new, empty trajectory; the runner fills turns, answer and stop reason. `started_at` is
    /// now; `stop_reason` is `Error` until the runner sets the real one.
    pub fn new(
        question_id: &str,
        sample: u32,
        question: &str,
        answers: Vec<String>,
        agent: &str,
    ) -> Self {
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Trajectory {
            id: format!("{question_id}#{sample}"),
            question_id: question_id.to_string(),
            sample,
            question: question.to_string(),
            answers,
            agent: agent.to_string(),
            turns: Vec::new(),
            answer: None,
            stop_reason: StopReason::Error,
            rewards: BTreeMap::new(),
            reward: None,
            errors: Vec::new(),
            earlier_errors: Vec::new(),
            started_at,
            elapsed_s: 0.0,
            metadata: serde_json::Map::new(),
        }
    }

    /// Tool calls of this run that failed (after the toolbox's retries).
    pub fn failed_tool_calls(&self) -> usize {
        self.turns
            .iter()
            .filter(|turn| turn.tool.as_ref().is_some_and(|c| c.error.is_some()))
            .count()
    }

    /// The reward stages that recorded an error on this run, each once (`reward` for an error
    /// saved without a stage).
    pub fn reward_error_stages(&self) -> std::collections::BTreeSet<&str> {
        self.errors
            .iter()
            .filter(|e| e.kind == "reward")
            .map(|e| e.stage.as_deref().unwrap_or("reward"))
            .collect()
    }

    /// The full prompt of turn `turn` rebuilt from the deltas; `None` past the last turn or when
    /// a stored prefix is longer than the previous turn's prompt + output.
    pub fn full_prompt_ids(&self, turn: usize) -> Option<Vec<u32>> {
        let mut full: Vec<u32> = Vec::new();
        for (i, t) in self.turns.iter().enumerate().take(turn + 1) {
            if t.prompt_prefix_len > full.len() {
                return None;
            }
            full.truncate(t.prompt_prefix_len);
            full.extend_from_slice(&t.prompt_ids);
            if i == turn {
                return Some(full);
            }
            full.extend_from_slice(&t.output_ids);
        }
        None
    }

    /// Every turn's full prompt and output tokens, for packing. A stored prefix longer than the
    /// previous turn's prompt + output (a corrupt record) is an error naming the turn.
    pub fn turn_tokens(&self) -> Result<Vec<TurnTokens>, MisalignedTurn> {
        let mut out: Vec<TurnTokens> = Vec::with_capacity(self.turns.len());
        let mut prev: Vec<u32> = Vec::new();
        for (i, t) in self.turns.iter().enumerate() {
            if t.prompt_prefix_len > prev.len() {
                return Err(MisalignedTurn {
                    turn: i,
                    field: "prompt_prefix_len",
                    got: t.prompt_prefix_len,
                    expected: prev.len(),
                });
            }
            let mut prompt = prev[..t.prompt_prefix_len].to_vec();
            prompt.extend_from_slice(&t.prompt_ids);
            prev.clear();
            prev.extend_from_slice(&prompt);
            prev.extend_from_slice(&t.output_ids);
            out.push(TurnTokens {
                prompt_ids: prompt,
                output_ids: t.output_ids.clone(),
                output_logprobs: t.output_logprobs.clone(),
                output_versions: t.output_versions.clone(),
            });
        }
        Ok(out)
    }

    /// The training sequences of this trajectory (see [`crate::packing`]).
    pub fn to_sequences(&self) -> Result<Vec<TrainingSequence>, MisalignedTurn> {
        pack_turns(&self.turn_tokens()?)
    }

    /// Number of generations.
    pub fn num_turns(&self) -> usize {
        self.turns.len()
    }

    /// Number of tool calls made.
    pub fn tool_calls(&self) -> usize {
        self.turns.iter().filter(|t| t.tool.is_some()).count()
    }

    /// Tokens generated over all turns.
    pub fn output_tokens(&self) -> usize {
        self.turns.iter().map(|t| t.output_ids.len()).sum()
    }

    /// Generations that should have held an action and did not.
    pub fn failed(&self) -> usize {
        self.turns.iter().filter(|t| t.failed()).count()
    }

    /// The parsed action turns (act and answer roles), as the format gate of
    /// [`crate::reward::score`] reads them.
    pub fn action_turns(&self) -> Vec<ParsedTurn> {
        self.turns
            .iter()
            .filter(|t| is_action_role(&t.role))
            .map(|t| ParsedTurn {
                action: t.action.clone(),
                issues: t.issues.clone(),
            })
            .collect()
    }

    /// One jsonl line (no newline).
    pub fn to_json_line(&self) -> Result<String, JsonlError> {
        serde_json::to_string(self).map_err(|e| JsonlError::Serialise {
            id: self.id.clone(),
            msg: e.to_string(),
        })
    }

    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Reads a trajectory jsonl file; blank lines are skipped, a bad line is an error naming
/// `path:line`, and a torn (truncated) line is skipped or an error as `torn` says.
pub fn read_jsonl(path: impl AsRef<Path>, torn: TornLine) -> Result<Vec<Trajectory>, JsonlError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| JsonlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Trajectory::from_json_line(line) {
            Ok(t) => out.push(t),
            Err(e) if e.is_eof() && torn == TornLine::Skip => {}
            Err(e) => {
                return Err(JsonlError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    msg: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Appends trajectories to a jsonl file (created if missing) in one write. A torn last line
/// left by a killed writer is ended first, so it cannot swallow the new first line.
pub fn append_jsonl(path: impl AsRef<Path>, trajectories: &[Trajectory]) -> Result<(), JsonlError> {
    let path = path.as_ref();
    let io = |source| JsonlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = String::new();
    if ends_without_newline(path).map_err(io)? {
        buf.push('\n');
    }
    for t in trajectories {
        buf.push_str(&t.to_json_line()?);
        buf.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(buf.as_bytes()).map_err(io)
}

fn ends_without_newline(path: &Path) -> std::io::Result<bool> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}
