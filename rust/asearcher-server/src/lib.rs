//! HTTP servers of asearcher: the retrieval server, speaking the Search-R1/ASearcher protocol
//! (`POST /retrieve`, `POST /access`, `GET /health`) over an embedded BM25 index; the model
//! server, speaking SGLang's native protocol and OpenAI's completions/chat API over the embedded
//! tch generator (feature `model`, on by default); and the scripted policy server, an LLM test
//! double that answers SGLang's `/generate` and OpenAI's chat API by fixed rules.

mod http_api;
#[cfg(feature = "model")]
pub mod model_server;
pub mod retrieval;
pub mod scripted_policy;

#[cfg(feature = "model")]
pub use model_server::{ModelServer, ModelServerConfig};
pub use retrieval::{serve_retrieval, RetrievalServer, ServerConfig};
pub use scripted_policy::{
    ScriptedPolicyConfig, ScriptedPolicyError, ScriptedPolicyHandle, ScriptedPolicyServer,
};
