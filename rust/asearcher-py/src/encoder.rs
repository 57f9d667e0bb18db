//! Python class of the BERT-family text encoder (`asearcher.Encoder`'s native half): load,
//! tokenize, and encode texts into a caller-allocated float32 tensor, with the GIL released.

use crate::errors::{config_err, torch_err};
use crate::model::write_out;
use crate::tensors::{view, ViewTuple};
use asearcher_torch::encoder::{BertEncoder, EncoderOptions, TextKind};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Mutex;

fn text_kind(kind: &str) -> PyResult<TextKind> {
    match kind {
        "query" => Ok(TextKind::Query),
        "passage" => Ok(TextKind::Passage),
        "raw" => Ok(TextKind::Raw),
        other => Err(config_err(
            "kind",
            format!("{other:?} is not query, passage or raw"),
        )),
    }
}

/// A BERT-family encoder (E5, MiniLM, BGE) loaded from a HF directory.
#[pyclass(name = "Encoder", module = "asearcher._core", frozen)]
pub struct PyEncoder {
    /// Tensors are not `Sync`: one call at a time uses the weights.
    inner: Mutex<BertEncoder>,
    dim: i64,
    device: String,
    dtype: &'static str,
    spec_json: String,
}

impl PyEncoder {
    fn with<T>(&self, f: impl FnOnce(&BertEncoder) -> T) -> T {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

#[pymethods]
impl PyEncoder {
    /// `options_json`: [`EncoderOptions`] as JSON (pooling, normalize, max_length, prefixes).
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", dtype = "float32", options_json = "{}"))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: &str,
        options_json: &str,
    ) -> PyResult<Self> {
        let device = asearcher_torch::parse_device(device).map_err(torch_err)?;
        let kind = asearcher_torch::parse_dtype(dtype).map_err(torch_err)?;
        let options: EncoderOptions =
            serde_json::from_str(options_json).map_err(|e| config_err("options", e.to_string()))?;
        let inner = py
            .detach(|| BertEncoder::load(&path, device, kind, &options))
            .map_err(torch_err)?;
        Ok(PyEncoder {
            dim: inner.dim(),
            device: asearcher_torch::device_name(inner.device()),
            dtype: asearcher_torch::dtype_name(inner.kind()),
            spec_json: serde_json::to_string(inner.spec()).expect("a spec serialises"),
            inner: Mutex::new(inner),
        })
    }

    #[getter]
    fn dim(&self) -> i64 {
        self.dim
    }

    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// The resolved spec (pooling, normalize, max_length, prefixes) as JSON.
    fn spec_json(&self) -> String {
        self.spec_json.clone()
    }

    /// Token ids of each text as the encoder sees it (prefix, truncation, special tokens).
    fn tokenize(&self, py: Python<'_>, texts: Vec<String>, kind: &str) -> PyResult<Vec<Vec<u32>>> {
        let kind = text_kind(kind)?;
        py.detach(|| self.with(|e| e.tokenize(&texts, kind)))
            .map_err(torch_err)
    }

    /// Encodes `texts` into `out` (`[len(texts), dim]` float32 on the CPU).
    fn encode_into(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        kind: &str,
        batch_size: usize,
        out: ViewTuple,
    ) -> PyResult<()> {
        let kind = text_kind(kind)?;
        let out = view("out", out)?;
        py.detach(|| {
            let vectors = self.with(|e| e.encode(&texts, kind, batch_size, &mut |_| Ok(())))?;
            write_out(&out, &vectors)
        })
        .map_err(torch_err)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEncoder>()
}
