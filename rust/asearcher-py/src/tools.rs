//! Python classes for the search tools: documents, pages, the local index, remote clients, the
//! page reader, the result cache and the agent-facing toolbox. Every blocking call releases the
//! GIL; every `a`-prefixed method returns an asyncio awaitable.

use crate::errors::{config_err, join_err, tool_err};
use crate::rollout::config_from_py;
use crate::runtime::{awaitable, wait_for_future};
use asearcher_tools as t;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;

/// A retrieved passage.
#[pyclass(name = "Document", module = "asearcher._core", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyDocument {
    id: String,
    title: String,
    text: String,
    url: Option<String>,
    score: Option<f32>,
}

impl From<t::Document> for PyDocument {
    fn from(d: t::Document) -> Self {
        Self {
            id: d.id,
            title: d.title,
            text: d.text,
            url: d.url,
            score: d.score,
        }
    }
}

impl PyDocument {
    fn inner(&self) -> t::Document {
        t::Document {
            id: self.id.clone(),
            title: self.title.clone(),
            text: self.text.clone(),
            url: self.url.clone(),
            score: self.score,
        }
    }
}

#[pymethods]
impl PyDocument {
    #[new]
    #[pyo3(signature = (id, text, title = String::new(), url = None, score = None))]
    fn new(
        id: String,
        text: String,
        title: String,
        url: Option<String>,
        score: Option<f32>,
    ) -> Self {
        Self {
            id,
            title,
            text,
            url,
            score,
        }
    }

    /// The Search-R1 `contents` field: `"Title"\ntext`.
    #[getter]
    fn contents(&self) -> String {
        self.inner().contents()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("id", &self.id)?;
        d.set_item("title", &self.title)?;
        d.set_item("text", &self.text)?;
        d.set_item("contents", self.contents())?;
        d.set_item("url", &self.url)?;
        d.set_item("score", self.score)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let snippet: String = self.text.chars().take(60).collect();
        let score = self
            .score
            .map(|s| format!(", score={s:.3}"))
            .unwrap_or_default();
        format!(
            "Document(id={:?}, title={:?}{score}, text={:?}...)",
            self.id, self.title, snippet
        )
    }
}

/// A readable page.
#[pyclass(name = "Page", module = "asearcher._core", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyPage {
    url: String,
    title: String,
    contents: String,
}

impl From<t::Page> for PyPage {
    fn from(p: t::Page) -> Self {
        Self {
            url: p.url,
            title: p.title,
            contents: p.contents,
        }
    }
}

#[pymethods]
impl PyPage {
    /// The page text in agent-sized chunks (25,000 characters, at most 10, from the first 250,000).
    #[pyo3(signature = (chunk_chars = 25_000, max_chunks = 10, max_chars = 250_000))]
    fn chunks(&self, chunk_chars: usize, max_chunks: usize, max_chars: usize) -> Vec<String> {
        t::chunk_page(
            &self.contents,
            &t::PageChunking {
                max_chars,
                chunk_chars,
                max_chunks,
            },
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Page(url={:?}, title={:?}, {} chars)",
            self.url,
            self.title,
            self.contents.chars().count()
        )
    }
}

pub(crate) fn docs(v: Vec<t::Document>) -> Vec<PyDocument> {
    v.into_iter().map(PyDocument::from).collect()
}

