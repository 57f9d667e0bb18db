//! Python bindings of the rollout engine (asearcher-rollout).

pub mod plugins;
