//! The config schema in Python. The Rust serde structs are the source of truth; this module
//! exposes them so that Python never re-parses or re-validates a config itself:
//! - `config_schema()`: the JSON schema of every root config (doc comments, types, defaults),
//!   from which `asearcher.config` and `docs/config.md` are generated (`scripts/gen_config.py`);
//! - `config_defaults(name)`: a root's `Default`, as Rust has it;
//! - `load_config(name, path, overrides)`: a TOML/YAML/JSON file read, its relative paths
//!   resolved against its directory, `a.b.c=v` overrides applied, validated;
//! - `check_config(name, value, overrides)`: the same for a dict or a typed config.
//!
//! Every error names the dotted key (`learner.ppo.eps_clip`) and is the same `ConfigError`
//! whichever entry point the config came through.

use crate::errors::{config_doc_err, rollout_err, train_err};
use crate::rollout::{json_of, py_of_json};
use asearcher_agent::agents::AgentConfig;
use asearcher_config::Document;
use asearcher_rollout::client::pool::PoolConfig;
use asearcher_rollout::eval::EvalConfig;
use asearcher_rollout::reward::RewardConfig;
use asearcher_rollout::scheduler::RolloutConfig;
use asearcher_train::config::TrainConfig;
use asearcher_train::learner::LearnerConfig;
use asearcher_train::warm_start::WarmStartConfig;
use pyo3::prelude::*;
use serde_json::Value;
use std::path::PathBuf;

/// A config that can be a whole document, with its checks across fields.
trait Root: Document {
    /// Checks the values; the error names the dotted key.
    fn check(&self) -> PyResult<()>;
}

impl Root for TrainConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(train_err)
    }
}

impl Root for WarmStartConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(train_err)
    }
}

impl Root for LearnerConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(train_err)
    }
}

impl Root for EvalConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(rollout_err)
    }
}

impl Root for RolloutConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(rollout_err)
    }
}

impl Root for PoolConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(rollout_err)
    }
}

impl Root for AgentConfig {
    fn check(&self) -> PyResult<()> {
        self.validate()
            .map_err(|e| crate::errors::config_err("agent", e))
    }
}

impl Root for asearcher_tools::RetrievalSettings {
    fn check(&self) -> PyResult<()> {
        self.to_config().map(drop).map_err(crate::errors::tool_err)
    }
}

impl Root for asearcher_tools::WebSearchSettings {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(crate::errors::tool_err)
    }
}

impl Root for asearcher_tools::PageReaderSettings {
    fn check(&self) -> PyResult<()> {
        self.to_config().map(drop).map_err(crate::errors::tool_err)
    }
}

impl Root for asearcher_synth::SynthConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(crate::errors::synth_err)
    }
}

impl Root for RewardConfig {
    fn check(&self) -> PyResult<()> {
        self.validate().map_err(rollout_err)
    }
}

/// What Python can do with one root, by name.
struct RootOps {
    name: &'static str,
    schema: fn() -> Value,
    defaults: fn() -> PyResult<Value>,
    load: fn(&std::path::Path, &[String]) -> PyResult<Value>,
    check: fn(Value, &[String]) -> PyResult<Value>,
}

fn ops<T: Root>(name: &'static str) -> RootOps {
    RootOps {
        name,
        schema: asearcher_config::schema_of::<T>,
        defaults: || asearcher_config::to_value(&T::default()).map_err(config_doc_err),
        load: |path, overrides| {
            let cfg: T = asearcher_config::load(path, overrides).map_err(config_doc_err)?;
            cfg.check()?;
            asearcher_config::to_value(&cfg).map_err(config_doc_err)
        },
        check: |value, overrides| {
            let cfg: T = asearcher_config::from_value(value, overrides).map_err(config_doc_err)?;
            cfg.check()?;
            asearcher_config::to_value(&cfg).map_err(config_doc_err)
        },
    }
}

/// The roots, by the name of their Python dataclass.
fn roots() -> [RootOps; 12] {
    [
        ops::<TrainConfig>("TrainConfig"),
        ops::<EvalConfig>("EvalConfig"),
        ops::<WarmStartConfig>("WarmStartConfig"),
        ops::<RolloutConfig>("RolloutConfig"),
        ops::<AgentConfig>("AgentConfig"),
        ops::<RewardConfig>("RewardConfig"),
        ops::<LearnerConfig>("LearnerConfig"),
        ops::<PoolConfig>("PoolConfig"),
        ops::<asearcher_tools::RetrievalSettings>("RetrievalSettings"),
        ops::<asearcher_tools::WebSearchSettings>("WebSearchSettings"),
        ops::<asearcher_tools::PageReaderSettings>("PageReaderSettings"),
        ops::<asearcher_synth::SynthConfig>("SynthConfig"),
    ]
}

fn root(name: &str) -> PyResult<RootOps> {
    let all = roots();
    let names: Vec<&str> = all.iter().map(|r| r.name).collect();
    all.into_iter().find(|r| r.name == name).ok_or_else(|| {
        crate::errors::config_err(
            "config",
            format!("unknown config `{name}`; valid: {}", names.join(", ")),
        )
    })
}

/// `{"roots": [names], "schemas": {name: JSON schema}}` as JSON text.
#[pyfunction]
fn config_schema() -> String {
    let roots = roots();
    let names: Vec<&str> = roots.iter().map(|r| r.name).collect();
    let schemas: serde_json::Map<String, Value> = roots
        .iter()
        .map(|r| (r.name.to_string(), (r.schema)()))
        .collect();
    serde_json::json!({"roots": names, "schemas": schemas}).to_string()
}

/// The defaults of a root config, as Rust's `Default` has them.
#[pyfunction]
fn config_defaults(py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
    py_of_json(py, &(root(name)?.defaults)()?)
}

/// Reads a config file (TOML/YAML/JSON), resolves its relative paths against its directory,
/// applies `a.b.c=v` overrides and validates; returns the config with every default filled in.
#[pyfunction]
#[pyo3(signature = (name, path, overrides = Vec::new()))]
fn load_config(
    py: Python<'_>,
    name: &str,
    path: PathBuf,
    overrides: Vec<String>,
) -> PyResult<Py<PyAny>> {
    let ops = root(name)?;
    let value = py.detach(|| (ops.load)(&path, &overrides))?;
    py_of_json(py, &value)
}

/// Validates a config given as a dict or a typed config (after `a.b.c=v` overrides); returns
/// it with every default filled in.
#[pyfunction]
#[pyo3(signature = (name, value, overrides = Vec::new()))]
fn check_config(
    py: Python<'_>,
    name: &str,
    value: &Bound<'_, PyAny>,
    overrides: Vec<String>,
) -> PyResult<Py<PyAny>> {
    let ops = root(name)?;
    let checked = (ops.check)(json_of(value, "config")?, &overrides)?;
    py_of_json(py, &checked)
}

/// Applies `a.b.c=v` overrides to a dict (no validation: the caller's config does that).
#[pyfunction]
fn apply_overrides(
    py: Python<'_>,
    value: &Bound<'_, PyAny>,
    overrides: Vec<String>,
) -> PyResult<Py<PyAny>> {
    let mut doc = json_of(value, "config")?;
    asearcher_config::apply_overrides(&mut doc, &overrides).map_err(config_doc_err)?;
    py_of_json(py, &doc)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(apply_overrides, m)?)?;
    m.add_function(wrap_pyfunction!(config_schema, m)?)?;
    m.add_function(wrap_pyfunction!(config_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(load_config, m)?)?;
    m.add_function(wrap_pyfunction!(check_config, m)?)?;
    Ok(())
}
