use super::*;
use crate::testkit::{question, tokenizer, toolbox, SimBackend, SimReply, TestAgent};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Mutex;

#[derive(Default)]
struct Sink {
    gens: Mutex<Vec<(f64, usize)>>,
    tools: Mutex<Vec<bool>>,
}

impl StatsSink for Sink {
    fn generation(&self, latency_ms: f64, output_tokens: usize) {
        self.gens.lock().unwrap().push((latency_ms, output_tokens));
    }
    fn tool_call(&self, _latency_ms: f64, _tool: &str, error: Option<&str>) {
        let failed = error.is_some();
        self.tools.lock().unwrap().push(failed);
    }
}

fn ctx(backend: Arc<SimBackend>, limits: RunLimits, sink: Option<Arc<Sink>>) -> RunContext {
    RunContext {
        backend,
        toolbox: Some(toolbox()),
        tokenizer: tokenizer(),
        limits,
        stats: sink.map(|s| s as Arc<dyn StatsSink>),
        sampling_seed: None,
    }
}

fn spec(q: &Question) -> RunSpec {
    RunSpec {
        id: format!("{}#0", q.id),
        question: Arc::new(q.clone()),
        sample: 0,
        attempt: 1,
    }
}

async fn run(ctx: &RunContext, q: &Question, max_turns: usize) -> Trajectory {
    let agent = Box::new(TestAgent::new(ctx.tokenizer.clone(), q, max_turns));
    run_trajectory(ctx, agent, spec(q)).await
}

#[tokio::test]
async fn searches_then_answers_with_a_full_record() {
    let backend = Arc::new(SimBackend::search_then_answer(
        Duration::from_millis(2),
        2,
        "Simomora",
    ));
    let sink = Arc::new(Sink::default());
    let ctx = ctx(backend.clone(), RunLimits::default(), Some(sink.clone()));
    let q = question("q1", "In which city was Grado Rith born?", "Simomora");
    let t = run(&ctx, &q, 10).await;

    assert_eq!(t.stop_reason, StopReason::Answered);
    assert_eq!(t.answer.as_deref(), Some("Simomora"));
    assert_eq!(
        (t.id.as_str(), t.question_id.as_str(), t.agent.as_str()),
        ("q1#0", "q1", "test")
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(t.turns.len(), 3);
    let tok = tokenizer();
    let eos = tok.eos_token_ids()[0];
    for (i, turn) in t.turns.iter().enumerate() {
        assert_eq!(
            turn.output_ids.last(),
            Some(&eos),
            "EOS was sent as a stop token id"
        );
        assert_eq!(turn.output_logprobs.len(), turn.output_ids.len());
        assert_eq!(
            turn.output_text,
            tok.decode(&turn.output_ids, false).unwrap()
        );
        assert_eq!(turn.server.as_deref(), Some("sim://0"));
        assert!(turn.gen_latency_ms >= 2.0);
        assert_eq!(turn.tool.is_some(), i < 2);
    }
    let search = t.turns[0].tool.as_ref().unwrap();
    assert_eq!(
        (search.tool.as_str(), search.input.as_str()),
        ("search", "In which city was Grado Rith born?")
    );
    assert!(search.error.is_none() && search.observation_chars > 0);
    // The prompt delta: turn 0 stores its whole prompt; later turns only what follows the
    // previous prompt + output, and the record reconstructs the prompts the server saw.
    assert_eq!(t.turns[0].prompt_prefix_len, 0);
    let mut full: Vec<u32> = Vec::new();
    for turn in &t.turns {
        assert_eq!(
            turn.prompt_prefix_len,
            full.len(),
            "the test agent's prompts extend the previous turn"
        );
        full.extend_from_slice(&turn.prompt_ids);
        let seen = tok.decode(&full, false).unwrap();
        assert!(seen.starts_with("Question: In which city was Grado Rith born?"));
        full.extend_from_slice(&turn.output_ids);
    }
    assert!(tok.decode(&full, false).unwrap().contains("<information>"));
    // rids, EOS, stats and release.
    assert_eq!(
        *backend.rids.lock().unwrap(),
        ["q1#0-0", "q1#0-1", "q1#0-2"]
    );
    assert_eq!(backend.released.load(SeqCst), 1);
    assert_eq!(sink.gens.lock().unwrap().len(), 3);
    assert_eq!(*sink.tools.lock().unwrap(), [false, false]);
}

#[tokio::test]
async fn an_inference_error_ends_the_trajectory_with_its_turns() {
    let backend = Arc::new(SimBackend::new(Duration::ZERO, |c| {
        if c.observations == 0 {
            SimReply::Say(format!("<search>{}</search>", c.question))
        } else {
            SimReply::Fail("connection refused".into())
        }
    }));
    let ctx = ctx(backend.clone(), RunLimits::default(), None);
    let t = run(&ctx, &question("q", "Where is Bissti?", "x"), 10).await;
    assert_eq!(t.stop_reason, StopReason::Error);
    assert!(is_failure(&t));
    assert_eq!(t.turns.len(), 1);
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0].kind, "inference");
    assert!(
        t.errors[0].message.contains("connection refused"),
        "{}",
        t.errors[0].message
    );
    assert_eq!(t.errors[0].turn, Some(0));
    assert_eq!(backend.released.load(SeqCst), 1);
}