/// One progress report of a long build running with the GIL released: takes the GIL, checks
/// for Ctrl-C, then calls the Python callback (if any) through `call`. The error (the
/// KeyboardInterrupt, or the callback's own exception) is the caller's to keep and re-raise
/// unchanged once the build has stopped.
pub(crate) fn progress_step(
    progress: Option<&Py<PyAny>>,
    call: impl FnOnce(Python<'_>, &Py<PyAny>) -> PyResult<()>,
) -> PyResult<()> {
    Python::attach(|py| {
        py.check_signals()?;
        progress.map_or(Ok(()), |cb| call(py, cb))
    })
}

pub(crate) fn parse_bad_line_policy(s: &str) -> PyResult<t::BadLinePolicy> {
    match s {
        "error" => Ok(t::BadLinePolicy::Error),
        "skip" => Ok(t::BadLinePolicy::Skip),
        other => Err(config_err(
            "on_bad_line",
            format!("{other:?} is not one of 'error', 'skip'"),
        )),
    }
}

/// The embedded BM25 index.
#[pyclass(name = "LocalSearch", module = "asearcher._core", frozen, subclass)]
pub struct PyLocalSearch {
    inner: Arc<t::LocalIndex>,
}

#[pymethods]
impl PyLocalSearch {
    /// Opens an index directory built by `LocalSearch.build`.
    #[new]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| t::LocalIndex::open(&path)).map_err(tool_err)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Builds an index from a jsonl corpus; `progress(docs, bytes, total_bytes)` is called as it goes
    /// and may raise (e.g. KeyboardInterrupt) to cancel. Returns the build statistics as a dict.
    #[staticmethod]
    #[pyo3(signature = (corpus, out, threads = None, heap_mb = None, on_bad_line = "error", overwrite = false, merge = true, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn build_index<'py>(
        py: Python<'py>,
        corpus: PathBuf,
        out: PathBuf,
        threads: Option<usize>,
        heap_mb: Option<usize>,
        on_bad_line: &str,
        overwrite: bool,
        merge: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let defaults = t::BuildOptions::default();
        if threads == Some(0) {
            return Err(config_err("threads", "must be at least 1"));
        }
        let opts = t::BuildOptions {
            threads: threads.unwrap_or(defaults.threads),
            heap_mb: heap_mb.unwrap_or(defaults.heap_mb),
            on_bad_line: parse_bad_line_policy(on_bad_line)?,
            overwrite,
            merge,
        };
        let mut callback_error: Option<PyErr> = None;
        let result = py.detach(|| {
            let mut report = |docs: u64, bytes: u64, total: u64| -> bool {
                let outcome = progress_step(progress.as_ref(), |py, cb| {
                    cb.call1(py, (docs, bytes, total)).map(drop)
                });
                match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        callback_error = Some(e);
                        false
                    }
                }
            };
            t::LocalIndex::build(&corpus, &out, &opts, &mut report)
        });
        let stats = match (result, callback_error) {
            (Err(_), Some(py_err)) => return Err(py_err),
            (r, _) => r.map_err(tool_err)?,
        };
        let d = PyDict::new(py);
        d.set_item("docs", stats.docs)?;
        d.set_item("skipped_lines", stats.skipped_lines)?;
        d.set_item("duplicate_ids", stats.duplicate_ids)?;
        d.set_item("corpus_bytes", stats.corpus_bytes)?;
        d.set_item("seconds", stats.seconds)?;
        Ok(d)
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    fn __len__(&self) -> usize {
        self.inner.num_docs() as usize
    }

    /// The top `k` passages for `query`, best first.
    #[pyo3(signature = (query, k = 5))]
    fn search(&self, py: Python<'_>, query: &str, k: usize) -> PyResult<Vec<PyDocument>> {
        py.detach(|| self.inner.search(query, k))
            .map(docs)
            .map_err(tool_err)
    }

    /// Searches many queries in parallel; results in query order.
    #[pyo3(signature = (queries, k = 5))]
    fn search_batch(
        &self,
        py: Python<'_>,
        queries: Vec<String>,
        k: usize,
    ) -> PyResult<Vec<Vec<PyDocument>>> {
        let hits = py
            .detach(|| self.inner.search_batch(&queries, k))
            .map_err(tool_err)?;
        Ok(hits.into_iter().map(docs).collect())
    }

    #[pyo3(signature = (query, k = 5))]
    fn asearch<'py>(
        &self,
        py: Python<'py>,
        query: String,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let idx = self.inner.clone();
        awaitable(py, async move {
            let r = tokio::task::spawn_blocking(move || idx.search(&query, k)).await;
            r.map_err(join_err)?.map(docs).map_err(tool_err)
        })
    }

    #[pyo3(signature = (queries, k = 5))]
    fn asearch_batch<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<String>,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let idx = self.inner.clone();
        awaitable(py, async move {
            let r = tokio::task::spawn_blocking(move || idx.search_batch(&queries, k)).await;
            let hits = r.map_err(join_err)?.map_err(tool_err)?;
            Ok(hits.into_iter().map(docs).collect::<Vec<_>>())
        })
    }

    /// The page at a URL (all passages sharing it) or the passage with that id; None if absent.
    fn access(&self, py: Python<'_>, url: &str) -> PyResult<Option<PyPage>> {
        py.detach(|| self.inner.access(url))
            .map(|p| p.map(PyPage::from))
            .map_err(tool_err)
    }

    /// Whether this index was built from `corpus` as the file is now.
    fn built_from(&self, py: Python<'_>, corpus: PathBuf) -> PyResult<bool> {
        py.detach(|| self.inner.built_from(&corpus))
            .map_err(tool_err)
    }

    /// The passage with this id, or None.
    fn get(&self, py: Python<'_>, id: &str) -> PyResult<Option<PyDocument>> {
        py.detach(|| self.inner.get(id))
            .map(|d| d.map(PyDocument::from))
            .map_err(tool_err)
    }

    fn __repr__(&self) -> String {
        format!(
            "LocalSearch({:?}, {} passages)",
            self.inner.path().display().to_string(),
            self.inner.num_docs()
        )
    }
}

