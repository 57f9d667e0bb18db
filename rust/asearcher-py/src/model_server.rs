//! The embedded model server (SGLang / OpenAI protocols) started from Python, in the foreground
//! (`serve_model`, Ctrl-C stops it) or in the background (`start_model_server`, a handle), and
//! the `Tokenizer` class (tokenizer.json + chat templates, no transformers needed).

use crate::errors::{config_err, io_err, model_server_err, tokenizer_err, torch_err};
use crate::runtime::{runtime, wait_for_future};
use asearcher_server::{ModelServer, ModelServerConfig};
use asearcher_tokenizer::{ChatOptions, Tokenizer};
use asearcher_torch::{parse_device, parse_dtype};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Python objects (messages, tools, kwargs) as JSON, through Python's own `json.dumps`.
fn to_json(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (obj,))
        .map_err(|e| config_err(name, format!("must be JSON-serialisable: {e}")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| config_err(name, e))
}

fn json_list(
    py: Python<'_>,
    name: &str,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<serde_json::Value>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => match to_json(py, name, o)? {
            serde_json::Value::Array(items) => Ok(Some(items)),
            _ => Err(config_err(name, "must be a list")),
        },
    }
}

/// An HF tokenizer read from a model directory (tokenizer.json, tokenizer_config.json,
/// generation_config.json).
#[pyclass(name = "Tokenizer", module = "asearcher._core", frozen)]
pub(crate) struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

impl PyTokenizer {
    /// The shared Rust tokenizer (for the rollout engine).
    pub(crate) fn shared(&self) -> Arc<Tokenizer> {
        self.inner.clone()
    }
}

