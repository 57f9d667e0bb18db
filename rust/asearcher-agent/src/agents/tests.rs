//! The agents driven through scripted generations and tool observations, with the bundled
//! sample tokenizer, as the rollout runner drives them.

use super::*;
use crate::agent::{
    AgentStep, GenFinish, GenerateCall, Generation, ObservedDoc, ToolCall, ToolKind,
    ToolObservation,
};
use crate::protocol::{ActionKind, ProtocolIssue};
use crate::trajectory::{delta, ToolCallRecord, Trajectory, TurnRecord};
use std::sync::OnceLock;

const TOKENIZER_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_tokenizer"
);
const QUESTION: &str = "What is the capital of France?";

pub(crate) fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(Tokenizer::from_dir(TOKENIZER_DIR).expect("sample tokenizer")))
        .clone()
}

fn decode(ids: &[u32]) -> String {
    tokenizer().decode(ids, false).unwrap()
}

/// What a scripted run produced.
pub(crate) struct Run {
    pub traj: Trajectory,
    pub calls: Vec<GenerateCall>,
    pub stop: StopReason,
    pub answer: Option<String>,
}

impl Run {
    fn roles(&self) -> Vec<&str> {
        self.calls.iter().map(|c| c.role.as_str()).collect()
    }

    fn prompt_text(&self, i: usize) -> String {
        decode(&self.calls[i].prompt_ids)
    }
}

/// Runs `agent` to its end: `policy(call, turn)` writes each output, `tool(call)` answers each
/// tool call. Checks on the way that every prefix_len the agent claims is the true one.
pub(crate) fn drive(
    agent: &mut dyn Agent,
    mut policy: impl FnMut(&GenerateCall, usize) -> String,
    mut tool: impl FnMut(&ToolCall) -> ToolObservation,
) -> Run {
    let tok = tokenizer();
    let mut traj = Trajectory::new("q1", 0, QUESTION, vec!["Paris".into()], agent.name());
    let mut calls = Vec::new();
    let mut prev_full: Vec<u32> = Vec::new();
    for _ in 0..10_000 {
        match agent.next_step() {
            AgentStep::Generate(call) => {
                let turn = traj.turns.len();
                let (true_prefix, _) = delta(&prev_full, &call.prompt_ids);
                assert_eq!(call.prefix_len, true_prefix, "turn {turn}: prefix_len");
                let text = policy(&call, turn);
                let ids = tok.encode(&text, false).unwrap();
                let generation = Generation {
                    logprobs: ids.iter().map(|i| -((*i % 7) as f32) / 10.0).collect(),
                    versions: vec![turn as u64; ids.len()],
                    text: tok.decode(&ids, false).unwrap(),
                    output_ids: ids,
                    finish: GenFinish::Stop,
                };
                let reading = agent.on_generation(&call, &generation);
                traj.turns
                    .push(TurnRecord::new(&call, &generation, reading, &prev_full));
                prev_full = call.prompt_ids.to_vec();
                prev_full.extend_from_slice(&generation.output_ids);
                calls.push(call);
            }
            AgentStep::Tool(call) => {
                let observation = tool(&call);
                agent.on_tool(&call, &observation);
                let last = traj.turns.last_mut().expect("a tool call follows a turn");
                last.tool = Some(ToolCallRecord::new(&call, &observation, 1.5, false));
            }
            AgentStep::Finish(reason) => {
                traj.stop_reason = reason;
                traj.answer = agent.answer();
                return Run {
                    answer: traj.answer.clone(),
                    traj,
                    calls,
                    stop: reason,
                };
            }
        }
    }
    panic!("the agent did not finish in 10,000 steps");
}

fn agent(cfg: &AgentConfig) -> Box<dyn Agent> {
    build_agent(cfg, tokenizer(), QUESTION).unwrap()
}

