//! Backends from Python objects: an `InferencePool`, a list of SGLang URLs (a default pool), or
//! the embedded tch `Generator` (through `asearcher_train::embedded::EmbeddedBackend`).

use super::pool::PyInferencePool;
use super::type_name;
use crate::errors::{config_err, rollout_err};
use crate::generator::PyGenerator;
use asearcher_rollout::client::pool::{PoolConfig, ServerPool};
use asearcher_rollout::client::LlmBackend;
use asearcher_train::embedded::EmbeddedBackend;
use pyo3::prelude::*;
use std::sync::Arc;

/// A backend from `InferencePool`, `Generator` or a list of SGLang server URLs.
pub fn backend_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn LlmBackend>> {
    if let Ok(p) = obj.cast::<PyInferencePool>() {
        return Ok(p.get().shared() as Arc<dyn LlmBackend>);
    }
    if let Ok(g) = obj.cast::<PyGenerator>() {
        let g = g.get();
        return Ok(Arc::new(
            EmbeddedBackend::new(g.handle()).with_model(&g.model_dir),
        ));
    }
    if let Ok(urls) = obj.extract::<Vec<String>>() {
        if !obj.is_instance_of::<pyo3::types::PyString>() {
            // Inside the runtime so the pool's background health checks start.
            let _rt = crate::runtime::runtime().enter();
            let pool = ServerPool::sglang(&urls, PoolConfig::default()).map_err(rollout_err)?;
            return Ok(Arc::new(pool));
        }
    }
    Err(config_err(
        "backend",
        format!(
            "must be an asearcher.InferencePool, an asearcher.Generator or a list of SGLang server URLs, got {}",
            type_name(obj)
        ),
    ))
}
