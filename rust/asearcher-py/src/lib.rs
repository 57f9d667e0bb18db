//! The `asearcher._core` extension module: the only crate that knows Python.
//!
//! It wraps the pure-Rust crates in Python classes, maps their errors onto the exception
//! hierarchy of `asearcher.exceptions`, bridges `tracing` to Python `logging`, and runs async
//! Rust work on one shared tokio runtime with the GIL released.

mod config;
mod dense;
mod encoder;
mod errors;
mod eval;
mod generator;
mod kernels;
mod learner;
mod logging;
mod model;
mod model_server;
mod rollout;
mod runtime;
mod scripted;
mod server;
mod synth;
mod tensors;
mod tools;
mod train;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(logging::refresh_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(logging::emit_test_event, m)?)?;
    tools::register(m)?;
    server::register(m)?;
    tensors::register(m)?;
    model::register(m)?;
    encoder::register(m)?;
    dense::register(m)?;
    kernels::register(m)?;
    model_server::register(m)?;
    generator::register(m)?;
    scripted::register(m)?;
    rollout::register(m)?;
    m.add_function(wrap_pyfunction!(
        rollout::plugins::_test_score_with_plugins,
        m
    )?)?;
    eval::register(m)?;
    train::register(m)?;
    learner::register(m)?;
    config::register(m)?;
    synth::register(m)?;
    Ok(())
}