fn search_results(query: &str) -> ToolObservation {
    let docs = vec![
        ObservedDoc {
            url: "https://en.example.org/Paris".into(),
            contents: format!("\"Paris\"\nParis is the capital of France ({query})."),
        },
        ObservedDoc {
            url: "https://en.example.org/Lyon".into(),
            contents: "\"Lyon\"\nLyon is a city in France.".into(),
        },
    ];
    let text = docs
        .iter()
        .enumerate()
        .map(|(i, d)| format!("[Doc {}]({}):\n{}", i + 1, d.url, d.contents))
        .collect::<Vec<_>>()
        .join("\n\n");
    ToolObservation {
        text,
        docs,
        ..ToolObservation::default()
    }
}

fn tools(call: &ToolCall) -> ToolObservation {
    match call.kind {
        ToolKind::Search => search_results(&call.argument),
        ToolKind::Access => panic!("no access expected, got {call:?}"),
    }
}

/// Each turn's prompt starts with the previous prompt + output ids, and claims exactly that.
fn assert_token_space_exact(run: &Run) {
    for t in 1..run.calls.len() {
        let (prev, next) = (&run.calls[t - 1], &run.calls[t]);
        let mut expected = prev.prompt_ids.to_vec();
        expected.extend_from_slice(&run.traj.turns[t - 1].output_ids);
        assert!(
            next.prompt_ids.starts_with(&expected),
            "turn {t} does not extend turn {}",
            t - 1
        );
        assert_eq!(next.prefix_len, expected.len());
    }
}

/// Loss mask 1 exactly on generated tokens: the masked tokens of all sequences, in order, are
/// the outputs of all turns, and every prompt token has mask 0.
fn assert_loss_mask_on_outputs(run: &Run) {
    let seqs = run.traj.to_sequences().unwrap();
    let generated: Vec<u32> = seqs
        .iter()
        .flat_map(|s| {
            s.input_ids
                .iter()
                .zip(&s.loss_mask)
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t)
        })
        .collect();
    let outputs: Vec<u32> = run
        .traj
        .turns
        .iter()
        .flat_map(|t| t.output_ids.iter().copied())
        .collect();
    assert_eq!(generated, outputs);
    for s in &seqs {
        assert_eq!(s.loss_mask.len(), s.input_ids.len());
        for (m, v) in s.loss_mask.iter().zip(&s.versions) {
            assert_eq!(*m == 1, v.is_some());
        }
    }
}

#[test]
fn base_agent_works_in_token_space() {
    let cfg = AgentConfig::new(AgentKind::Asearcher);
    let mut a = agent(&cfg);
    let outputs = [
        "<think>I should look this up.</think>\n<search> capital of France </search>",
        "<think>Check once more.</think><search>France capital city</search>",
        "<think>Paris it is.</think>\n<answer> Paris </answer>",
    ];
    let run = drive(a.as_mut(), |_, t| outputs[t].to_string(), tools);
    assert_eq!(run.stop, StopReason::Answered);
    assert_eq!(run.answer.as_deref(), Some("Paris"));
    assert_eq!(run.roles(), ["act", "act", "act"]);
    let first = run.prompt_text(0);
    assert!(first.starts_with("<|im_start|>user\n"), "{first}");
    assert!(first.ends_with("<|im_start|>assistant\n"), "{first}");
    assert!(first.contains(&format!("Question: {QUESTION}")));
    assert_token_space_exact(&run);
    let last = run.prompt_text(2);
    assert!(
        last.contains("</search>\n\n<information>[Doc 1](https://en.example.org/Paris):\n"),
        "{last}"
    );
    assert_eq!(last.matches("</search>\n\n<information>").count(), 2);
    assert_eq!(run.calls[0].stop, ["</search>", "</access>", "</answer>"]);
    // One training sequence holding every turn, mask 1 exactly on the outputs.
    let seqs = run.traj.to_sequences().unwrap();
    assert_eq!(seqs.len(), 1);
    let mut whole = run.calls[2].prompt_ids.to_vec();
    whole.extend_from_slice(&run.traj.turns[2].output_ids);
    assert_eq!(seqs[0].input_ids, whole);
    assert_loss_mask_on_outputs(&run);
    assert_eq!(run.traj.tool_calls(), 2);
    assert_eq!(run.traj.failed(), 0);
    for t in 0..3 {
        assert_eq!(
            run.traj.full_prompt_ids(t).unwrap(),
            *run.calls[t].prompt_ids
        );
    }
}

