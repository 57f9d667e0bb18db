//! Everything of asearcher that links libtorch through tch: the Qwen-family model ([`model`]), the
//! continuous-batching generator ([`generate`]), the RL loss kernels ([`kernels`]) and the training
//! primitives ([`train`]).
//!
//! Tensors arrive from Python as borrowed views ([`TensorView`]: data pointer, shape, strides, dtype,
//! device) rather than through libtorch_python, so one abi3 wheel serves every CPython. A view is
//! only valid for the duration of the call that received it.

mod advantages;
pub mod encoder;
pub mod generate;
pub mod kernels;
pub mod model;
mod names;
pub mod train;
mod view;

pub use advantages::{
    group_advantages, group_advantages_into, shaped_group_advantages, shaped_group_advantages_into,
    token_advantages, token_advantages_into, GroupAdvantageSpec,
};
pub use names::{device_name, dtype_name, parse_device, parse_dtype};
pub use view::{DeviceSpec, TensorView};

use std::path::PathBuf;

/// Errors of the torch crate. Messages name the input (tensor, file, setting) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("tensor `{name}`: {msg}")]
    BadTensor { name: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint or model directory is missing a file, or a file is malformed.
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    /// An invalid setting (config field, sampling parameter, option); names it.
    #[error("invalid setting `{name}`: {msg}")]
    Config { name: String, msg: String },
    /// A generation request that cannot be served (too long, unknown id, ...).
    #[error("generation request `{rid}`: {msg}")]
    Request { rid: String, msg: String },
    /// The generator engine has stopped (shut down or crashed); the message says why.
    #[error("generator stopped: {0}")]
    EngineStopped(String),
}

impl TorchError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TorchError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        TorchError::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn config(name: impl Into<String>, msg: impl Into<String>) -> Self {
        TorchError::Config {
            name: name.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, TorchError>;
