//! Streaming reader of jsonl corpora in the Search-R1/ASearcher formats.
//!
//! Accepted line shapes: `{"id", "contents": "\"Title\"\ntext", "url"?}` and
//! `{"id", "title", "text", "url"?}`. Blank lines are ignored. A malformed line is an error naming
//! the file and 1-based line number, or is skipped and counted under [`BadLinePolicy::Skip`].

use crate::{Document, Result, ToolError};
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What to do with a line that is not a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLinePolicy {
    /// Stop with an error naming the line (default: never a silent partial index).
    #[default]
    Error,
    /// Skip the line and count it.
    Skip,
}

#[derive(Deserialize)]
struct RawLine {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    contents: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Parses one corpus line; `fallback_id` is used when the line has no id.
pub fn parse_line(line: &str, fallback_id: u64) -> std::result::Result<Document, String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = match raw.id {
        None | Some(serde_json::Value::Null) => fallback_id.to_string(),
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "field `id` must be a string or number, got {other}"
            ))
        }
    };
    let (title, text) = match (raw.contents, raw.text) {
        (Some(contents), _) => {
            let (t, body) = Document::split_contents(&contents);
            (raw.title.unwrap_or(t), body)
        }
        (None, Some(text)) => (raw.title.unwrap_or_default(), text),
        (None, None) => return Err("missing field `contents` (or `text`)".into()),
    };
    Ok(Document {
        id,
        title,
        text,
        url: raw.url.filter(|u| !u.is_empty()),
        score: None,
    })
}

/// Iterates the documents of a jsonl corpus file without loading it into memory.
pub struct CorpusReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_no: u64,
    policy: BadLinePolicy,
    skipped: u64,
    bytes_read: u64,
}

impl CorpusReader {
    pub fn open(path: impl AsRef<Path>, policy: BadLinePolicy) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ToolError::io(&path, e))?;
        let lines = BufReader::with_capacity(1 << 20, file).lines();
        Ok(Self {
            path,
            lines,
            line_no: 0,
            policy,
            skipped: 0,
            bytes_read: 0,
        })
    }

    /// Lines skipped so far under [`BadLinePolicy::Skip`].
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes consumed so far (for progress against the file size).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => {
                    self.line_no += 1;
                    let err = ToolError::BadCorpusLine {
                        path: self.path.clone(),
                        line: self.line_no,
                        msg: format!("unreadable line: {e}"),
                    };
                    if self.policy == BadLinePolicy::Skip
                        && e.kind() == std::io::ErrorKind::InvalidData
                    {
                        self.skipped += 1;
                        continue;
                    }
                    return Some(Err(err));
                }
            };
            self.line_no += 1;
            self.bytes_read += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, self.line_no) {
                Ok(doc) => return Some(Ok(doc)),
                Err(msg) if self.policy == BadLinePolicy::Skip => {
                    tracing::debug!(path = %self.path.display(), line = self.line_no, %msg, "skipping bad corpus line");
                    self.skipped += 1;
                }
                Err(msg) => {
                    return Some(Err(ToolError::BadCorpusLine {
                        path: self.path.clone(),
                        line: self.line_no,
                        msg,
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn corpus(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[test]
    fn reads_both_formats() {
        let f = corpus(&[
            r#"{"id": "a", "contents": "\"Paris\"\nCapital of France.", "url": "https://x/Paris"}"#,
            "",
            r#"{"id": 7, "title": "Rome", "text": "Capital of Italy."}"#,
        ]);
        let docs: Vec<_> = CorpusReader::open(f.path(), BadLinePolicy::Error)
            .unwrap()
            .map(|d| d.unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].id.as_str(), docs[0].title.as_str()),
            ("a", "Paris")
        );
        assert_eq!(docs[0].url.as_deref(), Some("https://x/Paris"));
        assert_eq!(
            (docs[1].id.as_str(), docs[1].text.as_str()),
            ("7", "Capital of Italy.")
        );
    }

    #[test]
    fn bad_line_names_its_number() {
        let f = corpus(&[
            r#"{"id": "a", "contents": "x"}"#,
            r#"{"id": "b""#,
            r#"{"id": "c", "contents": "y"}"#,
        ]);
        let results: Vec<_> = CorpusReader::open(f.path(), BadLinePolicy::Error)
            .unwrap()
            .collect();
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn missing_contents_is_an_error_and_skip_counts() {
        let f = corpus(&[
            r#"{"id": "a"}"#,
            r#"{"id": "b", "contents": "ok"}"#,
            "not json",
        ]);
        let mut r = CorpusReader::open(f.path(), BadLinePolicy::Skip).unwrap();
        let docs: Vec<_> = r.by_ref().map(|d| d.unwrap()).collect();
        assert_eq!(docs.len(), 1);
        assert_eq!(r.skipped(), 2);
        let err = CorpusReader::open(f.path(), BadLinePolicy::Error)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `contents`"),
            "{err}"
        );
    }
}
