//! The prompt-based reasoning agent (QwQ style). Every generation gets a fresh prompt: one user
//! turn in the chat template, rendered from the template of its role (`act`, `read_search`,
//! `read_page`, `answer`) with a rolling history of compressed thoughts, actions and
//! observation summaries (each summary inside `<information>`), cut to its last
//! `history_chars` characters. After `force_turns` actions (or `max_turns`), or once
//! `docs_for_answer_phase` documents were read, the agent enters the answer phase, where only
//! `<answer>` is allowed; reaching the limit leads into that phase rather than stopping.

use super::asearcher::{EMPTY_PAGE, NO_RESULTS};
use super::{
    common_prefix, head_chars, page_chunks, tail_chars, Common, ROLE_ACT, ROLE_ANSWER, ROLE_READ,
};
use crate::agent::{
    Agent, AgentStep, GenerateCall, Generation, StopReason, ToolCall, ToolKind, ToolObservation,
    TurnReading,
};
use crate::protocol::{ActionKind, ParsedTurn};
use asearcher_tokenizer::{ChatMessage, ChatOptions};
use minijinja::{context, Value};
use std::collections::VecDeque;
use std::sync::Arc;

/// Characters of a fallback answer line kept.
const FALLBACK_CHARS: usize = 1_000;

/// What the next generation is for.
enum Phase {
    Act,
    ReadSearch {
        query: String,
        results: String,
    },
    ReadPage {
        url: String,
        parts: VecDeque<String>,
        count: usize,
    },
    Answer,
}

/// The reasoning agent.
pub struct ReasoningAgent {
    common: Common,
    question: String,
    history: String,
    phase: Phase,
    tool: Option<ToolCall>,
    actions: u32,
    answer_tries: u32,
    failures: u32,
    docs_read: usize,
    /// The previous generation's prompt and output, to find the shared prefix of the next.
    last: Option<(Arc<Vec<u32>>, Vec<u32>)>,
    answer: Option<String>,
    fallback: Option<String>,
    stop: Option<StopReason>,
    error: Option<String>,
}

impl ReasoningAgent {
    pub(crate) fn new(common: Common, question: &str) -> Self {
        ReasoningAgent {
            common,
            question: question.to_string(),
            history: String::new(),
            phase: Phase::Act,
            tool: None,
            actions: 0,
            answer_tries: 0,
            failures: 0,
            docs_read: 0,
            last: None,
            answer: None,
            fallback: None,
            stop: None,
            error: None,
        }
    }

    /// Whether the agent is in its answer phase.
    pub fn in_answer_phase(&self) -> bool {
        matches!(self.phase, Phase::Answer)
    }

    fn finish(&mut self, reason: StopReason) -> AgentStep {
        self.stop = Some(reason);
        AgentStep::Finish(reason)
    }

    fn fail(&mut self, message: String) -> AgentStep {
        self.error = Some(message);
        self.finish(StopReason::Error)
    }

    fn answer_phase_due(&self) -> bool {
        let l = &self.common.limits;
        self.actions >= l.force_turns.min(l.max_turns) || self.docs_read >= l.docs_for_answer_phase
    }

