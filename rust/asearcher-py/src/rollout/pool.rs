//! `InferencePool`: many inference servers (SGLang or OpenAI-compatible) behind one backend, with
//! least-loaded balancing, sticky affinity, failover, retries and health checks (the Rust
//! `ServerPool`), configured from Python.

use super::{config_from_py, py_of_json};
use crate::errors::{config_err, rollout_err};
use crate::runtime::{runtime, wait_for_future};
use asearcher_rollout::client::pool::{PoolConfig, ServerPool};
use pyo3::prelude::*;
use std::sync::Arc;

/// A pool of inference servers.
#[pyclass(name = "InferencePool", module = "asearcher._core", frozen)]
pub struct PyInferencePool {
    inner: Arc<ServerPool>,
}

impl PyInferencePool {
    pub fn shared(&self) -> Arc<ServerPool> {
        self.inner.clone()
    }
}

#[pymethods]
impl PyInferencePool {
    #[new]
    #[pyo3(signature = (addresses, *, protocol = "sglang", model = None, api_key_env = None, config = None))]
    fn new(
        addresses: Vec<String>,
        protocol: &str,
        model: Option<String>,
        api_key_env: Option<String>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let cfg: PoolConfig = config_from_py(config, "config")?;
        if addresses.is_empty() {
            return Err(config_err("addresses", "needs at least one server address"));
        }
        // Inside the runtime so the pool's background health checks start.
        let _rt = runtime().enter();
        let pool = match protocol {
            "sglang" => ServerPool::sglang(&addresses, cfg),
            "openai" => {
                let model = model.ok_or_else(|| {
                    config_err("model", "the openai protocol needs the served model's name")
                })?;
                ServerPool::openai(&addresses, &model, api_key_env.as_deref(), cfg)
            }
            other => {
                return Err(config_err(
                    "protocol",
                    format!("unknown protocol `{other}`; valid: sglang, openai"),
                ))
            }
        }
        .map_err(rollout_err)?;
        Ok(Self {
            inner: Arc::new(pool),
        })
    }

    /// Per-server counters: address, healthy, in_flight, requests, failures, tokens, last_error.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.stats())
    }

    /// Sets the policy version given to tokens no server reports a version for.
    fn set_version(&self, version: u64) {
        self.inner.set_version(version);
    }

    #[getter]
    fn version(&self) -> u64 {
        use asearcher_rollout::client::LlmBackend;
        self.inner.version()
    }

    #[getter]
    fn addresses(&self) -> Vec<String> {
        self.inner.addresses()
    }

    /// Probes every server now (unhealthy ones are skipped until they answer again).
    fn check_health(&self, py: Python<'_>) -> PyResult<()> {
        let pool = self.inner.clone();
        wait_for_future(py, async move {
            pool.check_health().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        use asearcher_rollout::client::LlmBackend;
        format!("InferencePool({})", self.inner.describe())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyInferencePool>()
}