#[pymethods]
impl PyTokenizer {
    #[new]
    fn new(py: Python<'_>, model_dir: PathBuf) -> PyResult<Self> {
        let tok = py
            .detach(|| Tokenizer::from_dir(&model_dir))
            .map_err(tokenizer_err)?;
        Ok(PyTokenizer {
            inner: Arc::new(tok),
        })
    }

    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map_err(tokenizer_err)
    }

    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(tokenizer_err)
    }

    /// Renders `messages` with the chat template like transformers' `apply_chat_template`;
    /// extra keyword arguments (e.g. `enable_thinking=False`) become template variables.
    #[pyo3(signature = (messages, add_generation_prompt = false, tools = None, documents = None, chat_template = None, tokenize = false, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
        tools: Option<&Bound<'_, PyAny>>,
        documents: Option<&Bound<'_, PyAny>>,
        chat_template: Option<String>,
        tokenize: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let messages = to_json(py, "messages", messages)?;
        let extra = match kwargs {
            Some(k) => match to_json(py, "kwargs", k.as_any())? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        };
        let opts = ChatOptions {
            add_generation_prompt,
            tools: json_list(py, "tools", tools)?,
            documents: json_list(py, "documents", documents)?,
            template: chat_template,
            extra,
        };
        let text = self
            .inner
            .apply_chat_template(&messages, &opts)
            .map_err(tokenizer_err)?;
        if tokenize {
            let ids = self.inner.encode(&text, false).map_err(tokenizer_err)?;
            Ok(PyList::new(py, ids)?.into_any().unbind())
        } else {
            Ok(text.into_pyobject(py)?.into_any().unbind())
        }
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_token_ids().to_vec()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn chat_template_names(&self) -> Vec<String> {
        self.inner.chat_template_names().to_vec()
    }

    fn __len__(&self) -> usize {
        self.inner.vocab_size()
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(dir={:?}, vocab_size={})",
            self.inner.dir().display().to_string(),
            self.inner.vocab_size()
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn model_config(
    model_dir: PathBuf,
    host: String,
    port: u16,
    device: &str,
    dtype: &str,
    max_running: usize,
    max_context: Option<usize>,
    served_model_name: Option<String>,
) -> PyResult<ModelServerConfig> {
    if max_running == 0 {
        return Err(config_err("max_running", "must be at least 1"));
    }
    Ok(ModelServerConfig {
        model_dir,
        host,
        port,
        device: parse_device(device).map_err(torch_err)?,
        kind: parse_dtype(dtype).map_err(torch_err)?,
        max_running,
        max_context,
        served_model_name,
    })
}

fn bind(py: Python<'_>, cfg: ModelServerConfig) -> PyResult<ModelServer> {
    py.detach(|| runtime().block_on(ModelServer::bind(cfg)))
        .map_err(model_server_err)
}

/// Serves the model until interrupted; calls `on_ready(url)` once listening.
#[pyfunction]
#[pyo3(signature = (model_dir, host = "127.0.0.1".to_string(), port = 30000, device = "cpu", dtype = "float32", max_running = 32, max_context = None, served_model_name = None, on_ready = None))]
#[allow(clippy::too_many_arguments)]
fn serve_model(
    py: Python<'_>,
    model_dir: PathBuf,
    host: String,
    port: u16,
    device: &str,
    dtype: &str,
    max_running: usize,
    max_context: Option<usize>,
    served_model_name: Option<String>,
    on_ready: Option<Py<PyAny>>,
) -> PyResult<()> {
    let cfg = model_config(
        model_dir,
        host,
        port,
        device,
        dtype,
        max_running,
        max_context,
        served_model_name,
    )?;
    let server = bind(py, cfg)?;
    let url = format!(
        "http://{}",
        server.local_addr().map_err(|e| io_err(e.to_string()))?
    );
    tracing::info!(%url, "model server listening");
    if let Some(cb) = on_ready {
        cb.call1(py, (url,))?;
    }
    let (tx, rx) = oneshot::channel::<()>();
    let task = runtime().spawn(async move {
        server
            .serve(async move {
                let _ = rx.await;
            })
            .await
    });
    // Ctrl-C interrupts the wait; the server is then shut down (in-flight requests aborted).
    let waited = wait_for_future(py, async move {
        std::future::pending::<()>().await;
        Ok(())
    });
    let _ = tx.send(());
    let _ = py.detach(|| runtime().block_on(task));
    waited
}

/// A model server running in the background of this process.
#[pyclass(name = "ModelServerHandle", module = "asearcher._core", frozen)]
struct ModelServerHandle {
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    port: u16,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

#[pymethods]
impl ModelServerHandle {
    /// Stops the server and its generator, waiting until both are down (idempotent).
    fn stop(&self, py: Python<'_>) {
        if let Some(tx) = self.stop_tx.lock().expect("stop lock").take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.lock().expect("task lock").take() {
            let _ = py.detach(|| runtime().block_on(task));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _a: Py<PyAny>, _b: Py<PyAny>, _c: Py<PyAny>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("ModelServerHandle(url={:?})", self.url)
    }
}

/// Loads the model, starts its server on the shared runtime and returns once it listens.
#[pyfunction]
#[pyo3(signature = (model_dir, host = "127.0.0.1".to_string(), port = 0, device = "cpu", dtype = "float32", max_running = 32, max_context = None, served_model_name = None))]
#[allow(clippy::too_many_arguments)]
fn start_model_server(
    py: Python<'_>,
    model_dir: PathBuf,
    host: String,
    port: u16,
    device: &str,
    dtype: &str,
    max_running: usize,
    max_context: Option<usize>,
    served_model_name: Option<String>,
) -> PyResult<ModelServerHandle> {
    let cfg = model_config(
        model_dir,
        host,
        port,
        device,
        dtype,
        max_running,
        max_context,
        served_model_name,
    )?;
    let server = bind(py, cfg)?;
    let addr = server.local_addr().map_err(|e| io_err(e.to_string()))?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = runtime().spawn(async move {
        let result = server
            .serve(async move {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "model server stopped with an error");
        }
        result
    });
    Ok(ModelServerHandle {
        url: format!("http://{addr}"),
        port: addr.port(),
        stop_tx: Mutex::new(Some(tx)),
        task: Mutex::new(Some(task)),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<ModelServerHandle>()?;
    m.add_function(wrap_pyfunction!(serve_model, m)?)?;
    m.add_function(wrap_pyfunction!(start_model_server, m)?)?;
    Ok(())
}
