//! The agents: the ASearcher base agent ([`asearcher`]), the Search-R1 agent ([`search_r1`]) and
//! the prompt-based reasoning agent ([`reasoning`]); their config ([`AgentConfig`]) with every
//! limit a researcher sets, and [`build_agent`], which makes one agent per trajectory. The
//! compiled prompt templates are cached in the config and shared by all agents built from it.

pub mod asearcher;
pub mod reasoning;
pub mod search_r1;
#[cfg(test)]
pub(crate) mod tests;

use crate::agent::{Agent, SamplingConfig, StopReason};
use crate::prompts::PromptSet;
use crate::protocol::{
    parse_turn, ActionKind, ActionPrecedence, ParseOptions, ParsedTurn, ProtocolIssue,
};
use asearcher_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Role of a generation that takes an action (the turns a format gate looks at).
pub const ROLE_ACT: &str = "act";
/// Role of the base agent's note-taking generation after a page part.
pub const ROLE_NOTES: &str = "notes";
/// Role of the reasoning agent's generations that summarise search results or page parts.
pub const ROLE_READ: &str = "read";
/// Role of the reasoning agent's answer-phase generation.
pub const ROLE_ANSWER: &str = "answer";

/// Which agent to run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// The ASearcher base agent: search, access (page parts with notes), answer.
    #[default]
    Asearcher,
    /// The Search-R1 agent: search and answer only.
    SearchR1,
    /// The prompt-based reasoning agent (QwQ style): act / read / answer roles, rolling history.
    Reasoning,
}

impl AgentKind {
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Asearcher => "asearcher",
            AgentKind::SearchR1 => "search_r1",
            AgentKind::Reasoning => "reasoning",
        }
    }
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of building an agent; each names the config field or template at fault.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent config `{field}`: {msg}")]
    InvalidField { field: &'static str, msg: String },
    #[error("unknown prompt template `{name}` for agent `{kind}`; valid names: {valid}")]
    UnknownTemplate {
        name: String,
        kind: AgentKind,
        valid: String,
    },
    #[error("prompt template `{name}`: {msg}")]
    Template { name: String, msg: String },
    #[error("tokenizer failed on {what}: {source}")]
    Tokenizer {
        what: &'static str,
        #[source]
        source: asearcher_tokenizer::TokenizerError,
    },
}

/// Everything a researcher sets about an agent. Unset kind-specific limits take the kind's
/// default (see each field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Which agent: `asearcher`, `search_r1` or `reasoning`.
    pub kind: AgentKind,
    /// Action turns before the trajectory stops (reasoning: before the answer phase). Default by
    /// kind: asearcher 32, search_r1 10, reasoning 128.
    pub max_turns: Option<u32>,
    /// Sampling of every generation; `max_new_tokens` is the limit per turn.
    pub sampling: SamplingConfig,
    /// Tokens of prompt + output allowed per generation context (the whole trajectory for the
    /// base agents, one prompt for the reasoning agent).
    pub context_budget: u32,
    /// Near the context budget a turn may generate fewer than `max_new_tokens`, but not fewer
    /// than this; below it the trajectory stops with `context_budget`.
    pub min_new_tokens: u32,
    /// Prompt templates overriding the defaults, by template name (see `prompts::template_specs`).
    pub prompts: BTreeMap<String, String>,
    /// Reasoning agent: actions after which the answer phase starts (default: `max_turns`).
    pub force_turns: Option<u32>,
    /// Reasoning agent: the history shown in prompts is cut to its last this many characters.
    pub history_chars: usize,
    /// Characters per page part. Default by kind: 25,000 (asearcher), 10,000 (reasoning).
    pub page_chunk_chars: Option<usize>,
    /// Page parts shown per accessed page; the rest of the page is dropped.
    pub max_page_chunks: usize,
    /// Base agent: characters of a page part kept in the context after its notes were written.
    pub note_chars: usize,
    /// Reasoning agent: documents read (search results and pages) that start the answer phase.
    pub docs_for_answer_phase: usize,
    /// Generations that broke the protocol before the trajectory stops with `protocol_failures`.
    pub max_generation_failures: u32,
    /// Reasoning agent: answer-phase generations allowed before stopping without an answer.
    pub answer_attempts: u32,
    /// Reasoning agent: characters of a thought or summary kept in the history per generation.
    pub summary_chars: usize,
    /// Reasoning agent: allow `<answer>` before the answer phase (the paper does not).
    pub allow_early_answer: bool,
    /// Which action runs when a turn holds several: `first_in_text` or `by_kind`
    /// (search before access before answer, as ASearcher does).
    pub action_precedence: ActionPrecedence,
    /// Action arguments longer than this many characters are cut (and the cut recorded).
    pub max_argument_chars: usize,
    /// The compiled templates, built on first use and shared by all agents of this config.
    #[serde(skip)]
    pub(crate) cache: PromptCache,
}