impl PyLocalSearch {
    pub fn index(&self) -> Arc<t::LocalIndex> {
        self.inner.clone()
    }
}

/// Replaces `slot` with a keyword argument that was given.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Client for Search-R1/ASearcher retrieval servers, with failover across addresses.
#[pyclass(name = "RetrievalClient", module = "asearcher._core", frozen)]
pub struct PyRetrievalClient {
    inner: t::RetrievalClient,
}

#[pymethods]
impl PyRetrievalClient {
    /// `config` (a `RetrievalSettings`, a dict of one or a file; default: the defaults) with
    /// the keyword arguments that are given on top (`timeout` and `backoff` in seconds).
    #[new]
    #[pyo3(signature = (endpoints = None, timeout = None, retries = None, backoff = None, max_concurrency = None, *, config = None))]
    fn new(
        endpoints: Option<Vec<String>>,
        timeout: Option<f64>,
        retries: Option<u32>,
        backoff: Option<f64>,
        max_concurrency: Option<usize>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut s: t::RetrievalSettings = config_from_py(config, "config")?;
        set(&mut s.endpoints, endpoints);
        set(&mut s.timeout_s, timeout);
        set(&mut s.retries, retries);
        set(&mut s.backoff_s, backoff);
        set(&mut s.max_concurrency, max_concurrency);
        let cfg = s.to_config().map_err(tool_err)?;
        let inner = {
            let _guard = crate::runtime::runtime().enter();
            t::RetrievalClient::new(cfg).map_err(tool_err)?
        };
        Ok(Self { inner })
    }

    #[getter]
    fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints()
    }

    #[pyo3(signature = (query, k = 5))]
    fn search(&self, py: Python<'_>, query: String, k: usize) -> PyResult<Vec<PyDocument>> {
        Ok(self
            .search_batch(py, vec![query], k)?
            .pop()
            .unwrap_or_default())
    }

    #[pyo3(signature = (queries, k = 5))]
    fn search_batch(
        &self,
        py: Python<'_>,
        queries: Vec<String>,
        k: usize,
    ) -> PyResult<Vec<Vec<PyDocument>>> {
        search_on_runtime(py, Arc::new(self.inner.clone()), queries, k)
    }

    #[pyo3(signature = (queries, k = 5))]
    fn asearch_batch<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<String>,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        awaitable(py, async move {
            let hits = c.search_batch(&queries, k).await.map_err(tool_err)?;
            Ok(hits.into_iter().map(docs).collect::<Vec<_>>())
        })
    }

    #[pyo3(signature = (query, k = 5))]
    fn asearch<'py>(
        &self,
        py: Python<'py>,
        query: String,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        awaitable(py, async move {
            let mut hits = c.search_batch(&[query], k).await.map_err(tool_err)?;
            Ok(docs(hits.pop().unwrap_or_default()))
        })
    }

    /// Pages for URLs through the server's `/access`; None where it has none.
    fn access(&self, py: Python<'_>, url: String) -> PyResult<Option<PyPage>> {
        let c = self.inner.clone();
        wait_for_future(py, async move {
            let mut pages = c.access_batch(&[url]).await.map_err(tool_err)?;
            Ok(pages.pop().flatten().map(PyPage::from))
        })
    }
}

