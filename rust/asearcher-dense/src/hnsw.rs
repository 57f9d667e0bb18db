//! Approximate search: an HNSW graph (usearch) over a finished dense index's vectors, for
//! corpora whose exact search is too slow. Built from the shards (never re-encoded) by several
//! threads, saved as `hnsw.usearch` next to them and recorded in the manifest with its settings;
//! a rebuilt or resumed index has a fresh manifest, so a stale graph is never used.

use crate::manifest::{io_err, Manifest, Shard};
use crate::{index_err, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

pub const HNSW_FILE: &str = "hnsw.usearch";

/// Rows added between two progress reports.
const CHUNK_ROWS: usize = 4096;

/// How to build the graph (usearch's names; HNSW's M, efConstruction, efSearch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswOptions {
    /// Neighbours per node (M).
    pub connectivity: usize,
    /// Candidates kept while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (efSearch), the default of searches.
    pub expansion_search: usize,
    /// Insertion threads (0: all cores).
    #[serde(skip)]
    pub threads: usize,
}

impl Default for HnswOptions {
    fn default() -> Self {
        HnswOptions {
            connectivity: 32,
            expansion_add: 128,
            expansion_search: 128,
            threads: 0,
        }
    }
}

/// The graph as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HnswInfo {
    pub file: String,
    pub rows: usize,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
    pub bytes: u64,
    pub seconds: f64,
}

fn usearch_err(path: &Path, what: &str, e: impl std::fmt::Display) -> crate::DenseError {
    index_err(path, format!("HNSW {what}: {e}"))
}

pub(crate) fn threads_or_cores(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A new, empty graph for `dim`-float vectors compared by inner product.
fn new_graph(dim: usize, opts: &HnswOptions) -> std::result::Result<Index, String> {
    let options = IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: opts.connectivity,
        expansion_add: opts.expansion_add,
        expansion_search: opts.expansion_search,
        multi: false,
    };
    Index::new(&options).map_err(|e| e.what().to_string())
}

/// Reads rows `[start, start + n)` of a shard's vector file as floats.
pub(crate) fn read_rows(
    dir: &Path,
    shard: &Shard,
    dim: usize,
    start: usize,
    n: usize,
) -> Result<Vec<f32>> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(&shard.vectors);
    let mut f = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
    f.seek(SeekFrom::Start((start * dim * 4) as u64))
        .map_err(|e| io_err(&path, e))?;
    let mut bytes = vec![0u8; n * dim * 4];
    f.read_exact(&mut bytes).map_err(|e| io_err(&path, e))?;
    Ok(crate::f32s_from_le(&bytes))
}

