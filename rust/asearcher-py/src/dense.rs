//! Python class of the dense index (`asearcher.tools.DenseSearch`'s native half): build
//! (resumable, progress and Ctrl-C through a callback) and open with the index's encoder,
//! search (sync, batched), documents with scores.

use crate::errors::{config_err, tool_err, torch_err};
use crate::tools::{
    docs, parse_bad_line_policy, progress_step, search_backend, search_on_runtime, PyDocument,
    PyPage,
};
use asearcher_dense::build::Progress;
use asearcher_dense::{
    build_hnsw, build_index, import_faiss_flat, BuildOptions, BuildStats, DenseError, DenseIndex,
    HnswOptions, HybridSearch, SearchMode,
};
use asearcher_tools::SearchBackend;
use asearcher_torch::encoder::{BertEncoder, EncoderOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::{Path, PathBuf};

fn dense_err(e: DenseError) -> PyErr {
    match e {
        DenseError::Tool(t) => tool_err(t),
        DenseError::Torch(t) => torch_err(t),
    }
}

fn load_encoder(
    path: &Path,
    device: &str,
    dtype: &str,
    options: &EncoderOptions,
) -> asearcher_dense::Result<BertEncoder> {
    let device = asearcher_torch::parse_device(device)?;
    let kind = asearcher_torch::parse_dtype(dtype)?;
    Ok(BertEncoder::load(path, device, kind, options)?)
}

/// Runs `job` with the GIL released, its `progress(rows)` calls going to the Python callback;
/// Ctrl-C or the callback's own exception stops the job (as `Cancelled { what }`) and is
/// re-raised unchanged.
fn with_progress<T: Send>(
    py: Python<'_>,
    what: &str,
    progress: Option<Py<PyAny>>,
    job: impl FnOnce(&mut Progress<'_>) -> asearcher_dense::Result<T> + Send,
) -> PyResult<T> {
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        job(&mut |rows: usize| {
            progress_step(progress.as_ref(), |py, cb| cb.call1(py, (rows,)).map(drop)).map_err(
                |e| {
                    callback_error = Some(e);
                    asearcher_tools::ToolError::Cancelled { what: what.into() }.into()
                },
            )
        })
    });
    match (result, callback_error) {
        (Err(_), Some(py_err)) => Err(py_err),
        (r, _) => r.map_err(dense_err),
    }
}

/// A job that writes a dense index with an encoder it loads itself (build, import).
struct EncoderJob<'a> {
    model: PathBuf,
    device: &'a str,
    dtype: &'a str,
    options: EncoderOptions,
}

impl<'a> EncoderJob<'a> {
    fn new(model: PathBuf, device: &'a str, dtype: &'a str, options_json: &str) -> PyResult<Self> {
        let options =
            serde_json::from_str(options_json).map_err(|e| config_err("options", e.to_string()))?;
        Ok(EncoderJob {
            model,
            device,
            dtype,
            options,
        })
    }

    /// Runs `job` with the GIL released; `progress(passages)` is called through the Python
    /// callback, and Ctrl-C or the callback's own exception stops the job and is re-raised
    /// unchanged. Returns the job's stats as a dict.
    fn run<'py>(
        self,
        py: Python<'py>,
        what: &str,
        progress: Option<Py<PyAny>>,
        job: impl FnOnce(&BertEncoder, &mut Progress<'_>) -> asearcher_dense::Result<BuildStats> + Send,
    ) -> PyResult<Bound<'py, PyDict>> {
        let stats = with_progress(py, what, progress, |report| {
            let encoder = load_encoder(&self.model, self.device, self.dtype, &self.options)?;
            job(&encoder, report)
        })?;
        stats_dict(py, &stats)
    }
}

fn stats_dict<'py>(py: Python<'py>, stats: &BuildStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rows", stats.rows)?;
    d.set_item("shards", stats.shards)?;
    d.set_item("resumed_shards", stats.resumed_shards)?;
    d.set_item("encoded_rows", stats.encoded_rows)?;
    d.set_item("skipped_lines", stats.skipped_lines)?;
    d.set_item("seconds", stats.seconds)?;
    d.set_item("build_id", &stats.build_id)?;
    Ok(d)
}

/// A dense (embedding) index with its encoder.
#[pyclass(name = "DenseSearch", module = "asearcher._core", subclass, frozen)]
pub struct PyDenseSearch {
    pub(crate) inner: DenseIndex,
}

impl PyDenseSearch {
    /// The best rows of `rows` query vectors given row-major in `flat`.
    fn search_rows(
        &self,
        py: Python<'_>,
        flat: &[f32],
        rows: usize,
        k: usize,
    ) -> PyResult<Vec<Vec<(usize, f32)>>> {
        let dim = self.inner.dim();
        py.detach(|| {
            let q = tch::Tensor::from_slice(flat).view([rows as i64, dim]);
            self.inner.search_vectors(&q, k)
        })
        .map_err(dense_err)
    }
}

