//! Documents (search hits) and pages (what `<access>` returns), in the Search-R1 wire shapes.

use serde::{Deserialize, Serialize};

/// One retrieved passage. `contents` follows the Search-R1 convention `"Title"\ntext`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Document {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
    /// The passage text without the title line.
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Retrieval score (BM25 for the local index); absent when the backend gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

impl Document {
    /// The Search-R1 `contents` field: `"Title"\ntext`, or the bare text when there is no title.
    pub fn contents(&self) -> String {
        if self.title.is_empty() {
            self.text.clone()
        } else {
            format!("\"{}\"\n{}", self.title, self.text)
        }
    }

    /// Splits a Search-R1 `contents` string into title and text.
    pub fn split_contents(contents: &str) -> (String, String) {
        if let Some(rest) = contents.strip_prefix('"') {
            if let Some((title, text)) = rest.split_once('\n') {
                if let Some(title) = title.strip_suffix('"') {
                    return (title.to_string(), text.to_string());
                }
            }
        }
        (String::new(), contents.to_string())
    }
}

/// A readable page: the text of a URL (or of all local passages sharing a URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Page {
    pub url: String,
    #[serde(default)]
    pub title: String,
    /// Plain readable text of the whole page.
    pub contents: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_roundtrip() {
        let d = Document {
            title: "Paris".into(),
            text: "Capital of France.".into(),
            ..Default::default()
        };
        assert_eq!(d.contents(), "\"Paris\"\nCapital of France.");
        assert_eq!(
            Document::split_contents(&d.contents()),
            ("Paris".into(), "Capital of France.".into())
        );
        assert_eq!(
            Document::split_contents("no title"),
            (String::new(), "no title".into())
        );
    }
}
