//! The one mapping of Rust errors onto the exception classes of `asearcher.exceptions`: every
//! crate's error enum has exactly one function here, so the same failure raises the same class
//! through every entry point (RolloutEngine, evaluate, Trainer, the servers). Exceptions are
//! built lazily: no GIL is taken here, so these are safe on tokio workers.

use asearcher_agent::trajectory::JsonlError;
use asearcher_config::ConfigError;
use asearcher_rollout::RolloutError;
use asearcher_server::model_server::ModelServerError;
use asearcher_server::ScriptedPolicyError;
use asearcher_tokenizer::TokenizerError;
use asearcher_tools::ToolError;
use asearcher_torch::TorchError;
use asearcher_train::TrainError;
use pyo3::prelude::*;

mod py {
    pyo3::import_exception!(asearcher.exceptions, AsearcherIOError);
    pyo3::import_exception!(asearcher.exceptions, BackendError);
    pyo3::import_exception!(asearcher.exceptions, BadLineError);
    pyo3::import_exception!(asearcher.exceptions, DataError);
    pyo3::import_exception!(asearcher.exceptions, EngineStoppedError);
    pyo3::import_exception!(asearcher.exceptions, InferenceError);
    pyo3::import_exception!(asearcher.exceptions, InferenceTimeoutError);
    pyo3::import_exception!(asearcher.exceptions, RewardError);
    pyo3::import_exception!(asearcher.exceptions, CacheMissError);
    pyo3::import_exception!(asearcher.exceptions, CancelledError);
    pyo3::import_exception!(asearcher.exceptions, ConfigError);
    pyo3::import_exception!(asearcher.exceptions, CorpusError);
    pyo3::import_exception!(asearcher.exceptions, GenerationError);
    pyo3::import_exception!(asearcher.exceptions, MissingSecretError);
    pyo3::import_exception!(asearcher.exceptions, ModelError);
    pyo3::import_exception!(asearcher.exceptions, PageRefusedError);
    pyo3::import_exception!(asearcher.exceptions, RequestRejectedError);
    pyo3::import_exception!(asearcher.exceptions, SearchIndexError);
    pyo3::import_exception!(asearcher.exceptions, TensorError);
    pyo3::import_exception!(asearcher.exceptions, ToolTimeoutError);
    pyo3::import_exception!(asearcher.exceptions, TrainingError);
    pyo3::import_exception!(asearcher.exceptions, TrainingDataError);
    pyo3::import_exception!(asearcher.exceptions, WeightSyncError);
    pyo3::import_exception!(asearcher.exceptions, SystematicFailureError);
    pyo3::import_exception!(asearcher.exceptions, RunFailedError);
    pyo3::import_exception!(asearcher.exceptions, ResumeMismatchError);
}

/// The exception for an I/O failure at a named path or address.
pub fn io_err(msg: String) -> PyErr {
    py::AsearcherIOError::new_err(msg)
}

/// A setting that is wrong, named by its (dotted) key.
pub fn config_err(name: &str, msg: impl std::fmt::Display) -> PyErr {
    py::ConfigError::new_err(format!("invalid setting `{name}`: {msg}"))
}

/// Misuse of the trainer or a worker thread that could not start or ended without a result.
pub fn training_err(msg: impl Into<String>) -> PyErr {
    py::TrainingError::new_err(msg.into())
}

/// A result that could not be turned into JSON for Python (a bug, never bad input).
pub fn serialise_err(what: &str, e: serde_json::Error) -> PyErr {
    py::GenerationError::new_err(format!("cannot serialise {what}: {e}"))
}

/// A background task that panicked or was cancelled.
pub fn join_err(e: tokio::task::JoinError) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("background task failed: {e}"))
}

/// A line that is not what it should be (a trajectory, a question); `msg` says why.
pub fn bad_line_err(msg: String) -> PyErr {
    py::BadLineError::new_err(msg)
}

/// Config documents: an unreadable file, bad syntax, an unknown key or a bad value.
pub fn config_doc_err(e: ConfigError) -> PyErr {
    let msg = e.to_string();
    match e {
        ConfigError::Io { .. } => py::AsearcherIOError::new_err(msg),
        ConfigError::Syntax { .. } | ConfigError::Invalid { .. } => py::ConfigError::new_err(msg),
    }
}

pub fn tool_err(e: ToolError) -> PyErr {
    let msg = e.to_string();
    match e {
        ToolError::Io { .. } => py::AsearcherIOError::new_err(msg),
        ToolError::BadCorpusLine { .. } => py::CorpusError::new_err(msg),
        ToolError::Index { .. } => py::SearchIndexError::new_err(msg),
        ToolError::Config { .. } => py::ConfigError::new_err(msg),
        ToolError::Backend { .. } | ToolError::AllBackendsFailed { .. } => {
            py::BackendError::new_err(msg)
        }
        ToolError::Rejected { .. } => py::RequestRejectedError::new_err(msg),
        ToolError::Timeout { .. } => py::ToolTimeoutError::new_err(msg),
        ToolError::Refused { .. } => py::PageRefusedError::new_err(msg),
        ToolError::CacheMiss { .. } => py::CacheMissError::new_err(msg),
        ToolError::MissingSecret { .. } => py::MissingSecretError::new_err(msg),
        ToolError::Cancelled { .. } => py::CancelledError::new_err(msg),
    }
}

