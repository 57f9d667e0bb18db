//! The RL trainer of asearcher.
//!
//! - [`learner`]: one optimizer step from scored groups (GRPO advantages, zero-variance filter,
//!   version-spread cap, proximal logprobs, decoupled PPO with the fused kernels on packed
//!   micro-batches, gradient accumulation, clipping, AdamW) and supervised warm-start steps.
//! - [`policy`]: what the loop needs from a learner (the tch learner, or the FSDP ranks).
//! - [`embedded`]: the in-process generator as a rollout backend.
//! - [`sync`]: pushing new weights to the embedded generator or to inference servers.
//! - [`config`], [`trainer`]: the asynchronous (or synchronous, eta = 0) training loop with
//!   metrics, checkpoints and exact resume, including the trajectories in flight.

pub mod config;
pub mod embedded;
pub mod error;
pub mod fingerprint;
pub mod learner;
pub mod policy;
pub mod sync;
pub mod trainer;
pub mod warm_start;

pub use error::{Result, TrainError};
