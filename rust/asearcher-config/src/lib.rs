//! Config documents, the one way every asearcher config is read:
//! - [`read_document`]: a `.toml`, `.yaml`/`.yml` or `.json` file as one JSON value;
//! - [`apply_overrides`]: `a.b.c=v` settings on top of it (the value read as YAML: `0.3`,
//!   `true`, `null`, `[1, 2]`, `{k: v}`, or a bare string);
//! - [`deserialize_named`]: the value as a typed config, an unknown key or a bad value named by
//!   its dotted path (`learner.ppo.eps_clipp`), with the closest valid key suggested;
//! - [`load`] / [`from_value`]: the three above in order, paths in a file resolved against the
//!   file's directory (a [`Document`] says which fields are paths);
//! - [`fingerprint`]: what determines an output directory's results, and resuming only on a match;
//! - [`schema_of`]: the JSON schema of a config type (doc comments, types, defaults), the source
//!   of the generated Python dataclasses (`python/asearcher/config.py`) and `docs/config.md`.

pub mod fingerprint;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML/YAML/JSON, or its extension is none of those.
    #[error("config file {}: {msg}", .path.display())]
    Syntax { path: PathBuf, msg: String },
    /// A setting is unknown or has a bad value; `field` is its dotted path.
    #[error("invalid setting `{field}`: {msg}")]
    Invalid { field: String, msg: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// A config type that can be a whole document: a root of the schema.
pub trait Document: Serialize + DeserializeOwned + JsonSchema + Default {
    /// Keys that no longer exist, with where their setting lives now: `(old dotted key, what
    /// to use instead)`. A document holding one is refused with that message.
    const MOVED: &'static [(&'static str, &'static str)] = &[];

    /// Makes the relative paths it holds relative to `base` (the directory of the file it was
    /// read from). Paths given as overrides stay relative to the working directory.
    fn resolve_paths(&mut self, _base: &Path) {}
}

/// Deserialises a document found at `prefix` of a larger one (`""`: the root): a moved key is
/// refused naming where its setting lives now, then as [`deserialize_under`].
pub fn deserialize_document<T: Document>(value: Value, prefix: &str) -> Result<T> {
    for (old, new) in T::MOVED {
        let pointer = format!("/{}", old.replace('.', "/"));
        if value.pointer(&pointer).is_some() {
            return Err(ConfigError::invalid(
                join_key(prefix, old),
                format!("this key was removed; use {new}"),
            ));
        }
    }
    deserialize_under(value, prefix)
}

/// Reads a `.toml`, `.yaml`/`.yml` or `.json` file as one JSON value.
pub fn read_document(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |msg: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        msg,
    };
    let value: Value = match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "toml" => toml::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        "yaml" | "yml" => serde_yaml_ng::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        "json" => serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?,
        _ => {
            return Err(syntax(
                "the config file must end in .toml, .yaml, .yml or .json".into(),
            ))
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())), // an empty YAML file
        _ => Err(syntax("the document must be a table of settings".into())),
    }
}

/// One `a.b.c=v` setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key, split.
    pub key: Vec<String>,
    pub value: Value,
}

impl Override {
    /// Parses `a.b.c=v`; `v` is read as YAML (numbers, `true`/`false`, `null`, flow lists and
    /// maps, quoted or bare strings); an empty `v` is the empty string.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((key, raw)) = text.split_once('=') else {
            return Err(ConfigError::invalid(
                text,
                "an override is `dotted.key=value` (no `=` found)",
            ));
        };
        let key = key.trim();
        let parts: Vec<String> = key.split('.').map(str::to_string).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                key,
                "an override's key is dotted names without spaces, e.g. `learner.ppo.eps_clip`",
            ));
        }
        let value = if raw.trim().is_empty() {
            Value::String(String::new())
        } else {
            serde_yaml_ng::from_str(raw).map_err(|e| {
                ConfigError::invalid(key, format!("cannot read the value `{raw}`: {e}"))
            })?
        };
        Ok(Override { key: parts, value })
    }

    /// Sets the value in `doc`, making the tables on its way; a key through a value that is not
    /// a table is an error naming it.
    pub fn apply(&self, doc: &mut Value) -> Result<()> {
        let mut node = doc;
        for (depth, part) in self.key.iter().enumerate() {
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(map) = node else {
                return Err(ConfigError::invalid(
                    self.key[..depth].join("."),
                    format!(
                        "is not a table of settings, so `{}` cannot be set",
                        self.key.join(".")
                    ),
                ));
            };
            node = map.entry(part.clone()).or_insert(Value::Null);
        }
        *node = self.value.clone();
        Ok(())
    }
}