#[test]
fn search_r1_numbers_docs_and_refuses_access() {
    let cfg = AgentConfig::new(AgentKind::SearchR1);
    assert_eq!(cfg.max_turns(), 10);
    let mut a = agent(&cfg);
    let outputs = [
        "<think>Look it up.</think><search>capital of France</search>",
        "<think>Open the page.</think><access>https://en.example.org/Paris</access>",
        "<answer>Paris</answer>",
    ];
    let run = drive(a.as_mut(), |_, t| outputs[t].to_string(), tools);
    assert_eq!(run.stop, StopReason::Answered);
    assert_eq!(run.traj.agent, "search_r1");
    assert_eq!(run.calls[0].stop, ["</search>", "</answer>"]);
    let second = run.prompt_text(1);
    assert!(
        second.contains("<information>\n1. (Title: Paris) Paris is the capital of France"),
        "{second}"
    );
    assert!(second.contains("\n2. (Title: Lyon) Lyon is a city in France."));
    let refused = &run.traj.turns[1];
    assert_eq!(refused.action, None);
    assert_eq!(
        refused.issues,
        [ProtocolIssue::NotAllowed(ActionKind::Access)]
    );
    assert!(refused.tool.is_none());
    assert!(run
        .prompt_text(2)
        .contains("No valid action found: <access> is not available"));
    assert_token_space_exact(&run);
    assert_loss_mask_on_outputs(&run);
}

#[test]
fn a_128_turn_run_ends_with_max_turns() {
    let mut cfg = AgentConfig::new(AgentKind::Asearcher);
    cfg.max_turns = Some(128);
    cfg.context_budget = 2_000_000;
    let mut a = agent(&cfg);
    let run = drive(
        a.as_mut(),
        |_, t| format!("<search>query {t}</search>"),
        tools,
    );
    assert_eq!(run.stop, StopReason::MaxTurns);
    assert_eq!(run.traj.num_turns(), 128);
    assert_eq!(run.traj.tool_calls(), 128);
    assert_eq!(run.answer, None);
    assert_token_space_exact(&run);
    assert_eq!(run.traj.to_sequences().unwrap().len(), 1);
    // The record stores each prompt once: new tokens only.
    let stored: usize = run.traj.turns.iter().map(|t| t.prompt_ids.len()).sum();
    assert_eq!(
        stored,
        run.calls[127].prompt_ids.len() - output_tokens_before(&run, 127)
    );
}

fn output_tokens_before(run: &Run, turn: usize) -> usize {
    run.traj.turns[..turn]
        .iter()
        .map(|t| t.output_ids.len())
        .sum()
}

/// 100k characters of junk: tag fragments, unicode, braces.
fn garbage() -> String {
    let pieces = [
        "<sea", "rch>", "</", "ans", "wer", "é", "文", " ", "{\"", ">>", "\n",
    ];
    let mut x: u64 = 12345;
    let mut out = String::new();
    while out.chars().count() < 100_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(pieces[(x >> 33) as usize % pieces.len()]);
    }
    out
}

#[test]
fn garbage_output_is_recorded_and_the_agent_goes_on() {
    let mut cfg = AgentConfig::new(AgentKind::Asearcher);
    cfg.context_budget = 4_000_000;
    let mut a = agent(&cfg);
    let junk = garbage();
    let run = drive(
        a.as_mut(),
        |_, t| match t {
            0 => junk.clone(),
            _ => "<answer>Paris</answer>".into(),
        },
        tools,
    );
    assert_eq!(run.stop, StopReason::Answered);
    let first = &run.traj.turns[0];
    assert_eq!(first.action, None);
    assert!(!first.issues.is_empty());
    assert_eq!(run.traj.failed(), 1);
    assert!(run.prompt_text(1).contains("No valid action found"));
    assert_token_space_exact(&run);

    // With the default budget the junk fills the context: the run stops cleanly.
    let mut a = agent(&AgentConfig::new(AgentKind::Asearcher));
    let run = drive(a.as_mut(), |_, _| junk.clone(), tools);
    assert_eq!(run.stop, StopReason::ContextBudget);
    assert_eq!(run.traj.num_turns(), 1);
}

