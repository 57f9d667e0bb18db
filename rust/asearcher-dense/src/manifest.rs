//! `dense.json`: what an index holds and how it was made (the encoder by weights hash and spec,
//! the corpus by size and hash), with its finished shards. Written atomically after every
//! shard, so a killed build knows what it finished.

use crate::{index_err, DenseError, Result};
use asearcher_torch::encoder::{BertEncoder, EncoderSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

pub const MANIFEST_FILE: &str = "dense.json";
pub const FORMAT: &str = "asearcher-dense";
pub const VERSION: u32 = 1;

/// The encoder an index was built with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    /// The model directory as given at build time (for people; identity is the hash).
    pub dir: String,
    /// SHA-256 of the weight files and config.json (16 hex digits).
    pub weights_sha256: String,
    pub spec: EncoderSpec,
}

/// The corpus an index was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusId {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One finished shard: `rows` vectors in `vectors` (little-endian float32, row-major) and their
/// documents in `docs` (jsonl) with byte offsets in `offsets` (little-endian u64 per row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub vectors: String,
    pub docs: String,
    pub offsets: String,
    pub rows: usize,
    /// SHA-256 of the vectors file (16 hex digits), checked before a resume skips the shard.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model: ModelId,
    pub dim: i64,
    pub dtype: String,
    pub normalized: bool,
    pub corpus: CorpusId,
    pub shard_rows: usize,
    pub shards: Vec<Shard>,
    /// Every document is in a shard.
    pub complete: bool,
    /// Identity of the finished index (corpus, model and spec), for cache keys.
    pub build_id: Option<String>,
    /// Where the vectors came from when they were not encoded here (`faiss:<file> sha256
    /// <hash>` for an imported FAISS flat index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// The HNSW graph over the vectors, when one was built ([`crate::hnsw`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw: Option<crate::hnsw::HnswInfo>,
}

impl Manifest {
    /// The manifest of a new, empty index of `corpus` made with `model` (`dim` floats per
    /// vector, normalised as the encoder's spec says).
    pub fn fresh(model: ModelId, dim: i64, corpus: CorpusId, shard_rows: usize) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            normalized: model.spec.normalize,
            model,
            dim,
            dtype: "float32".into(),
            corpus,
            shard_rows,
            shards: Vec::new(),
            complete: false,
            build_id: None,
            imported_from: None,
            hnsw: None,
        }
    }

    pub fn rows(&self) -> usize {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Reads `dir/dense.json`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| index_err(&path, format!("invalid {MANIFEST_FILE}: {e}")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(index_err(
                &path,
                format!(
                    "format {} version {} is not {FORMAT} version {VERSION}",
                    m.format, m.version
                ),
            ));
        }
        Ok(Some(m))
    }

    /// Writes `dir/dense.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("a manifest serialises");
        std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        Ok(())
    }

    /// Refuses an encoder other than the one the index was built with, naming both.
    pub fn check_model(&self, dir: &Path, model: &ModelId) -> Result<()> {
        if self.model.weights_sha256 != model.weights_sha256 || self.model.spec != model.spec {
            return Err(index_err(
                dir,
                format!(
                    "built with the encoder {} (weights {}, {:?}); the encoder given is {} \
                     (weights {}, {:?}): query vectors would not match the index",
                    self.model.dir,
                    self.model.weights_sha256,
                    self.model.spec,
                    model.dir,
                    model.weights_sha256,
                    model.spec
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> DenseError {
    DenseError::Tool(asearcher_tools::ToolError::io(path, e))
}

pub(crate) fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex16(&h.finalize()))
}

/// The identity of an encoder: its weights and config by hash, and its spec.
pub fn model_id(encoder: &BertEncoder) -> Result<ModelId> {
    let dir = encoder.dir();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".safetensors") || n == "config.json")
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(file_sha256(&dir.join(&n))?.as_bytes());
    }
    Ok(ModelId {
        dir: dir.display().to_string(),
        weights_sha256: hex16(&h.finalize()),
        spec: encoder.spec().clone(),
    })
}

/// The identity of a corpus file.
pub fn corpus_id(path: &Path) -> Result<CorpusId> {
    let bytes = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    Ok(CorpusId {
        path: path.display().to_string(),
        bytes,
        sha256: file_sha256(path)?,
    })
}
