//! Python classes of the tch model and the embedded generator (QwenModel, Generator).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
