//! Python entry points of the HTTP servers: serve in the foreground (Ctrl-C stops it) or start in
//! the background and get a handle (for notebooks and tests).

use crate::dense::{PyDenseSearch, PyHybridSearch};
use crate::errors::{config_err, io_err};
use crate::runtime::{runtime, wait_for_future};
use crate::tools::{page_source, search_backend, PyLocalSearch};
use asearcher_server::{RetrievalServer, Retriever, ServerConfig};
use pyo3::prelude::*;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

fn server_config(
    host: String,
    port: u16,
    default_topk: usize,
    micro_batch: usize,
) -> PyResult<ServerConfig> {
    if default_topk == 0 {
        return Err(config_err("default_topk", "must be at least 1"));
    }
    Ok(ServerConfig {
        host,
        port,
        default_topk,
        micro_batch,
        ..ServerConfig::default()
    })
}

/// What to serve: `search` (LocalSearch, DenseSearch, HybridSearch, RetrievalClient), pages
/// from `pages` or else from `search` itself when it has pages (LocalSearch, DenseSearch).
fn retriever(search: &Bound<'_, PyAny>, pages: Option<&Bound<'_, PyAny>>) -> PyResult<Retriever> {
    let (mode, docs) = if let Ok(l) = search.cast::<PyLocalSearch>() {
        ("bm25", Some(l.get().index().num_docs() as usize))
    } else if let Ok(d) = search.cast::<PyDenseSearch>() {
        ("dense", Some(d.get().inner.rows()))
    } else if search.cast::<PyHybridSearch>().is_ok() {
        ("hybrid", None)
    } else {
        ("remote", None)
    };
    let pages = match pages {
        Some(p) => Some(page_source(p)?),
        None if mode == "bm25" || mode == "dense" => Some(page_source(search)?),
        None => None,
    };
    Ok(Retriever {
        search: search_backend(search)?,
        pages,
        mode: mode.into(),
        docs,
    })
}

fn bind(retriever: Retriever, cfg: ServerConfig) -> PyResult<RetrievalServer> {
    let (host, port) = (cfg.host.clone(), cfg.port);
    runtime()
        .block_on(RetrievalServer::bind(retriever, cfg))
        .map_err(|e| io_err(format!("cannot listen on {host}:{port}: {e}")))
}

/// Serves `index` (any search backend) until interrupted; calls `on_ready(url)` once
/// listening. `micro_batch` > 0 merges concurrent requests into batches of that many queries.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (index, pages = None, host = "127.0.0.1".to_string(), port = 8000,
    default_topk = 3, micro_batch = 0, on_ready = None))]
fn serve_retrieval(
    py: Python<'_>,
    index: &Bound<'_, PyAny>,
    pages: Option<&Bound<'_, PyAny>>,
    host: String,
    port: u16,
    default_topk: usize,
    micro_batch: usize,
    on_ready: Option<Py<PyAny>>,
) -> PyResult<()> {
    let (r, cfg) = (
        retriever(index, pages)?,
        server_config(host, port, default_topk, micro_batch)?,
    );
    let server = py.detach(|| bind(r, cfg))?;
    let url = format!(
        "http://{}",
        server.local_addr().map_err(|e| io_err(e.to_string()))?
    );
    tracing::info!(%url, "retrieval server listening");
    if let Some(cb) = on_ready {
        cb.call1(py, (url,))?;
    }
    // When the wait is interrupted (Ctrl-C), the task is aborted and the listener closed.
    wait_for_future(py, async move {
        server
            .serve(std::future::pending())
            .await
            .map_err(|e| io_err(e.to_string()))
    })
}

/// A retrieval server running in the background of this process.
#[pyclass(name = "RetrievalServerHandle", module = "asearcher._core", frozen)]
struct RetrievalServerHandle {
    #[pyo3(get)]
    url: String,
    #[pyo3(get)]
    port: u16,
    stop_tx: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[pymethods]
impl RetrievalServerHandle {
    /// Stops the server and returns once its listener is closed (idempotent): a request made
    /// after `stop()` is refused, never served by a server still shutting down. Connections
    /// still open after 5 s are cut.
    fn stop(&self, py: Python<'_>) {
        if let Some(tx) = self.stop_tx.lock().expect("stop lock").take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.lock().expect("task lock").take() else {
            return;
        };
        py.detach(|| {
            runtime().block_on(async {
                if tokio::time::timeout(Duration::from_secs(5), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                    let _ = task.await;
                }
            })
        });
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _a: Py<PyAny>, _b: Py<PyAny>, _c: Py<PyAny>) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("RetrievalServerHandle(url={:?})", self.url)
    }
}

/// Starts a retrieval server on the shared runtime and returns at once.
#[pyfunction]
#[pyo3(signature = (index, pages = None, host = "127.0.0.1".to_string(), port = 0,
    default_topk = 3, micro_batch = 0))]
fn start_retrieval_server(
    py: Python<'_>,
    index: &Bound<'_, PyAny>,
    pages: Option<&Bound<'_, PyAny>>,
    host: String,
    port: u16,
    default_topk: usize,
    micro_batch: usize,
) -> PyResult<RetrievalServerHandle> {
    let (r, cfg) = (
        retriever(index, pages)?,
        server_config(host, port, default_topk, micro_batch)?,
    );
    let server = py.detach(|| bind(r, cfg))?;
    let addr = server.local_addr().map_err(|e| io_err(e.to_string()))?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = runtime().spawn(async move {
        if let Err(e) = server
            .serve(async move {
                let _ = rx.await;
            })
            .await
        {
            tracing::error!(error = %e, "retrieval server stopped with an error");
        }
    });
    Ok(RetrievalServerHandle {
        url: format!("http://{addr}"),
        port: addr.port(),
        stop_tx: Mutex::new(Some(tx)),
        task: Mutex::new(Some(task)),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve_retrieval, m)?)?;
    m.add_function(wrap_pyfunction!(start_retrieval_server, m)?)?;
    m.add_class::<RetrievalServerHandle>()?;
    Ok(())
}
