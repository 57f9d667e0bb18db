//! The tag protocol of model output: `<search> query </search>`, `<access> url </access>`,
//! `<answer> text </answer>`, with reasoning in `<think>` (or `<thought>`). One action counts per
//! turn; anything else the model writes (no tag, an unclosed tag, several actions, a huge argument,
//! unbalanced reasoning tags) is kept as a [`ProtocolIssue`] on the turn, never an error.
//!
//! Parsing is a linear scan with `str::find`, so 100k characters of garbage cost microseconds.

use serde::{Deserialize, Serialize};

/// The tools an action can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Search,
    Access,
    Answer,
}

impl ActionKind {
    pub const ALL: [ActionKind; 3] = [ActionKind::Search, ActionKind::Access, ActionKind::Answer];

    pub fn tag(self) -> &'static str {
        match self {
            ActionKind::Search => "search",
            ActionKind::Access => "access",
            ActionKind::Answer => "answer",
        }
    }

    /// The closing tag, which is also the generation stop string for this action.
    pub fn close_tag(self) -> String {
        format!("</{}>", self.tag())
    }
}

/// One parsed action and its (trimmed) argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub kind: ActionKind,
    pub argument: String,
}

/// Something in a turn's output that breaks the protocol. Recorded on the trajectory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolIssue {
    /// No complete action tag pair.
    NoAction,
    /// An opening tag without its closing tag (e.g. the turn hit its token limit).
    Unclosed(ActionKind),
    /// More than one complete action; only the chosen one is run.
    SeveralActions { count: usize },
    /// An action whose argument is empty after trimming; it is not run.
    EmptyArgument(ActionKind),
    /// An argument longer than the limit; it was cut to the limit.
    ArgumentTooLong { kind: ActionKind, chars: usize },
    /// `<think>`/`<thought>` opening and closing tags do not pair up.
    UnbalancedReasoning,
    /// A complete action of a tool this agent may not use now (e.g. `<access>` for Search-R1,
    /// `<answer>` before the reasoning agent's answer phase); it is not run.
    NotAllowed(ActionKind),
}

/// Which action wins when a turn holds several.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionPrecedence {
    /// The earliest complete action in the text.
    #[default]
    FirstInText,
    /// ASearcher's rule: search before access before answer, whatever the order in the text.
    ByKind,
}

/// Parsing options a researcher may change.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    pub precedence: ActionPrecedence,
    /// Arguments longer than this many characters are cut (and the cut recorded).
    pub max_argument_chars: usize,
    /// Actions this agent may use; tags of other tools are ignored as plain text.
    pub allowed: Vec<ActionKind>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            precedence: ActionPrecedence::FirstInText,
            max_argument_chars: 2_000,
            allowed: ActionKind::ALL.to_vec(),
        }
    }
}

/// The outcome of parsing one turn's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTurn {
    pub action: Option<Action>,
    pub issues: Vec<ProtocolIssue>,
}

impl ParsedTurn {
    /// Well-formed: exactly one action with an argument, reasoning tags balanced.
    pub fn is_well_formed(&self) -> bool {
        self.action.is_some() && self.issues.is_empty()
    }
}

/// A complete `<tag>argument</tag>` occurrence: byte offset of the opening tag and the raw argument.
struct Occurrence<'a> {
    kind: ActionKind,
    start: usize,
    argument: &'a str,
}

/// All complete occurrences of one tag, and whether an opening tag was left unclosed.
fn occurrences(text: &str, kind: ActionKind) -> (Vec<Occurrence<'_>>, bool) {
    let open = format!("<{}>", kind.tag());
    let close = kind.close_tag();
    let (mut found, mut pos) = (Vec::new(), 0);
    while let Some(rel) = text[pos..].find(&open) {
        let start = pos + rel;
        let body = start + open.len();
        match text[body..].find(&close) {
            Some(end) => {
                found.push(Occurrence {
                    kind,
                    start,
                    argument: &text[body..body + end],
                });
                pos = body + end + close.len();
            }
            None => return (found, true),
        }
    }
    (found, false)
}

fn reasoning_balanced(text: &str) -> bool {
    ["think", "thought"].iter().all(|tag| {
        text.matches(&format!("<{tag}>")).count() == text.matches(&format!("</{tag}>")).count()
    })
}

/// Cuts `arg` to `max` characters; returns the cut text and whether it was cut.
fn cut_chars(arg: &str, max: usize) -> (String, bool) {
    match arg.char_indices().nth(max) {
        Some((byte, _)) => (arg[..byte].to_string(), true),
        None => (arg.to_string(), false),
    }
}

