//! HTTP servers of asearcher. For now: the retrieval server, speaking the Search-R1/ASearcher
//! protocol (`POST /retrieve`, `POST /access`, `GET /health`) over an embedded BM25 index.

pub mod retrieval;

pub use retrieval::{serve_retrieval, RetrievalServer, ServerConfig};
