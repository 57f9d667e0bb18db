//! Dense retrieval: an on-disk vector index of a corpus, encoded by a BERT-family encoder
//! (`asearcher_torch::encoder`), built in shards that a killed build resumes
//! ([`build::build_index`]), and searched exactly by chunked matrix products and top-k or
//! approximately in an HNSW graph ([`hnsw`]) ([`search::DenseIndex`], which is a `SearchBackend`
//! and a `PageSource` for the agents' toolbox and the retrieval server), alone or
//! fused with BM25 by reciprocal rank fusion ([`hybrid::HybridSearch`]).

pub mod build;
pub mod hnsw;
pub mod hybrid;
pub mod import;
pub mod manifest;
pub mod search;
#[cfg(test)]
mod tests;

pub use build::{build_index, BuildOptions, BuildStats};
pub use hnsw::{build_hnsw, HnswInfo, HnswOptions};
pub use hybrid::HybridSearch;
pub use import::{import_faiss_flat, read_faiss_header};
pub use manifest::Manifest;
pub use search::{DenseIndex, SearchMode};

/// Errors of the dense index: the tools' (index, corpus, I/O) and the encoder's.
#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    #[error(transparent)]
    Tool(#[from] asearcher_tools::ToolError),
    #[error(transparent)]
    Torch(#[from] asearcher_torch::TorchError),
}

impl From<tch::TchError> for DenseError {
    fn from(e: tch::TchError) -> Self {
        DenseError::Torch(e.into())
    }
}

pub type Result<T> = std::result::Result<T, DenseError>;

/// Little-endian float32 bytes (the vector files, numpy's `tobytes()`) as floats.
pub fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// An index error naming the directory.
pub(crate) fn index_err(path: &std::path::Path, msg: impl Into<String>) -> DenseError {
    DenseError::Tool(asearcher_tools::ToolError::Index {
        path: path.to_path_buf(),
        msg: msg.into(),
    })
}