#[pymethods]
impl PyDenseSearch {
    /// Opens `path`; the encoder is `model` (default: the directory the index was built
    /// with) with the index's spec (pooling, prefixes, limits). `search`: `"exact"` (every
    /// vector loaded and scored) or `"hnsw"` (the graph built by `build_hnsw_graph`, keeping
    /// `expansion_search` candidates; default: the graph's setting).
    #[new]
    #[pyo3(signature = (path, model = None, device = "cpu", dtype = "float32", search = "exact",
        expansion_search = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: &str,
        dtype: &str,
        search: &str,
        expansion_search: Option<usize>,
    ) -> PyResult<Self> {
        let mode = match search {
            "exact" => SearchMode::Exact,
            "hnsw" => SearchMode::Hnsw { expansion_search },
            other => {
                return Err(config_err(
                    "search",
                    format!("{other:?} is not one of 'exact', 'hnsw'"),
                ))
            }
        };
        let device = asearcher_torch::parse_device(device).map_err(torch_err)?;
        let kind = asearcher_torch::parse_dtype(dtype).map_err(torch_err)?;
        let inner = py
            .detach(|| DenseIndex::open_built(&path, model.as_deref(), device, kind, mode))
            .map_err(dense_err)?;
        Ok(PyDenseSearch { inner })
    }

    /// Builds the HNSW graph of the finished index at `path` from its stored vectors (no
    /// encoding), replacing an earlier graph; `progress(rows)` every few thousand rows.
    /// Returns the graph's record in the manifest.
    #[staticmethod]
    #[pyo3(signature = (path, *, connectivity = 32, expansion_add = 128, expansion_search = 128,
        threads = 0, progress = None))]
    fn build_hnsw_graph(
        py: Python<'_>,
        path: PathBuf,
        connectivity: usize,
        expansion_add: usize,
        expansion_search: usize,
        threads: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let opts = HnswOptions {
            connectivity,
            expansion_add,
            expansion_search,
            threads,
        };
        let info = with_progress(py, "HNSW build", progress, |report| {
            build_hnsw(&path, &opts, report)
        })?;
        Ok(serde_json::to_string(&info).expect("serialises"))
    }

    /// `"exact"` or `"hnsw"`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode()
    }

    /// The `k` best rows and scores of each query vector (already encoded, `dim` floats each),
    /// best first: `[[(row, score), ...], ...]`.
    #[pyo3(signature = (vectors, k = 5))]
    fn search_vectors(
        &self,
        py: Python<'_>,
        vectors: Vec<Vec<f32>>,
        k: usize,
    ) -> PyResult<Vec<Vec<(usize, f32)>>> {
        let dim = self.inner.dim() as usize;
        if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
            return Err(config_err(
                "vectors",
                format!("vector {i} has {} floats; the index holds {dim}", v.len()),
            ));
        }
        self.search_rows(py, &vectors.concat(), vectors.len(), k)
    }

    /// `search_vectors` on `rows` vectors given as little-endian float32 bytes (row-major), as
    /// numpy's `tobytes()` gives them: no per-float conversion.
    #[pyo3(signature = (data, rows, k = 5))]
    fn search_vector_bytes(
        &self,
        py: Python<'_>,
        data: &[u8],
        rows: usize,
        k: usize,
    ) -> PyResult<Vec<Vec<(usize, f32)>>> {
        let dim = self.inner.dim() as usize;
        if data.len() != rows * dim * 4 {
            return Err(config_err(
                "vectors",
                format!(
                    "{} bytes are not {rows} vectors of {dim} float32",
                    data.len()
                ),
            ));
        }
        self.search_rows(py, &asearcher_dense::f32s_from_le(data), rows, k)
    }

    /// The query vectors of `queries` (with the index's query prefix), as lists of floats.
    fn encode_queries(&self, py: Python<'_>, queries: Vec<String>) -> PyResult<Vec<Vec<f32>>> {
        py.detach(|| {
            let q = self.inner.encode_queries(&queries)?;
            let flat: Vec<f32> = Vec::try_from(q.to_kind(tch::Kind::Float).flatten(0, -1))?;
            Ok(flat
                .chunks(self.inner.dim() as usize)
                .map(<[f32]>::to_vec)
                .collect())
        })
        .map_err(dense_err)
    }

    /// The passage stored at `row`.
    fn document(&self, py: Python<'_>, row: usize) -> PyResult<PyDocument> {
        if row >= self.inner.rows() {
            return Err(config_err(
                "row",
                format!("{row} is past the index's {} rows", self.inner.rows()),
            ));
        }
        py.detach(|| self.inner.document(row))
            .map(PyDocument::from)
            .map_err(dense_err)
    }

    /// The page at a URL (the passages sharing it, in corpus order) or the passage with that
    /// id; None if absent. The first call maps every passage's URL and id.
    fn access(&self, py: Python<'_>, url: &str) -> PyResult<Option<PyPage>> {
        py.detach(|| self.inner.access_blocking(url))
            .map(|p| p.map(PyPage::from))
            .map_err(dense_err)
    }

    /// Builds (or resumes) the index of `corpus` in `out` with the encoder at `model`
    /// (`options_json`: pooling, normalize, max_length, prefixes). `progress(passages)` is
    /// called after every batch; an exception from it (or Ctrl-C) stops the build, whose
    /// finished shards a later call keeps.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (corpus, out, model, *, device = "cpu", dtype = "float32",
        options_json = "{}", batch_size = 64, shard_rows = 16384, overwrite = false,
        on_bad_line = "error", progress = None))]
    fn build_index<'py>(
        py: Python<'py>,
        corpus: PathBuf,
        out: PathBuf,
        model: PathBuf,
        device: &str,
        dtype: &str,
        options_json: &str,
        batch_size: usize,
        shard_rows: usize,
        overwrite: bool,
        on_bad_line: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let build = BuildOptions {
            shard_rows,
            batch_size,
            overwrite,
            on_bad_line: parse_bad_line_policy(on_bad_line)?,
        };
        let job = EncoderJob::new(model, device, dtype, options_json)?;
        job.run(py, "dense index build", progress, |encoder, report| {
            build_index(&corpus, &out, encoder, &build, report)
        })
    }

    /// Writes a dense index in `out` from a FAISS `IndexFlatIP` file and the corpus it was
    /// built from (row `i` = passage `i`), recorded as encoded by `model` with `options_json`
    /// (its queries are encoded with them). `progress(passages)` after every shard.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (faiss, corpus, out, model, *, device = "cpu", dtype = "float32",
        options_json = "{}", shard_rows = 16384, overwrite = false, on_bad_line = "error",
        progress = None))]
    fn import_faiss_index<'py>(
        py: Python<'py>,
        faiss: PathBuf,
        corpus: PathBuf,
        out: PathBuf,
        model: PathBuf,
        device: &str,
        dtype: &str,
        options_json: &str,
        shard_rows: usize,
        overwrite: bool,
        on_bad_line: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let build = BuildOptions {
            shard_rows,
            overwrite,
            on_bad_line: parse_bad_line_policy(on_bad_line)?,
            ..BuildOptions::default()
        };
        let job = EncoderJob::new(model, device, dtype, options_json)?;
        job.run(py, "FAISS import", progress, |encoder, report| {
            import_faiss_flat(&faiss, &corpus, &out, encoder, &build, report)
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }

    fn __len__(&self) -> usize {
        self.inner.rows()
    }

    #[getter]
    fn dim(&self) -> i64 {
        self.inner.dim()
    }

    /// The manifest (`dense.json`) as JSON: model, spec, corpus, shards, build id.
    fn manifest_json(&self) -> String {
        serde_json::to_string(self.inner.manifest()).expect("a manifest serialises")
    }

    /// The `k` best passages for `query`, best first, with their inner-product scores.
    #[pyo3(signature = (query, k = 5))]
    fn search(&self, py: Python<'_>, query: String, k: usize) -> PyResult<Vec<PyDocument>> {
        let mut found = self.search_batch(py, vec![query], k)?;
        Ok(found.pop().unwrap_or_default())
    }

    /// `search` for many queries in one encoder pass and one matrix product.
    #[pyo3(signature = (queries, k = 5))]
    fn search_batch(
        &self,
        py: Python<'_>,
        queries: Vec<String>,
        k: usize,
    ) -> PyResult<Vec<Vec<PyDocument>>> {
        let found = py
            .detach(|| self.inner.search_batch_blocking(&queries, k))
            .map_err(dense_err)?;
        Ok(found.into_iter().map(docs).collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "DenseSearch({:?}, {} passages, dim {}, {})",
            self.inner.dir().display(),
            self.inner.rows(),
            self.inner.dim(),
            self.inner.mode()
        )
    }
}

