//! HF tokenizers for token-exact agents and servers, without tch or Python: `tokenizer.json`
//! (through the `tokenizers` crate), the special tokens and chat template(s) of
//! `tokenizer_config.json`, and the EOS ids of `generation_config.json`. Chat templates render
//! with minijinja exactly as transformers renders them with Jinja2 (see [`template`]).

mod config;
mod encode_cache;
mod pyjson;
pub mod template;

use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub use config::SpecialTokens;
use template::ChatTemplates;

/// Errors of the tokenizer crate; each names the file (or input) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    #[error("{path}: chat template `{template}`{}: {msg}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        path: PathBuf,
        template: String,
        line: Option<usize>,
        msg: String,
    },
    /// Bad input to encode / decode / apply_chat_template; names the argument.
    #[error("invalid `{name}`: {msg}")]
    Input { name: String, msg: String },
}

impl TokenizerError {
    fn input(name: &str, msg: impl Into<String>) -> Self {
        TokenizerError::Input {
            name: name.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// One chat message; `content` may be absent (e.g. an assistant turn with only tool calls).
/// Any other field (`tool_calls`, `reasoning_content`, `name`, ...) goes in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            extra: Map::new(),
        }
    }
}

/// Everything of `apply_chat_template` besides the messages.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// Append the header that starts the assistant's turn.
    pub add_generation_prompt: bool,
    /// Tool JSON schemas (`tools` in the template); `None` renders as Python's `None`.
    pub tools: Option<Vec<Value>>,
    /// RAG documents (`documents` in the template).
    pub documents: Option<Vec<Value>>,
    /// A named template (`tool_use`, ...) instead of the default choice.
    pub template: Option<String>,
    /// More template variables, e.g. `enable_thinking`; they override the special tokens.
    pub extra: Map<String, Value>,
}

/// Texts whose encodings [`Tokenizer::encode_cached`] keeps.
const ENCODE_CACHE_ENTRIES: usize = 8192;

/// A tokenizer loaded from an HF model directory.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    special: SpecialTokens,
    templates: ChatTemplates,
    eos_ids: Vec<u32>,
    clean_up_spaces: bool,
    /// `get_vocab_size(true)` builds the whole vocabulary map on every call: computed once.
    vocab_size: usize,
    encode_cache: encode_cache::EncodeCache,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, and `tokenizer_config.json` / `generation_config.json` when
    /// present.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(TokenizerError::BadFile {
                path: tok_path,
                msg: "missing: a model directory needs tokenizer.json (HF fast tokenizer)".into(),
            });
        }
        let bytes = std::fs::read(&tok_path).map_err(|source| TokenizerError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::BadFile {
                path: tok_path.clone(),
                msg: format!("not a valid tokenizer.json: {e}"),
            })?;
        let cfg = config::TokenizerConfig::load(&dir)?;
        cfg.add_missing_tokens(&mut inner)?;
        let templates = ChatTemplates::compile(cfg.chat_templates.clone(), &cfg.path)?;
        let special = cfg.special.clone();
        let mut eos_ids = config::generation_eos_ids(&dir)?;
        if let Some(id) = special.eos.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            vocab_size,
            encode_cache: encode_cache::EncodeCache::new(ENCODE_CACHE_ENTRIES),
            dir,
            special,
            templates,
            eos_ids,
            clean_up_spaces: cfg.clean_up_tokenization_spaces,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (BOS etc.).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::input("text", format!("cannot encode: {e}")))
    }

    /// [`encode`](Self::encode) without special tokens, through a bounded cache of exact texts:
    /// for text that recurs (tool observations shared by the samples of a group).
    pub fn encode_cached(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.encode_cache.get(text) {
            return Ok(ids.to_vec());
        }
        let ids = self.encode(text, false)?;
        self.encode_cache.put(text, &ids);
        Ok(ids)
    }

    /// Text of `ids`; ids outside the vocabulary are an error naming the first one.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
            return Err(TokenizerError::input(
                "ids",
                format!("token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::input("ids", format!("cannot decode: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Ids that end a generation: `generation_config.json`'s `eos_token_id` (int or list), then
    /// the tokenizer's `eos_token` if not among them.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Names of the chat templates (`default` for a single string template).
    pub fn chat_template_names(&self) -> &[String] {
        self.templates.names()
    }

    /// Renders `messages` (a list of `{role, content, ...}` objects) with the chat template, as
    /// `tokenizer.apply_chat_template(messages, tokenize=False, ...)` does.
    pub fn apply_chat_template<M: Serialize + ?Sized>(
        &self,
        messages: &M,
        opts: &ChatOptions,
    ) -> Result<String> {
        if self.templates.is_empty() {
            return Err(TokenizerError::BadFile {
                path: self.dir.join("tokenizer_config.json"),
                msg: "no chat_template: this tokenizer cannot render chat messages".into(),
            });
        }
        let messages = normalize_messages(messages)?;
        let name = self
            .templates
            .pick(opts.template.as_deref(), opts.tools.is_some())
            .map_err(|msg| TokenizerError::input("template", msg))?;
        let mut ctx = self.special.as_context();
        ctx.extend(opts.extra.clone());
        ctx.insert("messages".into(), Value::Array(messages));
        ctx.insert(
            "tools".into(),
            opts.tools.clone().map_or(Value::Null, Value::Array),
        );
        ctx.insert(
            "documents".into(),
            opts.documents.clone().map_or(Value::Null, Value::Array),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(opts.add_generation_prompt),
        );
        self.templates.render(
            &name,
            &Value::Object(ctx),
            &self.dir.join("tokenizer_config.json"),
        )
    }

    /// The token ids of the rendered chat (encoded without adding special tokens, as HF does).
    pub fn encode_chat<M: Serialize + ?Sized>(
        &self,
        messages: &M,
        opts: &ChatOptions,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, opts)?;
        self.encode(&text, false)
    }
}

/// What transformers does to messages before rendering: drop keys whose value is null, and copy
/// reasoning given as `thinking`/`reasoning` to `reasoning_content` (and `thinking`).
fn normalize_messages<M: Serialize + ?Sized>(messages: &M) -> Result<Vec<Value>> {
    let value = serde_json::to_value(messages)
        .map_err(|e| TokenizerError::input("messages", e.to_string()))?;
    let Value::Array(list) = value else {
        return Err(TokenizerError::input(
            "messages",
            "must be a list of messages",
        ));
    };
    if list.is_empty() {
        return Err(TokenizerError::input("messages", "must not be empty"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, m)| match m {
            Value::Object(map) => Ok(Value::Object(alias_reasoning(
                map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
            ))),
            other => Err(TokenizerError::input(
                "messages",
                format!("message {i} must be an object, got {other}"),
            )),
        })
        .collect()
}

fn alias_reasoning(map: Map<String, Value>) -> Map<String, Value> {
    const FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    let Some(reasoning) = FIELDS.iter().find_map(|k| map.get(*k).cloned()) else {
        return map;
    };
    let mut out = Map::new();
    out.insert("thinking".into(), reasoning.clone());
    for (k, v) in map {
        out.insert(k, v);
    }
    out.insert("reasoning_content".into(), reasoning);
    out
}

/// transformers' `clean_up_tokenization`: drops the space before punctuation and contractions.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests;
