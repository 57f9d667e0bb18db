//! The error type of the tools crate. Every variant names the input it is about.

use std::path::PathBuf;

/// Errors of search and page-access tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A corpus line that is not a valid document (1-based line number).
    #[error("{path}:{line}: {msg}")]
    BadCorpusLine {
        path: PathBuf,
        line: u64,
        msg: String,
    },
    #[error("index {path}: {msg}")]
    Index { path: PathBuf, msg: String },
    #[error("invalid setting `{name}`: {msg}")]
    Config { name: String, msg: String },
    /// An HTTP backend answered with an error or could not be reached.
    #[error("{backend} {url}: {msg}")]
    Backend {
        backend: String,
        url: String,
        msg: String,
    },
    /// Every address of a backend failed; `errors` lists the last error of each.
    #[error("all {backend} endpoints failed: {}", errors.join("; "))]
    AllBackendsFailed {
        backend: String,
        errors: Vec<String>,
    },
    /// The backend understood the request and refused it (HTTP 4xx): retrying will not help.
    #[error("{backend} {url} rejected the request (HTTP {status}): {msg}")]
    Rejected {
        backend: String,
        url: String,
        status: u16,
        msg: String,
    },
    #[error("{what} timed out after {secs:.1}s: {url}")]
    Timeout {
        what: String,
        url: String,
        secs: f64,
    },
    /// A page fetch refused by policy (address, scheme, content type, size).
    #[error("refused {url}: {reason}")]
    Refused { url: String, reason: String },
    /// Replay mode found no cached result for this request.
    #[error(
        "no cached result for {backend} {op} {key:?} (replay mode serves only cached results)"
    )]
    CacheMiss {
        backend: String,
        op: String,
        key: String,
    },
    /// Stopped on request (a progress callback asked to stop, e.g. on Ctrl-C).
    #[error("{what} cancelled")]
    Cancelled { what: String },
    #[error("missing secret: environment variable {var} is not set ({what})")]
    MissingSecret { var: String, what: String },
}

impl ToolError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ToolError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(name: impl Into<String>, msg: impl Into<String>) -> Self {
        ToolError::Config {
            name: name.into(),
            msg: msg.into(),
        }
    }

    pub fn refused(url: impl Into<String>, reason: impl Into<String>) -> Self {
        ToolError::Refused {
            url: url.into(),
            reason: reason.into(),
        }
    }

    /// Whether retrying the same request elsewhere or later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ToolError::Backend { .. }
                | ToolError::Timeout { .. }
                | ToolError::AllBackendsFailed { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, ToolError>;

/// An error and its sources, joined with ": " (a source already contained in the text is skipped).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}