    fn act_allowed(&self) -> &'static [ActionKind] {
        if self.common.limits.allow_early_answer {
            &ActionKind::ALL
        } else {
            &[ActionKind::Search, ActionKind::Access]
        }
    }

    /// The history as shown in prompts: its last `history_chars` characters.
    fn shown_history(&self) -> &str {
        tail_chars(&self.history, self.common.limits.history_chars)
    }

    fn push_history(&mut self, text: &str) {
        if !self.history.is_empty() {
            self.history.push_str("\n\n");
        }
        self.history.push_str(text);
        // Keep the stored history bounded too: prompts only ever show its tail.
        let shown = self.common.limits.history_chars;
        if self.history.len() > shown.saturating_mul(2) {
            self.history = tail_chars(&self.history, shown).to_string();
        }
    }

    fn push_information(&mut self, text: &str) {
        self.push_history(&format!("<information>\n{}\n</information>", text.trim()));
    }

    /// The template, variables, role and stops of the current phase's generation.
    fn phase_request(&self) -> (&'static str, Value, &'static str, Vec<String>) {
        let (question, history) = (self.question.as_str(), self.shown_history());
        match &self.phase {
            Phase::Act => {
                let l = &self.common.limits;
                let vars = context! {
                    question, history, turn => self.actions + 1, max_turns => l.max_turns,
                    docs_read => self.docs_read,
                };
                let stops = self.act_allowed().iter().map(|k| k.close_tag()).collect();
                ("act", vars, ROLE_ACT, stops)
            }
            Phase::ReadSearch { query, results } => {
                let vars = context! { question, history, query, results };
                ("read_search", vars, ROLE_READ, Vec::new())
            }
            Phase::ReadPage { url, parts, count } => {
                let page = parts.front().map(String::as_str).unwrap_or_default();
                let vars = context! {
                    question, history, url, page, page_index => *count - parts.len() + 1,
                    page_count => *count,
                };
                ("read_page", vars, ROLE_READ, Vec::new())
            }
            Phase::Answer => {
                let vars = context! { question, history };
                (
                    "answer",
                    vars,
                    ROLE_ANSWER,
                    vec![ActionKind::Answer.close_tag()],
                )
            }
        }
    }

    fn build_prompt(&self, text: String) -> Result<Vec<u32>, String> {
        let messages = [ChatMessage::new("user", text)];
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..ChatOptions::default()
        };
        self.common
            .tokenizer
            .encode_chat(&messages, &opts)
            .map_err(|e| format!("cannot build the prompt: {e}"))
    }

    /// Keeps the last line of `text` that mentions "answer", for the fallback answer.
    fn track_fallback(&mut self, text: &str) {
        let line = text
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.to_ascii_lowercase().contains("answer"));
        if let Some(line) = line {
            self.fallback = Some(head_chars(line, FALLBACK_CHARS).0.to_string());
        }
    }

    /// What a generation contributes to the history: the text after its reasoning, cut.
    fn compress(&self, text: &str) -> String {
        let after = ["</think>", "</thought>"]
            .iter()
            .filter_map(|t| text.rfind(t).map(|i| &text[i + t.len()..]))
            .min_by_key(|s| s.len())
            .unwrap_or(text);
        tail_chars(after.trim(), self.common.limits.summary_chars).to_string()
    }

    fn on_act(&mut self, generation: &Generation) -> TurnReading {
        let allowed = self.act_allowed();
        let ParsedTurn { action, issues } = self.common.read_turn(&generation.text, allowed);
        match &action {
            Some(a) if a.kind == ActionKind::Answer => {
                self.answer = Some(a.argument.clone());
                self.stop = Some(StopReason::Answered);
            }
            Some(a) => {
                self.actions += 1;
                let compressed = self.compress(&generation.text);
                self.push_history(&compressed);
                let kind = match a.kind {
                    ActionKind::Access => ToolKind::Access,
                    _ => ToolKind::Search,
                };
                self.tool = Some(ToolCall {
                    kind,
                    argument: a.argument.clone(),
                });
            }
            None => self.count_failure(),
        }
        TurnReading { action, issues }
    }

    fn count_failure(&mut self) {
        self.failures += 1;
        if self.failures >= self.common.limits.max_generation_failures {
            self.stop = Some(StopReason::ProtocolFailures);
        }
    }

    fn on_read(&mut self, generation: &Generation) -> TurnReading {
        let summary = self.compress(&generation.text);
        self.push_information(&summary);
        if let Phase::ReadPage { parts, .. } = &mut self.phase {
            parts.pop_front();
            if !parts.is_empty() {
                return TurnReading::default();
            }
        }
        self.phase = Phase::Act;
        TurnReading::default()
    }

    fn on_answer(&mut self, generation: &Generation) -> TurnReading {
        let ParsedTurn { action, issues } = self
            .common
            .read_turn(&generation.text, &[ActionKind::Answer]);
        if let Some(a) = &action {
            self.answer = Some(a.argument.clone());
            self.stop = Some(StopReason::Answered);
        } else {
            self.answer_tries += 1;
            self.count_failure();
            if self.stop.is_none() && self.answer_tries >= self.common.limits.answer_attempts {
                self.stop = Some(StopReason::MaxTurns);
            }
        }
        TurnReading { action, issues }
    }

    fn on_search(&mut self, query: &str, observation: &ToolObservation) {
        if observation.docs.is_empty() && observation.text.trim().is_empty() {
            self.push_information(&format!("Search \"{query}\": {NO_RESULTS}"));
            return;
        }
        self.docs_read += observation.docs.len().max(1);
        self.phase = Phase::ReadSearch {
            query: query.to_string(),
            results: observation.text.clone(),
        };
    }

    fn on_access(&mut self, url: &str, observation: &ToolObservation) {
        let l = self.common.limits;
        let parts = page_chunks(&observation.chunks, l.page_chunk_chars, l.max_page_chunks);
        if parts.is_empty() {
            self.push_information(&format!("Page {url}: {EMPTY_PAGE}"));
            return;
        }
        self.docs_read += 1;
        self.phase = Phase::ReadPage {
            url: url.to_string(),
            count: parts.len(),
            parts: parts.into(),
        };
    }
}