impl asearcher_config::Document for AgentConfig {}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: AgentKind::Asearcher,
            max_turns: None,
            sampling: SamplingConfig::default(),
            context_budget: 32_768,
            min_new_tokens: 32,
            prompts: BTreeMap::new(),
            force_turns: None,
            history_chars: 25_000,
            page_chunk_chars: None,
            max_page_chunks: 10,
            note_chars: 100,
            docs_for_answer_phase: 20,
            max_generation_failures: 32,
            answer_attempts: 1,
            summary_chars: 2_000,
            allow_early_answer: false,
            action_precedence: ActionPrecedence::FirstInText,
            max_argument_chars: 2_000,
            cache: PromptCache::default(),
        }
    }
}

impl AgentConfig {
    /// A default config of `kind`.
    pub fn new(kind: AgentKind) -> Self {
        AgentConfig {
            kind,
            ..AgentConfig::default()
        }
    }

    /// `max_turns`, or the kind's default.
    pub fn max_turns(&self) -> u32 {
        self.max_turns.unwrap_or(match self.kind {
            AgentKind::Asearcher => 32,
            AgentKind::SearchR1 => 10,
            AgentKind::Reasoning => 128,
        })
    }

    /// `page_chunk_chars`, or the kind's default.
    pub fn page_chunk_chars(&self) -> usize {
        self.page_chunk_chars.unwrap_or(match self.kind {
            AgentKind::Reasoning => 10_000,
            _ => 25_000,
        })
    }

    /// `force_turns`, or `max_turns`.
    pub fn force_turns(&self) -> u32 {
        self.force_turns.unwrap_or_else(|| self.max_turns())
    }

    /// Checks every limit and compiles the templates (once; later calls reuse them).
    pub fn validate(&self) -> Result<(), AgentError> {
        self.check_limits()?;
        self.compiled_prompts().map(drop)
    }

    fn check_limits(&self) -> Result<(), AgentError> {
        let positive: [(&'static str, u64); 10] = [
            ("max_turns", self.max_turns().into()),
            (
                "sampling.max_new_tokens",
                self.sampling.max_new_tokens.into(),
            ),
            ("min_new_tokens", self.min_new_tokens.into()),
            ("page_chunk_chars", self.page_chunk_chars() as u64),
            ("max_page_chunks", self.max_page_chunks as u64),
            ("history_chars", self.history_chars as u64),
            (
                "max_generation_failures",
                self.max_generation_failures.into(),
            ),
            ("answer_attempts", self.answer_attempts.into()),
            ("summary_chars", self.summary_chars as u64),
            ("max_argument_chars", self.max_argument_chars as u64),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(field, "must be at least 1"));
        }
        if self.context_budget <= self.min_new_tokens {
            return Err(invalid(
                "context_budget",
                format!(
                    "{} leaves no room for a prompt with min_new_tokens = {}",
                    self.context_budget, self.min_new_tokens
                ),
            ));
        }
        if self.force_turns == Some(0) {
            return Err(invalid("force_turns", "must be at least 1"));
        }
        let s = &self.sampling;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(invalid(
                "sampling.temperature",
                format!("{} is not a finite number >= 0", s.temperature),
            ));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(invalid(
                "sampling.top_p",
                format!("{} is not in (0, 1]", s.top_p),
            ));
        }
        Ok(())
    }

    /// The compiled templates of this config, compiled on first use and then shared.
    pub fn compiled_prompts(&self) -> Result<Arc<PromptSet>, AgentError> {
        self.cache.get_or_compile(self.kind, &self.prompts)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_turns: self.max_turns(),
            force_turns: self.force_turns(),
            context_budget: self.context_budget,
            min_new_tokens: self.min_new_tokens,
            history_chars: self.history_chars,
            page_chunk_chars: self.page_chunk_chars(),
            max_page_chunks: self.max_page_chunks,
            note_chars: self.note_chars,
            docs_for_answer_phase: self.docs_for_answer_phase,
            max_generation_failures: self.max_generation_failures,
            answer_attempts: self.answer_attempts,
            summary_chars: self.summary_chars,
            allow_early_answer: self.allow_early_answer,
            precedence: self.action_precedence,
            max_argument_chars: self.max_argument_chars,
        }
    }
}

