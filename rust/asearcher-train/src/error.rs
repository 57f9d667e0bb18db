//! The error type of the trainer. Every variant names what failed (a config key, a file, a
//! trajectory) so the message alone says what to fix; torch and rollout errors pass through.

use std::path::PathBuf;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is wrong or unknown; `field` is its dotted path (`ppo.eps_clip`).
    #[error("invalid train config `{field}`: {message}")]
    Config { field: String, message: String },
    #[error(transparent)]
    Torch(#[from] asearcher_torch::TorchError),
    #[error(transparent)]
    Rollout(#[from] asearcher_rollout::RolloutError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Training data that cannot be used (a trajectory whose turns do not line up, an empty
    /// batch); the message names the trajectory or group.
    #[error("bad training data: {0}")]
    Data(String),
    /// Weight sync to the generator or the servers failed; the message names the target.
    #[error("weight sync to {target} failed: {message}")]
    WeightSync { target: String, message: String },
    /// A learner outside this crate (the FSDP ranks) failed; the message says where.
    #[error("the learner failed: {0}")]
    Learner(String),
    /// The data ran out before a single step: every group was filtered or dropped. The message
    /// says how many, why, and what to change.
    #[error("no training step was made: {0}")]
    NoSteps(String),
    /// `run.out_dir` holds a run of a different setup; the message names each differing key.
    #[error(transparent)]
    ResumeMismatch(#[from] asearcher_config::fingerprint::ResumeMismatch),
    /// The run was stopped (Ctrl-C, `stop()`), after the last complete step.
    #[error("training stopped: {0}")]
    Stopped(String),
}

impl TrainError {
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        TrainError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<asearcher_config::ConfigError> for TrainError {
    fn from(e: asearcher_config::ConfigError) -> Self {
        use asearcher_config::ConfigError as C;
        match e {
            C::Io { path, source } => TrainError::Io { path, source },
            C::Syntax { path, msg } => TrainError::config(path.display().to_string(), msg),
            C::Invalid { field, msg } => TrainError::config(field, msg),
        }
    }
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        TrainError::Torch(e.into())
    }
}