pub fn tokenizer_err(e: TokenizerError) -> PyErr {
    let msg = e.to_string();
    match e {
        TokenizerError::Io { .. } => py::AsearcherIOError::new_err(msg),
        TokenizerError::BadFile { .. } | TokenizerError::Template { .. } => {
            py::ModelError::new_err(msg)
        }
        TokenizerError::Input { .. } => py::ConfigError::new_err(msg),
    }
}

pub fn torch_err(e: TorchError) -> PyErr {
    let msg = e.to_string();
    match e {
        TorchError::Tch(_) | TorchError::BadTensor { .. } => py::TensorError::new_err(msg),
        TorchError::Io { .. } => py::AsearcherIOError::new_err(msg),
        TorchError::BadFile { .. } => py::ModelError::new_err(msg),
        TorchError::Config { .. } => py::ConfigError::new_err(msg),
        TorchError::Request { .. } | TorchError::EngineStopped(_) => {
            py::GenerationError::new_err(msg)
        }
    }
}

/// Rollout engine and evaluation errors: inference failures, config, files, tools, rewards, a
/// stopped engine.
pub fn rollout_err(e: RolloutError) -> PyErr {
    let msg = e.to_string();
    match e {
        RolloutError::Connection { .. }
        | RolloutError::Status { .. }
        | RolloutError::Protocol { .. }
        | RolloutError::AllServersFailed { .. } => py::InferenceError::new_err(msg),
        RolloutError::Timeout { .. } => py::InferenceTimeoutError::new_err(msg),
        RolloutError::Config { .. } => py::ConfigError::new_err(msg),
        RolloutError::Tool(t) => tool_err(t),
        RolloutError::Tokenizer(t) => tokenizer_err(t),
        RolloutError::Io { .. } => py::AsearcherIOError::new_err(msg),
        RolloutError::Reward { .. } => py::RewardError::new_err(msg),
        RolloutError::BadLine { .. } => py::BadLineError::new_err(msg),
        RolloutError::BadData { .. } => py::DataError::new_err(msg),
        RolloutError::Stopped => py::EngineStoppedError::new_err(msg),
        RolloutError::Systematic { .. } => py::SystematicFailureError::new_err(msg),
        RolloutError::RunFailed { .. } => py::RunFailedError::new_err(msg),
        RolloutError::ResumeMismatch(_) => py::ResumeMismatchError::new_err(msg),
    }
}

/// Trainer errors (torch, rollout and config errors keep their classes).
pub fn train_err(e: TrainError) -> PyErr {
    let msg = e.to_string();
    match e {
        TrainError::Config { .. } => py::ConfigError::new_err(msg),
        TrainError::Torch(t) => torch_err(t),
        TrainError::Rollout(r) => rollout_err(r),
        TrainError::Io { .. } => io_err(msg),
        TrainError::Data(_) | TrainError::NoSteps(_) => py::TrainingDataError::new_err(msg),
        TrainError::ResumeMismatch(_) => py::ResumeMismatchError::new_err(msg),
        TrainError::WeightSync { .. } => py::WeightSyncError::new_err(msg),
        TrainError::Stopped(_) | TrainError::Learner(_) => py::TrainingError::new_err(msg),
    }
}

/// Trajectory jsonl errors: the file (and line) is named.
pub fn jsonl_err(e: JsonlError) -> PyErr {
    let msg = e.to_string();
    match e {
        JsonlError::Io { .. } => py::AsearcherIOError::new_err(msg),
        JsonlError::Parse { .. } | JsonlError::Serialise { .. } => py::BadLineError::new_err(msg),
    }
}

pub fn model_server_err(e: ModelServerError) -> PyErr {
    match e {
        ModelServerError::Tokenizer(e) => tokenizer_err(e),
        ModelServerError::Torch(e) => torch_err(e),
        ModelServerError::Bind { .. } => io_err(e.to_string()),
    }
}

pub fn scripted_err(e: ScriptedPolicyError) -> PyErr {
    let msg = e.to_string();
    match e {
        ScriptedPolicyError::Config { .. } => py::ConfigError::new_err(msg),
        ScriptedPolicyError::QuestionsFile { .. } => py::BadLineError::new_err(msg),
        ScriptedPolicyError::Io { .. } | ScriptedPolicyError::Bind { .. } => io_err(msg),
        ScriptedPolicyError::Tokenizer(t) => tokenizer_err(t),
    }
}

/// Synthesis: a bad config, a bad seed line, an unwritable output.
pub fn synth_err(e: asearcher_synth::SynthError) -> PyErr {
    use asearcher_synth::SynthError as E;
    let msg = e.to_string();
    match e {
        E::Config { .. } => py::ConfigError::new_err(msg),
        E::BadSeed { .. } => py::BadLineError::new_err(msg),
        E::Io { .. } => py::AsearcherIOError::new_err(msg),
        E::Unanswered { .. } => py::SystematicFailureError::new_err(msg),
    }
}
