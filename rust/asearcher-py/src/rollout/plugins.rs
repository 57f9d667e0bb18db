//! Python reward plugins (placeholder: the plugins helper's file replaces this one at merge).

use asearcher_rollout::reward::RewardPlugin;
use pyo3::prelude::*;
use std::sync::Arc;

/// A reward plugin from a Python callable. Not available in this build yet.
pub fn plugin_from_py(_py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn RewardPlugin>> {
    Err(crate::errors::config_err(
        "plugins",
        format!(
            "reward plugins are not yet available in this build (got {})",
            super::type_name(obj)
        ),
    ))
}
