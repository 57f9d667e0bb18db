//! Python entry of the QA synthesis agent (`asearcher.synthesize`): the config as JSON (typed
//! on the Python side), seeds from a jsonl file, the agents' toolbox; runs with the GIL
//! released, Ctrl-C stops it (finished seeds stay in the log), progress through a callback.

use crate::errors::{config_err, synth_err};
use crate::runtime::wait_for_future;
use crate::tools::PyToolbox;
use asearcher_synth::{read_seeds, synthesize, SynthConfig};
use pyo3::prelude::*;
use std::path::PathBuf;

/// Grows the seeds of `seeds` into `out` (see `asearcher.synthesize`); returns the run's
/// stats and report as JSON.
#[pyfunction]
#[pyo3(signature = (config_json, seeds, out, toolbox, name = "synth".to_string(), progress = None))]
fn synthesize_run(
    py: Python<'_>,
    config_json: &str,
    seeds: PathBuf,
    out: PathBuf,
    toolbox: &Bound<'_, PyToolbox>,
    name: String,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let config: SynthConfig =
        serde_json::from_str(config_json).map_err(|e| config_err("config", e))?;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(config_err(
            "name",
            format!("{name:?} is not a directory name"),
        ));
    }
    let seeds = read_seeds(&seeds).map_err(synth_err)?;
    let toolbox = toolbox.get().toolbox();
    wait_for_future(py, async move {
        let report = move |done: usize, total: usize| {
            if let Some(cb) = &progress {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (done, total)) {
                        e.print(py);
                    }
                });
            }
        };
        let stats = synthesize(&config, seeds, &out, &name, toolbox, &report)
            .await
            .map_err(synth_err)?;
        Ok(serde_json::to_string(&stats).expect("stats serialise"))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(synthesize_run, m)?)
}
