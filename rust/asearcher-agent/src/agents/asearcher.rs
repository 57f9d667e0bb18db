//! The ASearcher base agent, in token space. One growing context: the chat-templated user
//! prompt and the assistant header, then each turn's output ids exactly as generated and the
//! encoded `<information>` observation, so every prompt extends the previous prompt + output.
//! Page parts from `<access>` are each shown once in a separate notes generation (stop
//! `</think>`); the main context then keeps a short form of the part plus the notes.
//!
//! [`TagAgent`] also runs the Search-R1 agent ([`super::search_r1`]): same loop, a different
//! [`Flavor`].

use super::{
    common_prefix, describe_issues, head_chars, page_chunks, AgentError, Common, ROLE_ACT,
    ROLE_NOTES,
};
use crate::agent::{
    Agent, AgentStep, GenerateCall, Generation, StopReason, ToolCall, ToolKind, ToolObservation,
    TurnReading,
};
use crate::protocol::{ActionKind, ParsedTurn};
use asearcher_tokenizer::{ChatMessage, ChatOptions};
use minijinja::context;
use std::collections::VecDeque;
use std::sync::Arc;

/// Shown when a search finds nothing (the ASearcher observation text).
pub const NO_RESULTS: &str = "No search results are found.";
/// Shown when an accessed page has no text.
pub const EMPTY_PAGE: &str = "No More Information is Found for this URL.";

/// What differs between the base agent and Search-R1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Asearcher,
    SearchR1,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Asearcher => "asearcher",
            Flavor::SearchR1 => "search_r1",
        }
    }

    fn allowed(self) -> &'static [ActionKind] {
        match self {
            Flavor::Asearcher => &ActionKind::ALL,
            Flavor::SearchR1 => &[ActionKind::Search, ActionKind::Answer],
        }
    }

    fn stops(self) -> Vec<String> {
        self.allowed().iter().map(|k| k.close_tag()).collect()
    }
}

/// How the next prompt relates to the previous turn's prompt + output.
enum LastTurn {
    None,
    /// A main turn: the context now starts with its prompt + output (`full_len` tokens).
    Main {
        full_len: usize,
    },
    /// A notes turn: its prompt and output, compared token by token with the next prompt.
    Notes {
        prompt: Arc<Vec<u32>>,
        output: Vec<u32>,
    },
}

/// The page being read, part by part.
struct PageReading {
    url: String,
    parts: VecDeque<String>,
    count: usize,
    /// The part whose notes are being written: (1-based index, short form).
    current: Option<(usize, String)>,
}

/// The base agent (and, with [`Flavor::SearchR1`], the Search-R1 agent).
pub struct TagAgent {
    flavor: Flavor,
    common: Common,
    question: String,
    context: Arc<Vec<u32>>,
    /// Tokens to append to the context before the next prompt (output, observation).
    pending: Vec<u32>,
    last: LastTurn,
    turns: u32,
    failures: u32,
    tool: Option<ToolCall>,
    page: Option<PageReading>,
    answer: Option<String>,
    stop: Option<StopReason>,
    error: Option<String>,
}

impl TagAgent {
    /// The ASearcher base agent on `question`.
    pub(crate) fn asearcher(common: Common, question: &str) -> Result<Self, AgentError> {
        Self::new(Flavor::Asearcher, common, question)
    }

