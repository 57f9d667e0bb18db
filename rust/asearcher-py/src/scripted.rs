//! The scripted policy server (the LLM test double: SGLang `/generate` + an OpenAI judge) started
//! from Python, in the foreground (`serve_scripted_policy`, for the CLI) or in the background
//! (`start_scripted_policy_server`, a handle). The config travels as JSON, so unknown keys and
//! bad values are reported by the Rust config parser with the key named.

use crate::errors::{io_err, scripted_err};
use crate::runtime::{runtime, wait_for_future};
use asearcher_server::scripted_policy::live::Live;
use asearcher_server::{ScriptedPolicyConfig, ScriptedPolicyError, ScriptedPolicyServer};
use asearcher_tokenizer::Tokenizer;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Loads the tokenizer, checks the config and binds the socket (with the GIL released).
fn bind(py: Python<'_>, tokenizer: PathBuf, config_json: &str) -> PyResult<ScriptedPolicyServer> {
    let cfg = ScriptedPolicyConfig::from_json(config_json).map_err(scripted_err)?;
    py.detach(|| {
        let tok = Tokenizer::from_dir(&tokenizer).map_err(ScriptedPolicyError::from)?;
        runtime().block_on(ScriptedPolicyServer::bind(cfg, Arc::new(tok)))
    })
    .map_err(scripted_err)
}

fn stats_dict(py: Python<'_>, live: &Live) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(&live.stats()).map_err(|e| io_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// Serves until interrupted (Ctrl-C); calls `on_ready(url)` once listening.
#[pyfunction]
#[pyo3(signature = (tokenizer, config_json, on_ready = None))]
fn serve_scripted_policy(
    py: Python<'_>,
    tokenizer: PathBuf,
    config_json: &str,
    on_ready: Option<Py<PyAny>>,
) -> PyResult<()> {
    let server = bind(py, tokenizer, config_json)?;
    let addr = server.local_addr().map_err(|e| io_err(e.to_string()))?;
    tracing::info!(%addr, "scripted policy server listening");
    if let Some(cb) = on_ready {
        cb.call1(py, (format!("http://{addr}"),))?;
    }
    let (tx, rx) = oneshot::channel::<()>();
    let task = runtime().spawn(async move {
        server
            .serve(async move {
                let _ = rx.await;
            })
            .await
    });
    let waited = wait_for_future(py, async move {
        std::future::pending::<()>().await;
        Ok(())
    });
    let _ = tx.send(());
    let _ = py.detach(|| runtime().block_on(task));
    waited
}

/// A scripted policy server running in the background of this process.
#[pyclass(name = "ScriptedPolicyHandle", module = "asearcher._core", frozen)]
struct ScriptedPolicyHandle {
    /// `host:port`.
    #[pyo3(get)]
    address: String,
    /// `http://host:port`.
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    port: u16,
    live: Arc<Live>,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

#[pymethods]
impl ScriptedPolicyHandle {
    /// Stops the server (in-flight requests end as aborted) and waits until it is down;
    /// idempotent.
    fn stop(&self, py: Python<'_>) {
        if let Some(tx) = self
            .stop_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = py.detach(|| runtime().block_on(task));
        }
    }

    /// Counters (requests, tokens, aborted, replies by kind, judge requests, in flight) and the
    /// weight version, as a dict.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        stats_dict(py, &self.live)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _a: Py<PyAny>, _b: Py<PyAny>, _c: Py<PyAny>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("ScriptedPolicyHandle(url={:?})", self.url)
    }
}

/// Starts the server on the shared runtime and returns once it listens.
#[pyfunction]
fn start_scripted_policy_server(
    py: Python<'_>,
    tokenizer: PathBuf,
    config_json: &str,
) -> PyResult<ScriptedPolicyHandle> {
    let server = bind(py, tokenizer, config_json)?;
    let addr = server.local_addr().map_err(|e| io_err(e.to_string()))?;
    let live = server.stats_source();
    let (tx, rx) = oneshot::channel::<()>();
    let task = runtime().spawn(async move {
        let result = server
            .serve(async move {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "scripted policy server stopped with an error");
        }
        result
    });
    Ok(ScriptedPolicyHandle {
        address: addr.to_string(),
        url: format!("http://{addr}"),
        port: addr.port(),
        live,
        stop_tx: Mutex::new(Some(tx)),
        task: Mutex::new(Some(task)),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ScriptedPolicyHandle>()?;
    m.add_function(wrap_pyfunction!(serve_scripted_policy, m)?)?;
    m.add_function(wrap_pyfunction!(start_scripted_policy_server, m)?)?;
    Ok(())
}
