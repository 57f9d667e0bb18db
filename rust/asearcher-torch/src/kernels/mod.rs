//! RL loss kernels: chunked LM-head logprobs/entropies ([`token_logprobs`]), the fused
//! PPO-family loss-and-gradient pass over the LM head ([`fused_linear_loss`]), the same loss on
//! logprob tensors ([`ppo_loss`]), the autograd bridge for the Rust trainer
//! ([`fused_linear_loss_autograd`]) and the borrowed-view entry points used from Python
//! ([`views`]).

mod chunked;
mod head;
mod spec;
pub mod views;

pub use chunked::{
    attach_gradients, chunk_tokens_for_budget, default_chunk_budget, fused_linear_loss,
    fused_linear_loss_autograd, fused_linear_loss_into, run_chunks, token_logprobs,
    token_logprobs_backward_into, ChunkGrads, FusedOutput, LmHead, PassOutputs,
    DEFAULT_CHUNK_BUDGET_BYTES, DEFAULT_CUDA_CHUNK_BUDGET_BYTES,
};
pub use head::{
    diagnostics, evaluate_head, ppo_loss, Diagnostics, HeadOutput, PpoLossOutput, TokenInputs,
    TokenTerms, DIAGNOSTIC_NAMES,
};
pub use spec::{Aggregation, CapMode, IsLevel, KlEstimator, LossSpec};

#[cfg(test)]
mod tests;
