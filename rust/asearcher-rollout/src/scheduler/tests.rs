use super::*;
use crate::reward::{RewardPipeline, RuleScorer};
use crate::runner::ToolErrorPolicy;
use crate::testkit::{question, tokenizer, toolbox, SimBackend, SimReply, TestAgent};
use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

pub(super) fn questions(n: usize) -> Vec<Question> {
    (0..n)
        .map(|i| {
            question(
                &format!("q{i}"),
                &format!("Where was person {i} born?"),
                "Paris",
            )
        })
        .collect()
}

pub(super) fn parts(backend: Arc<SimBackend>) -> EngineParts {
    let tok = tokenizer();
    EngineParts {
        backend,
        toolbox: Some(toolbox()),
        tokenizer: tok.clone(),
        agents: Arc::new(move |q: &Question, _sample| {
            Ok(Box::new(TestAgent::new(tok.clone(), q, 8)) as Box<dyn Agent>)
        }),
        scorer: Arc::new(RewardPipeline::new(RuleScorer::default())),
        sampling_seed: None,
    }
}

pub(super) fn cfg(
    group_size: u32,
    batch_size: usize,
    max_concurrent: usize,
    eta: Option<u64>,
) -> RolloutConfig {
    RolloutConfig {
        group_size,
        batch_size,
        max_concurrent,
        max_staleness: eta,
        ..RolloutConfig::default()
    }
}

pub(super) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn all_groups(engine: &RolloutEngine) -> Vec<Group> {
    let mut out = Vec::new();
    while let Some(batch) = engine.next_batch(3).await {
        out.extend(batch);
    }
    out
}

