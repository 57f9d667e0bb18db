//! TODO (issue 4): openai client.