/// Parses one turn of model output into at most one action plus the protocol issues found.
pub fn parse_turn(text: &str, options: &ParseOptions) -> ParsedTurn {
    let mut issues = Vec::new();
    let mut all = Vec::new();
    for kind in &options.allowed {
        let (found, unclosed) = occurrences(text, *kind);
        if unclosed {
            issues.push(ProtocolIssue::Unclosed(*kind));
        }
        all.extend(found);
    }
    if !reasoning_balanced(text) {
        issues.push(ProtocolIssue::UnbalancedReasoning);
    }
    if all.len() > 1 {
        issues.push(ProtocolIssue::SeveralActions { count: all.len() });
    }
    let chosen = match options.precedence {
        ActionPrecedence::FirstInText => all.iter().min_by_key(|o| o.start),
        ActionPrecedence::ByKind => ActionKind::ALL
            .iter()
            .find_map(|k| all.iter().find(|o| o.kind == *k)),
    };
    let Some(chosen) = chosen else {
        if !issues
            .iter()
            .any(|i| matches!(i, ProtocolIssue::Unclosed(_)))
        {
            issues.push(ProtocolIssue::NoAction);
        }
        return ParsedTurn {
            action: None,
            issues,
        };
    };
    let trimmed = chosen.argument.trim();
    if trimmed.is_empty() {
        issues.push(ProtocolIssue::EmptyArgument(chosen.kind));
        return ParsedTurn {
            action: None,
            issues,
        };
    }
    let (argument, was_cut) = cut_chars(trimmed, options.max_argument_chars);
    if was_cut {
        issues.push(ProtocolIssue::ArgumentTooLong {
            kind: chosen.kind,
            chars: trimmed.chars().count(),
        });
    }
    ParsedTurn {
        action: Some(Action {
            kind: chosen.kind,
            argument,
        }),
        issues,
    }
}

/// The argument of the last complete `<answer>` in `text` (what answer rewards score).
pub fn last_answer(text: &str) -> Option<String> {
    let (found, _) = occurrences(text, ActionKind::Answer);
    found.last().map(|o| o.argument.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParsedTurn {
        parse_turn(text, &ParseOptions::default())
    }

    fn action(kind: ActionKind, arg: &str) -> Option<Action> {
        Some(Action {
            kind,
            argument: arg.into(),
        })
    }

    #[test]
    fn one_action_with_reasoning_is_well_formed() {
        let t = parse("<think>I should look it up.</think>\n<search> capital of France </search>");
        assert_eq!(t.action, action(ActionKind::Search, "capital of France"));
        assert!(t.is_well_formed(), "{:?}", t.issues);
        let a = parse("<think>done</think><answer>Paris</answer>");
        assert_eq!(a.action, action(ActionKind::Answer, "Paris"));
    }

    #[test]
    fn missing_and_unclosed_tags_are_issues_not_errors() {
        let none = parse("I think the answer is Paris.");
        assert_eq!(none.action, None);
        assert_eq!(none.issues, vec![ProtocolIssue::NoAction]);
        let unclosed = parse("<think>x</think><answer>Paris");
        assert_eq!(unclosed.action, None);
        assert_eq!(
            unclosed.issues,
            vec![ProtocolIssue::Unclosed(ActionKind::Answer)]
        );
        let unbalanced = parse("<think>x<search>q</search>");
        assert_eq!(unbalanced.action, action(ActionKind::Search, "q"));
        assert!(unbalanced
            .issues
            .contains(&ProtocolIssue::UnbalancedReasoning));
    }

    #[test]
    fn several_actions_pick_one_by_the_chosen_rule() {
        let text = "<answer>Lyon</answer> <search>q</search>";
        let first = parse(text);
        assert_eq!(first.action, action(ActionKind::Answer, "Lyon"));
        assert!(first
            .issues
            .contains(&ProtocolIssue::SeveralActions { count: 2 }));
        let opts = ParseOptions {
            precedence: ActionPrecedence::ByKind,
            ..ParseOptions::default()
        };
        assert_eq!(
            parse_turn(text, &opts).action,
            action(ActionKind::Search, "q")
        );
    }

    #[test]
    fn disallowed_tools_are_plain_text() {
        let opts = ParseOptions {
            allowed: vec![ActionKind::Search, ActionKind::Answer],
            ..ParseOptions::default()
        };
        let t = parse_turn("<access>http://x</access>", &opts);
        assert_eq!(t.action, None);
        assert_eq!(t.issues, vec![ProtocolIssue::NoAction]);
    }

    #[test]
    fn empty_and_huge_arguments() {
        let empty = parse("<search>   </search>");
        assert_eq!(empty.action, None);
        assert_eq!(
            empty.issues,
            vec![ProtocolIssue::EmptyArgument(ActionKind::Search)]
        );
        let long = "é".repeat(5_000);
        let t = parse(&format!("<search>{long}</search>"));
        let got = t.action.unwrap();
        assert_eq!(got.argument.chars().count(), 2_000);
        assert_eq!(
            t.issues,
            vec![ProtocolIssue::ArgumentTooLong {
                kind: ActionKind::Search,
                chars: 5_000
            }]
        );
    }

    #[test]
    fn garbage_of_any_size_is_no_action() {
        let garbage: String = (0..100_000)
            .map(|i| ['<', 'a', '>', '/', 's', ' '][i % 6])
            .collect();
        let t = parse(&garbage);
        assert_eq!(t.action, None);
        assert_eq!(t.issues, vec![ProtocolIssue::NoAction]);
        let t = parse(&format!("{garbage}<answer>ok</answer>{garbage}"));
        assert_eq!(t.action, action(ActionKind::Answer, "ok"));
    }

    #[test]
    fn last_answer_is_the_final_complete_one() {
        assert_eq!(
            last_answer("<answer>a</answer> x <answer> b </answer><answer>c"),
            Some("b".into())
        );
        assert_eq!(last_answer("no answer"), None);
    }
}
