//! The Search-R1 agent: the base agent's token-space loop ([`TagAgent`] with
//! [`Flavor::SearchR1`]) restricted to `<search>` and `<answer>` (an `<access>` is recorded as
//! not allowed and not run), with search results shown numbered, `1. (Title: ...) text`.

use super::asearcher::{Flavor, TagAgent, NO_RESULTS};
use super::{AgentError, Common};
use crate::agent::ObservedDoc;

/// The Search-R1 agent on `question`.
pub(crate) fn new_agent(common: Common, question: &str) -> Result<TagAgent, AgentError> {
    TagAgent::new(Flavor::SearchR1, common, question)
}

/// Documents numbered from 1; a `"Title"\ntext` document shows its title.
pub fn render_docs(docs: &[ObservedDoc]) -> String {
    if docs.is_empty() {
        return NO_RESULTS.to_string();
    }
    let mut out = String::from("\n");
    for (i, doc) in docs.iter().enumerate() {
        let n = i + 1;
        match doc.contents.split_once('\n') {
            Some((title, text)) => {
                let title = title.trim().trim_matches('"');
                out.push_str(&format!("{n}. (Title: {title}) {}\n", text.trim()));
            }
            None => out.push_str(&format!("{n}. {}\n", doc.contents.trim())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_are_numbered_with_titles() {
        let docs = vec![
            ObservedDoc {
                url: "a".into(),
                contents: "\"Paris\"\nCapital of France.".into(),
            },
            ObservedDoc {
                url: "b".into(),
                contents: "plain text".into(),
            },
        ];
        let text = render_docs(&docs);
        assert_eq!(
            text,
            "\n1. (Title: Paris) Capital of France.\n2. plain text\n"
        );
        assert_eq!(render_docs(&[]), NO_RESULTS);
    }
}
