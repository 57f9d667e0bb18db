//! HTTP servers of asearcher: the retrieval server, speaking the Search-R1/ASearcher protocol
//! (`POST /retrieve`, `POST /access`, `GET /health`) over any search backend (BM25, dense,
//! hybrid), micro-batching concurrent requests; the model
//! server, speaking SGLang's native protocol and OpenAI's completions/chat API over the embedded
//! tch generator (feature `model`, on by default); and the scripted policy server, an LLM test
//! double that answers SGLang's `/generate` and OpenAI's chat API by fixed rules.

pub mod batching;
mod http_api;
#[cfg(feature = "model")]
pub mod model_server;
pub mod retrieval;
pub mod scripted_policy;

pub use batching::MicroBatcher;
#[cfg(feature = "model")]
pub use model_server::{ModelServer, ModelServerConfig};
pub use retrieval::{serve_retrieval, RetrievalServer, Retriever, ServerConfig};
pub use scripted_policy::{
    ScriptedPolicyConfig, ScriptedPolicyError, ScriptedPolicyHandle, ScriptedPolicyServer,
};
