//! The QA synthesis agent: seed QAs (question, answers, optional facts) are grown, each by its
//! own state machine ([`machine`]), into harder questions whose every injected fact came
//! through our search tools and is recorded in a ledger ([`ledger`]); the LLM roles speak the
//! OpenAI chat protocol ([`llm`]). A run appends every finished seed to `events.jsonl`, so a
//! killed run resumes without redoing one, and writes `qas.jsonl` (training),
//! `{name}/test.jsonl` (evaluation layout), `provenance.jsonl` and `report.json` from that log,
//! in seed order: the same seeds and config give the same files.

pub mod config;
pub mod ledger;
pub mod llm;
pub mod machine;
mod output;

pub use config::{PromptTemplates, Role, RoleConfig, SynthConfig};
pub use ledger::{Fact, QaState, Seed};
pub use machine::{Ctx, SeedOutcome};
pub use output::{read_seeds, synthesize, RunStats};

use std::path::PathBuf;

/// Errors that stop a whole run (bad config, unreadable seeds, unwritable output). Per-seed
/// failures are rejections inside the run, never errors.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid setting `{name}`: {msg}")]
    Config { name: String, msg: String },
    #[error("{path}:{line}: {msg}")]
    BadSeed {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// The LLM endpoints answered none of the first seeds' calls: the same failure everywhere,
    /// so the run stops instead of recording every seed as finished.
    #[error("no LLM call was answered for the first {seeds} seeds ({detail}); check the role endpoints; nothing was recorded as finished")]
    Unanswered { seeds: usize, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SynthError {
    pub fn config(name: impl Into<String>, msg: impl Into<String>) -> Self {
        SynthError::Config {
            name: name.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SynthError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, SynthError>;
