use super::super::tests::{all_groups, cfg, parts, questions, until};
use super::*;
use crate::scheduler::{admission_capacity, RolloutStats};
use crate::testkit::{tokenizer, SimBackend, SimReply, TestAgent};
use asearcher_agent::agent::Agent;
use asearcher_agent::trajectory::TurnRecord;
use std::collections::BTreeMap;
use std::time::Duration;

/// Searches `searches` times then answers, but hangs (in the first run) once a trajectory whose
/// id starts with one of `hang` has `hang_after` observations.
fn backend(searches: usize, hang: &'static [&'static str], hang_after: usize) -> Arc<SimBackend> {
    Arc::new(SimBackend::new(Duration::from_millis(5), move |c| {
        if c.observations >= hang_after && hang.iter().any(|h| c.rid.starts_with(h)) {
            SimReply::Hang
        } else if c.observations < searches {
            SimReply::Say(format!("<search>{}</search>", c.question))
        } else {
            SimReply::Say("<answer>Paris</answer>".into())
        }
    }))
}

/// Unfinished samples of in-flight groups whose last turn has its tool call recorded.
fn waiting_with_turns(s: &EngineSnapshot, turns: usize) -> usize {
    s.groups
        .iter()
        .filter(|g| !g.scored)
        .flat_map(|g| &g.samples)
        .filter(|p| {
            !p.finished
                && p.trajectory.turns.len() == turns
                && p.trajectory.turns.iter().all(|t| t.tool.is_some())
                && p.observations.iter().all(Option::is_some)
        })
        .count()
}

/// Serialises and parses `s`; equal but for the last bits of measured times (serde_json's
/// default float parsing is not exact), which are compared to 1e-9.
fn round_trip(s: &EngineSnapshot) -> EngineSnapshot {
    let json = serde_json::to_string(s).unwrap();
    let back: EngineSnapshot = serde_json::from_str(&json).unwrap();
    let (mut a, mut b) = (s.clone(), back.clone());
    let (ta, tb) = (take_timings(&mut a), take_timings(&mut b));
    assert_eq!(a, b);
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{x} != {y}");
    }
    back
}

/// Zeroes the measured times of every trajectory, returning them.
fn take_timings(s: &mut EngineSnapshot) -> Vec<f64> {
    let mut out = Vec::new();
    for t in s
        .groups
        .iter_mut()
        .flat_map(|g| &mut g.samples)
        .map(|p| &mut p.trajectory)
    {
        out.push(std::mem::take(&mut t.started_at));
        out.push(std::mem::take(&mut t.elapsed_s));
        for turn in &mut t.turns {
            out.push(std::mem::take(&mut turn.gen_latency_ms));
            if let Some(tool) = &mut turn.tool {
                out.push(std::mem::take(&mut tool.latency_ms));
            }
        }
    }
    out
}

/// The full prompt of each turn (the record stores a delta).
fn full_prompts(turns: &[TurnRecord]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut context: Vec<u32> = Vec::new();
    for t in turns {
        let mut prompt = context[..t.prompt_prefix_len].to_vec();
        prompt.extend_from_slice(&t.prompt_ids);
        context = prompt.iter().chain(&t.output_ids).copied().collect();
        out.push(prompt);
    }
    out
}

/// The token record of each turn: prompt delta, output ids, logprobs and versions.
type TurnTokens<'a> = (usize, &'a [u32], &'a [u32], &'a [f32], &'a [u64]);

fn tokens(turns: &[TurnRecord]) -> Vec<TurnTokens<'_>> {
    turns
        .iter()
        .map(|t| {
            let (p, o) = (&t.prompt_ids[..], &t.output_ids[..]);
            (
                t.prompt_prefix_len,
                p,
                o,
                &t.output_logprobs[..],
                &t.output_versions[..],
            )
        })
        .collect()
}