/// Applies `a.b.c=v` overrides in order (a later one wins).
pub fn apply_overrides<S: AsRef<str>>(doc: &mut Value, overrides: &[S]) -> Result<()> {
    for text in overrides {
        Override::parse(text.as_ref())?.apply(doc)?;
    }
    Ok(())
}

/// Deserialises a value; an unknown key or a bad value is [`ConfigError::Invalid`] naming its
/// dotted path (an unknown key with the closest valid one when there is one close enough).
pub fn deserialize_named<T: DeserializeOwned>(value: Value) -> Result<T> {
    deserialize_under(value, "")
}

/// [`deserialize_named`] for a value found at `prefix` (e.g. `learner`) of a larger document:
/// errors name the full dotted path.
pub fn deserialize_under<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let mut field = join_key(prefix, if path == "." { "" } else { &path });
        let mut msg = e.into_inner().to_string();
        if let Some((name, expected)) = unknown_field(&msg) {
            if field.rsplit('.').next() != Some(name.as_str()) {
                field = join_key(&field, &name);
            }
            msg = match closest(&name, &expected) {
                Some(best) => format!("unknown key; did you mean `{best}`? (valid: {expected})"),
                None => format!("unknown key (valid: {expected})"),
            };
        }
        ConfigError::invalid(if field.is_empty() { "config" } else { &field }, msg)
    })
}

/// Reads `path`, resolves its relative paths against the file's directory, applies the
/// overrides and deserialises the result (validation is the caller's: it knows its rules).
pub fn load<T: Document, S: AsRef<str>>(path: &Path, overrides: &[S]) -> Result<T> {
    let mut cfg: T = deserialize_document(read_document(path)?, "")?;
    if let Some(base) = path.parent() {
        cfg.resolve_paths(base);
    }
    if overrides.is_empty() {
        return Ok(cfg);
    }
    from_value(to_value(&cfg)?, overrides)
}

/// Deserialises `value` after applying the overrides.
pub fn from_value<T: Document, S: AsRef<str>>(mut value: Value, overrides: &[S]) -> Result<T> {
    apply_overrides(&mut value, overrides)?;
    deserialize_document(value, "")
}

/// A config as a JSON value.
pub fn to_value<T: Serialize>(cfg: &T) -> Result<Value> {
    serde_json::to_value(cfg).map_err(|e| ConfigError::invalid("config", e.to_string()))
}

/// The JSON schema (draft 2020-12) of a config type: doc comments as `description`, serde's
/// renames and defaults applied, nested types under `$defs`.
pub fn schema_of<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

fn join_key(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// `unknown field `x`, expected one of `a`, `b`` -> (`x`, "`a`, `b`").
fn unknown_field(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (name, tail) = rest.split_once('`')?;
    let expected = tail
        .trim_start_matches(", ")
        .trim_start_matches("expected one of ")
        .trim_start_matches("expected ")
        .to_string();
    Some((name.to_string(), expected))
}

/// The valid key closest to `name` by edit distance, if it is close (at most a third of the
/// name's length, and at least one edit allowed).
fn closest(name: &str, expected: &str) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    expected
        .split(", ")
        .map(|k| k.trim_matches('`'))
        .filter(|k| !k.is_empty())
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
