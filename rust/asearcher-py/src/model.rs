//! Python classes of the tch model (QwenModel): loading, logits / hidden states into
//! caller-allocated torch tensors, next-token NLL with gradients (for parity tests and simple
//! training), and saving in HF layout. Tensors cross by data pointer (`asearcher.ops._view`).

use crate::errors::torch_err;
use asearcher_torch::model::{AttentionMask, QwenModel};
use asearcher_torch::{TensorView, TorchError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Mutex;
use tch::{Kind, Tensor};

use crate::tensors::{view, ViewTuple};

fn bad(name: &str, msg: String) -> TorchError {
    TorchError::BadTensor {
        name: name.into(),
        msg,
    }
}

/// Copies `value` into the caller's output view after checking its shape.
pub(crate) fn write_out(out: &TensorView, value: &Tensor) -> asearcher_torch::Result<()> {
    // SAFETY: the Python caller keeps the output tensor alive for the duration of the call.
    let mut o = unsafe { out.as_tensor()? };
    if o.size() != value.size() {
        return Err(bad(
            &out.name,
            format!("has shape {:?}, expected {:?}", o.size(), value.size()),
        ));
    }
    o.f_copy_(value)?;
    Ok(())
}

/// The input ids on the model's device plus positions and the mask. With an attention mask
/// (`[B, T]`, nonzero = real token), positions count real tokens only (left padding gets the
/// positions generation would use).
fn prepare_inputs(
    model: &QwenModel,
    ids: &TensorView,
    mask: Option<&TensorView>,
) -> asearcher_torch::Result<(Tensor, Tensor, AttentionMask)> {
    // SAFETY: the views stay alive for the call; tensors are moved to the model device (copies)
    // or dropped before returning.
    let ids = unsafe { ids.as_tensor()? };
    if ids.kind() != Kind::Int64 || ids.dim() != 2 {
        return Err(bad(
            "input_ids",
            format!(
                "expected a 2-D int64 tensor [batch, seq], got {:?} {:?}",
                ids.kind(),
                ids.size()
            ),
        ));
    }
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let ids = ids.to_device(model.device());
    let Some(mask) = mask else {
        let pos = Tensor::arange(t, (Kind::Int64, model.device()))
            .view([1, t])
            .expand([b, t], false)
            .contiguous();
        return Ok((ids, pos, AttentionMask::Causal));
    };
    let m = unsafe { mask.as_tensor()? };
    if m.size() != [b, t] {
        return Err(bad(
            "attention_mask",
            format!(
                "has shape {:?}, expected [{b}, {t}] like input_ids",
                m.size()
            ),
        ));
    }
    let m = m.to_device(model.device()).ne(0);
    let pos = (m.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    Ok((ids, pos, AttentionMask::Padded(m)))
}

/// A Qwen2/Qwen3 causal LM loaded from a HF checkpoint directory.
#[pyclass(name = "QwenModel", module = "asearcher._core", frozen)]
pub struct PyQwenModel {
    inner: Mutex<QwenModel>,
    /// Fixed at load, so reading them never waits for a running forward pass.
    config_json: String,
    device: String,
    dtype: &'static str,
    eos_token_ids: Vec<u32>,
}

impl PyQwenModel {
    fn with<T>(&self, f: impl FnOnce(&mut QwenModel) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

#[pymethods]
impl PyQwenModel {
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = "float32"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let device = asearcher_torch::parse_device(device).map_err(torch_err)?;
        let kind = asearcher_torch::parse_dtype(dtype).map_err(torch_err)?;
        let model = py
            .detach(|| QwenModel::load(&path, device, kind))
            .map_err(torch_err)?;
        Ok(PyQwenModel {
            config_json: model.config().raw.to_string(),
            device: asearcher_torch::device_name(model.device()),
            dtype: asearcher_torch::model::weights::dtype_name(model.kind()),
            eos_token_ids: model.eos_token_ids(),
            inner: Mutex::new(model),
        })
    }

    /// config.json as read (JSON text).
    fn config_json(&self) -> String {
        self.config_json.clone()
    }

    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_ids.clone()
    }

    /// `(name, shape)` of every parameter in HF order.
    fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        self.with(|m| {
            m.named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect()
        })
    }

    fn num_parameters(&self) -> i64 {
        self.with(|m| m.num_parameters())
    }

    /// Writes float32 logits `[B, T, vocab]` of `input_ids` into `out`.
    #[pyo3(signature = (input_ids, out, attention_mask = None))]
    fn logits_into(
        &self,
        py: Python<'_>,
        input_ids: ViewTuple,
        out: ViewTuple,
        attention_mask: Option<ViewTuple>,
    ) -> PyResult<()> {
        self.forward_into(py, input_ids, out, attention_mask, true)
    }

    /// Writes the final-normed hidden states `[B, T, hidden]` (float32) into `out`.
    #[pyo3(signature = (input_ids, out, attention_mask = None))]
    fn hidden_states_into(
        &self,
        py: Python<'_>,
        input_ids: ViewTuple,
        out: ViewTuple,
        attention_mask: Option<ViewTuple>,
    ) -> PyResult<()> {
        self.forward_into(py, input_ids, out, attention_mask, false)
    }

    /// Mean next-token NLL over labels != -100 (HF's `labels` loss) and its gradient with respect
    /// to every parameter, written into `grads` (same order as `parameter_shapes`).
    fn nll_loss_and_grads_into(
        &self,
        py: Python<'_>,
        input_ids: ViewTuple,
        labels: ViewTuple,
        grads: Vec<ViewTuple>,
    ) -> PyResult<f64> {
        let ids = view("input_ids", input_ids)?;
        let labels = view("labels", labels)?;
        let grads = grads
            .into_iter()
            .enumerate()
            .map(|(i, g)| view(&format!("grads[{i}]"), g))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| self.with(|m| nll_and_grads(m, &ids, &labels, &grads)))
            .map_err(torch_err)
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.with(|m| m.save_hf(&path)))
            .map_err(torch_err)
    }

    fn __repr__(&self) -> String {
        let config: serde_json::Value = serde_json::from_str(&self.config_json).unwrap_or_default();
        format!(
            "QwenModel({}, layers={}, hidden={}, device={}, dtype={})",
            config["model_type"].as_str().unwrap_or("?"),
            config["num_hidden_layers"],
            config["hidden_size"],
            self.device,
            self.dtype
        )
    }
}

