//! What an encoder directory says about how to embed text: the BERT config (`config.json`) and
//! the sentence-transformers spec around it (pooling from `1_Pooling/config.json`, L2
//! normalisation from a `Normalize` module in `modules.json`, the token limit from
//! `sentence_bert_config.json`, query/passage prompts from `config_sentence_transformers.json`),
//! each overridable by [`EncoderOptions`].

use crate::{Result, TorchError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The BERT fields the encoder uses (HF `BertModel` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    /// `none` (exact erf GELU) or `tanh`, libtorch's names.
    pub gelu: &'static str,
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean over real tokens (E5, MiniLM).
    Mean,
    /// The first token's state (BGE).
    Cls,
}

/// Settings that override the model directory's own (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderOptions {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    /// Most tokens per text, special tokens included (longer texts are truncated).
    pub max_length: Option<usize>,
    /// Put before every query (E5: `"query: "`).
    pub query_prefix: Option<String>,
    /// Put before every passage (E5: `"passage: "`).
    pub passage_prefix: Option<String>,
}

/// The resolved spec of an encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_length: usize,
    pub query_prefix: String,
    pub passage_prefix: String,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TorchError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TorchError::bad_file(path, format!("invalid JSON: {e}")))
}

fn int(v: &Value, path: &Path, key: &str, default: Option<i64>) -> Result<i64> {
    match v.get(key).and_then(Value::as_i64).or(default) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(TorchError::bad_file(
            path,
            format!("`{key}` must be a positive integer"),
        )),
    }
}

impl BertConfig {
    /// Reads `config.json`; a model that is not a BERT encoder is refused by name.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let v = read_json(&path)?
            .ok_or_else(|| TorchError::bad_file(dir, "no config.json: not a model directory"))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "bert" {
            return Err(TorchError::bad_file(
                &path,
                format!(
                    "model_type is {model_type:?}: not a BERT encoder (E5, MiniLM and BGE are \
                     `bert`)"
                ),
            ));
        }
        if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                return Err(TorchError::bad_file(
                    &path,
                    format!("position_embedding_type {p:?} is not supported (only absolute)"),
                ));
            }
        }
        let gelu = match v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu")
        {
            "gelu" => "none",
            "gelu_new" | "gelu_pytorch_tanh" => "tanh",
            other => {
                return Err(TorchError::bad_file(
                    &path,
                    format!("hidden_act {other:?} is not supported (gelu, gelu_new)"),
                ))
            }
        };
        let heads = int(&v, &path, "num_attention_heads", None)?;
        let hidden = int(&v, &path, "hidden_size", None)?;
        if hidden % heads != 0 {
            return Err(TorchError::bad_file(
                &path,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"),
            ));
        }
        Ok(BertConfig {
            vocab_size: int(&v, &path, "vocab_size", None)?,
            hidden_size: hidden,
            num_hidden_layers: int(&v, &path, "num_hidden_layers", None)? as usize,
            num_attention_heads: heads,
            intermediate_size: int(&v, &path, "intermediate_size", None)?,
            max_position_embeddings: int(&v, &path, "max_position_embeddings", Some(512))?,
            type_vocab_size: int(&v, &path, "type_vocab_size", Some(2))?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
            gelu,
        })
    }
}

impl EncoderSpec {
    /// The directory's sentence-transformers files (defaults where they are absent: mean
    /// pooling, normalised, the model's position limit capped at 512, no prefixes), then the
    /// options on top.
    pub fn resolve(dir: &Path, config: &BertConfig, options: &EncoderOptions) -> Result<Self> {
        let pooling_path = dir.join("1_Pooling").join("config.json");
        let pooling = match read_json(&pooling_path)? {
            Some(p) if p.get("pooling_mode_cls_token") == Some(&Value::Bool(true)) => Pooling::Cls,
            Some(p) if p.get("pooling_mode_mean_tokens") == Some(&Value::Bool(true)) => {
                Pooling::Mean
            }
            Some(_) => {
                return Err(TorchError::bad_file(
                    &pooling_path,
                    "only mean and CLS pooling are supported",
                ))
            }
            None => Pooling::Mean,
        };
        let normalize = match read_json(&dir.join("modules.json"))? {
            Some(Value::Array(modules)) => modules.iter().any(|m| {
                m.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(".Normalize"))
            }),
            _ => true,
        };
        let limit = config.max_position_embeddings.min(512) as usize;
        let max_length = read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|v| v.get("max_seq_length").and_then(Value::as_u64))
            .map_or(limit, |n| (n as usize).min(limit));
        let prompts = read_json(&dir.join("config_sentence_transformers.json"))?
            .and_then(|v| v.get("prompts").cloned())
            .unwrap_or(Value::Null);
        let prompt = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| prompts.get(*n).and_then(Value::as_str))
                .unwrap_or("")
                .to_string()
        };
        let spec = EncoderSpec {
            pooling: options.pooling.unwrap_or(pooling),
            normalize: options.normalize.unwrap_or(normalize),
            max_length: options.max_length.unwrap_or(max_length),
            query_prefix: options
                .query_prefix
                .clone()
                .unwrap_or_else(|| prompt(&["query"])),
            passage_prefix: options
                .passage_prefix
                .clone()
                .unwrap_or_else(|| prompt(&["passage", "document"])),
        };
        if spec.max_length < 2 || spec.max_length as i64 > config.max_position_embeddings {
            return Err(TorchError::config(
                "max_length",
                format!(
                    "{} is outside 2..={} (the model's max_position_embeddings)",
                    spec.max_length, config.max_position_embeddings
                ),
            ));
        }
        Ok(spec)
    }
}