impl Agent for ReasoningAgent {
    fn name(&self) -> &str {
        "reasoning"
    }

    fn next_step(&mut self) -> AgentStep {
        if let Some(reason) = self.stop {
            return AgentStep::Finish(reason);
        }
        if let Some(call) = self.tool.take() {
            return AgentStep::Tool(call);
        }
        if matches!(self.phase, Phase::Act) && self.answer_phase_due() {
            self.phase = Phase::Answer;
        }
        let (template, vars, role, stop) = self.phase_request();
        let text = match self.common.prompts.render(template, vars) {
            Ok(t) => t,
            Err(e) => return self.fail(e.to_string()),
        };
        let prompt = match self.build_prompt(text) {
            Ok(p) => Arc::new(p),
            Err(e) => return self.fail(e),
        };
        let sampling = match self.common.fit_budget(prompt.len()) {
            Ok(s) => s,
            Err(reason) => return self.finish(reason),
        };
        let prefix_len = self
            .last
            .as_ref()
            .map_or(0, |(p, o)| common_prefix(&prompt, p, o));
        AgentStep::Generate(GenerateCall {
            role: role.to_string(),
            prompt_ids: prompt,
            prefix_len,
            stop,
            stop_token_ids: Vec::new(),
            sampling,
        })
    }

    fn on_generation(&mut self, call: &GenerateCall, generation: &Generation) -> TurnReading {
        self.last = Some((call.prompt_ids.clone(), generation.output_ids.clone()));
        self.track_fallback(&generation.text);
        match call.role.as_str() {
            ROLE_READ => self.on_read(generation),
            ROLE_ANSWER => self.on_answer(generation),
            _ => self.on_act(generation),
        }
    }

    fn on_tool(&mut self, call: &ToolCall, observation: &ToolObservation) {
        if let Some(err) = &observation.error {
            let what = format!(
                "The {} of \"{}\" failed: {err}",
                call.kind.name(),
                call.argument
            );
            self.push_information(&what);
            return;
        }
        match call.kind {
            ToolKind::Search => self.on_search(&call.argument, observation),
            ToolKind::Access => self.on_access(&call.argument, observation),
        }
    }

    /// The answer given, or once stopped without one, the last output line mentioning "answer".
    fn answer(&self) -> Option<String> {
        match (&self.answer, self.stop) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(_)) => self.fallback.clone(),
            (None, None) => None,
        }
    }

    fn error(&self) -> Option<String> {
        self.error.clone()
    }
}