impl PyQwenModel {
    fn forward_into(
        &self,
        py: Python<'_>,
        input_ids: ViewTuple,
        out: ViewTuple,
        attention_mask: Option<ViewTuple>,
        logits: bool,
    ) -> PyResult<()> {
        let ids = view("input_ids", input_ids)?;
        let out = view("out", out)?;
        let mask = attention_mask
            .map(|m| view("attention_mask", m))
            .transpose()?;
        py.detach(|| {
            self.with(|m| {
                tch::no_grad(|| {
                    let (ids, pos, mask) = prepare_inputs(m, &ids, mask.as_ref())?;
                    let hidden = m.forward_hidden(&ids, &pos, &mask)?;
                    let value = if logits {
                        m.logits(&hidden)
                    } else {
                        hidden.to_kind(Kind::Float)
                    };
                    write_out(&out, &value)
                })
            })
        })
        .map_err(torch_err)
    }
}

fn nll_and_grads(
    m: &mut QwenModel,
    ids: &TensorView,
    labels: &TensorView,
    grads: &[TensorView],
) -> asearcher_torch::Result<f64> {
    let (ids, pos, mask) = prepare_inputs(m, ids, None)?;
    // SAFETY: the view is alive for the call; the tensor is copied to the model device.
    let labels_t = unsafe { labels.as_tensor()? };
    if labels_t.kind() != Kind::Int64 || labels_t.size() != ids.size() {
        return Err(bad(
            "labels",
            format!(
                "expected int64 {:?} like input_ids, got {:?} {:?}",
                ids.size(),
                labels_t.kind(),
                labels_t.size()
            ),
        ));
    }
    let params = m.named_parameters();
    if grads.len() != params.len() {
        return Err(bad(
            "grads",
            format!("{} outputs for {} parameters", grads.len(), params.len()),
        ));
    }
    let labels_t = labels_t.to_device(m.device());
    let t = ids.size()[1];
    if t < 2 {
        return Err(bad(
            "input_ids",
            format!("next-token loss needs at least 2 tokens per row, got {t}"),
        ));
    }
    m.set_requires_grad(true);
    let result = (|| {
        let hidden = m.forward_hidden(&ids, &pos, &mask)?;
        let logits = m.logits(&hidden.narrow(1, 0, t - 1));
        let vocab = logits.size()[2];
        let targets = labels_t.narrow(1, 1, t - 1).reshape([-1]);
        let loss = logits.reshape([-1, vocab]).f_cross_entropy_loss::<Tensor>(
            &targets,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?;
        let inputs: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let g = Tensor::f_run_backward(&[&loss], &inputs, false, false)?;
        for (out, g) in grads.iter().zip(&g) {
            write_out(out, g)?;
        }
        Ok(loss.double_value(&[]))
    })();
    m.set_requires_grad(false);
    result
}

/// Writes a Qwen config.json (given as JSON text) and seeded random weights into `path`.
#[pyfunction]
#[pyo3(signature = (path, config_json, seed = 0))]
fn write_random_checkpoint(
    py: Python<'_>,
    path: PathBuf,
    config_json: &str,
    seed: u64,
) -> PyResult<()> {
    py.detach(|| asearcher_torch::model::write_random_checkpoint(&path, config_json, seed))
        .map_err(torch_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyQwenModel>()?;
    m.add_function(wrap_pyfunction!(write_random_checkpoint, m)?)?;
    Ok(())
}