#[test]
fn protocol_failures_are_counted_up_to_the_limit() {
    let mut cfg = AgentConfig::new(AgentKind::Asearcher);
    cfg.max_generation_failures = 4;
    let mut a = agent(&cfg);
    let outputs = [
        "The capital is Paris.",                // no action
        "<search>capital of France",            // unclosed
        "<search>a</search><search>b</search>", // several: the first runs
        "<answer>   </answer>",                 // empty
        "<think>hmm</think>",                   // no action: 4th failure
        "<answer>Paris</answer>",               // never reached
    ];
    let run = drive(a.as_mut(), |_, t| outputs[t].to_string(), tools);
    assert_eq!(run.stop, StopReason::ProtocolFailures);
    assert_eq!(run.traj.num_turns(), 5);
    let issues: Vec<_> = run.traj.turns.iter().map(|t| t.issues.clone()).collect();
    assert_eq!(issues[0], [ProtocolIssue::NoAction]);
    assert_eq!(issues[1], [ProtocolIssue::Unclosed(ActionKind::Search)]);
    assert_eq!(issues[2], [ProtocolIssue::SeveralActions { count: 2 }]);
    assert_eq!(
        issues[3],
        [ProtocolIssue::EmptyArgument(ActionKind::Answer)]
    );
    assert_eq!(run.traj.turns[2].tool.as_ref().unwrap().input, "a");
    assert_eq!(run.traj.failed(), 4);
    assert!(run.prompt_text(2).contains("<search> was not closed"));
    assert_token_space_exact(&run);
}

#[test]
fn the_context_budget_shrinks_the_last_turns_then_stops() {
    let first_len = {
        let mut a = agent(&AgentConfig::new(AgentKind::Asearcher));
        match a.next_step() {
            AgentStep::Generate(c) => c.prompt_ids.len(),
            other => panic!("{other:?}"),
        }
    };
    let mut cfg = AgentConfig::new(AgentKind::Asearcher);
    cfg.sampling.max_new_tokens = 64;
    cfg.min_new_tokens = 16;
    cfg.context_budget = (first_len + 260) as u32;
    let mut a = agent(&cfg);
    let run = drive(a.as_mut(), |_, t| format!("<search>q{t}</search>"), tools);
    assert_eq!(run.stop, StopReason::ContextBudget);
    for c in &run.calls {
        assert!(
            c.prompt_ids.len() + c.sampling.max_new_tokens as usize <= cfg.context_budget as usize
        );
        assert!(c.sampling.max_new_tokens >= 16);
    }
    let last = run.calls.last().unwrap();
    assert!(
        last.sampling.max_new_tokens < 64,
        "the last turn was shortened"
    );
    assert_eq!(
        last.sampling.max_new_tokens as usize,
        cfg.context_budget as usize - last.prompt_ids.len()
    );
}

