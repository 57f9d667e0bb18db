//! Tensor functions on torch tensors handed over by data pointer (no libtorch_python, so the
//! wheel is abi3). The Python facade (`asearcher.ops`) builds the views and allocates outputs.

use crate::errors::{config_err, torch_err};
use asearcher_torch::{DeviceSpec, TensorView};
use pyo3::prelude::*;

/// `(data_ptr, shape, strides, dtype, device_type, device_index)` as built by `asearcher.ops`.
type ViewTuple = (usize, Vec<i64>, Vec<i64>, String, String, Option<usize>);

fn view(name: &str, v: ViewTuple) -> PyResult<TensorView> {
    let (data_ptr, shape, strides, dtype, device_type, index) = v;
    let device = match device_type.as_str() {
        "cpu" => DeviceSpec::Cpu,
        "cuda" => DeviceSpec::Cuda(index.unwrap_or(0)),
        other => {
            return Err(config_err(
                name,
                format!("device type {other:?} is not supported (cpu, cuda)"),
            ))
        }
    };
    Ok(TensorView {
        name: name.into(),
        data_ptr,
        shape,
        strides,
        dtype,
        device,
    })
}

/// Writes group-centred (optionally std-normalised) advantages of `rewards` into `out`.
/// Runs on the calling thread, so CUDA work lands on the caller's current stream.
#[pyfunction]
#[pyo3(signature = (rewards, out, group_size, normalize_std = false, eps = 1e-6))]
fn group_advantages_into(
    py: Python<'_>,
    rewards: ViewTuple,
    out: ViewTuple,
    group_size: i64,
    normalize_std: bool,
    eps: f64,
) -> PyResult<()> {
    let (r, o) = (view("rewards", rewards)?, view("out", out)?);
    // SAFETY: the Python caller keeps both tensors alive for the duration of this call, and the
    // tch tensors built from them are dropped before it returns.
    py.detach(|| unsafe {
        asearcher_torch::group_advantages_into(&r, &o, group_size, normalize_std, eps)
    })
    .map_err(torch_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(group_advantages_into, m)?)?;
    Ok(())
}
