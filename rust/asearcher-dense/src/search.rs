//! Searching a dense index: queries encoded with the index's encoder, then either exact
//! inner-product top-k over every vector in memory (on the encoder's device) by chunked matrix
//! products (no `[queries x passages]` matrix larger than one chunk), or approximate top-k in
//! the HNSW graph (vectors not loaded). Documents are read by offset from memory-mapped files;
//! pages (`/access`) by URL or id through a map built on first use.

use crate::hnsw::Hnsw;
use crate::manifest::{io_err, model_id, Manifest};
use crate::{index_err, Result};
use asearcher_tools::{Document, Page, PageSource, SearchBackend, ToolError};
use asearcher_torch::encoder::{BertEncoder, EncoderOptions, TextKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// How an index is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Every vector scored (loaded into memory).
    #[default]
    Exact,
    /// The HNSW graph, keeping `expansion_search` candidates (`None`: the graph's setting).
    Hnsw { expansion_search: Option<usize> },
}

/// Passages joined into one page, as the BM25 index does.
const MAX_PAGE_PASSAGES: usize = 64;

/// Rows scored per matrix product.
const CHUNK_ROWS: i64 = 65_536;

struct ShardDocs {
    path: PathBuf,
    map: memmap2::Mmap,
    offsets: Vec<u64>,
}

enum Searcher {
    /// `[rows, dim]` float32 (tensors are not `Sync`: one search at a time uses them).
    Exact(Mutex<Tensor>),
    Hnsw(Hnsw),
}

struct Inner {
    dir: PathBuf,
    manifest: Manifest,
    encoder: Mutex<BertEncoder>,
    searcher: Searcher,
    docs: Vec<ShardDocs>,
    /// First row of each shard.
    starts: Vec<usize>,
    /// Built by the first `access`.
    pages: OnceLock<PageMap>,
}

/// Rows by URL (in corpus order) and by passage id.
#[derive(Default)]
struct PageMap {
    by_url: HashMap<String, Vec<usize>>,
    by_id: HashMap<String, usize>,
}

/// An opened dense index with its encoder (cheap to clone: shared).
#[derive(Clone)]
pub struct DenseIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DenseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseIndex")
            .field("dir", &self.inner.dir)
            .field("rows", &self.rows())
            .finish()
    }
}

impl DenseIndex {
    /// Opens `dir` for exact search with `encoder`, which must be the one the index was built
    /// with.
    pub fn open(dir: &Path, encoder: BertEncoder) -> Result<Self> {
        Self::open_with(dir, encoder, SearchMode::Exact)
    }

    /// Opens `dir` for exact or HNSW search.
    pub fn open_with(dir: &Path, encoder: BertEncoder, mode: SearchMode) -> Result<Self> {
        Self::open_manifest(dir, read_manifest(dir)?, encoder, mode)
    }