/// Search backends (BM25 and dense, typically) fused by weighted reciprocal rank fusion.
#[pyclass(name = "HybridSearch", module = "asearcher._core", subclass, frozen)]
pub struct PyHybridSearch {
    pub(crate) inner: HybridSearch,
}

#[pymethods]
impl PyHybridSearch {
    /// `parts`: `(backend, weight)` pairs (LocalSearch, DenseSearch, RetrievalClient,
    /// WebSearch); `depth`: hits taken from each; `rrf_k`: the rank offset.
    #[new]
    #[pyo3(signature = (parts, depth = 50, rrf_k = 60.0))]
    fn new(parts: Vec<(Bound<'_, PyAny>, f32)>, depth: usize, rrf_k: f32) -> PyResult<Self> {
        let parts = parts
            .iter()
            .map(|(b, w)| Ok((search_backend(b)?, *w)))
            .collect::<PyResult<Vec<_>>>()?;
        let inner = HybridSearch::new(parts, depth, rrf_k).map_err(tool_err)?;
        Ok(PyHybridSearch { inner })
    }

    /// The `k` best passages for `query`, fused; `score` is the fused RRF score.
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
        search_on_runtime(py, std::sync::Arc::new(self.inner.clone()), queries, k)
    }

    /// The backend's name in cache keys (its parts by identity, weights, depth, rrf_k).
    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }

    fn __repr__(&self) -> String {
        format!("HybridSearch({})", self.inner.name())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDenseSearch>()?;
    m.add_class::<PyHybridSearch>()
}
