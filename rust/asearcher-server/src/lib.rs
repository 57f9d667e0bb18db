//! HTTP servers of asearcher: the retrieval server, speaking the Search-R1/ASearcher protocol
//! (`POST /retrieve`, `POST /access`, `GET /health`) over an embedded BM25 index, and the model
//! server, speaking SGLang's native protocol and OpenAI's completions/chat API over the embedded
//! tch generator.

pub mod model_server;
pub mod retrieval;

pub use model_server::{ModelServer, ModelServerConfig};
pub use retrieval::{serve_retrieval, RetrievalServer, ServerConfig};