/// Every sample ends up counted once: finished + failed == admitted + resumed.
fn assert_resumed_quiescent(s: &RolloutStats) {
    assert_eq!((s.running, s.in_flight), (0, 0), "{s:?}");
    assert_eq!(
        s.finished + s.failed,
        s.admitted + s.resumed_samples,
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_in_flight_samples_and_loses_or_repeats_no_question() {
    // q4 (all samples) and samples 0 and 1 of q5 hang on their second generation.
    let first = backend(2, &["q4#", "q5#0", "q5#1"], 1);
    let engine = RolloutEngine::start(
        cfg(3, 2, 100, None),
        parts(first.clone()),
        QuestionSource::once(questions(6)),
    )
    .unwrap();
    let mut consumed: Vec<String> = Vec::new();
    let batch = engine.next_batch(2).await.unwrap();
    consumed.extend(batch.iter().map(|g| g.question.id.clone()));
    until(
        "two more ready groups, five samples mid-way, one finished",
        || {
            let s = engine.snapshot();
            let finished = s
                .groups
                .iter()
                .filter(|g| !g.scored)
                .flat_map(|g| &g.samples);
            engine.stats().ready_groups == 2
                && waiting_with_turns(&s, 1) == 5
                && finished.filter(|p| p.finished).count() == 1
        },
    )
    .await;
    let snapshot = round_trip(&engine.snapshot());
    engine.shutdown().await;
    assert_eq!((snapshot.position, snapshot.next_index), (6, 6));
    assert_eq!(snapshot.accepted, 12, "4 groups of 3 accepted");
    let indices: Vec<u64> = snapshot.groups.iter().map(|g| g.index).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
    let scored: Vec<&PendingGroup> = snapshot.groups.iter().filter(|g| g.scored).collect();
    assert_eq!(scored.len(), 2);
    let ids: Vec<&str> = snapshot
        .groups
        .iter()
        .map(|g| g.question.id.as_str())
        .collect();
    assert!(ids.contains(&"q4") && ids.contains(&"q5"), "{ids:?}");
    assert!(
        consumed.iter().all(|id| !ids.contains(&id.as_str())),
        "nothing consumed is in it"
    );
    let q5 = snapshot
        .groups
        .iter()
        .find(|g| g.question.id == "q5")
        .unwrap();
    assert!(q5.samples[2].finished && !q5.samples[0].finished);

    let second = backend(2, &[], 0);
    second.version.store(1, std::sync::atomic::Ordering::SeqCst);
    let resumed = RolloutEngine::resume(
        cfg(3, 2, 100, None),
        parts(second.clone()),
        QuestionSource::once(questions(6)),
        snapshot.clone(),
    )
    .unwrap();
    let groups = all_groups(&resumed).await;
    consumed.extend(groups.iter().map(|g| g.question.id.clone()));
    consumed.sort();
    let want: Vec<String> = (0..6).map(|i| format!("q{i}")).collect();
    assert_eq!(consumed, want, "every question consumed exactly once");

    let before: BTreeMap<&str, &PendingSample> = snapshot
        .groups
        .iter()
        .flat_map(|g| &g.samples)
        .map(|s| (s.trajectory.id.as_str(), s))
        .collect();
    let mut continued = 0;
    for t in groups.iter().flat_map(|g| &g.trajectories) {
        let Some(old) = before.get(t.id.as_str()) else {
            continue;
        };
        if old.finished {
            let old = &old.trajectory;
            assert_eq!(
                tokens(&t.turns),
                tokens(&old.turns),
                "{}: kept as it was",
                t.id
            );
            assert_eq!((t.stop_reason, &t.answer), (old.stop_reason, &old.answer));
            continue;
        }
        continued += 1;
        let ran_before = old.trajectory.elapsed_s;
        assert!(
            ran_before > 0.0 && t.elapsed_s > ran_before,
            "{}: time adds up",
            t.id
        );
        assert_eq!(t.turns.len(), 3, "{}", t.id);
        let first_turn = &old.trajectory.turns[0];
        assert_eq!(
            tokens(&t.turns[..1]),
            tokens(&old.trajectory.turns),
            "{}",
            t.id
        );
        assert_eq!(
            t.turns[0].tool, first_turn.tool,
            "{}: its tool call is kept",
            t.id
        );
        assert!(first_turn.output_versions.iter().all(|v| *v == 0));
        assert!(t.turns[1].output_versions.iter().all(|v| *v == 1));
        // Token-space continuity: the next prompt extends the replayed prompt + output.
        let prompts = full_prompts(&t.turns);
        let context: Vec<u32> = prompts[0]
            .iter()
            .chain(&t.turns[0].output_ids)
            .copied()
            .collect();
        assert_eq!(t.turns[1].prompt_prefix_len, context.len(), "{}", t.id);
        assert!(prompts[1].starts_with(&context));
        assert_eq!(t.answer.as_deref(), Some("Paris"));
    }
    assert_eq!(continued, 5);
    let rids = second.rids.lock().unwrap().clone();
    assert!(
        !rids.iter().any(|r| r.ends_with("-0")),
        "no recorded turn regenerated: {rids:?}"
    );
    assert!(
        !rids.iter().any(|r| r.starts_with("q5#2")),
        "the finished sample is not re-run"
    );
    assert_eq!(rids.len(), 5 * 2, "turns 1 and 2 of each continued sample");
    let s = resumed.stats();
    assert_eq!(
        (s.resumed_samples, s.replayed_turns, s.replay_restarts),
        (5, 5, 0)
    );
    assert_eq!(
        (s.admitted, s.position),
        (0, 6),
        "no new admissions from the source"
    );
    assert_resumed_quiescent(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staleness_gate_counts_resumed_groups_in_flight() {
    // eta 0, B = 2 groups of 2: 4 trajectories per version.
    let eta = Some(0);
    let first = backend(1, &["q2#", "q3#"], 0);
    let engine = RolloutEngine::start(
        cfg(2, 2, 100, eta),
        parts(first),
        QuestionSource::once(questions(10)),
    )
    .unwrap();
    engine.next_batch(2).await.unwrap();
    engine.set_version(1);
    until("the second batch admitted", || engine.stats().admitted == 8).await;
    let snapshot = round_trip(&engine.snapshot());
    engine.shutdown().await;
    assert_eq!(
        (
            snapshot.version,
            snapshot.accepted,
            snapshot.position,
            snapshot.next_index
        ),
        (1, 4, 4, 4)
    );
    assert_eq!(snapshot.groups.len(), 2);

    let resumed = RolloutEngine::resume(
        cfg(2, 2, 100, eta),
        parts(backend(1, &[], 0)),
        QuestionSource::once(questions(10)),
        snapshot,
    )
    .unwrap();
    let s = resumed.stats();
    assert_eq!(
        s.accepted + s.in_flight as u64,
        8,
        "resumed samples count in flight: {s:?}"
    );
    let batch = resumed.next_batch(2).await.unwrap();
    let ids: Vec<&str> = batch.iter().map(|g| g.question.id.as_str()).collect();
    assert!(ids.contains(&"q2") && ids.contains(&"q3"), "{ids:?}");
    let s = resumed.stats();
    // (eta + version + 1) * 4 - (accepted + in_flight) = 8 - 8: no room until the version moves.
    let capacity = admission_capacity(100, s.in_flight, s.accepted, s.version, eta, 4);
    assert_eq!((s.accepted, s.version, capacity), (8, 1, 0));
    assert_eq!((s.admitted, s.position), (0, 4), "{s:?}");
    resumed.set_version(2);
    let batch = resumed.next_batch(2).await.unwrap();
    assert!(batch
        .iter()
        .all(|g| g.admitted_version == 2 && g.index >= 4));
    let s = resumed.stats();
    assert_eq!(
        (s.admitted, s.accepted, s.position),
        (4, 12, 6),
        "one batch per version"
    );
    resumed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_idle_engines_and_ready_groups_resume_without_reruns() {
    let empty = RolloutEngine::start(
        cfg(2, 2, 100, None),
        parts(backend(1, &[], 0)),
        QuestionSource::once(Vec::new()),
    )
    .unwrap();
    assert!(empty.next_batch(1).await.is_none());
    let s = round_trip(&empty.snapshot());
    assert_eq!(
        (s.position, s.next_index, s.accepted, s.groups.len()),
        (0, 0, 0, 0)
    );

    // Two groups ready and not consumed: a resumed engine hands them out without running them.
    let engine = RolloutEngine::start(
        cfg(2, 2, 100, None),
        parts(backend(1, &[], 0)),
        QuestionSource::once(questions(2)),
    )
    .unwrap();
    until("both groups ready", || engine.stats().ready_groups == 2).await;
    let snapshot = round_trip(&engine.snapshot());
    engine.shutdown().await;
    assert!(snapshot
        .groups
        .iter()
        .all(|g| g.scored && g.samples.len() == 2));
    let second = backend(1, &[], 0);
    let resumed = RolloutEngine::resume(
        cfg(2, 2, 100, None),
        parts(second.clone()),
        QuestionSource::once(questions(2)),
        snapshot.clone(),
    )
    .unwrap();
    let groups = all_groups(&resumed).await;
    assert_eq!(groups.len(), 2);
    for (g, p) in groups.iter().zip(&snapshot.groups) {
        let recorded: Vec<&Trajectory> = p.samples.iter().map(|s| &s.trajectory).collect();
        assert_eq!(g.trajectories.iter().collect::<Vec<_>>(), recorded);
        assert!(g.trajectories.iter().all(|t| t.reward == Some(1.0)));
    }
    assert_eq!(second.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(resumed.is_done());
    let done = resumed.snapshot();
    assert_eq!(
        (done.position, done.next_index, done.groups.len()),
        (2, 2, 0)
    );
}

/// Runs until every sample of `n` questions has two turns with their tool calls, and snapshots.
async fn two_turns_each(n: usize) -> EngineSnapshot {
    let engine = RolloutEngine::start(
        cfg(2, 2, 100, None),
        parts(backend(3, &["q"], 2)),
        QuestionSource::once(questions(n)),
    )
    .unwrap();
    until("every sample two turns in", || {
        waiting_with_turns(&engine.snapshot(), 2) == 2 * n
    })
    .await;
    let snapshot = round_trip(&engine.snapshot());
    engine.shutdown().await;
    snapshot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverging_replay_restarts_the_sample_and_is_counted() {
    let snapshot = two_turns_each(2).await;
    // The rebuilt agent shows the model less of each observation: the second prompt differs.
    let second = backend(3, &[], 0);
    let mut changed = parts(second.clone());
    let tok = tokenizer();
    changed.agents = Arc::new(move |q: &Question, _| {
        let mut agent = TestAgent::new(tok.clone(), q, 8);
        agent.info_chars = 50;
        Ok(Box::new(agent) as Box<dyn Agent>)
    });
    let resumed = RolloutEngine::resume(
        cfg(2, 2, 100, None),
        changed,
        QuestionSource::once(questions(2)),
        snapshot.clone(),
    )
    .unwrap();
    let groups = all_groups(&resumed).await;
    let s = resumed.stats();
    assert_eq!(
        (s.resumed_samples, s.replay_restarts, s.replayed_turns),
        (4, 4, 0)
    );
    assert_resumed_quiescent(&s);
    let rids = second.rids.lock().unwrap().clone();
    assert_eq!(
        rids.iter().filter(|r| r.ends_with("-0")).count(),
        4,
        "{rids:?}"
    );
    for t in groups.iter().flat_map(|g| &g.trajectories) {
        assert_eq!(t.turns.len(), 4, "restarted from scratch: {}", t.id);
        let prompts = full_prompts(&t.turns);
        for (k, turn) in t.turns.iter().enumerate().skip(1) {
            let context = prompts[k - 1].len() + t.turns[k - 1].output_ids.len();
            assert_eq!(turn.prompt_prefix_len, context, "{} turn {k}", t.id);
        }
    }

    // Without recorded observations the tools are asked again; the local index answers the
    // same, so the replay holds.
    let mut bare = snapshot;
    for p in bare.groups.iter_mut().flat_map(|g| &mut g.samples) {
        p.observations.clear();
    }
    let resumed = RolloutEngine::resume(
        cfg(2, 2, 100, None),
        parts(backend(3, &[], 0)),
        QuestionSource::once(questions(2)),
        round_trip(&bare),
    )
    .unwrap();
    let groups = all_groups(&resumed).await;
    assert_eq!(groups.len(), 2);
    let s = resumed.stats();
    assert_eq!((s.replay_restarts, s.replayed_turns), (0, 8));
    assert_resumed_quiescent(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_fit_the_config_is_refused_by_name() {
    let mut snapshot = two_turns_each(1).await;
    snapshot.groups[0].samples[1].trajectory.sample = 7;
    let err = RolloutEngine::resume(
        cfg(2, 2, 100, None),
        parts(backend(1, &[], 0)),
        QuestionSource::once(questions(1)),
        snapshot.clone(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("snapshot.groups[0].samples[1]") && err.contains("group_size"),
        "{err}"
    );
    snapshot.groups[0].samples[1].trajectory.sample = 1;
    snapshot.next_index = 0;
    let err = RolloutEngine::resume(
        cfg(2, 2, 100, None),
        parts(backend(1, &[], 0)),
        QuestionSource::once(questions(1)),
        snapshot,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("snapshot.groups[0]") && err.contains("next_index"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_trajectories_in_flight_snapshot_and_resume() {
    let mut first = SimBackend::new(Duration::from_millis(5), |c| {
        if c.observations >= 1 {
            SimReply::Hang
        } else {
            SimReply::Say(format!("<search>{}</search>", c.question))
        }
    });
    first.record_rids = false;
    let config = cfg(8, 250, 2000, None);
    let engine = RolloutEngine::start(
        config.clone(),
        parts(Arc::new(first)),
        QuestionSource::once(questions(250)),
    )
    .unwrap();
    until("2000 samples one turn in", || {
        waiting_with_turns(&engine.snapshot(), 1) == 2000
    })
    .await;
    let started = std::time::Instant::now();
    let snapshot = engine.snapshot();
    let took = started.elapsed();
    let json = serde_json::to_vec(&snapshot).unwrap();
    println!(
        "snapshot of 2000 in-flight samples (1 turn + observation each): {:.2} ms, {} KiB of JSON",
        took.as_secs_f64() * 1e3,
        json.len() / 1024
    );
    engine.shutdown().await;
    let mut second = SimBackend::search_then_answer(Duration::from_millis(5), 1, "Paris");
    second.record_rids = false;
    let resumed = RolloutEngine::resume(
        config,
        parts(Arc::new(second)),
        QuestionSource::once(questions(250)),
        serde_json::from_slice(&json).unwrap(),
    )
    .unwrap();
    let groups = all_groups(&resumed).await;
    assert_eq!(groups.len(), 250);
    assert!(groups
        .iter()
        .flat_map(|g| &g.trajectories)
        .all(|t| t.turns.len() == 2 && t.answer.as_deref() == Some("Paris")));
    let s = resumed.stats();
    assert_eq!(
        (s.resumed_samples, s.replayed_turns, s.replay_restarts),
        (2000, 2000, 0)
    );
    assert_resumed_quiescent(&s);
}
