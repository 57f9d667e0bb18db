//! Continuous-batching, KV-cached generation on the tch model. [`api`] is the public face (requests,
//! sampling parameters, outputs, the handle); [`engine`] is the thread behind it ([`spawn`]) and
//! [`sampler`] picks tokens.

pub mod api;
mod engine;
pub mod sampler;

pub use api::*;
pub use engine::{spawn, GeneratorOptions};