/// finished + failed + running == admitted, and nothing is left in flight.
pub(super) fn assert_quiescent(s: &RolloutStats) {
    assert_eq!(s.running, 0, "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.finished + s.failed, s.admitted, "{s:?}");
    assert_eq!(s.pending_rewards, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_zero_admits_one_batch_until_the_version_moves() {
    let backend = Arc::new(SimBackend::search_then_answer(
        Duration::from_millis(1),
        1,
        "Paris",
    ));
    let engine = RolloutEngine::start(
        cfg(4, 2, 100, Some(0)),
        parts(backend.clone()),
        QuestionSource::once(questions(10)),
    )
    .unwrap();
    until("the first batch", || engine.stats().ready_groups == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = engine.stats();
    assert_eq!(
        (s.admitted, s.accepted, s.position),
        (8, 8, 2),
        "exactly B*n admitted at version 0"
    );
    let batch = engine.next_batch(2).await.unwrap();
    assert_eq!(batch.len(), 2);
    assert!(batch
        .iter()
        .all(|g| g.admitted_version == 0 && g.trajectories.len() == 4));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine.stats().admitted,
        8,
        "consuming does not admit: the version must move"
    );
    backend.version.store(1, SeqCst);
    engine.set_version(1);
    let batch = engine.next_batch(2).await.unwrap();
    assert!(batch.iter().all(|g| g.admitted_version == 1));
    let s = engine.stats();
    assert_eq!(s.admitted, 16);
    assert_eq!(s.version, 1);
    assert_eq!((s.staleness.consumed, s.staleness.max), (16, 0));
    // A synchronous trainer: one batch per version.
    let (mut rest, mut version) = (Vec::new(), 1);
    loop {
        version += 1;
        backend.version.store(version, SeqCst);
        engine.set_version(version);
        let Some(batch) = engine.next_batch(2).await else {
            break;
        };
        assert!(batch.iter().all(|g| g.admitted_version == version));
        rest.extend(batch);
    }
    assert_eq!(rest.len(), 6);
    let s = engine.stats();
    assert_eq!(s.staleness.consumed, 40);
    assert_eq!(
        s.staleness.max, 0,
        "synchronous: nothing stale: {:?}",
        s.staleness
    );
    assert_quiescent(&s);
    assert!(engine.is_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_bound_eta_two_with_a_slow_consumer() {
    let backend = Arc::new(SimBackend::search_then_answer(Duration::ZERO, 0, "Paris"));
    let engine = RolloutEngine::start(
        cfg(2, 3, 1000, Some(2)),
        parts(backend),
        QuestionSource::once(questions(100)),
    )
    .unwrap();
    until("(eta+1)*B groups", || engine.stats().ready_groups == 9).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine.stats().admitted,
        18,
        "(2 + 0 + 1) * 3 groups * 2 samples"
    );
    engine.set_version(3);
    until("three more batches", || engine.stats().admitted == 36).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(engine.stats().admitted, 36);
    let old = engine.next_batch(3).await.unwrap();
    assert!(old.iter().all(|g| g.admitted_version == 0));
    let s = engine.stats();
    assert_eq!(
        (s.staleness.consumed, s.staleness.max),
        (6, 3),
        "made at version 0, consumed at 3"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_bounds_running_trajectories_and_groups_are_whole() {
    let backend = Arc::new(SimBackend::search_then_answer(
        Duration::from_millis(10),
        1,
        "Paris",
    ));
    let engine = RolloutEngine::start(
        cfg(4, 2, 12, None),
        parts(backend.clone()),
        QuestionSource::once(questions(20)),
    )
    .unwrap();
    let (mut max_running, mut groups) = (0, Vec::new());
    loop {
        max_running = max_running.max(engine.stats().running);
        tokio::select! {
            batch = engine.next_batch(1) => match batch { Some(b) => groups.extend(b), None => break },
            _ = tokio::time::sleep(Duration::from_millis(3)) => {}
        }
    }
    assert!(
        (8..=12).contains(&max_running),
        "running peaked at {max_running}"
    );
    assert!(backend.max_in_flight.load(SeqCst) <= 12);
    assert_eq!(groups.len(), 20);
    for g in &groups {
        assert_eq!(
            g.trajectories.iter().map(|t| t.sample).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(g
            .trajectories
            .iter()
            .all(|t| t.question_id == g.question.id && t.reward == Some(1.0)));
    }
    let ids: HashSet<_> = groups
        .iter()
        .flat_map(|g| g.trajectories.iter().map(|t| t.id.clone()))
        .collect();
    assert_eq!(ids.len(), 80);
    let s = engine.stats();
    assert_quiescent(&s);
    assert_eq!(
        (s.admitted, s.finished, s.turns, s.tool_calls),
        (80, 80, 160, 80)
    );
    assert_eq!(s.stop_reasons.get("answered"), Some(&80));
    assert!(s.gen_latency_ms.p50.unwrap() >= 10.0 && s.tool_latency_ms.p95.is_some());
    assert!(s.output_tokens > 0 && s.tokens_per_s > 0.0);
    assert_eq!(backend.released.load(SeqCst), 80);

    // max_concurrent 6 < 2 groups of 4: one group at a time, never a part of the next.
    let backend = Arc::new(SimBackend::search_then_answer(
        Duration::from_millis(5),
        1,
        "Paris",
    ));
    let engine = RolloutEngine::start(
        cfg(4, 2, 6, None),
        parts(backend.clone()),
        QuestionSource::once(questions(6)),
    )
    .unwrap();
    assert_eq!(all_groups(&engine).await.len(), 6);
    assert_eq!(backend.max_in_flight.load(SeqCst), 4);
}

/// Fails the generations of the trajectories `fail(id, attempt)` names.
fn failing_backend(fail: impl Fn(&str, u32) -> bool + Send + Sync + 'static) -> Arc<SimBackend> {
    Arc::new(SimBackend::new(Duration::from_millis(1), move |c| {
        let run = c.rid.rsplit_once('-').map_or("", |(r, _)| r);
        let (id, attempt) = match run.split_once('~') {
            Some((id, a)) => (id, a.parse().unwrap_or(0)),
            None => (run, 1),
        };
        if fail(id, attempt) {
            SimReply::Fail("server on fire".into())
        } else if c.observations == 0 {
            SimReply::Say(format!("<search>{}</search>", c.question))
        } else {
            SimReply::Say("<answer>Paris</answer>".into())
        }
    }))
}

async fn run_all(
    config: RolloutConfig,
    backend: Arc<SimBackend>,
    n: usize,
) -> (Vec<Group>, RolloutStats) {
    let engine =
        RolloutEngine::start(config, parts(backend), QuestionSource::once(questions(n))).unwrap();
    let groups = all_groups(&engine).await;
    (groups, engine.stats())
}

fn flaky(id: &str) -> bool {
    ["q1#2", "q4#0", "q4#3"].contains(&id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_dropped_or_kept_and_counted_once() {
    let base = cfg(4, 2, 16, None);
    // Retry: the first attempt of three samples fails, the second succeeds.
    let retry = RolloutConfig {
        on_error: OnError::Retry,
        max_attempts: 3,
        ..base.clone()
    };
    let (groups, s) = run_all(
        retry.clone(),
        failing_backend(|id, a| flaky(id) && a == 1),
        8,
    )
    .await;
    assert_eq!(groups.len(), 8);
    assert!(groups.iter().all(|g| g.trajectories.len() == 4));
    let retried: Vec<_> = groups
        .iter()
        .flat_map(|g| g.trajectories.iter().zip(&g.attempts))
        .filter(|(_, a)| **a == 2)
        .map(|(t, _)| t.id.clone())
        .collect();
    assert_eq!(retried.len(), 3, "{retried:?}");
    assert!(retried.iter().all(|id| flaky(id)));
    assert!(groups
        .iter()
        .flat_map(|g| &g.trajectories)
        .all(|t| t.stop_reason == StopReason::Answered && t.errors.is_empty()));
    assert_eq!(
        (s.admitted, s.finished, s.failed, s.retried, s.dropped),
        (32, 32, 0, 3, 0)
    );
    assert_quiescent(&s);

    // Retry exhausted: always failing samples are dropped after max_attempts runs.
    let (groups, s) = run_all(retry, failing_backend(|id, _| flaky(id)), 8).await;
    assert_eq!((s.finished, s.failed, s.retried, s.dropped), (29, 3, 6, 3));
    assert_eq!(
        groups.iter().map(|g| g.trajectories.len()).sum::<usize>(),
        29
    );
    assert_quiescent(&s);

    // Drop: no retries; the groups go on with the others.
    let drop = RolloutConfig {
        on_error: OnError::Drop,
        ..base.clone()
    };
    let (groups, s) = run_all(drop, failing_backend(|id, _| flaky(id)), 8).await;
    let sizes: Vec<_> = groups
        .iter()
        .map(|g| (g.question.id.clone(), g.trajectories.len()))
        .collect();
    assert!(
        sizes.contains(&("q1".into(), 3)) && sizes.contains(&("q4".into(), 2)),
        "{sizes:?}"
    );
    assert_eq!(groups.len(), 8);
    assert_eq!(
        (s.finished, s.failed, s.retried, s.dropped, s.accepted),
        (29, 3, 0, 3, 29)
    );
    assert_eq!(s.stop_reasons.get("error"), Some(&3));
    assert_quiescent(&s);

    // Keep: failed trajectories stay in their group with their error, scored 0.
    let keep = RolloutConfig {
        on_error: OnError::Keep,
        ..base.clone()
    };
    let (groups, s) = run_all(keep, failing_backend(|id, _| flaky(id)), 8).await;
    let kept: Vec<_> = groups
        .iter()
        .flat_map(|g| &g.trajectories)
        .filter(|t| t.stop_reason == StopReason::Error)
        .collect();
    assert_eq!(kept.len(), 3);
    assert!(kept
        .iter()
        .all(|t| t.errors[0].kind == "inference" && t.reward == Some(0.0)));
    assert_eq!(
        (s.finished, s.failed, s.dropped, s.accepted),
        (29, 3, 0, 32)
    );
    assert_quiescent(&s);

    // A whole group failing under `drop` is a dropped group; the run goes on.
    let drop = RolloutConfig {
        on_error: OnError::Drop,
        ..base
    };
    let (groups, s) = run_all(drop, failing_backend(|id, _| id.starts_with("q2#")), 5).await;
    assert_eq!(groups.len(), 4);
    assert_eq!((s.dropped, s.dropped_groups, s.finished), (4, 1, 16));
    assert_quiescent(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_cannot_be_built_or_panic_are_isolated() {
    let backend = Arc::new(SimBackend::search_then_answer(Duration::ZERO, 1, "Paris"));
    let tok = tokenizer();
    let mut p = parts(backend);
    p.agents = Arc::new(move |q: &Question, sample| match (q.id.as_str(), sample) {
        ("q0", 1) => Err("unknown agent `nope`".into()),
        ("q1", 2) => {
            let mut a = TestAgent::new(tok.clone(), q, 8);
            a.panic_on_turn = Some(1);
            Ok(Box::new(a) as Box<dyn Agent>)
        }
        _ => Ok(Box::new(TestAgent::new(tok.clone(), q, 8)) as Box<dyn Agent>),
    });
    let config = RolloutConfig {
        on_error: OnError::Keep,
        ..cfg(3, 1, 9, None)
    };
    let engine = RolloutEngine::start(config, p, QuestionSource::once(questions(3))).unwrap();
    let groups = all_groups(&engine).await;
    let all: Vec<_> = groups.iter().flat_map(|g| &g.trajectories).collect();
    assert_eq!(all.len(), 9);
    let err = |id: &str| {
        all.iter().find(|t| t.id == id).unwrap().errors[0]
            .message
            .clone()
    };
    assert!(err("q0#1").contains("cannot build the agent: unknown agent `nope`"));
    assert!(err("q1#2").contains("the agent panicked: test agent told to panic at turn 1"));
    let s = engine.stats();
    assert_eq!((s.finished, s.failed), (7, 2));
    assert_quiescent(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_variance_groups_are_filtered_and_counted() {
    // Samples 0 and 1 of "mixed" questions answer right, the others wrong; "same" all right,
    // "wrong" all wrong.
    let backend = Arc::new(SimBackend::new(Duration::ZERO, |c| {
        let sample_right = c.rid.contains("#0-") || c.rid.contains("#1-");
        if (c.question.contains("mixed") && !sample_right) || c.question.contains("wrong") {
            SimReply::Say("<answer>London</answer>".into())
        } else {
            SimReply::Say("<answer>Paris</answer>".into())
        }
    }));
    let qs: Vec<_> = (0..10)
        .map(|i| {
            let kind = ["mixed", "wrong", "same"][i % 3];
            question(
                &format!("q{i}"),
                &format!("Where was {kind} person {i} born?"),
                "Paris",
            )
        })
        .collect();
    let config = RolloutConfig {
        filter_zero_variance: Some(true),
        ..cfg(4, 2, 40, Some(1))
    };
    let engine = RolloutEngine::start(config, parts(backend), QuestionSource::once(qs)).unwrap();
    let groups = all_groups(&engine).await;
    let ids: Vec<_> = groups.iter().map(|g| g.question.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ["q0", "q3", "q6", "q9"]);
    assert!(groups
        .iter()
        .all(|g| g.rewards() == [Some(1.0), Some(1.0), Some(0.0), Some(0.0)]));
    let s = engine.stats();
    assert_eq!((s.filtered_groups, s.accepted, s.admitted), (6, 16, 40));
    assert_eq!(s.filtered_unsolved, 3, "q1, q4, q7: every sample wrong");
    assert_quiescent(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_tool_policies_reach_the_trajectories() {
    let backend = Arc::new(SimBackend::new(Duration::from_millis(1), |c| {
        if c.question.contains("slow") && c.observations >= 1 {
            SimReply::Hang
        } else if c.observations == 0 {
            SimReply::Say(if c.question.contains("page") {
                "<access>https://x.org/</access>".into()
            } else {
                format!("<search>{}</search>", c.question)
            })
        } else {
            SimReply::Say("<answer>Paris</answer>".into())
        }
    }));
    let qs = vec![
        question("slow", "Where was slow person born?", "Paris"),
        question("page", "Which page says it?", "Paris"),
    ];
    let config = RolloutConfig {
        trajectory_timeout_s: Some(0.3),
        tool_errors: ToolErrorPolicy::Fail,
        on_error: OnError::Keep,
        ..cfg(2, 1, 8, None)
    };
    let engine = RolloutEngine::start(config, parts(backend), QuestionSource::once(qs)).unwrap();
    let groups = all_groups(&engine).await;
    let find = |id: &str| groups.iter().find(|g| g.question.id == id).unwrap();
    for t in &find("slow").trajectories {
        assert_eq!(
            (t.stop_reason, t.turns.len(), t.errors[0].kind.as_str()),
            (StopReason::Timeout, 1, "timeout")
        );
    }
    for t in &find("page").trajectories {
        assert_eq!(
            (t.stop_reason, t.errors[0].kind.as_str()),
            (StopReason::Error, "tool")
        );
    }
    let s = engine.stats();
    assert_eq!(
        (s.stop_reasons.get("timeout"), s.stop_reasons.get("error")),
        (Some(&2), Some(&2))
    );
    assert_eq!((s.finished, s.failed, s.tool_errors), (2, 2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_cancel_in_flight_work() {
    let backend = Arc::new(SimBackend::new(Duration::ZERO, |_| SimReply::Hang));
    let engine = RolloutEngine::start(
        cfg(4, 1, 8, None),
        parts(backend.clone()),
        QuestionSource::epochs(questions(3), None, None),
    )
    .unwrap();
    until("8 hanging generations", || {
        backend.in_flight.load(SeqCst) == 8
    })
    .await;
    let waiter = {
        let started = Instant::now();
        engine.shutdown().await;
        started.elapsed()
    };
    assert!(waiter < Duration::from_secs(2));
    assert_eq!(engine.next_batch(1).await.map(|b| b.len()), None);
    let s = engine.stats();
    assert_eq!((s.cancelled, s.running, s.finished), (8, 0, 0));
    assert_eq!(backend.in_flight.load(SeqCst), 0);
    assert_eq!(
        backend.released.load(SeqCst),
        8,
        "cancelled trajectories release their routing state"
    );

    let backend = Arc::new(SimBackend::new(Duration::ZERO, |_| SimReply::Hang));
    let engine = RolloutEngine::start(
        cfg(4, 1, 8, None),
        parts(backend.clone()),
        QuestionSource::once(questions(3)),
    )
    .unwrap();
    until("8 hanging generations", || {
        backend.in_flight.load(SeqCst) == 8
    })
    .await;
    drop(engine);
    until("dropping the engine to cancel", || {
        backend.in_flight.load(SeqCst) == 0
    })
    .await;
    assert_eq!(backend.released.load(SeqCst), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_last_batch_then_none_and_drain() {
    let backend = Arc::new(SimBackend::search_then_answer(Duration::ZERO, 0, "Paris"));
    let engine = RolloutEngine::start(
        cfg(2, 4, 100, None),
        parts(backend.clone()),
        QuestionSource::once(questions(5)),
    )
    .unwrap();
    assert_eq!(engine.next_batch(4).await.unwrap().len(), 4);
    assert_eq!(
        engine.next_batch(4).await.unwrap().len(),
        1,
        "the final partial batch"
    );
    assert!(engine.next_batch(4).await.is_none());
    assert_eq!(engine.position(), 5);

    let engine = RolloutEngine::start(
        cfg(2, 4, 4, None),
        parts(backend),
        QuestionSource::epochs(questions(5), None, None),
    )
    .unwrap();
    until("a ready group", || engine.stats().ready_groups > 0).await;
    let first = engine.try_next_group().unwrap();
    assert_eq!(first.trajectories.len(), 2);
    let rest = engine.drain().await;
    let s = engine.stats();
    assert_eq!(
        s.position as usize,
        1 + rest.len(),
        "drain finishes what was admitted and stops"
    );
    assert!(engine.try_next_group().is_none() && engine.is_done());
    assert_quiescent(&s);
    let epochs: HashSet<_> = rest.iter().map(|g| g.epoch).collect();
    assert!(
        rest.iter().all(|g| g
            .trajectories
            .iter()
            .all(|t| t.id.contains(&format!("@{}#", g.epoch)) || g.epoch == 0)),
        "{epochs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_trajectories_finish() {
    let mut backend = SimBackend::search_then_answer(Duration::from_millis(1500), 1, "Paris");
    backend.record_rids = false;
    let backend = Arc::new(backend);
    let engine = RolloutEngine::start(
        cfg(8, 32, 2000, None),
        parts(backend.clone()),
        QuestionSource::once(questions(250)),
    )
    .unwrap();
    // A long simulated latency, so admission (agents built in a debug build on a loaded
    // machine) is far faster than a turn and the peak shows true concurrency.
    let groups = all_groups(&engine).await;
    assert_eq!(groups.len(), 250);
    let s = engine.stats();
    assert_eq!((s.finished, s.turns, s.tool_calls), (2000, 4000, 2000));
    // 4000 requests of >= 1.5 s each, at most 2000 at once.
    assert!(s.gen_request_s >= 4000.0 * 1.5, "{}", s.gen_request_s);
    assert!(s.gen_request_s <= 2000.0 * s.gen_busy_s, "{s:?}");
    assert_quiescent(&s);
    assert!(
        backend.max_in_flight.load(SeqCst) >= 1500,
        "peak concurrency {}",
        backend.max_in_flight.load(SeqCst)
    );
}

/// Each request's rid and sampling seed, as the backend saw them.
type SeenSeeds = Arc<Mutex<Vec<(String, Option<u64>)>>>;

/// Question `qi` searches `8 - i` times before answering: the first admitted groups finish last.
fn late_first_backend(seeds: SeenSeeds) -> Arc<SimBackend> {
    Arc::new(SimBackend::new(Duration::from_millis(2), move |c| {
        seeds.lock().unwrap().push((c.rid.clone(), c.seed));
        let i: usize = c
            .question
            .trim_start_matches("Where was person ")
            .trim_end_matches(" born?")
            .parse()
            .unwrap_or(0);
        if c.observations < 8usize.saturating_sub(i) {
            SimReply::Say(format!("<search>{}</search>", c.question))
        } else {
            SimReply::Say("<answer>Paris</answer>".into())
        }
    }))
}

async fn release_order(
    ordered: bool,
    sampling_seed: Option<u64>,
) -> (Vec<u64>, Vec<(String, Option<u64>)>) {
    let seeds = Arc::new(Mutex::new(Vec::new()));
    let config = RolloutConfig {
        ordered,
        ..cfg(2, 2, 100, None)
    };
    let engine = RolloutEngine::start(
        config,
        EngineParts {
            sampling_seed,
            ..parts(late_first_backend(seeds.clone()))
        },
        QuestionSource::once(questions(8)),
    )
    .unwrap();
    let mut order = Vec::new();
    while let Some(batch) = engine.next_batch(2).await {
        order.extend(batch.iter().map(|g| g.index));
    }
    assert_quiescent(&engine.stats());
    let mut seen = seeds.lock().unwrap().clone();
    seen.sort();
    (order, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_releases_groups_in_admission_order() {
    let (unordered, _) = release_order(false, None).await;
    assert_eq!(unordered.len(), 8);
    assert_ne!(
        unordered.first(),
        Some(&0),
        "the slowest group is admitted first and, unordered, released last: {unordered:?}"
    );
    let (ordered, _) = release_order(true, None).await;
    assert_eq!(ordered, (0..8).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_seeded_from_the_run_seed_and_its_rid() {
    let (_, unseeded) = release_order(false, None).await;
    assert!(unseeded.iter().all(|(_, s)| s.is_none()));
    let (_, first) = release_order(false, Some(7)).await;
    let (_, again) = release_order(false, Some(7)).await;
    let (_, other) = release_order(false, Some(8)).await;
    assert!(first.len() > 16, "{} requests", first.len());
    for (rid, seed) in &first {
        assert_eq!(*seed, Some(crate::client::request_seed(7, rid)), "{rid}");
    }
    assert_eq!(first, again, "same run seed, same rids: the same seeds");
    let distinct: HashSet<_> = first.iter().map(|(_, s)| s.unwrap()).collect();
    assert_eq!(
        distinct.len(),
        first.len(),
        "every request draws its own seed"
    );
    assert!(first
        .iter()
        .zip(&other)
        .all(|(a, b)| a.0 == b.0 && a.1 != b.1));
}
