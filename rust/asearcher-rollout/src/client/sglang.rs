//! TODO (issue 4): sglang client.
