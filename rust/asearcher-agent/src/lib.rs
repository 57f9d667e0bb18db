//! Pure agent logic of asearcher, free of I/O, tch and pyo3: the agent contract ([`agent`]), the
//! agents themselves ([`agents`]) and their prompt templates ([`prompts`]), the tag protocol,
//! trajectory records, answer metrics and rule rewards, and packing into training sequences.

pub mod agent;
pub mod agents;
pub mod metrics;
pub mod packing;
pub mod prompts;
pub mod protocol;
pub mod reward;
pub mod trajectory;
