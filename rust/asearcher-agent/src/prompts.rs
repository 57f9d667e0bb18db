//! Prompt templates of the agents (data, overridable from Python).
