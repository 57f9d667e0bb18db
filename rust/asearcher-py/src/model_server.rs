//! The embedded model server (SGLang / OpenAI protocols) started from Python.

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
