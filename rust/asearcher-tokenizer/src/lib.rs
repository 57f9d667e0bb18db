//! HF tokenizers and chat templates (owned by the tokenizer work).