    pub(crate) fn new(flavor: Flavor, common: Common, question: &str) -> Result<Self, AgentError> {
        let text = common
            .prompts
            .render("prompt", context! { question => question })?;
        let messages = [ChatMessage::new("user", text)];
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..ChatOptions::default()
        };
        let ids = common
            .tokenizer
            .encode_chat(&messages, &opts)
            .map_err(|source| AgentError::Tokenizer {
                what: "the first prompt",
                source,
            })?;
        Ok(TagAgent {
            flavor,
            common,
            question: question.to_string(),
            context: Arc::new(ids),
            pending: Vec::new(),
            last: LastTurn::None,
            turns: 0,
            failures: 0,
            tool: None,
            page: None,
            answer: None,
            stop: None,
            error: None,
        })
    }

    /// The main context so far (the next main prompt once pending tokens are appended).
    pub fn context_len(&self) -> usize {
        self.context.len() + self.pending.len()
    }

    fn finish(&mut self, reason: StopReason) -> AgentStep {
        self.stop = Some(reason);
        AgentStep::Finish(reason)
    }

    fn fail(&mut self, message: String) -> AgentStep {
        self.error = Some(message);
        self.finish(StopReason::Error)
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            Arc::make_mut(&mut self.context).append(&mut self.pending);
        }
    }

    fn prefix_len(&self, prompt: &[u32]) -> usize {
        match &self.last {
            LastTurn::None => 0,
            LastTurn::Main { full_len } => *full_len,
            LastTurn::Notes { prompt: p, output } => common_prefix(prompt, p, output),
        }
    }

    fn generate(&mut self, role: &str, prompt: Arc<Vec<u32>>, stop: Vec<String>) -> AgentStep {
        let sampling = match self.common.fit_budget(prompt.len()) {
            Ok(s) => s,
            Err(reason) => return self.finish(reason),
        };
        AgentStep::Generate(GenerateCall {
            role: role.to_string(),
            prefix_len: self.prefix_len(&prompt),
            prompt_ids: prompt,
            stop,
            stop_token_ids: Vec::new(),
            sampling,
        })
    }

    fn notes_step(&mut self) -> Option<AgentStep> {
        let page = self.page.as_mut()?;
        let Some(part) = page.parts.pop_front() else {
            self.page = None;
            return None;
        };
        let index = page.count - page.parts.len();
        let (short, cut) = head_chars(&part, self.common.limits.note_chars);
        let short = if cut {
            format!("{short}...")
        } else {
            short.into()
        };
        page.current = Some((index, short));
        let shown =
            format!("\n\n<information>\n>>>> Page {index} >>>>\n{part}\n</information>\n\n");
        let vars = context! {
            question => &self.question, page_index => index, page_count => page.count,
            url => &page.url,
        };
        let instruction = match self.common.prompts.render("notes", vars) {
            Ok(t) => t,
            Err(e) => return Some(self.fail(e.to_string())),
        };
        let mut prompt = Vec::with_capacity(self.context.len() + part.len() / 2);
        prompt.extend_from_slice(&self.context);
        for text in [shown.as_str(), instruction.as_str()] {
            match self.common.encode(text) {
                Ok(ids) => prompt.extend(ids),
                Err(e) => return Some(self.fail(e)),
            }
        }
        Some(self.generate(ROLE_NOTES, Arc::new(prompt), vec!["</think>".into()]))
    }

    fn on_notes(&mut self, call: &GenerateCall, generation: &Generation) -> TurnReading {
        let (index, short) = self
            .page
            .as_mut()
            .and_then(|p| p.current.take())
            .unwrap_or_default();
        let kept = format!(
            "\n\n<information>\n>>>> Page {index} >>>>\n{short}\n</information>\n\n<think>"
        );
        self.append_text(&kept);
        self.pending.extend_from_slice(&generation.output_ids);
        if !generation.text.contains("</think>") {
            self.append_text("</think>");
        }
        self.last = LastTurn::Notes {
            prompt: call.prompt_ids.clone(),
            output: generation.output_ids.clone(),
        };
        TurnReading::default()
    }

    fn append_text(&mut self, text: &str) {
        match self.common.encode(text) {
            Ok(ids) => self.pending.extend(ids),
            Err(e) => {
                self.error = Some(e);
                self.stop = Some(StopReason::Error);
            }
        }
    }

    fn append_information(&mut self, body: &str) {
        self.append_text(&format!("\n\n<information>{body}</information>\n\n"));
    }

    fn on_act(&mut self, call: &GenerateCall, generation: &Generation) -> TurnReading {
        self.turns += 1;
        self.last = LastTurn::Main {
            full_len: call.prompt_ids.len() + generation.output_ids.len(),
        };
        self.pending.extend_from_slice(&generation.output_ids);
        let allowed = self.flavor.allowed();
        let ParsedTurn { action, issues } = self.common.read_turn(&generation.text, allowed);
        match &action {
            Some(a) if a.kind == ActionKind::Answer => {
                self.answer = Some(a.argument.clone());
                self.stop = Some(StopReason::Answered);
            }
            Some(a) => {
                let kind = match a.kind {
                    ActionKind::Access => ToolKind::Access,
                    _ => ToolKind::Search,
                };
                self.tool = Some(ToolCall {
                    kind,
                    argument: a.argument.clone(),
                });
            }
            None => {
                self.failures += 1;
                self.append_information(&describe_issues(&issues, allowed));
                if self.failures >= self.common.limits.max_generation_failures {
                    self.stop = Some(StopReason::ProtocolFailures);
                }
            }
        }
        TurnReading { action, issues }
    }

    fn render_search(&self, observation: &ToolObservation) -> String {
        match self.flavor {
            Flavor::Asearcher if observation.text.trim().is_empty() => NO_RESULTS.to_string(),
            Flavor::Asearcher => observation.text.clone(),
            Flavor::SearchR1 => super::search_r1::render_docs(&observation.docs),
        }
    }

    fn on_access(&mut self, url: &str, observation: &ToolObservation) {
        let limits = self.common.limits;
        let parts = page_chunks(
            &observation.chunks,
            limits.page_chunk_chars,
            limits.max_page_chunks,
        );
        if parts.is_empty() {
            self.append_information(EMPTY_PAGE);
            return;
        }
        self.page = Some(PageReading {
            url: url.to_string(),
            count: parts.len(),
            parts: parts.into(),
            current: None,
        });
    }
}

impl Agent for TagAgent {
    fn name(&self) -> &str {
        self.flavor.name()
    }

    fn next_step(&mut self) -> AgentStep {
        if let Some(reason) = self.stop {
            return AgentStep::Finish(reason);
        }
        if let Some(call) = self.tool.take() {
            return AgentStep::Tool(call);
        }
        if self.turns >= self.common.limits.max_turns {
            return self.finish(StopReason::MaxTurns);
        }
        self.flush_pending();
        if let Some(step) = self.notes_step() {
            return step;
        }
        let prompt = self.context.clone();
        self.generate(ROLE_ACT, prompt, self.flavor.stops())
    }

    fn on_generation(&mut self, call: &GenerateCall, generation: &Generation) -> TurnReading {
        if call.role == ROLE_NOTES {
            self.on_notes(call, generation)
        } else {
            self.on_act(call, generation)
        }
    }

    fn on_tool(&mut self, call: &ToolCall, observation: &ToolObservation) {
        if let Some(err) = &observation.error {
            self.append_information(&format!("The {} failed: {err}", call.kind.name()));
            return;
        }
        match call.kind {
            ToolKind::Search => {
                let text = self.render_search(observation);
                self.append_information(&text);
            }
            ToolKind::Access => self.on_access(&call.argument, observation),
        }
    }

    fn answer(&self) -> Option<String> {
        self.answer.clone()
    }

    fn error(&self) -> Option<String> {
        self.error.clone()
    }
}