#[test]
fn access_shows_each_part_once_for_notes_then_keeps_a_short_form() {
    let mut cfg = AgentConfig::new(AgentKind::Asearcher);
    cfg.page_chunk_chars = Some(1_000);
    cfg.max_page_chunks = 3;
    cfg.note_chars = 40;
    let mut a = agent(&cfg);
    let page: Vec<String> = (0..5)
        .map(|p| {
            (0..100)
                .map(|w| format!("p{p}w{w:03} "))
                .collect::<String>()
        })
        .collect(); // 5 toolbox parts of 700 chars: 3,500 chars -> 3 parts of 1,000 shown
    let run = drive(
        a.as_mut(),
        |call, t| match (call.role.as_str(), t) {
            ("act", 0) => {
                "<think>Open it.</think><access>https://en.example.org/Paris</access>".into()
            }
            ("notes", _) => format!("Note {t}: Paris is the capital.</think>"),
            _ => "<answer>Paris</answer>".into(),
        },
        |call| {
            assert_eq!(call.kind, ToolKind::Access);
            ToolObservation {
                text: String::new(),
                chunks: page.clone(),
                ..ToolObservation::default()
            }
        },
    );
    assert_eq!(run.stop, StopReason::Answered);
    assert_eq!(run.roles(), ["act", "notes", "notes", "notes", "act"]);
    let joined: String = page.concat();
    let parts: Vec<&str> = (0..3)
        .map(|i| &joined[i * 1_000..(i + 1) * 1_000])
        .collect();
    for i in 0..3 {
        let notes_prompt = run.prompt_text(1 + i);
        assert!(notes_prompt.contains(&format!(">>>> Page {} >>>>\n{}", i + 1, parts[i])));
        assert!(notes_prompt.contains(&format!("part {} of 3", i + 1)));
        assert_eq!(run.calls[1 + i].stop, ["</think>"]);
        assert!(notes_prompt.trim_end().ends_with("<think>"));
        // Earlier parts are not shown in full again.
        for earlier in &parts[..i] {
            assert!(!notes_prompt.contains(earlier));
        }
    }
    let after = run.prompt_text(4);
    for (i, part) in parts.iter().enumerate() {
        assert!(!after.contains(part), "part {i} kept in full");
        let short: String = part.chars().take(40).collect();
        assert!(after.contains(&format!(">>>> Page {} >>>>\n{short}...\n", i + 1)));
        assert!(after.contains(&format!(
            "<think>Note {}: Paris is the capital.</think>",
            i + 1
        )));
    }
    for i in 0..run.calls.len() {
        assert!(
            !run.prompt_text(i).contains("p4w050"),
            "beyond max_page_chunks"
        );
    }
    // The first notes turn extends the access turn; later ones start new training sequences.
    assert_eq!(
        run.calls[1].prefix_len,
        run.calls[0].prompt_ids.len() + run.traj.turns[0].output_ids.len()
    );
    let seqs = run.traj.to_sequences().unwrap();
    assert_eq!(seqs.len(), 4);
    assert_loss_mask_on_outputs(&run);
}

#[test]
fn tool_errors_and_empty_results_are_shown_and_the_agent_goes_on() {
    let mut a = agent(&AgentConfig::new(AgentKind::Asearcher));
    let outputs = [
        "<search>a</search>",
        "<access>https://x.example/empty</access>",
        "<search>b</search>",
        "<answer>Paris</answer>",
    ];
    let run = drive(
        a.as_mut(),
        |_, t| outputs[t].to_string(),
        |call| match (call.kind.clone(), call.argument.as_str()) {
            (ToolKind::Search, "a") => ToolObservation {
                error: Some("retrieval server 127.0.0.1:9 timed out".into()),
                ..ToolObservation::default()
            },
            (ToolKind::Search, _) => ToolObservation::default(),
            (ToolKind::Access, _) => ToolObservation::default(),
        },
    );
    assert_eq!(run.stop, StopReason::Answered);
    let p = run.prompt_text(3);
    assert!(p.contains(
        "<information>The search failed: retrieval server 127.0.0.1:9 timed out</information>"
    ));
    assert!(p.contains("<information>No More Information is Found for this URL.</information>"));
    assert!(p.contains("<information>No search results are found.</information>"));
    assert_eq!(
        run.traj.turns[0].tool.as_ref().unwrap().error.as_deref(),
        Some("retrieval server 127.0.0.1:9 timed out")
    );
    assert_token_space_exact(&run);
}

fn reasoning_policy(call: &GenerateCall, t: usize) -> String {
    match call.role.as_str() {
        "act" => format!(
            "<think>Long private reasoning {t}.</think>I will search.\n<search>q{t}</search>"
        ),
        "read" => format!("<think>reading</think>Summary {t}: Paris is named."),
        _ => "<think>done</think><answer>Paris</answer>".into(),
    }
}

