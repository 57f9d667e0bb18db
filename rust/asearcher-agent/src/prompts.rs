//! Prompt templates of the agents: the default wording of each agent, the variables each template
//! receives, and [`PromptSet`], the compiled (minijinja) templates of one run shared by all its
//! agents. Templates are data: a researcher overrides any of them by name from the config (and so
//! from Python); every default ends with a line `Question: {{ question }}`, the convention the
//! scripted test server reads the question from.

use crate::agents::{AgentError, AgentKind};
use minijinja::{Environment, UndefinedBehavior, Value};
use std::collections::BTreeMap;

/// One template of an agent: its name, what it is for, and the variables it receives.
#[derive(Debug, Clone, Copy)]
pub struct TemplateSpec {
    pub name: &'static str,
    pub purpose: &'static str,
    /// Variable names with an example value of the right type (used to check overrides).
    pub variables: &'static [(&'static str, Example)],
    pub default: &'static str,
}

/// Example values of template variables, rendered once when a config is validated so that a
/// template naming an unknown variable fails then, not mid-run.
#[derive(Debug, Clone, Copy)]
pub enum Example {
    Text(&'static str),
    Number(u64),
}

const ASEARCHER_PROMPT: &str = "\
You answer questions by researching them step by step. Reason inside <think> and </think> \
before every action. One action per step:
- <search> query </search> searches for documents; the results come back between <information> \
and </information>.
- <access> url </access> opens a page from the results. Long pages come in parts; after each part \
you write short notes and close them with </think>.
- <answer> short answer </answer> ends the task. Give only the answer itself: a name, a number, a \
date or a short phrase.
Search as many times as you need; answer only when the evidence supports it.

Question: {{ question }}";

const ASEARCHER_NOTES: &str = "\
The text above is part {{ page_index }} of {{ page_count }} of {{ url }}. It will not be shown \
again. Note down everything in it that helps with the question, then close your notes with \
</think>.
Question: {{ question }}
<think>";

const SEARCH_R1_PROMPT: &str = "\
Answer the question below. Reason inside <think> and </think> each time you receive new \
information. When you lack knowledge, call the search engine with <search> query </search>; the \
top results come back between <information> and </information>. You may search as often as you \
like. Once you are confident, give the answer inside <answer> and </answer> with no explanation, \
for example <answer> Marie Curie </answer>.

Question: {{ question }}";

const REASONING_ACT: &str = "\
You are investigating a question with a search engine and a web browser.
{% if history %}Your record so far (oldest parts may be cut):
{{ history }}

{% endif %}Decide what is still unknown, then take exactly one action and stop:
- <search> query </search> to search the web;
- <access> url </access> to read a page whose address appeared in the results.
This is action {{ turn }} of at most {{ max_turns }}; documents read so far: {{ docs_read }}.

Question: {{ question }}";

const REASONING_READ_SEARCH: &str = "\
You are investigating a question. {% if history %}Your record so far:
{{ history }}

{% endif %}You searched for \"{{ query }}\" and got:
{{ results }}

Summarise, in a few sentences, what these results say that bears on the question, and which \
addresses look worth opening. Write nothing else.

Question: {{ question }}";

const REASONING_READ_PAGE: &str = "\
You are investigating a question. {% if history %}Your record so far:
{{ history }}

{% endif %}Here is part {{ page_index }} of {{ page_count }} of the page {{ url }}:
{{ page }}

Summarise, in a few sentences, what this part says that bears on the question. Write nothing \
else.

Question: {{ question }}";

const REASONING_ANSWER: &str = "\
You have finished investigating a question. Your record:
{{ history }}

Using this record, give your final answer inside <answer> and </answer>: only the answer itself, \
a name, a number, a date or a short phrase. If the record is not conclusive, give your best guess.

Question: {{ question }}";

const Q: (&str, Example) = ("question", Example::Text("Who wrote Dracula?"));
const HISTORY: (&str, Example) = ("history", Example::Text("<search>x</search>"));

const ASEARCHER: &[TemplateSpec] = &[
    TemplateSpec {
        name: "prompt",
        purpose:
            "the first user message (chat-templated); the model continues in one assistant turn",
        variables: &[Q],
        default: ASEARCHER_PROMPT,
    },
    TemplateSpec {
        name: "notes",
        purpose: "appended after a page part to have the model write notes (stop `</think>`)",
        variables: &[
            Q,
            ("page_index", Example::Number(1)),
            ("page_count", Example::Number(2)),
            ("url", Example::Text("https://example.org/a")),
        ],
        default: ASEARCHER_NOTES,
    },
];

const SEARCH_R1: &[TemplateSpec] = &[TemplateSpec {
    name: "prompt",
    purpose: "the first user message (chat-templated); the model continues in one assistant turn",
    variables: &[Q],
    default: SEARCH_R1_PROMPT,
}];

const REASONING: &[TemplateSpec] = &[
    TemplateSpec {
        name: "act",
        purpose: "think and take one action (search or access)",
        variables: &[
            Q,
            HISTORY,
            ("turn", Example::Number(1)),
            ("max_turns", Example::Number(128)),
            ("docs_read", Example::Number(0)),
        ],
        default: REASONING_ACT,
    },
    TemplateSpec {
        name: "read_search",
        purpose: "summarise search results into the history",
        variables: &[
            Q,
            HISTORY,
            ("query", Example::Text("dracula author")),
            ("results", Example::Text("[Doc 1](u):\ntext")),
        ],
        default: REASONING_READ_SEARCH,
    },
    TemplateSpec {
        name: "read_page",
        purpose: "summarise one part of an opened page into the history",
        variables: &[
            Q,
            HISTORY,
            ("url", Example::Text("https://example.org/a")),
            ("page", Example::Text("page text")),
            ("page_index", Example::Number(1)),
            ("page_count", Example::Number(2)),
        ],
        default: REASONING_READ_PAGE,
    },
    TemplateSpec {
        name: "answer",
        purpose: "the answer phase: only `<answer>` is allowed",
        variables: &[Q, HISTORY],
        default: REASONING_ANSWER,
    },
];

/// The templates of an agent kind (name, purpose, variables, default text).
pub fn template_specs(kind: AgentKind) -> &'static [TemplateSpec] {
    match kind {
        AgentKind::Asearcher => ASEARCHER,
        AgentKind::SearchR1 => SEARCH_R1,
        AgentKind::Reasoning => REASONING,
    }
}