/// Web search over the Serper protocol. The API key is read from an environment variable.
#[pyclass(name = "WebSearch", module = "asearcher._core", frozen)]
pub struct PyWebSearch {
    inner: t::SerperClient,
}

#[pymethods]
impl PyWebSearch {
    /// `config` (a `WebSearchSettings`, a dict of one or a file) with the keyword arguments
    /// that are given on top; the key is read from the environment variable `api_key_env`.
    #[new]
    #[pyo3(signature = (base_url = None, api_key_env = None, timeout = None, retries = None, backoff = None, max_concurrency = None, *, config = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        base_url: Option<String>,
        api_key_env: Option<String>,
        timeout: Option<f64>,
        retries: Option<u32>,
        backoff: Option<f64>,
        max_concurrency: Option<usize>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut s: t::WebSearchSettings = config_from_py(config, "config")?;
        if base_url.is_some() {
            s.base_url = base_url;
        }
        set(&mut s.api_key_env, api_key_env);
        set(&mut s.timeout_s, timeout);
        set(&mut s.retries, retries);
        set(&mut s.backoff_s, backoff);
        set(&mut s.max_concurrency, max_concurrency);
        let cfg = s.to_config().map_err(tool_err)?;
        let _guard = crate::runtime::runtime().enter();
        Ok(Self {
            inner: t::SerperClient::new(cfg).map_err(tool_err)?,
        })
    }

    #[pyo3(signature = (query, k = 5))]
    fn search(&self, py: Python<'_>, query: String, k: usize) -> PyResult<Vec<PyDocument>> {
        let c = self.inner.clone();
        wait_for_future(py, async move {
            c.search(&query, k).await.map(docs).map_err(tool_err)
        })
    }

    #[pyo3(signature = (query, k = 5))]
    fn asearch<'py>(
        &self,
        py: Python<'py>,
        query: String,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.inner.clone();
        awaitable(py, async move {
            c.search(&query, k).await.map(docs).map_err(tool_err)
        })
    }
}

/// Fetches web pages as readable text, refusing private and loopback addresses unless allowed.
#[pyclass(name = "PageReader", module = "asearcher._core", frozen)]
pub struct PyPageReader {
    inner: t::PageReader,
}

#[pymethods]
impl PyPageReader {
    /// `config` (a `PageReaderSettings`, a dict of one or a file) with the keyword arguments
    /// that are given on top (`timeout` in seconds).
    #[new]
    #[pyo3(signature = (mode = None, reader_url = None, api_key_env = None, timeout = None, max_bytes = None, max_redirects = None, allow_private = None, allow_loopback = None, allowed_networks = None, retries = None, *, config = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        mode: Option<String>,
        reader_url: Option<String>,
        api_key_env: Option<String>,
        timeout: Option<f64>,
        max_bytes: Option<usize>,
        max_redirects: Option<usize>,
        allow_private: Option<bool>,
        allow_loopback: Option<bool>,
        allowed_networks: Option<Vec<String>>,
        retries: Option<u32>,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut s: t::PageReaderSettings = config_from_py(config, "config")?;
        if let Some(m) = mode {
            s.mode = serde_json::from_value(serde_json::Value::String(m.clone()))
                .map_err(|_| config_err("mode", format!("{m:?} is not one of 'direct', 'jina'")))?;
        }
        if reader_url.is_some() {
            s.reader_url = reader_url;
        }
        set(&mut s.api_key_env, api_key_env);
        set(&mut s.timeout_s, timeout);
        set(&mut s.max_bytes, max_bytes);
        set(&mut s.max_redirects, max_redirects);
        set(&mut s.allow_private, allow_private);
        set(&mut s.allow_loopback, allow_loopback);
        set(&mut s.allowed_networks, allowed_networks);
        set(&mut s.retries, retries);
        let cfg = s.to_config().map_err(tool_err)?;
        let _guard = crate::runtime::runtime().enter();
        Ok(Self {
            inner: t::PageReader::new(cfg).map_err(tool_err)?,
        })
    }

    /// Fetches `url` and returns its readable text.
    fn read(&self, py: Python<'_>, url: String) -> PyResult<PyPage> {
        let r = self.inner.clone();
        wait_for_future(py, async move {
            r.fetch(&url).await.map(PyPage::from).map_err(tool_err)
        })
    }

    fn aread<'py>(&self, py: Python<'py>, url: String) -> PyResult<Bound<'py, PyAny>> {
        let r = self.inner.clone();
        awaitable(py, async move {
            r.fetch(&url).await.map(PyPage::from).map_err(tool_err)
        })
    }
}