#[test]
fn reasoning_enters_the_answer_phase_at_force_turns() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.force_turns = Some(2);
    cfg.docs_for_answer_phase = 100;
    let mut a = agent(&cfg);
    let run = drive(a.as_mut(), reasoning_policy, tools);
    assert_eq!(run.stop, StopReason::Answered);
    assert_eq!(run.answer.as_deref(), Some("Paris"));
    assert_eq!(run.roles(), ["act", "read", "act", "read", "answer"]);
    assert_eq!(run.calls[4].stop, ["</answer>"]);
    assert_eq!(run.calls[0].stop, ["</search>", "</access>"]);
    for i in 0..run.calls.len() {
        let p = run.prompt_text(i);
        assert!(p.starts_with("<|im_start|>user\n"), "{p}");
        assert_eq!(p.matches("<|im_start|>user").count(), 1, "one user turn");
        let q = p.rfind("Question:").unwrap();
        assert!(p[q..].starts_with(&format!("Question: {QUESTION}")));
    }
    let answer_prompt = run.prompt_text(4);
    assert_eq!(answer_prompt.matches("<information>").count(), 2);
    assert!(answer_prompt.contains("<information>\nSummary 1: Paris is named.\n</information>"));
    assert!(answer_prompt.contains("I will search.\n<search>q0</search>"));
    assert!(
        !answer_prompt.contains("Long private reasoning"),
        "thoughts are compressed"
    );
    assert!(run
        .prompt_text(1)
        .contains("[Doc 1](https://en.example.org/Paris)"));
    // Fresh prompts: every turn is its own training sequence.
    assert_eq!(run.traj.to_sequences().unwrap().len(), 5);
    assert_loss_mask_on_outputs(&run);
}

#[test]
fn reasoning_answer_phase_after_enough_documents() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.docs_for_answer_phase = 4;
    let mut a = agent(&cfg);
    let run = drive(a.as_mut(), reasoning_policy, tools); // 2 docs per search
    assert_eq!(run.roles(), ["act", "read", "act", "read", "answer"]);
}

#[test]
fn reasoning_falls_back_to_the_last_line_mentioning_answer() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.force_turns = Some(1);
    let mut a = agent(&cfg);
    let run = drive(
        a.as_mut(),
        |call, t| match call.role.as_str() {
            "answer" => "I could not settle it.\nThe ANSWER is probably Paris\nBye.".into(),
            _ => reasoning_policy(call, t),
        },
        tools,
    );
    assert_eq!(run.stop, StopReason::MaxTurns);
    assert_eq!(
        run.traj.turns.last().unwrap().issues,
        [ProtocolIssue::NoAction]
    );
    assert_eq!(run.answer.as_deref(), Some("The ANSWER is probably Paris"));
}

#[test]
fn reasoning_refuses_an_early_answer_and_reads_pages_in_parts() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.force_turns = Some(2);
    let page = "x".repeat(25_000);
    let mut a = agent(&cfg);
    let run = drive(
        a.as_mut(),
        |call, t| match (call.role.as_str(), t) {
            ("act", 0) => "<answer>Lyon</answer>".into(),
            ("act", 1) => "<access>https://en.example.org/Paris</access>".into(),
            _ => reasoning_policy(call, t),
        },
        |call| match call.kind {
            ToolKind::Access => ToolObservation {
                chunks: vec![page.clone()],
                ..ToolObservation::default()
            },
            ToolKind::Search => search_results(&call.argument),
        },
    );
    assert_eq!(
        run.traj.turns[0].issues,
        [ProtocolIssue::NotAllowed(ActionKind::Answer)]
    );
    assert_eq!(
        run.roles(),
        ["act", "act", "read", "read", "read", "act", "read", "answer"]
    );
    assert!(run
        .prompt_text(3)
        .contains("part 2 of 3 of the page https://en.example.org/Paris"));
    assert!(run.prompt_text(4).contains(&format!(
        "part 3 of 3 of the page https://en.example.org/Paris:\n{}\n",
        "x".repeat(5_000)
    )));
    assert_eq!(run.answer.as_deref(), Some("Paris"));
}

