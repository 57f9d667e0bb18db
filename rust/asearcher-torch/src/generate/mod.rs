//! Continuous-batching, KV-cached generation on the tch model. [`api`] is the public face (requests,
//! sampling parameters, outputs, the handle); the engine thread behind it lives in this module.

pub mod api;

pub use api::*;
pub mod sampler;
