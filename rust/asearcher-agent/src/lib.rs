//! Pure agent logic of asearcher, free of I/O, tch and pyo3: answer metrics now; the tag protocol,
//! trajectory records and sequence packing build on it.

pub mod metrics;
pub mod packing;
pub mod protocol;
pub mod reward;