/// The shared on-disk result cache ("readwrite", "replay" = cached results only, "refresh").
#[pyclass(name = "ResultCache", module = "asearcher._core", frozen)]
pub struct PyResultCache {
    inner: Arc<t::ResultCache>,
}

#[pymethods]
impl PyResultCache {
    #[new]
    #[pyo3(signature = (path, mode = "readwrite"))]
    fn new(py: Python<'_>, path: PathBuf, mode: &str) -> PyResult<Self> {
        let mode: t::CacheMode = mode.parse().map_err(tool_err)?;
        let inner = py
            .detach(|| t::ResultCache::open(&path, mode))
            .map_err(tool_err)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Hit, miss and entry counts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("entries", s.entries)?;
        Ok(d)
    }
}

/// The result of one tool call: `text` is the observation shown to the model.
#[pyclass(name = "ToolOutput", module = "asearcher._core", frozen, get_all)]
pub struct PyToolOutput {
    tool: String,
    input: String,
    text: String,
    docs: Vec<PyDocument>,
    chunks: Vec<String>,
    cached: bool,
    elapsed_ms: f64,
}

impl From<t::ToolOutput> for PyToolOutput {
    fn from(o: t::ToolOutput) -> Self {
        Self {
            tool: o.tool,
            input: o.input,
            text: o.text,
            docs: docs(o.docs),
            chunks: o.chunks,
            cached: o.cached,
            elapsed_ms: o.elapsed_ms,
        }
    }
}

#[pymethods]
impl PyToolOutput {
    fn __str__(&self) -> String {
        self.text.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "ToolOutput(tool={:?}, input={:?}, {} docs, {} chunks, cached={}, {:.1} ms)",
            self.tool,
            self.input,
            self.docs.len(),
            self.chunks.len(),
            self.cached,
            self.elapsed_ms
        )
    }
}

/// `search_batch` of any backend on the shared runtime, the GIL released (Ctrl-C stops it).
pub(crate) fn search_on_runtime(
    py: Python<'_>,
    backend: Arc<dyn t::SearchBackend>,
    queries: Vec<String>,
    k: usize,
) -> PyResult<Vec<Vec<PyDocument>>> {
    wait_for_future(py, async move {
        let hits = backend.search_batch(&queries, k).await.map_err(tool_err)?;
        Ok(hits.into_iter().map(docs).collect())
    })
}

