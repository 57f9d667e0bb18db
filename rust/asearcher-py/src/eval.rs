//! `asearcher._core.run_eval` / `arun_eval`: the evaluation runner of `asearcher-rollout`
//! (`asearcher.evaluate` / `aevaluate` wrap them). The config comes as JSON (an `EvalConfig`:
//! unknown keys are errors that name them); backend, tokenizer, toolbox and reward plugins come
//! as Python objects through the rollout helpers. The report comes back as JSON plus its table.

use crate::errors::rollout_err;
use crate::rollout::plugins::plugin_from_py;
use crate::rollout::{backend_from_py, tokenizer_from_py, toolbox_from_py};
use crate::runtime::{awaitable, wait_for_future};
use asearcher_rollout::eval::{self, EvalConfig, EvalParts, EvalProgress, EvalReport};
use pyo3::prelude::*;
use std::sync::Arc;

/// Everything a run needs, gathered while the GIL is held.
struct EvalCall {
    config: EvalConfig,
    parts: EvalParts,
    progress: Option<Py<PyAny>>,
}

impl EvalCall {
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config_json: &str,
        backend: &Bound<'_, PyAny>,
        tokenizer: &Bound<'_, PyAny>,
        toolbox: Option<&Bound<'_, PyAny>>,
        plugins: Vec<Bound<'_, PyAny>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| crate::errors::config_err("config", e))?;
        let config: EvalConfig = asearcher_config::deserialize_document(value, "")
            .map_err(crate::errors::config_doc_err)?;
        let plugins = plugins
            .iter()
            .map(|p| plugin_from_py(py, p))
            .collect::<PyResult<Vec<_>>>()?;
        let parts = EvalParts {
            backend: backend_from_py(backend)?,
            toolbox: toolbox_from_py(toolbox)?,
            tokenizer: tokenizer_from_py(tokenizer)?,
            plugins,
        };
        Ok(Self {
            config,
            parts,
            progress,
        })
    }

    /// Runs the evaluation; returns the report as JSON and as a table.
    async fn run(self) -> PyResult<(String, String)> {
        let progress = self.progress.map(Arc::new);
        let report_progress = move |p: EvalProgress| {
            if let Some(cb) = &progress {
                call_progress(cb, p);
            }
        };
        let report = eval::run_eval(&self.config, self.parts, &report_progress)
            .await
            .map_err(rollout_err)?;
        report_json(&report)
    }
}

/// Calls the Python progress callback `(benchmark, index, benchmarks, done, total)`; an exception
/// in it is logged and the run goes on.
fn call_progress(cb: &Py<PyAny>, p: EvalProgress) {
    Python::attach(|py| {
        let args = (p.benchmark, p.index, p.benchmarks, p.done, p.total);
        if let Err(e) = cb.call1(py, args) {
            tracing::warn!(error = %e, "the evaluation progress callback raised");
        }
    });
}

fn report_json(report: &EvalReport) -> PyResult<(String, String)> {
    let json =
        serde_json::to_string(report).map_err(|e| crate::errors::serialise_err("the report", e))?;
    Ok((json, report.to_table()))
}

/// Runs an evaluation, blocking (Ctrl-C cancels it; finished groups stay saved).
#[pyfunction]
#[pyo3(signature = (config_json, backend, tokenizer, toolbox=None, plugins=Vec::new(), progress=None))]
fn run_eval(
    py: Python<'_>,
    config_json: &str,
    backend: &Bound<'_, PyAny>,
    tokenizer: &Bound<'_, PyAny>,
    toolbox: Option<&Bound<'_, PyAny>>,
    plugins: Vec<Bound<'_, PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, String)> {
    let call = EvalCall::new(
        py,
        config_json,
        backend,
        tokenizer,
        toolbox,
        plugins,
        progress,
    )?;
    wait_for_future(py, call.run())
}

/// The same as an asyncio awaitable.
#[pyfunction]
#[pyo3(signature = (config_json, backend, tokenizer, toolbox=None, plugins=Vec::new(), progress=None))]
fn arun_eval<'py>(
    py: Python<'py>,
    config_json: &str,
    backend: &Bound<'py, PyAny>,
    tokenizer: &Bound<'py, PyAny>,
    toolbox: Option<&Bound<'py, PyAny>>,
    plugins: Vec<Bound<'py, PyAny>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let call = EvalCall::new(
        py,
        config_json,
        backend,
        tokenizer,
        toolbox,
        plugins,
        progress,
    )?;
    awaitable(py, call.run())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_eval, m)?)?;
    m.add_function(wrap_pyfunction!(arun_eval, m)?)?;
    Ok(())
}
