//! The error type of the rollout engine. Every variant names what failed (a server address, a
//! file and line, a config field) so the message alone tells the user what to fix.

use std::path::PathBuf;

pub type Result<T, E = RolloutError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The server could not be reached or the connection broke.
    #[error("inference server {server}: {message}")]
    Connection { server: String, message: String },
    /// The server answered with an HTTP error status.
    #[error("inference server {server} answered HTTP {status}: {body}")]
    Status {
        server: String,
        status: u16,
        body: String,
    },
    /// The server's answer does not follow the protocol (bad JSON, missing field, length mismatch).
    #[error("inference server {server} broke the protocol: {message}")]
    Protocol { server: String, message: String },
    #[error("inference server {server} timed out after {secs:.1}s")]
    Timeout { server: String, secs: f64 },
    /// Every server was tried (with retries) and failed; the last error of each is listed.
    #[error("all inference servers failed: {}", .attempts.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>().join("; "))]
    AllServersFailed { attempts: Vec<(String, String)> },
    /// A configuration value is wrong; `field` names it.
    #[error("invalid rollout config `{field}`: {message}")]
    Config { field: String, message: String },
    #[error(transparent)]
    Tool(#[from] asearcher_tools::ToolError),
    #[error(transparent)]
    Tokenizer(#[from] asearcher_tokenizer::TokenizerError),
    /// A reward function or the judge failed for a trajectory.
    #[error("reward `{name}` failed: {message}")]
    Reward { name: String, message: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed line in a jsonl file (questions or trajectories).
    #[error("{}:{line}: {message}", .path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A data file that cannot be used as a whole (no questions, a question id twice); the
    /// message says what is wrong with it.
    #[error("{}: {message}", .path.display())]
    BadData { path: PathBuf, message: String },
    /// The engine was shut down while the call waited.
    #[error("the rollout engine has stopped")]
    Stopped,
    /// The first trajectories (or tool calls) all failed the same way: a systematic error, not
    /// bad luck. The engine stopped; `hint` names what to check.
    #[error("systematic failure: the first {count} {what} all failed with the same error ({kind}): {message}\n{hint}")]
    Systematic {
        what: String,
        count: u32,
        kind: String,
        message: String,
        hint: String,
    },
    /// A run finished but produced nothing usable (every trajectory or tool call failed).
    #[error("{message}")]
    RunFailed { message: String },
    /// An output directory holds results of a different setup.
    #[error(transparent)]
    ResumeMismatch(#[from] asearcher_config::fingerprint::ResumeMismatch),
}

impl RolloutError {
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether retrying (on this or another server) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
