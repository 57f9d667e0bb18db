//! Maps Rust errors onto the exception classes defined in `asearcher.exceptions`.

use asearcher_tools::ToolError;
use asearcher_torch::TorchError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// Builds an instance of `asearcher.exceptions.<class>` with `msg`.
pub fn raise(class: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        let cls = py
            .import("asearcher.exceptions")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match cls {
            Ok(cls) => PyErr::from_type(cls, msg),
            Err(e) => e,
        }
    })
}

fn tool_class(e: &ToolError) -> &'static str {
    match e {
        ToolError::Io { .. } => "AsearcherIOError",
        ToolError::BadCorpusLine { .. } => "CorpusError",
        ToolError::Index { .. } => "SearchIndexError",
        ToolError::Config { .. } => "ConfigError",
        ToolError::Backend { .. } | ToolError::AllBackendsFailed { .. } => "BackendError",
        ToolError::Rejected { .. } => "RequestRejectedError",
        ToolError::Timeout { .. } => "ToolTimeoutError",
        ToolError::Refused { .. } => "PageRefusedError",
        ToolError::CacheMiss { .. } => "CacheMissError",
        ToolError::MissingSecret { .. } => "MissingSecretError",
        ToolError::Cancelled { .. } => "CancelledError",
    }
}

pub fn tool_err(e: ToolError) -> PyErr {
    raise(tool_class(&e), e.to_string())
}

pub fn torch_err(e: TorchError) -> PyErr {
    raise("TensorError", e.to_string())
}

pub fn config_err(name: &str, msg: impl std::fmt::Display) -> PyErr {
    raise("ConfigError", format!("invalid setting `{name}`: {msg}"))
}

/// A background task that panicked or was cancelled.
pub fn join_err(e: tokio::task::JoinError) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("background task failed: {e}"))
}