pub(crate) fn search_backend(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn t::SearchBackend>> {
    if let Ok(l) = obj.cast::<PyLocalSearch>() {
        return Ok(Arc::new(l.get().inner.clone()));
    }
    if let Ok(r) = obj.cast::<PyRetrievalClient>() {
        return Ok(Arc::new(r.get().inner.clone()));
    }
    if let Ok(w) = obj.cast::<PyWebSearch>() {
        return Ok(Arc::new(w.get().inner.clone()));
    }
    if let Ok(d) = obj.cast::<crate::dense::PyDenseSearch>() {
        return Ok(Arc::new(d.get().inner.clone()));
    }
    if let Ok(h) = obj.cast::<crate::dense::PyHybridSearch>() {
        return Ok(Arc::new(h.get().inner.clone()));
    }
    Err(config_err(
        "search",
        format!(
            "expected LocalSearch, DenseSearch, HybridSearch, RetrievalClient or WebSearch, \
             got {}",
            obj.get_type().name()?
        ),
    ))
}

pub(crate) fn page_source(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn t::PageSource>> {
    if let Ok(l) = obj.cast::<PyLocalSearch>() {
        return Ok(Arc::new(l.get().inner.clone()));
    }
    if let Ok(r) = obj.cast::<PyRetrievalClient>() {
        return Ok(Arc::new(r.get().inner.clone()));
    }
    if let Ok(p) = obj.cast::<PyPageReader>() {
        return Ok(Arc::new(p.get().inner.clone()));
    }
    if let Ok(d) = obj.cast::<crate::dense::PyDenseSearch>() {
        return Ok(Arc::new(d.get().inner.clone()));
    }
    Err(config_err(
        "pages",
        format!(
            "expected LocalSearch, DenseSearch, RetrievalClient or PageReader, got {}",
            obj.get_type().name()?
        ),
    ))
}

/// The agent-facing tools: `search` and `access` as an agent calls them, rendered as observations.
#[pyclass(name = "Toolbox", module = "asearcher._core", frozen)]
pub struct PyToolbox {
    inner: t::Toolbox,
}

impl PyToolbox {
    /// A handle on the same toolbox (cache and backends shared), for the rollout engine.
    pub(crate) fn toolbox(&self) -> t::Toolbox {
        self.inner.clone()
    }
}

#[pymethods]
impl PyToolbox {
    #[new]
    #[pyo3(signature = (search, pages = None, cache = None, top_k = 5, doc_chars = 5000, chunk_chars = 25_000, max_chunks = 10, max_page_chars = 250_000))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        search: &Bound<'_, PyAny>,
        pages: Option<&Bound<'_, PyAny>>,
        cache: Option<&Bound<'_, PyResultCache>>,
        top_k: usize,
        doc_chars: usize,
        chunk_chars: usize,
        max_chunks: usize,
        max_page_chars: usize,
    ) -> PyResult<Self> {
        if chunk_chars == 0 {
            return Err(config_err("chunk_chars", "must be at least 1"));
        }
        let cfg = t::ToolboxConfig {
            top_k,
            doc_chars,
            chunking: t::PageChunking {
                max_chars: max_page_chars,
                chunk_chars,
                max_chunks,
            },
        };
        let pages = pages.map(page_source).transpose()?;
        let cache = cache.map(|c| c.get().inner.clone());
        Ok(Self {
            inner: t::Toolbox::new(search_backend(search)?, pages, cache, cfg),
        })
    }

    /// One `<search>` call.
    fn search(&self, py: Python<'_>, query: String) -> PyResult<PyToolOutput> {
        let tb = self.inner.clone();
        wait_for_future(py, async move {
            tb.search(&query)
                .await
                .map(PyToolOutput::from)
                .map_err(tool_err)
        })
    }

    /// Many `<search>` calls at once (one backend batch for what is not cached).
    fn search_batch(&self, py: Python<'_>, queries: Vec<String>) -> PyResult<Vec<PyToolOutput>> {
        let tb = self.inner.clone();
        wait_for_future(py, async move {
            let outs = tb.search_batch(&queries).await.map_err(tool_err)?;
            Ok(outs.into_iter().map(PyToolOutput::from).collect())
        })
    }

    /// One `<access>` call.
    fn access(&self, py: Python<'_>, url: String) -> PyResult<PyToolOutput> {
        let tb = self.inner.clone();
        wait_for_future(py, async move {
            tb.access(&url)
                .await
                .map(PyToolOutput::from)
                .map_err(tool_err)
        })
    }

    fn asearch<'py>(&self, py: Python<'py>, query: String) -> PyResult<Bound<'py, PyAny>> {
        let tb = self.inner.clone();
        awaitable(py, async move {
            tb.search(&query)
                .await
                .map(PyToolOutput::from)
                .map_err(tool_err)
        })
    }

    fn aaccess<'py>(&self, py: Python<'py>, url: String) -> PyResult<Bound<'py, PyAny>> {
        let tb = self.inner.clone();
        awaitable(py, async move {
            tb.access(&url)
                .await
                .map(PyToolOutput::from)
                .map_err(tool_err)
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDocument>()?;
    m.add_class::<PyPage>()?;
    m.add_class::<PyLocalSearch>()?;
    m.add_class::<PyRetrievalClient>()?;
    m.add_class::<PyWebSearch>()?;
    m.add_class::<PyPageReader>()?;
    m.add_class::<PyResultCache>()?;
    m.add_class::<PyToolOutput>()?;
    m.add_class::<PyToolbox>()?;
    Ok(())
}