/// `<access>` on a toolbox without a page source is a real tool failure.
fn access_then_answer() -> SimBackend {
    SimBackend::new(Duration::ZERO, |c| {
        if c.observations == 0 {
            SimReply::Say("<access>https://example.org/page</access>".into())
        } else if c.prompt.contains("Error:") {
            SimReply::Say("<answer>saw the error</answer>".into())
        } else {
            SimReply::Say("<answer>no error</answer>".into())
        }
    })
}

#[tokio::test]
async fn a_tool_failure_is_observed_or_fails_the_trajectory() {
    let q = question("q", "Where is Bissti?", "x");
    let observe = ctx(Arc::new(access_then_answer()), RunLimits::default(), None);
    let t = run(&observe, &q, 10).await;
    assert_eq!(t.stop_reason, StopReason::Answered);
    assert_eq!(
        t.answer.as_deref(),
        Some("saw the error"),
        "the agent was shown the error"
    );
    let record = t.turns[0].tool.as_ref().unwrap();
    assert!(
        record.error.as_deref().unwrap().contains("no page source"),
        "{record:?}"
    );
    assert!(t.errors.is_empty());

    let limits = RunLimits {
        tool_errors: ToolErrorPolicy::Fail,
        ..RunLimits::default()
    };
    let fail = ctx(Arc::new(access_then_answer()), limits, None);
    let t = run(&fail, &q, 10).await;
    assert_eq!(t.stop_reason, StopReason::Error);
    assert_eq!(t.turns.len(), 1);
    assert!(t.turns[0].tool.as_ref().unwrap().error.is_some());
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0].kind, "tool");
    assert!(
        t.errors[0]
            .message
            .contains("access `https://example.org/page` failed"),
        "{}",
        t.errors[0].message
    );
}

#[tokio::test]
async fn the_wall_clock_limit_keeps_the_turns_done() {
    let backend = Arc::new(SimBackend::new(Duration::from_millis(5), |c| {
        if c.observations < 2 {
            SimReply::Say(format!("<search>{}</search>", c.question))
        } else {
            SimReply::Hang
        }
    }));
    let limits = RunLimits {
        timeout: Some(Duration::from_millis(300)),
        ..RunLimits::default()
    };
    let ctx = ctx(backend.clone(), limits, None);
    let started = Instant::now();
    let t = run(&ctx, &question("q", "Where is Bissti?", "x"), 10).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(t.stop_reason, StopReason::Timeout);
    assert!(!is_failure(&t), "a timeout is an ending, not a failure");
    assert_eq!(t.turns.len(), 2, "the two searches are kept");
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0].kind, "timeout");
    assert!(
        t.errors[0].message.contains("0.3s"),
        "{}",
        t.errors[0].message
    );
    assert!(t.elapsed_s >= 0.3);
    assert_eq!(
        backend.in_flight.load(SeqCst),
        0,
        "the hanging request was dropped"
    );
    assert_eq!(backend.released.load(SeqCst), 1);
}

#[tokio::test]
async fn garbage_output_is_recorded_not_fatal() {
    let backend = Arc::new(SimBackend::new(Duration::ZERO, |_| {
        SimReply::Say("<search>unclosed ".repeat(2_000) + "\u{0}\u{fffd} <answer>")
    }));
    let ctx = ctx(backend, RunLimits::default(), None);
    let t = run(&ctx, &question("q", "Where is Bissti?", "x"), 10).await;
    assert_eq!(t.stop_reason, StopReason::ProtocolFailures);
    assert_eq!(t.turns.len(), 3);
    assert!(t
        .turns
        .iter()
        .all(|turn| turn.action.is_none() && !turn.issues.is_empty()));
    assert!(t.errors.is_empty());
}

#[tokio::test]
async fn max_turns_and_rids_of_a_retry() {
    let backend = Arc::new(SimBackend::search_then_answer(Duration::ZERO, 100, "x"));
    let ctx = ctx(backend.clone(), RunLimits::default(), None);
    let q = question("q", "Where is Bissti?", "x");
    let mut retry = spec(&q);
    retry.attempt = 2;
    assert_ne!(retry.affinity(), spec(&q).affinity());
    let agent = Box::new(TestAgent::new(tokenizer(), &q, 4));
    let t = run_trajectory(&ctx, agent, retry).await;
    assert_eq!(t.stop_reason, StopReason::MaxTurns);
    assert_eq!(t.turns.len(), 4);
    assert_eq!(backend.rids.lock().unwrap()[3], "q#0~2-3");
}
