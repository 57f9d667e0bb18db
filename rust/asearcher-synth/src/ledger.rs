//! What a growing QA is made of: the question, its answers, the fact ledger (every fact that
//! entered the question, where it was read and which entity it replaced) and the history of
//! committed edits.

use serde::{Deserialize, Serialize};

/// A seed QA as read from the seeds file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    pub id: String,
    pub question: String,
    /// The gold answer first, then aliases.
    pub answer: Vec<String>,
    /// Supporting facts given with the seed (text).
    #[serde(default)]
    pub facts: Vec<String>,
    /// Hops of the seed question (1 unless the seed says).
    #[serde(default = "one")]
    pub hops: u32,
}

fn one() -> u32 {
    1
}

/// One fact of the ledger: a sentence read verbatim in a retrieved passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub id: String,
    pub text: String,
    pub doc_id: String,
    pub url: Option<String>,
    /// Byte range of `text` in the passage's text.
    pub span: [usize; 2],
    /// The entity the fact describes (taken out of the question).
    pub entity_in: String,
    /// The description that replaced it in the question.
    pub entity_out: String,
    pub relation: String,
    pub round: u32,
}

/// A part of the question and the facts it stands on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clause {
    pub text: String,
    pub fact_ids: Vec<String>,
}

/// One committed edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    pub round: u32,
    pub action: String,
    pub target: String,
    pub replacement: String,
    pub before: String,
    pub after: String,
    pub fact_ids: Vec<String>,
    pub solve_rate: f64,
}

/// The QA as it grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaState {
    pub question: String,
    pub answer: Vec<String>,
    pub hops: u32,
    pub n_inject: u32,
    pub n_fuzz: u32,
    /// Solve rate of the no-tool solver on the current question (1.0 before any check).
    pub solve_rate: f64,
    pub facts: Vec<Fact>,
    pub clauses: Vec<Clause>,
    pub edits: Vec<Edit>,
}

impl QaState {
    pub fn from_seed(seed: &Seed) -> Self {
        QaState {
            question: seed.question.clone(),
            answer: seed.answer.clone(),
            hops: seed.hops.max(1),
            n_inject: 0,
            n_fuzz: 0,
            solve_rate: 1.0,
            facts: Vec::new(),
            clauses: Vec::new(),
            edits: Vec::new(),
        }
    }
}

/// Lower case with runs of whitespace as one space, for containment tests.
pub fn loose(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether `needle` occurs in `haystack` as whole words (case-insensitive, whitespace-loose).
pub fn mentions(haystack: &str, needle: &str) -> bool {
    let (h, n) = (loose(haystack), loose(needle));
    if n.is_empty() {
        return false;
    }
    h.match_indices(&n).any(|(i, _)| {
        let before = h[..i].chars().next_back();
        let after = h[i + n.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_matches_whole_words_loosely() {
        assert!(mentions("What is the birthplace of  Ann Lee?", "ann lee"));
        assert!(!mentions("What is the birthplace of Annabel?", "Ann"));
        assert!(mentions("Rome.", "rome"));
        assert!(!mentions("anything", ""));
    }
}
