//! Text encoders for dense retrieval: BERT-family models (E5, MiniLM, BGE) loaded from HF
//! directories, pooled and normalised as sentence-transformers does ([`BertEncoder`]).

mod bert;
mod init;
mod spec;
#[cfg(test)]
mod tests;

pub use bert::{BertEncoder, TextKind};
pub use init::write_random_bert;
pub use spec::{BertConfig, EncoderOptions, EncoderSpec, Pooling};
