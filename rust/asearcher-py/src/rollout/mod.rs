//! The rollout engine in Python: the inference pool, the engine, trajectories and groups, and
//! the conversions every binding of the engine shares (backend, tokenizer, toolbox and agent
//! config from Python objects; configs travel as JSON so unknown keys are named by serde).

pub mod backend;
pub mod engine;
pub mod plugins;
pub mod pool;
pub mod trajectory;

use crate::errors::config_err;
use crate::model_server::PyTokenizer;
use crate::tools::PyToolbox;
use asearcher_agent::agents::AgentConfig;
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::Toolbox;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

pub use backend::backend_from_py;
// For the reward-plugin and evaluation bindings.
#[allow(unused_imports)]
pub use trajectory::PyTrajectory;

/// The attribute that marks the typed configs of `asearcher.config` (generated dataclasses).
const TYPED_CONFIG_MARK: &str = "__asearcher_config__";

/// A Python value (dict, list, a typed config of `asearcher.config`...) as JSON, through
/// `json.dumps`.
pub fn json_of(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<serde_json::Value> {
    let plain;
    let obj = if obj.hasattr(TYPED_CONFIG_MARK)? {
        plain = obj.call_method0("to_dict")?;
        &plain
    } else {
        obj
    };
    let text: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))
        .map_err(|e| config_err(name, format!("must be JSON-serialisable: {e}")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| config_err(name, e))
}

/// A JSON value as a Python object, through `json.loads`.
pub fn py_of_json(py: Python<'_>, value: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// A config dict, typed config or TOML/YAML/JSON file path (or `None`: the defaults) as `T`;
/// an unknown key or a bad value is a `ConfigError` naming the dotted key under `name`
/// (`agent.max_turnz`).
pub fn config_from_py<T: asearcher_config::Document + Send>(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
) -> PyResult<T> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(T::default());
    };
    if let Ok(path) = o.extract::<PathBuf>() {
        return o
            .py()
            .detach(|| asearcher_config::load(&path, &[] as &[&str]))
            .map_err(crate::errors::config_doc_err);
    }
    asearcher_config::deserialize_document(json_of(o, name)?, name)
        .map_err(crate::errors::config_doc_err)
}

/// A tokenizer from a `Tokenizer` object or a model directory path.
pub fn tokenizer_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Arc<Tokenizer>> {
    if let Ok(t) = obj.cast::<PyTokenizer>() {
        return Ok(t.get().shared());
    }
    let dir: PathBuf = obj.extract().map_err(|_| {
        config_err(
            "tokenizer",
            "must be an asearcher.Tokenizer or a model directory path",
        )
    })?;
    let tok = obj
        .py()
        .detach(|| Tokenizer::from_dir(&dir))
        .map_err(|e| config_err("tokenizer", format!("{}: {e}", dir.display())))?;
    Ok(Arc::new(tok))
}

/// The toolbox of a `Toolbox` object; `None` stays `None` (agents then cannot search).
pub fn toolbox_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Toolbox>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let tb = obj.cast::<PyToolbox>().map_err(|_| {
        config_err(
            "toolbox",
            format!(
                "must be an asearcher.Toolbox or None, got {}",
                type_name(obj)
            ),
        )
    })?;
    Ok(Some(tb.get().toolbox()))
}

/// The agent config of a dict (`None`: the default ASearcher agent), checked.
pub fn agent_config_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<AgentConfig> {
    let cfg: AgentConfig = config_from_py(obj, "agent")?;
    cfg.validate().map_err(|e| config_err("agent", e))?;
    Ok(cfg)
}

/// The Python type name of `obj`, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `asearcher.default_prompts(kind)`: the default templates of an agent kind.
#[pyfunction]
#[pyo3(signature = (kind = "asearcher"))]
fn default_prompts(py: Python<'_>, kind: &str) -> PyResult<Py<PyAny>> {
    let kind: asearcher_agent::agents::AgentKind =
        serde_json::from_value(serde_json::Value::String(kind.into())).map_err(|_| {
            config_err(
                "kind",
                format!("unknown agent kind `{kind}`; valid: asearcher, search_r1, reasoning"),
            )
        })?;
    py_of_json(py, &asearcher_agent::prompts::default_prompts(kind))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(default_prompts, m)?)?;
    pool::register(m)?;
    trajectory::register(m)?;
    engine::register(m)?;
    Ok(())
}