/// Builds the HNSW graph of the finished index in `dir` (replacing an earlier one) and records
/// it in the manifest. `progress(rows added)` may stop the build by returning an error.
pub fn build_hnsw(
    dir: &Path,
    opts: &HnswOptions,
    progress: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<HnswInfo> {
    let started = Instant::now();
    let mut manifest = Manifest::read(dir)?
        .ok_or_else(|| index_err(dir, "no dense.json: build the dense index first"))?;
    if !manifest.complete {
        return Err(index_err(
            dir,
            "the dense build has not finished; finish it before building the HNSW graph",
        ));
    }
    if opts.connectivity < 2 || opts.expansion_add == 0 || opts.expansion_search == 0 {
        return Err(crate::DenseError::Tool(asearcher_tools::ToolError::config(
            "hnsw",
            format!("connectivity must be >= 2 and expansions >= 1, got {opts:?}"),
        )));
    }
    let (dim, rows, threads) = (
        manifest.dim as usize,
        manifest.rows(),
        threads_or_cores(opts.threads),
    );
    let path = dir.join(HNSW_FILE);
    let graph = new_graph(dim, opts).map_err(|e| usearch_err(&path, "create", e))?;
    graph
        .reserve_capacity_and_threads(rows, threads)
        .map_err(|e| usearch_err(&path, "reserve", e.what()))?;
    let mut row = 0;
    for shard in &manifest.shards {
        let mut start = 0;
        while start < shard.rows {
            let n = CHUNK_ROWS.min(shard.rows - start);
            let floats = read_rows(dir, shard, dim, start, n)?;
            add_parallel(&graph, &floats, dim, row + start, threads)
                .map_err(|e| usearch_err(&path, "insert", e))?;
            start += n;
            progress(row + start)?;
        }
        row += shard.rows;
    }
    let tmp = dir.join(format!(".{HNSW_FILE}.tmp"));
    graph
        .save(&tmp.to_string_lossy())
        .map_err(|e| usearch_err(&tmp, "save", e.what()))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    let info = HnswInfo {
        file: HNSW_FILE.into(),
        rows,
        connectivity: opts.connectivity,
        expansion_add: opts.expansion_add,
        expansion_search: opts.expansion_search,
        bytes: std::fs::metadata(&path)
            .map_err(|e| io_err(&path, e))?
            .len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    manifest.hnsw = Some(info.clone());
    manifest.write(dir)?;
    Ok(info)
}

/// Adds `floats` (rows of `dim`) with keys from `first_key`, split across `threads`.
fn add_parallel(
    graph: &Index,
    floats: &[f32],
    dim: usize,
    first_key: usize,
    threads: usize,
) -> std::result::Result<(), String> {
    let rows = floats.len() / dim;
    let per = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..rows)
            .step_by(per)
            .map(|lo| {
                let hi = (lo + per).min(rows);
                s.spawn(move || {
                    for r in lo..hi {
                        graph
                            .add((first_key + r) as u64, &floats[r * dim..(r + 1) * dim])
                            .map_err(|e| e.what().to_string())?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("an HNSW insert thread panicked"))
    })
}

/// A loaded graph, searched by several threads at once.
pub(crate) struct Hnsw {
    graph: Index,
    threads: usize,
}

impl Hnsw {
    /// Loads the graph recorded in `manifest` (refusing one of another size than the index).
    pub(crate) fn open(
        dir: &Path,
        manifest: &Manifest,
        expansion_search: Option<usize>,
    ) -> Result<Self> {
        let info = manifest.hnsw.as_ref().ok_or_else(|| {
            index_err(
                dir,
                "no HNSW graph: build one first (DenseSearch.build_hnsw, or \
                 `asearcher index hnsw DIR`), or search exactly",
            )
        })?;
        let path = dir.join(&info.file);
        let graph = Index::restore(&path.to_string_lossy())
            .map_err(|e| usearch_err(&path, "load", e.what()))?;
        if graph.size() != manifest.rows() || graph.dimensions() != manifest.dim as usize {
            return Err(index_err(
                &path,
                format!(
                    "the graph holds {} vectors of {} floats; the index has {} of {}",
                    graph.size(),
                    graph.dimensions(),
                    manifest.rows(),
                    manifest.dim
                ),
            ));
        }
        let threads = threads_or_cores(0);
        graph
            .reserve_capacity_and_threads(graph.size(), threads)
            .map_err(|e| usearch_err(&path, "reserve", e.what()))?;
        graph.change_expansion_search(expansion_search.unwrap_or(info.expansion_search).max(1));
        Ok(Hnsw { graph, threads })
    }

    fn search_one(
        &self,
        query: &[f32],
        k: usize,
    ) -> std::result::Result<Vec<(usize, f32)>, String> {
        let m = self
            .graph
            .search(query, k)
            .map_err(|e| e.what().to_string())?;
        // usearch's inner-product distance is 1 - <q, v>.
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .map(|(&key, &d)| (key as usize, 1.0 - d))
            .collect())
    }

    /// The `k` best rows and inner products of each query (`floats` holds `b` rows of `dim`).
    pub(crate) fn search(
        &self,
        floats: &[f32],
        dim: usize,
        k: usize,
    ) -> std::result::Result<Vec<Vec<(usize, f32)>>, String> {
        let b = floats.len() / dim;
        if b <= 4 || self.threads == 1 {
            // Starting threads would cost more than these few searches.
            return (0..b)
                .map(|q| self.search_one(&floats[q * dim..(q + 1) * dim], k))
                .collect();
        }
        let per = b.div_ceil(self.threads).max(1);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..b)
                .step_by(per)
                .map(|lo| {
                    let hi = (lo + per).min(b);
                    s.spawn(move || {
                        (lo..hi)
                            .map(|q| self.search_one(&floats[q * dim..(q + 1) * dim], k))
                            .collect::<std::result::Result<Vec<_>, String>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(b);
            for w in workers {
                out.extend(w.join().expect("an HNSW search thread panicked")?);
            }
            Ok(out)
        })
    }
}
