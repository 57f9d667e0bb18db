//! Maps Rust errors onto the exception classes defined in `asearcher.exceptions`.

use asearcher_agent::trajectory::JsonlError;
use asearcher_rollout::RolloutError;
use asearcher_tokenizer::TokenizerError;
use asearcher_tools::ToolError;
use asearcher_torch::TorchError;
use pyo3::prelude::*;

mod py {
    pyo3::import_exception!(asearcher.exceptions, AsearcherIOError);
    pyo3::import_exception!(asearcher.exceptions, BackendError);
    pyo3::import_exception!(asearcher.exceptions, BadLineError);
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
}

/// The exception for an I/O failure at a named path or address.
pub fn io_err(msg: String) -> PyErr {
    py::AsearcherIOError::new_err(msg)
}

/// Builds the error lazily: no GIL is taken here, so this is safe on tokio workers.
fn tool_exception(e: &ToolError, msg: String) -> PyErr {
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

pub fn tool_err(e: ToolError) -> PyErr {
    let msg = e.to_string();
    tool_exception(&e, msg)
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

pub fn config_err(name: &str, msg: impl std::fmt::Display) -> PyErr {
    py::ConfigError::new_err(format!("invalid setting `{name}`: {msg}"))
}

/// A background task that panicked or was cancelled.
pub fn join_err(e: tokio::task::JoinError) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("background task failed: {e}"))
}

/// Rollout engine errors: inference failures, config, files, tools, rewards, a stopped engine.
pub fn rollout_err(e: RolloutError) -> PyErr {
    let msg = e.to_string();
    match e {
        RolloutError::Connection { .. }
        | RolloutError::Status { .. }
        | RolloutError::Protocol { .. }
        | RolloutError::AllServersFailed { .. } => py::InferenceError::new_err(msg),
        RolloutError::Timeout { .. } => py::InferenceTimeoutError::new_err(msg),
        RolloutError::Config { .. } => py::ConfigError::new_err(msg),
        RolloutError::Tool(t) => tool_exception(&t, msg),
        RolloutError::Tokenizer(TokenizerError::Io { .. }) | RolloutError::Io { .. } => {
            py::AsearcherIOError::new_err(msg)
        }
        RolloutError::Tokenizer(TokenizerError::Input { .. }) => py::ConfigError::new_err(msg),
        RolloutError::Tokenizer(_) => py::ModelError::new_err(msg),
        RolloutError::Reward { .. } => py::RewardError::new_err(msg),
        RolloutError::BadLine { .. } => py::BadLineError::new_err(msg),
        RolloutError::Stopped => py::EngineStoppedError::new_err(msg),
    }
}

/// A line that is not what it should be (a trajectory, a question); `msg` says why.
pub fn bad_line_err(msg: String) -> PyErr {
    py::BadLineError::new_err(msg)
}

/// Trajectory jsonl errors: the file (and line) is named.
pub fn jsonl_err(e: JsonlError) -> PyErr {
    let msg = e.to_string();
    match e {
        JsonlError::Io { .. } => py::AsearcherIOError::new_err(msg),
        JsonlError::Parse { .. } | JsonlError::Serialise { .. } => py::BadLineError::new_err(msg),
    }
}
