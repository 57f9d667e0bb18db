//! `tokenizer_config.json` (special tokens as strings or AddedToken dicts, chat template as a
//! string or a list of named templates, `added_tokens_decoder`) and `generation_config.json`
//! (`eos_token_id` as an int or a list).

use crate::{Result, TokenizerError};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use tokenizers::AddedToken;

/// The named special tokens of `tokenizer_config.json` (the template variables `bos_token`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
    pub additional: Vec<String>,
}

impl SpecialTokens {
    /// HF's `special_tokens_map`: only the tokens that are set.
    pub fn as_context(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let named = [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("unk_token", &self.unk),
            ("pad_token", &self.pad),
        ];
        for (key, tok) in named {
            if let Some(t) = tok {
                m.insert(key.into(), Value::String(t.clone()));
            }
        }
        if !self.additional.is_empty() {
            m.insert(
                "additional_special_tokens".into(),
                Value::from(self.additional.clone()),
            );
        }
        m
    }
}

/// What we use of `tokenizer_config.json`.
#[derive(Debug, Default)]
pub struct TokenizerConfig {
    pub path: PathBuf,
    pub special: SpecialTokens,
    /// `(name, source)`; a single string template is named `default`.
    pub chat_templates: Vec<(String, String)>,
    /// `(id, token)` from `added_tokens_decoder`.
    pub added_tokens: Vec<(u32, AddedToken)>,
    pub clean_up_tokenization_spaces: bool,
}

fn bad(path: &Path, msg: impl Into<String>) -> TokenizerError {
    TokenizerError::BadFile {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads a JSON object file, or `None` when the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(bad(path, "must be a JSON object")),
        Err(e) => Err(bad(path, format!("bad JSON: {e}"))),
    }
}

/// A special token given as a string, an AddedToken dict (`{"content": ..}`) or null.
fn token_string(path: &Path, key: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(m)) => match m.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(bad(
                path,
                format!("`{key}` is a dict without a string `content`"),
            )),
        },
        Some(other) => Err(bad(
            path,
            format!("`{key}` must be a string or an AddedToken dict, got {other}"),
        )),
    }
}

fn chat_templates(path: &Path, v: Option<&Value>) -> Result<Vec<(String, String)>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![("default".into(), s.clone())]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item.get("name").and_then(Value::as_str);
                let tmpl = item.get("template").and_then(Value::as_str);
                match (name, tmpl) {
                    (Some(n), Some(t)) => Ok((n.to_string(), t.to_string())),
                    _ => Err(bad(
                        path,
                        format!("chat_template[{i}] needs string `name` and `template`"),
                    )),
                }
            })
            .collect(),
        Some(other) => Err(bad(
            path,
            format!(
                "`chat_template` must be a string or a list of {{name, template}}, got {other}"
            ),
        )),
    }
}

fn added_tokens(path: &Path, v: Option<&Value>) -> Result<Vec<(u32, AddedToken)>> {
    let Some(Value::Object(m)) = v else {
        return Ok(Vec::new());
    };
    m.iter()
        .map(|(id, tok)| {
            let id: u32 = id.parse().map_err(|_| {
                bad(
                    path,
                    format!("added_tokens_decoder key `{id}` is not an id"),
                )
            })?;
            let content = token_string(path, "added_tokens_decoder", Some(tok))?
                .ok_or_else(|| bad(path, format!("added_tokens_decoder[{id}] is null")))?;
            let flag = |k: &str| tok.get(k).and_then(Value::as_bool).unwrap_or(false);
            let special = tok.get("special").and_then(Value::as_bool).unwrap_or(true);
            let token = AddedToken::from(content, special)
                .single_word(flag("single_word"))
                .lstrip(flag("lstrip"))
                .rstrip(flag("rstrip"))
                .normalized(
                    tok.get("normalized")
                        .and_then(Value::as_bool)
                        .unwrap_or(!special),
                );
            Ok((id, token))
        })
        .collect()
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json`; a missing file gives an empty config.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let Some(m) = read_json_object(&path)? else {
            return Ok(TokenizerConfig {
                path,
                ..Default::default()
            });
        };
        let tok = |key: &str| token_string(&path, key, m.get(key));
        let additional = match m.get("additional_special_tokens") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| token_string(&path, "additional_special_tokens", Some(t)))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        let special = SpecialTokens {
            bos: tok("bos_token")?,
            eos: tok("eos_token")?,
            unk: tok("unk_token")?,
            pad: tok("pad_token")?,
            additional,
        };
        Ok(TokenizerConfig {
            chat_templates: chat_templates(&path, m.get("chat_template"))?,
            added_tokens: added_tokens(&path, m.get("added_tokens_decoder"))?,
            clean_up_tokenization_spaces: m
                .get("clean_up_tokenization_spaces")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            special,
            path,
        })
    }

    /// Adds tokens of `added_tokens_decoder` that tokenizer.json lacks; each must land on its id.
    pub fn add_missing_tokens(&self, inner: &mut tokenizers::Tokenizer) -> Result<()> {
        let mut sorted: Vec<&(u32, AddedToken)> = self.added_tokens.iter().collect();
        sorted.sort_by_key(|(id, _)| *id);
        for (id, token) in sorted {
            match inner.token_to_id(&token.content) {
                Some(have) if have == *id => {}
                Some(have) => {
                    return Err(bad(
                        &self.path,
                        format!(
                            "added token {:?} has id {id} here but {have} in tokenizer.json",
                            token.content
                        ),
                    ))
                }
                None => {
                    if token.special {
                        inner.add_special_tokens(std::slice::from_ref(token));
                    } else {
                        inner.add_tokens(std::slice::from_ref(token));
                    }
                    let got = inner.token_to_id(&token.content);
                    if got != Some(*id) {
                        return Err(bad(
                            &self.path,
                            format!(
                                "added token {:?} should have id {id} but was given {got:?}",
                                token.content
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `eos_token_id` of `dir/generation_config.json` (int or list); empty when absent.
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    let Some(m) = read_json_object(&path)? else {
        return Ok(Vec::new());
    };
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(
                    &path,
                    format!("eos_token_id entries must be token ids, got {v}"),
                )
            })
    };
    match m.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}
