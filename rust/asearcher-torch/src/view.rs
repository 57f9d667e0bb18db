//! Borrowed tensor views handed across the Python boundary by data pointer.

use crate::{Result, TorchError};
use tch::{Device, Kind, Tensor};

/// Where a tensor lives, as torch names it (`cpu`, `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    fn to_tch(self) -> Device {
        match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => Device::Cuda(i),
        }
    }
}

/// A borrowed description of a tensor owned by someone else (normally a Python `torch.Tensor`).
#[derive(Debug, Clone)]
pub struct TensorView {
    pub name: String,
    pub data_ptr: usize,
    pub shape: Vec<i64>,
    pub strides: Vec<i64>,
    pub dtype: String,
    pub device: DeviceSpec,
}

impl TensorView {
    fn bad(&self, msg: impl Into<String>) -> TorchError {
        TorchError::BadTensor {
            name: self.name.clone(),
            msg: msg.into(),
        }
    }

    /// The torch dtype name (`float32`, `torch.float32`, `bfloat16`, ...) as a tch kind.
    pub fn kind(&self) -> Result<Kind> {
        let name = self.dtype.trim_start_matches("torch.");
        Ok(match name {
            "float32" | "float" => Kind::Float,
            "float64" | "double" => Kind::Double,
            "float16" | "half" => Kind::Half,
            "bfloat16" => Kind::BFloat16,
            "int64" | "long" => Kind::Int64,
            "int32" | "int" => Kind::Int,
            "bool" => Kind::Bool,
            other => return Err(self.bad(format!("unsupported dtype `{other}`"))),
        })
    }

    /// Wraps the borrowed memory as a tch tensor without copying.
    ///
    /// # Safety
    /// The memory described by the view must stay alive and unaliased by writers for as long as the
    /// returned tensor is used; callers drop it before returning to Python.
    pub unsafe fn as_tensor(&self) -> Result<Tensor> {
        if self.shape.len() != self.strides.len() {
            return Err(self.bad("shape and strides differ in length"));
        }
        if self.shape.iter().any(|&d| d < 0) {
            return Err(self.bad("negative dimension"));
        }
        let numel: i64 = self.shape.iter().product();
        if self.data_ptr == 0 && numel > 0 {
            return Err(self.bad("null data pointer"));
        }
        let kind = self.kind()?;
        // SAFETY: the caller guarantees the memory outlives the tensor (see above).
        let t = unsafe {
            Tensor::f_from_blob(
                self.data_ptr as *const u8,
                &self.shape,
                &self.strides,
                kind,
                self.device.to_tch(),
            )?
        };
        Ok(t)
    }
}