fn invalid(field: &'static str, msg: impl Into<String>) -> AgentError {
    AgentError::InvalidField {
        field,
        msg: msg.into(),
    }
}

/// The compiled-templates cache of a config. Clones share it; it recompiles when the config's
/// kind or overrides changed since the last compile.
#[derive(Debug, Default)]
pub(crate) struct PromptCache(Mutex<Option<Arc<PromptSet>>>);

impl PromptCache {
    fn get_or_compile(
        &self,
        kind: AgentKind,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Arc<PromptSet>, AgentError> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = slot.as_ref().filter(|s| s.matches(kind, overrides)) {
            return Ok(set.clone());
        }
        let set = Arc::new(PromptSet::compile(kind, overrides)?);
        *slot = Some(set.clone());
        Ok(set)
    }
}

impl Clone for PromptCache {
    fn clone(&self) -> Self {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        PromptCache(Mutex::new(inner))
    }
}

impl PartialEq for PromptCache {
    /// A cache is derived data: two configs are equal when their fields are.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The resolved limits an agent runs under (copied into each agent: a few words).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_turns: u32,
    pub force_turns: u32,
    pub context_budget: u32,
    pub min_new_tokens: u32,
    pub history_chars: usize,
    pub page_chunk_chars: usize,
    pub max_page_chunks: usize,
    pub note_chars: usize,
    pub docs_for_answer_phase: usize,
    pub max_generation_failures: u32,
    pub answer_attempts: u32,
    pub summary_chars: usize,
    pub allow_early_answer: bool,
    pub precedence: ActionPrecedence,
    pub max_argument_chars: usize,
}

/// What every agent of a run shares: limits, sampling, templates, tokenizer.
pub(crate) struct Common {
    pub limits: Limits,
    pub sampling: SamplingConfig,
    pub prompts: Arc<PromptSet>,
    pub tokenizer: Arc<Tokenizer>,
}

impl Common {
    /// `max_new_tokens` for a prompt of `prompt_len` tokens, or the budget stop when not even
    /// `min_new_tokens` fit.
    pub fn fit_budget(&self, prompt_len: usize) -> Result<SamplingConfig, StopReason> {
        let room = (self.limits.context_budget as usize).saturating_sub(prompt_len);
        let want = self.sampling.max_new_tokens as usize;
        if room < want.min(self.limits.min_new_tokens as usize) {
            return Err(StopReason::ContextBudget);
        }
        let mut sampling = self.sampling.clone();
        sampling.max_new_tokens = want.min(room) as u32;
        Ok(sampling)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode_cached(text)
            .map_err(|e| format!("cannot tokenize an observation: {e}"))
    }