    /// Opens `dir` with the encoder it was built with: the model directory its manifest names
    /// (or `model`, when that directory moved), with the recorded spec (pooling, normalisation,
    /// limit, prefixes), on `device` in `kind`.
    pub fn open_built(
        dir: &Path,
        model: Option<&Path>,
        device: Device,
        kind: Kind,
        mode: SearchMode,
    ) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        let spec = &manifest.model.spec;
        let options = EncoderOptions {
            pooling: Some(spec.pooling),
            normalize: Some(spec.normalize),
            max_length: Some(spec.max_length),
            query_prefix: Some(spec.query_prefix.clone()),
            passage_prefix: Some(spec.passage_prefix.clone()),
        };
        let model = model.map_or_else(|| PathBuf::from(&manifest.model.dir), Path::to_path_buf);
        let encoder = BertEncoder::load(&model, device, kind, &options)?;
        Self::open_manifest(dir, manifest, encoder, mode)
    }

    fn open_manifest(
        dir: &Path,
        manifest: Manifest,
        encoder: BertEncoder,
        mode: SearchMode,
    ) -> Result<Self> {
        if !manifest.complete {
            return Err(index_err(
                dir,
                format!(
                    "the build has not finished ({} passages in {} shards so far); run the \
                     build again to resume it",
                    manifest.rows(),
                    manifest.shards.len()
                ),
            ));
        }
        manifest.check_model(dir, &model_id(&encoder)?)?;
        let searcher = match mode {
            SearchMode::Exact => {
                Searcher::Exact(Mutex::new(load_vectors(dir, &manifest, encoder.device())?))
            }
            SearchMode::Hnsw { expansion_search } => {
                Searcher::Hnsw(Hnsw::open(dir, &manifest, expansion_search)?)
            }
        };
        let mut docs = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut row = 0;
        for shard in &manifest.shards {
            docs.push(read_offsets(dir, shard)?);
            starts.push(row);
            row += shard.rows;
        }
        Ok(DenseIndex {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                manifest,
                encoder: Mutex::new(encoder),
                searcher,
                docs,
                starts,
                pages: OnceLock::new(),
            }),
        })
    }

    /// Exact or HNSW.
    pub fn mode(&self) -> &'static str {
        match self.inner.searcher {
            Searcher::Exact(_) => "exact",
            Searcher::Hnsw(_) => "hnsw",
        }
    }

    pub fn rows(&self) -> usize {
        self.inner.manifest.rows()
    }

    pub fn dim(&self) -> i64 {
        self.inner.manifest.dim
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Query vectors `[B, dim]` with the index's encoder.
    pub fn encode_queries(&self, queries: &[String]) -> Result<Tensor> {
        let encoder = self.inner.encoder.lock().unwrap_or_else(|e| e.into_inner());
        Ok(encoder.encode(queries, TextKind::Query, 64, &mut |_| Ok(()))?)
    }

    /// The `k` best rows and scores of each query vector (`[B, dim]`), best first.
    pub fn search_vectors(&self, queries: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        match &self.inner.searcher {
            Searcher::Exact(vectors) => {
                let vectors = vectors.lock().unwrap_or_else(|e| e.into_inner());
                exact_top_k(&vectors, queries, k)
            }
            Searcher::Hnsw(graph) => {
                let floats: Vec<f32> = Vec::try_from(
                    queries
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float)
                        .contiguous()
                        .flatten(0, -1),
                )?;
                let k = k.min(self.rows());
                graph
                    .search(&floats, self.dim() as usize, k)
                    .map_err(|e| index_err(&self.inner.dir, format!("HNSW search: {e}")))
            }
        }
    }

    /// The document of a row.
    pub fn document(&self, row: usize) -> Result<Document> {
        let shard = self.inner.starts.partition_point(|&s| s <= row) - 1;
        let docs = &self.inner.docs[shard];
        let offset = *docs
            .offsets
            .get(row - self.inner.starts[shard])
            .ok_or_else(|| index_err(&docs.path, format!("no row {row}")))?;
        let rest = docs.map.get(offset as usize..).unwrap_or_default();
        let line = &rest[..rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())];
        serde_json::from_slice(line)
            .map_err(|e| index_err(&docs.path, format!("row {row}: invalid document: {e}")))
    }

    /// The `k` best documents of each query, with their scores.
    pub fn search_batch_blocking(
        &self,
        queries: &[String],
        k: usize,
    ) -> Result<Vec<Vec<Document>>> {
        let q = self.encode_queries(queries)?;
        self.search_vectors(&q, k)?
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .map(|(row, score)| {
                        let mut d = self.document(row)?;
                        d.score = Some(score);
                        Ok(d)
                    })
                    .collect()
            })
            .collect()
    }
}

/// Exact top-k by chunked matrix products against `vectors` (`[rows, dim]`).
fn exact_top_k(vectors: &Tensor, queries: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let (b, rows) = (queries.size()[0], vectors.size()[0]);
    let k = (k as i64).min(rows);
    if b == 0 || k == 0 {
        return Ok(vec![Vec::new(); b as usize]);
    }
    let _guard = tch::no_grad_guard();
    let q = queries.to_device(vectors.device()).to_kind(vectors.kind());
    let (mut best_s, mut best_i) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < rows {
        let n = CHUNK_ROWS.min(rows - start);
        let scores = q.matmul(&vectors.narrow(0, start, n).tr());
        let (s, i) = scores.topk(k.min(n), -1, true, true);
        best_s.push(s);
        best_i.push(i + start);
        start += n;
    }
    let (s, pick) = Tensor::cat(&best_s, 1).topk(k, -1, true, true);
    let i = Tensor::cat(&best_i, 1).gather(1, &pick, false);
    let s: Vec<f32> = Vec::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
    let i: Vec<i64> = Vec::try_from(i.to_device(Device::Cpu).flatten(0, -1))?;
    Ok((0..b as usize)
        .map(|r| {
            (0..k as usize)
                .map(|c| (i[r * k as usize + c] as usize, s[r * k as usize + c]))
                .collect()
        })
        .collect())
}

/// `dir/dense.json`, or an error saying there is no dense index there.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    Manifest::read(dir)?.ok_or_else(|| {
        index_err(
            dir,
            "no dense.json: not a dense index (build one with `asearcher index build --dense` \
             or DenseSearch.build)",
        )
    })
}

/// Rows read at a time while loading vectors.
const LOAD_ROWS: usize = 16_384;

