//! The asynchronous rollout engine: inference clients and their load balancer ([`client`]), the
//! per-trajectory agent loop ([`runner`]), the scheduler with groups and the staleness gate
//! ([`scheduler`]), rewards ([`reward`], the LLM judge in [`judge`]) and evaluation ([`eval`]). Pure Rust on tokio; Python
//! reaches it through `asearcher-py`.

pub mod client;
pub mod error;
pub mod eval;
pub mod judge;
pub mod questions;
pub mod reward;
pub mod runner;
pub mod scheduler;
#[cfg(test)]
mod testkit;

pub use error::{Result, RolloutError};