#[test]
fn reasoning_history_keeps_only_its_tail() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.history_chars = 300;
    cfg.force_turns = Some(12);
    cfg.docs_for_answer_phase = 1_000;
    let mut a = agent(&cfg);
    let run = drive(a.as_mut(), reasoning_policy, tools);
    let answer_prompt = run.prompt_text(run.calls.len() - 1);
    assert!(!answer_prompt.contains("<search>q0</search>"));
    assert!(answer_prompt.contains("Summary 23"));
    assert_eq!(run.roles().len(), 25);
}

#[test]
fn reasoning_runs_past_128_turns() {
    let mut cfg = AgentConfig::new(AgentKind::Reasoning);
    cfg.max_turns = Some(150);
    cfg.docs_for_answer_phase = 10_000;
    let mut a = agent(&cfg);
    let run = drive(a.as_mut(), reasoning_policy, tools);
    assert_eq!(run.traj.num_turns(), 301);
    assert_eq!(run.stop, StopReason::Answered);
}

#[test]
fn config_defaults_overrides_and_errors() {
    let cfg: AgentConfig = serde_json::from_str(r#"{"kind": "reasoning"}"#).unwrap();
    assert_eq!(cfg.max_turns(), 128);
    assert_eq!(cfg.page_chunk_chars(), 10_000);
    assert_eq!(cfg.force_turns(), 128);
    assert_eq!(AgentConfig::default().max_turns(), 32);
    assert_eq!(AgentConfig::default().page_chunk_chars(), 25_000);
    let err = serde_json::from_str::<AgentConfig>(r#"{"max_turn": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_turn"), "{err}");
    let cfg: AgentConfig = serde_json::from_str(r#"{"sampling": {"max_new_tokens": 77}}"#).unwrap();
    assert_eq!(cfg.sampling.max_new_tokens, 77);
    assert_eq!(cfg.sampling.temperature, 1.0);

    let bad = AgentConfig {
        max_page_chunks: 0,
        ..AgentConfig::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`max_page_chunks`"));
    let bad = AgentConfig {
        context_budget: 10,
        ..AgentConfig::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`context_budget`"));

    let mut bad = AgentConfig::default();
    bad.prompts.insert("system".into(), "x".into());
    let err = build_agent(&bad, tokenizer(), QUESTION)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown prompt template `system`"), "{err}");
    assert!(err.contains("valid names: prompt, notes"), "{err}");
}

#[test]
fn a_template_override_changes_the_prompt() {
    let mut cfg = AgentConfig::new(AgentKind::SearchR1);
    cfg.prompts.insert(
        "prompt".into(),
        "Custom research prompt.\nQuestion: {{ question | upper }}".into(),
    );
    let mut a = agent(&cfg);
    let AgentStep::Generate(call) = a.next_step() else {
        panic!("expected a generation")
    };
    let text = decode(&call.prompt_ids);
    assert!(text.contains("Custom research prompt.\nQuestion: WHAT IS THE CAPITAL OF FRANCE?"));
}

#[test]
fn agents_share_one_compiled_template_set() {
    let cfg = AgentConfig::new(AgentKind::Reasoning);
    let agents: Vec<_> = (0..1_000).map(|_| agent(&cfg)).collect();
    let set = cfg.compiled_prompts().unwrap();
    // The config's cache, this handle, and one per agent: compiled once.
    assert_eq!(Arc::strong_count(&set), agents.len() + 2);
    drop(agents);
    let mut changed = cfg.clone();
    changed
        .prompts
        .insert("answer".into(), "A: {{ question }}".into());
    assert!(!Arc::ptr_eq(&set, &changed.compiled_prompts().unwrap()));
    assert!(Arc::ptr_eq(&set, &cfg.compiled_prompts().unwrap()));
    // An agent's own state is small; its context is its only large part.
    assert!(std::mem::size_of::<reasoning::ReasoningAgent>() < 512);
    assert!(std::mem::size_of::<asearcher::TagAgent>() < 512);
}