/// The default templates of an agent kind, by name.
pub fn default_prompts(kind: AgentKind) -> BTreeMap<String, String> {
    template_specs(kind)
        .iter()
        .map(|s| (s.name.to_string(), s.default.to_string()))
        .collect()
}

/// The compiled templates of one agent config: defaults with the overrides applied. Built once
/// per config and shared (`Arc`) by every agent of the run.
#[derive(Debug)]
pub struct PromptSet {
    kind: AgentKind,
    overrides: BTreeMap<String, String>,
    env: Environment<'static>,
}

impl PromptSet {
    /// Compiles the templates of `kind` with `overrides` (template name -> text), and renders
    /// each once with example values so that errors surface now, naming the template.
    pub fn compile(
        kind: AgentKind,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, AgentError> {
        let specs = template_specs(kind);
        if let Some(unknown) = overrides
            .keys()
            .find(|k| !specs.iter().any(|s| s.name == k.as_str()))
        {
            return Err(AgentError::UnknownTemplate {
                name: unknown.clone(),
                kind,
                valid: specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
            });
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        for spec in specs {
            let text = overrides
                .get(spec.name)
                .map_or(spec.default, String::as_str);
            env.add_template_owned(spec.name, text.to_string())
                .map_err(|e| template_error(spec.name, &e))?;
        }
        let set = PromptSet {
            kind,
            overrides: overrides.clone(),
            env,
        };
        for spec in specs {
            set.render(spec.name, example_context(spec))?;
        }
        Ok(set)
    }

    /// Whether this set was compiled from exactly this kind and these overrides.
    pub fn matches(&self, kind: AgentKind, overrides: &BTreeMap<String, String>) -> bool {
        self.kind == kind && &self.overrides == overrides
    }

    /// Renders template `name` with `ctx` (a `minijinja::context!{...}`).
    pub fn render(&self, name: &str, ctx: Value) -> Result<String, AgentError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| template_error(name, &e))
    }
}

fn example_context(spec: &TemplateSpec) -> Value {
    spec.variables
        .iter()
        .map(|(name, ex)| {
            let v = match ex {
                Example::Text(t) => Value::from(*t),
                Example::Number(n) => Value::from(*n),
            };
            (*name, v)
        })
        .collect::<BTreeMap<_, _>>()
        .into()
}

fn template_error(name: &str, e: &minijinja::Error) -> AgentError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    AgentError::Template {
        name: name.to_string(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn every_default_has_a_question_line_and_renders() {
        for kind in [
            AgentKind::Asearcher,
            AgentKind::SearchR1,
            AgentKind::Reasoning,
        ] {
            let set = PromptSet::compile(kind, &BTreeMap::new()).unwrap();
            for spec in template_specs(kind) {
                assert!(
                    spec.default.contains("Question: {{ question }}"),
                    "{kind:?}/{}",
                    spec.name
                );
                let text = set.render(spec.name, example_context(spec)).unwrap();
                assert!(text.contains("Question: Who wrote Dracula?"), "{text}");
            }
        }
    }

    #[test]
    fn an_override_replaces_one_template() {
        let mut o = BTreeMap::new();
        o.insert("prompt".to_string(), "Q? {{ question }}!".to_string());
        let set = PromptSet::compile(AgentKind::SearchR1, &o).unwrap();
        let text = set.render("prompt", context! { question => "x" }).unwrap();
        assert_eq!(text, "Q? x!");
        assert!(set.matches(AgentKind::SearchR1, &o));
        assert!(!set.matches(AgentKind::SearchR1, &BTreeMap::new()));
    }

    #[test]
    fn unknown_names_and_bad_templates_are_named() {
        let mut o = BTreeMap::new();
        o.insert("promt".to_string(), "x".to_string());
        let err = PromptSet::compile(AgentKind::Asearcher, &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`promt`"), "{err}");
        assert!(err.contains("prompt, notes"), "{err}");

        let mut o = BTreeMap::new();
        o.insert("answer".to_string(), "{{ questoin }}".to_string());
        let err = PromptSet::compile(AgentKind::Reasoning, &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`answer`"), "{err}");

        let mut o = BTreeMap::new();
        o.insert("act".to_string(), "{% if %}".to_string());
        let err = PromptSet::compile(AgentKind::Reasoning, &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`act`"), "{err}");
    }
}