    /// Parses a turn allowing `allowed`; a complete action of another tool becomes
    /// [`ProtocolIssue::NotAllowed`] instead of `NoAction`.
    pub fn read_turn(&self, text: &str, allowed: &[ActionKind]) -> ParsedTurn {
        let mut opts = ParseOptions {
            precedence: self.limits.precedence,
            max_argument_chars: self.limits.max_argument_chars,
            allowed: allowed.to_vec(),
        };
        let mut parsed = parse_turn(text, &opts);
        if parsed.action.is_none() && parsed.issues.contains(&ProtocolIssue::NoAction) {
            opts.allowed = ActionKind::ALL.to_vec();
            if let Some(other) = parse_turn(text, &opts).action {
                for issue in parsed.issues.iter_mut() {
                    if *issue == ProtocolIssue::NoAction {
                        *issue = ProtocolIssue::NotAllowed(other.kind);
                    }
                }
            }
        }
        parsed
    }
}

/// Makes the agent of `cfg.kind` for one trajectory on `question`. Templates are compiled once
/// per config (and cached in it); each agent holds only its own state and shared handles.
pub fn build_agent(
    cfg: &AgentConfig,
    tokenizer: Arc<Tokenizer>,
    question: &str,
) -> Result<Box<dyn Agent>, AgentError> {
    cfg.check_limits()?;
    let common = Common {
        limits: cfg.limits(),
        sampling: cfg.sampling.clone(),
        prompts: cfg.compiled_prompts()?,
        tokenizer,
    };
    Ok(match cfg.kind {
        AgentKind::Asearcher => Box::new(asearcher::TagAgent::asearcher(common, question)?),
        AgentKind::SearchR1 => Box::new(search_r1::new_agent(common, question)?),
        AgentKind::Reasoning => Box::new(reasoning::ReasoningAgent::new(common, question)),
    })
}

/// Length of the longest common prefix of `a` and `b1 ++ b2`.
pub(crate) fn common_prefix(a: &[u32], b1: &[u32], b2: &[u32]) -> usize {
    let first = a.iter().zip(b1).take_while(|(x, y)| x == y).count();
    if first < b1.len() {
        return first;
    }
    first
        + a[first..]
            .iter()
            .zip(b2)
            .take_while(|(x, y)| x == y)
            .count()
}

/// The first `max` characters of `text`, and whether it was cut.
pub(crate) fn head_chars(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((byte, _)) => (&text[..byte], true),
        None => (text, false),
    }
}

/// The last `max` characters of `text`.
pub(crate) fn tail_chars(text: &str, max: usize) -> &str {
    let count = text.chars().count();
    if count <= max {
        return text;
    }
    match text.char_indices().nth(count - max) {
        Some((byte, _)) => &text[byte..],
        None => text,
    }
}

/// Re-splits a page's parts into at most `max_chunks` parts of `chunk_chars` characters.
pub(crate) fn page_chunks(parts: &[String], chunk_chars: usize, max_chunks: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut count = 0;
    for c in parts.iter().flat_map(|p| p.chars()) {
        if count == chunk_chars {
            chunks.push(std::mem::take(&mut current));
            count = 0;
            if chunks.len() == max_chunks {
                return chunks;
            }
        }
        current.push(c);
        count += 1;
    }
    if !current.trim().is_empty() {
        chunks.push(current);
    }
    chunks
}

/// A short text telling the model why its turn was not run.
pub(crate) fn describe_issues(issues: &[ProtocolIssue], allowed: &[ActionKind]) -> String {
    let reason = issues
        .iter()
        .find_map(|i| match i {
            ProtocolIssue::NoAction => Some("no action tag was found".to_string()),
            ProtocolIssue::Unclosed(k) => Some(format!("<{}> was not closed", k.tag())),
            ProtocolIssue::EmptyArgument(k) => Some(format!("<{}> was empty", k.tag())),
            ProtocolIssue::NotAllowed(k) => Some(format!("<{}> is not available", k.tag())),
            _ => None,
        })
        .unwrap_or_else(|| "no valid action was found".to_string());
    let usage: Vec<String> = allowed
        .iter()
        .map(|k| format!("<{0}> ... </{0}>", k.tag()))
        .collect();
    format!(
        "No valid action found: {reason}. Use exactly one of {}.",
        usage.join(", ")
    )
}