/// Every shard's vectors in one `[rows, dim]` float32 tensor on `device`, filled piece by piece
/// (peak memory: the index plus a few pieces).
fn load_vectors(dir: &Path, manifest: &Manifest, device: Device) -> Result<Tensor> {
    let dim = manifest.dim;
    let all = Tensor::empty([manifest.rows() as i64, dim], (Kind::Float, Device::Cpu));
    let mut row = 0i64;
    for shard in &manifest.shards {
        let path = dir.join(&shard.vectors);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .len();
        if bytes != (shard.rows * dim as usize * 4) as u64 {
            return Err(index_err(
                &path,
                format!(
                    "{bytes} bytes, expected {} rows x {dim} float32",
                    shard.rows
                ),
            ));
        }
        // In pieces, so that the transient copies stay small beside the index.
        let mut start = 0;
        while start < shard.rows {
            let n = LOAD_ROWS.min(shard.rows - start);
            let floats = crate::hnsw::read_rows(dir, shard, dim as usize, start, n)?;
            all.narrow(0, row + start as i64, n as i64)
                .copy_(&Tensor::from_slice(&floats).view([n as i64, dim]));
            start += n;
        }
        row += shard.rows as i64;
    }
    Ok(if device == Device::Cpu {
        all
    } else {
        all.to_device(device)
    })
}

fn read_offsets(dir: &Path, shard: &crate::manifest::Shard) -> Result<ShardDocs> {
    let path = dir.join(&shard.offsets);
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    if bytes.len() != shard.rows * 8 {
        return Err(index_err(&path, format!("expected {} offsets", shard.rows)));
    }
    let docs_path = dir.join(&shard.docs);
    let file = std::fs::File::open(&docs_path).map_err(|e| io_err(&docs_path, e))?;
    // SAFETY: the index's files are written once by the build and never modified in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&docs_path, e))?;
    Ok(ShardDocs {
        path: docs_path,
        map,
        offsets: bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
    })
}

impl DenseIndex {
    fn page_map(&self) -> Result<&PageMap> {
        if let Some(map) = self.inner.pages.get() {
            return Ok(map);
        }
        tracing::info!(
            rows = self.rows(),
            "mapping the dense index's pages by URL and id"
        );
        let mut map = PageMap::default();
        for row in 0..self.rows() {
            let doc = self.document(row)?;
            if let Some(url) = doc.url.filter(|u| !u.is_empty()) {
                map.by_url.entry(url).or_default().push(row);
            }
            map.by_id.entry(doc.id).or_insert(row);
        }
        Ok(self.inner.pages.get_or_init(|| map))
    }

    /// The page at `url_or_id`, as the BM25 index gives it: the passages sharing that URL joined
    /// in corpus order, or else the passage with that id.
    pub fn access_blocking(&self, url_or_id: &str) -> Result<Option<Page>> {
        let key = url_or_id.trim();
        if key.is_empty() {
            return Ok(None);
        }
        let map = self.page_map()?;
        let rows: Vec<usize> = match map.by_url.get(key) {
            Some(rows) => rows.iter().take(MAX_PAGE_PASSAGES).copied().collect(),
            None => map.by_id.get(key).map(|&r| vec![r]).unwrap_or_default(),
        };
        let docs = rows
            .into_iter()
            .map(|r| self.document(r))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = docs.first() else {
            return Ok(None);
        };
        Ok(Some(Page {
            url: first.url.clone().unwrap_or_else(|| key.to_string()),
            title: first.title.clone(),
            contents: docs
                .iter()
                .map(|d| d.text.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
        }))
    }

    fn tool_err(&self, e: crate::DenseError) -> ToolError {
        match e {
            crate::DenseError::Tool(t) => t,
            crate::DenseError::Torch(t) => ToolError::Index {
                path: self.inner.dir.clone(),
                msg: t.to_string(),
            },
        }
    }
}

#[async_trait::async_trait]
impl PageSource for DenseIndex {
    fn name(&self) -> String {
        SearchBackend::name(self)
    }

    async fn access(&self, url: &str) -> asearcher_tools::Result<Option<Page>> {
        let (index, url) = (self.clone(), url.to_string());
        tokio::task::spawn_blocking(move || index.access_blocking(&url))
            .await
            .map_err(|e| ToolError::Index {
                path: self.inner.dir.clone(),
                msg: format!("access task failed: {e}"),
            })?
            .map_err(|e| self.tool_err(e))
    }
}

#[async_trait::async_trait]
impl SearchBackend for DenseIndex {
    /// `local:dense:<build id>`: the index by identity, never by path.
    fn name(&self) -> String {
        format!(
            "local:dense:{}",
            self.inner.manifest.build_id.as_deref().unwrap_or("unknown")
        )
    }

    async fn search_batch(
        &self,
        queries: &[String],
        k: usize,
    ) -> asearcher_tools::Result<Vec<Vec<Document>>> {
        let index = self.clone();
        let queries = queries.to_vec();
        let found = tokio::task::spawn_blocking(move || index.search_batch_blocking(&queries, k))
            .await
            .map_err(|e| ToolError::Index {
                path: self.inner.dir.clone(),
                msg: format!("search task failed: {e}"),
            })?;
        found.map_err(|e| self.tool_err(e))
    }
}
