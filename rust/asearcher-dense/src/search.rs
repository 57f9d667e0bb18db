//! Searching a dense index: every vector in memory (on the encoder's device), queries encoded
//! with the index's encoder, exact inner-product top-k by chunked matrix products (no
//! `[queries x passages]` matrix larger than one chunk), documents read by offset.

use crate::manifest::{io_err, model_id, Manifest};
use crate::{index_err, Result};
use asearcher_tools::{Document, SearchBackend, ToolError};
use asearcher_torch::encoder::{BertEncoder, TextKind};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// Rows scored per matrix product.
const CHUNK_ROWS: i64 = 65_536;

struct ShardDocs {
    path: PathBuf,
    offsets: Vec<u64>,
}

struct Inner {
    dir: PathBuf,
    manifest: Manifest,
    encoder: Mutex<BertEncoder>,
    /// `[rows, dim]` float32 (tensors are not `Sync`: one search at a time uses them).
    vectors: Mutex<Tensor>,
    docs: Vec<ShardDocs>,
    /// First row of each shard.
    starts: Vec<usize>,
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
    /// Opens `dir` with `encoder`, which must be the one the index was built with.
    pub fn open(dir: &Path, encoder: BertEncoder) -> Result<Self> {
        let manifest = Manifest::read(dir)?
            .ok_or_else(|| index_err(dir, "no dense.json: not a dense index (build one first)"))?;
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
        let dim = manifest.dim;
        let mut parts = Vec::with_capacity(manifest.shards.len());
        let mut docs = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut row = 0;
        for shard in &manifest.shards {
            let path = dir.join(&shard.vectors);
            let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            if bytes.len() != shard.rows * dim as usize * 4 {
                return Err(index_err(
                    &path,
                    format!(
                        "{} bytes, expected {} rows x {dim} float32",
                        bytes.len(),
                        shard.rows
                    ),
                ));
            }
            let floats: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            parts.push(Tensor::from_slice(&floats).view([shard.rows as i64, dim]));
            docs.push(read_offsets(dir, shard)?);
            starts.push(row);
            row += shard.rows;
        }
        let vectors = Tensor::cat(&parts, 0).to_device(encoder.device());
        Ok(DenseIndex {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                manifest,
                encoder: Mutex::new(encoder),
                vectors: Mutex::new(vectors),
                docs,
                starts,
            }),
        })
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
        let vectors = self.inner.vectors.lock().unwrap_or_else(|e| e.into_inner());
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
        let s: Vec<f32> =
            Vec::try_from(s.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
        let i: Vec<i64> = Vec::try_from(i.to_device(Device::Cpu).flatten(0, -1))?;
        Ok((0..b as usize)
            .map(|r| {
                (0..k as usize)
                    .map(|c| (i[r * k as usize + c] as usize, s[r * k as usize + c]))
                    .collect()
            })
            .collect())
    }

    /// The document of a row.
    pub fn document(&self, row: usize) -> Result<Document> {
        let shard = self.inner.starts.partition_point(|&s| s <= row) - 1;
        let docs = &self.inner.docs[shard];
        let offset = *docs
            .offsets
            .get(row - self.inner.starts[shard])
            .ok_or_else(|| index_err(&docs.path, format!("no row {row}")))?;
        let mut f = std::fs::File::open(&docs.path).map_err(|e| io_err(&docs.path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&docs.path, e))?;
        let mut line = String::new();
        BufReader::new(f)
            .read_line(&mut line)
            .map_err(|e| io_err(&docs.path, e))?;
        serde_json::from_str(&line)
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

fn read_offsets(dir: &Path, shard: &crate::manifest::Shard) -> Result<ShardDocs> {
    let path = dir.join(&shard.offsets);
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    if bytes.len() != shard.rows * 8 {
        return Err(index_err(&path, format!("expected {} offsets", shard.rows)));
    }
    Ok(ShardDocs {
        path: dir.join(&shard.docs),
        offsets: bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
    })
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
        found.map_err(|e| match e {
            crate::DenseError::Tool(t) => t,
            crate::DenseError::Torch(t) => ToolError::Index {
                path: self.inner.dir.clone(),
                msg: t.to_string(),
            },
        })
    }
}
