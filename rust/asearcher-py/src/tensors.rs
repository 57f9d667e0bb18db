//! Tensor functions on torch tensors handed over by data pointer (no libtorch_python, so the
//! wheel is abi3). The Python facade (`asearcher.ops`) builds the views and allocates outputs.

use crate::errors::{config_err, torch_err};
use asearcher_torch::{DeviceSpec, TensorView};
use pyo3::prelude::*;

/// `(data_ptr, shape, strides, dtype, device_type, device_index)` as built by `asearcher.ops`.
pub(crate) type ViewTuple = (usize, Vec<i64>, Vec<i64>, String, String, Option<usize>);

pub(crate) fn view(name: &str, v: ViewTuple) -> PyResult<TensorView> {
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

/// Optional view (`None` stays `None`).
pub(crate) fn opt_view(name: &str, v: Option<ViewTuple>) -> PyResult<Option<TensorView>> {
    v.map(|v| view(name, v)).transpose()
}

/// Group advantages after reward shaping, with invalid (empty) sequences left out of their group.
#[pyfunction]
#[pyo3(signature = (rewards, valid, out, group_size, normalize_std, eps, reward_scale, reward_bias, reward_clip))]
#[allow(clippy::too_many_arguments)]
fn shaped_group_advantages_into(
    py: Python<'_>,
    rewards: ViewTuple,
    valid: Option<ViewTuple>,
    out: ViewTuple,
    group_size: i64,
    normalize_std: bool,
    eps: f64,
    reward_scale: f64,
    reward_bias: f64,
    reward_clip: Option<f64>,
) -> PyResult<()> {
    let (r, v, o) = (
        view("rewards", rewards)?,
        opt_view("valid", valid)?,
        view("out", out)?,
    );
    let spec = asearcher_torch::GroupAdvantageSpec {
        group_size,
        normalize_std,
        eps,
        reward_scale,
        reward_bias,
        reward_clip,
    };
    // SAFETY: the Python caller keeps the tensors alive for the call; no view outlives it.
    py.detach(|| unsafe {
        asearcher_torch::shaped_group_advantages_into(&r, v.as_ref(), &o, &spec)
    })
    .map_err(torch_err)
}

/// Sequence advantages broadcast to tokens over the loss mask, optionally normalised.
#[pyfunction]
#[pyo3(signature = (seq_adv, loss_mask, seq_ids, out, normalize, eps))]
fn token_advantages_into(
    py: Python<'_>,
    seq_adv: ViewTuple,
    loss_mask: ViewTuple,
    seq_ids: Option<ViewTuple>,
    out: ViewTuple,
    normalize: bool,
    eps: f64,
) -> PyResult<()> {
    let a = view("seq_adv", seq_adv)?;
    let m = view("loss_mask", loss_mask)?;
    let ids = opt_view("seq_ids", seq_ids)?;
    let o = view("out", out)?;
    // SAFETY: the Python caller keeps the tensors alive for the call; no view outlives it.
    py.detach(|| unsafe {
        asearcher_torch::token_advantages_into(&a, &m, ids.as_ref(), &o, normalize, eps)
    })
    .map_err(torch_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(shaped_group_advantages_into, m)?)?;
    m.add_function(wrap_pyfunction!(token_advantages_into, m)?)?;
    Ok(())
}
