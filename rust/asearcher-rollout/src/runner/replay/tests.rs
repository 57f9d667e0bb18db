use super::*;
use crate::runner::{empty_trajectory, run_live, RunLimits, RunSpec};
use crate::testkit::{question, tokenizer, toolbox, SimBackend, TestAgent};
use asearcher_agent::agent::StopReason;
use std::time::Duration;

fn ctx() -> RunContext {
    RunContext {
        backend: Arc::new(SimBackend::search_then_answer(
            Duration::from_millis(1),
            2,
            "Simomora",
        )),
        toolbox: Some(toolbox()),
        tokenizer: tokenizer(),
        limits: RunLimits::default(),
        stats: None,
        sampling_seed: None,
    }
}

/// A finished run of 3 turns (2 searches, then the answer) recorded in a live slot.
async fn recorded(ctx: &RunContext) -> (RunSpec, Mutex<LiveRun>) {
    let q = question("q1", "In which city was Grado Rith born?", "Simomora");
    let spec = RunSpec {
        id: "q1#0".into(),
        question: Arc::new(q),
        sample: 0,
        attempt: 1,
    };
    let live = Mutex::new(LiveRun::new(empty_trajectory(&spec, "test")));
    run_live(ctx, agent(&spec), spec.clone(), &live, None).await;
    (spec, live)
}

fn agent(spec: &RunSpec) -> Box<dyn Agent> {
    Box::new(TestAgent::new(tokenizer(), &spec.question, 8))
}

#[tokio::test]
async fn a_replayed_agent_continues_where_the_record_ends() {
    let ctx = ctx();
    let (spec, live) = recorded(&ctx).await;
    {
        let l = lock_live(&live);
        assert_eq!(l.trajectory.turns.len(), 3);
        assert_eq!(l.observations.iter().filter(|o| o.is_some()).count(), 2);
    }
    // Cut the record after its second turn, as a snapshot taken mid-run would be.
    {
        let mut l = lock_live(&live);
        l.trajectory.turns.truncate(2);
        l.observations.truncate(2);
        l.trajectory.answer = None;
    }
    let mut a = agent(&spec);
    let replayed = replay(&ctx, a.as_mut(), &live).await.unwrap();
    assert_eq!(replayed.turns, 2);
    run_live(&ctx, a, spec, &live, Some(replayed)).await;
    let l = lock_live(&live);
    let t = &l.trajectory;
    assert_eq!(
        (t.stop_reason, t.answer.as_deref()),
        (StopReason::Answered, Some("Simomora"))
    );
    assert_eq!(t.turns.len(), 3);
    let context =
        t.turns[1].prompt_prefix_len + t.turns[1].prompt_ids.len() + t.turns[1].output_ids.len();
    assert_eq!(
        t.turns[2].prompt_prefix_len, context,
        "the new turn extends the replayed context"
    );
}

#[tokio::test]
async fn a_record_the_agent_does_not_retrace_is_a_divergence_naming_the_turn() {
    let ctx = ctx();
    let (spec, live) = recorded(&ctx).await;
    lock_live(&live).trajectory.turns[1].prompt_ids.push(7);
    let err = replay(&ctx, agent(&spec).as_mut(), &live)
        .await
        .unwrap_err();
    assert_eq!(err.turn, 1);
    assert!(err.what.contains("prompt"), "{err}");

    let (spec, live) = recorded(&ctx).await;
    lock_live(&live).trajectory.turns[0].output_text = "<answer>Paris</answer>".into();
    let err = replay(&ctx, agent(&spec).as_mut(), &live)
        .await
        .unwrap_err();
    assert_eq!(err.turn, 0);
    assert!(err.what.contains("read the output"), "{err}");

    let (spec, live) = recorded(&ctx).await;
    lock_live(&live).trajectory.turns[0].prompt_prefix_len = 5;
    let err = replay(&ctx, agent(&spec).as_mut(), &live)
        .await
        .unwrap_err();
    assert_eq!(err.turn, 0);
    assert!(err.what.contains("shares 5 prompt tokens"), "{err}");
}
