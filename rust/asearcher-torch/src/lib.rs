//! Everything of asearcher that links libtorch through tch.
//!
//! Tensors arrive from Python as borrowed views ([`TensorView`]: data pointer, shape, strides, dtype,
//! device) rather than through libtorch_python, so one abi3 wheel serves every CPython. A view is
//! only valid for the duration of the call that received it.

mod advantages;
mod view;

pub use advantages::{group_advantages, group_advantages_into};
pub use view::{DeviceSpec, TensorView};

/// Errors of the torch crate.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    #[error("tensor `{name}`: {msg}")]
    BadTensor { name: String, msg: String },
}

pub type Result<T> = std::result::Result<T, TorchError>;
