//! The Qwen2 / Qwen2.5 / Qwen3 decoder (owned by the model work).
