use super::*;
use asearcher_agent::agent::{GenFinish, StopReason};
use asearcher_agent::protocol::{parse_turn, ParseOptions};
use asearcher_agent::trajectory::TurnRecord;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

fn turn(text: &str, parsed: bool) -> TurnRecord {
    let p = parse_turn(text, &ParseOptions::default());
    TurnRecord {
        role: if parsed { "act" } else { "notes" }.into(),
        prompt_prefix_len: 0,
        prompt_ids: vec![1],
        output_ids: vec![2],
        output_logprobs: vec![-0.1],
        output_versions: vec![0],
        output_text: text.into(),
        finish: GenFinish::Stop,
        action: if parsed { p.action } else { None },
        issues: if parsed { p.issues } else { Vec::new() },
        tool: None,
        server: None,
        resends: 0,
        gen_latency_ms: 1.0,
    }
}

fn traj(id: &str, golds: &[&str], answer: Option<&str>, turns: Vec<TurnRecord>) -> Trajectory {
    Trajectory {
        id: id.into(),
        question_id: id.into(),
        sample: 0,
        question: "Q?".into(),
        answers: golds.iter().map(|s| s.to_string()).collect(),
        agent: "test".into(),
        turns,
        answer: answer.map(str::to_string),
        stop_reason: StopReason::Answered,
        rewards: BTreeMap::new(),
        reward: None,
        errors: Vec::new(),
        earlier_errors: Vec::new(),
        started_at: 0.0,
        elapsed_s: 0.0,
        metadata: Default::default(),
    }
}

fn answered(id: &str, golds: &[&str], answer: &str) -> Trajectory {
    let turns = vec![
        turn("<search>q</search>", true),
        turn(&format!("<answer>{answer}</answer>"), true),
    ];
    traj(id, golds, Some(answer), turns)
}

#[tokio::test]
async fn the_rule_scorer_records_every_metric_and_gates_the_reward() {
    let mut batch = vec![
        answered("clean", &["Barack Obama"], "Obama"),
        traj(
            "broken",
            &["Obama"],
            Some("Obama"),
            vec![turn("no tag", true), turn("<answer>Obama</answer>", true)],
        ),
        // A notes turn (not parsed by the agent) does not break the format.
        traj(
            "notes",
            &["Obama"],
            Some("Obama"),
            vec![
                turn("some notes", false),
                turn("<answer>Obama</answer>", true),
            ],
        ),
        traj(
            "silent",
            &["Obama"],
            None,
            vec![turn("<search>q</search>", true)],
        ),
        answered("invalid", &["Paris"], "invalid question"),
    ];
    let scorer = RuleScorer::new(RuleRewardConfig {
        invalid_answer_penalty: Some(-0.5),
        ..RuleRewardConfig::default()
    });
    scorer.score(&mut batch).await;
    let get = |t: &Trajectory, k: &str| t.rewards[k];
    let clean = &batch[0];
    assert!((get(clean, "f1") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        (get(clean, "em"), get(clean, "cem"), get(clean, "format")),
        (0.0, 0.0, 1.0)
    );
    assert_eq!(clean.reward, Some(get(clean, "f1")));
    assert_eq!(
        (
            get(&batch[1], "f1"),
            get(&batch[1], "format"),
            batch[1].reward
        ),
        (1.0, 0.0, Some(0.0))
    );
    assert_eq!(
        (get(&batch[2], "format"), batch[2].reward),
        (1.0, Some(1.0))
    );
    assert_eq!((get(&batch[3], "f1"), batch[3].reward), (0.0, Some(0.0)));
    assert_eq!(batch[4].reward, Some(-0.5));

    let mut cem = vec![answered("c", &["Obama"], "Barack Obama")];
    let scorer = RuleScorer::new(RuleRewardConfig {
        metric: RuleMetric::Cem,
        format_gate: false,
        invalid_answer_penalty: None,
    });
    scorer.score(&mut cem).await;
    assert_eq!(
        (cem[0].rewards["cem"], cem[0].rewards["em"], cem[0].reward),
        (1.0, 0.0, Some(1.0))
    );
}

/// Scores an answer's length; raises (with a traceback) for answers containing "boom".
struct LengthPlugin {
    calls: AtomicUsize,
    batch_sizes: Mutex<Vec<usize>>,
    delay: std::time::Duration,
}

impl LengthPlugin {
    fn new(delay_ms: u64) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            batch_sizes: Mutex::new(Vec::new()),
            delay: std::time::Duration::from_millis(delay_ms),
        }
    }
}

#[async_trait]
impl RewardPlugin for LengthPlugin {
    fn name(&self) -> &str {
        "length"
    }
    async fn score_batch(&self, batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>> {
        self.calls.fetch_add(1, SeqCst);
        self.batch_sizes.lock().unwrap().push(batch.len());
        tokio::time::sleep(self.delay).await;
        batch
            .iter()
            .map(|t| {
                let answer = t.answer.clone().unwrap_or_default();
                if answer.contains("boom") {
                    Err(PluginFailure {
                        message: "ValueError: boom".into(),
                        traceback: Some("Traceback (most recent call last):\n  File \"r.py\", line 3\nValueError: boom".into()),
                    })
                } else {
                    Ok(answer.len() as f64)
                }
            })
            .collect()
    }
}

#[tokio::test]
async fn a_plugin_failure_marks_only_its_trajectory() {
    let plugin = Arc::new(LengthPlugin::new(0));
    let pipeline = RewardPipeline::new(RuleScorer::default())
        .with_plugin(plugin.clone())
        .with_primary("length");
    let mut batch = vec![
        answered("a", &["x"], "four"),
        answered("b", &["x"], "boom"),
        answered("c", &["x"], "x"),
    ];
    pipeline.score(&mut batch).await;
    assert_eq!(batch[0].reward, Some(4.0));
    assert_eq!(batch[2].reward, Some(1.0));
    assert_eq!(batch[2].rewards["f1"], 1.0, "rule metrics are recorded too");
    let failed = &batch[1];
    assert_eq!(failed.reward, None);
    assert!(!failed.rewards.contains_key("length"));
    assert_eq!(failed.rewards["f1"], 0.0);
    assert_eq!(failed.errors.len(), 1);
    assert_eq!(failed.errors[0].kind, "reward");
    assert!(failed.errors[0]
        .message
        .contains("reward `length` failed: ValueError: boom"));
    assert!(failed.errors[0]
        .traceback
        .as_deref()
        .unwrap()
        .contains("line 3"));
    assert!(batch[0].errors.is_empty() && batch[2].errors.is_empty());

    // With a rule primary, the plugin's failure leaves the training reward alone.
    let pipeline = RewardPipeline::new(RuleScorer::default()).with_plugin(plugin);
    let mut batch = vec![answered("b", &["boom"], "boom")];
    pipeline.score(&mut batch).await;
    assert_eq!(batch[0].reward, Some(1.0));
    assert_eq!(batch[0].errors.len(), 1);
}

struct WrongCount;

#[async_trait]
impl RewardPlugin for WrongCount {
    fn name(&self) -> &str {
        "wrong"
    }
    async fn score_batch(&self, _batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>> {
        vec![Ok(1.0)]
    }
}

/// A judge-like stage recording under its own key.
struct Judge;

#[async_trait]
impl Scorer for Judge {
    async fn score(&self, batch: &mut [Trajectory]) {
        for t in batch.iter_mut() {
            let verdict = if t.answer.as_deref() == Some("yes") {
                1.0
            } else {
                0.0
            };
            t.rewards.insert("judge".into(), verdict);
        }
    }
}

#[tokio::test]
async fn stages_compose_and_a_missing_primary_is_recorded() {
    let pipeline = RewardPipeline::new(RuleScorer::default())
        .with_plugin(Arc::new(WrongCount))
        .with_stage(Arc::new(Judge))
        .with_primary("judge");
    assert_eq!(pipeline.primary(), "judge");
    let mut batch = vec![answered("a", &["no"], "yes"), answered("b", &["no"], "no")];
    pipeline.score(&mut batch).await;
    assert_eq!(
        batch.iter().map(|t| t.reward).collect::<Vec<_>>(),
        [Some(1.0), Some(0.0)]
    );
    for t in &batch {
        assert!(
            t.errors[0]
                .message
                .contains("returned 1 results for 2 trajectories"),
            "{:?}",
            t.errors
        );
    }
    let unknown = RewardPipeline::new(RuleScorer::default()).with_primary("nobody");
    let mut batch = vec![answered("a", &["x"], "x")];
    unknown.score(&mut batch).await;
    assert_eq!(batch[0].reward, None);
    assert!(batch[0].errors[0]
        .message
        .contains("primary reward `nobody`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_plugin_gathers_concurrent_callers() {
    let inner = Arc::new(LengthPlugin::new(5));
    let batching = Arc::new(BatchingPlugin::new(
        inner.clone(),
        BatchingConfig {
            max_batch: 16,
            max_wait_ms: 50,
        },
    ));
    let stage = Arc::new(PluginScorer::new(batching.clone()));
    assert_eq!(batching.name(), "length");
    let callers: Vec<_> = (0..20)
        .map(|g| {
            let stage = stage.clone();
            tokio::spawn(async move {
                let mut group: Vec<Trajectory> = (0..4)
                    .map(|s| answered(&format!("{g}-{s}"), &["x"], &"a".repeat(g * 4 + s + 1)))
                    .collect();
                if g == 7 {
                    group[2].answer = Some("boom".into());
                }
                stage.score(&mut group).await;
                group
            })
        })
        .collect();
    let mut scored = 0;
    for (g, caller) in callers.into_iter().enumerate() {
        for (s, t) in caller.await.unwrap().into_iter().enumerate() {
            if g == 7 && s == 2 {
                assert_eq!(t.errors[0].kind, "reward");
                assert!(!t.rewards.contains_key("length"));
            } else {
                assert_eq!(
                    t.rewards["length"],
                    (g * 4 + s + 1) as f64,
                    "each result went back to its caller"
                );
                scored += 1;
            }
        }
    }
    assert_eq!(scored, 79);
    let sizes = inner.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 80, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    assert!(
        inner.calls.load(SeqCst) <= 8,
        "80 trajectories in batches of up to 16: {sizes:?}"
    );
}

/// Never answers within any reasonable time.
struct Hangs;

#[async_trait]
impl RewardPlugin for Hangs {
    fn name(&self) -> &str {
        "hangs"
    }
    async fn score_batch(&self, batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>> {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        vec![Ok(0.0); batch.len()]
    }
}

#[tokio::test]
async fn a_config_names_any_recorded_score_as_the_reward() {
    let with = |cfg: RewardConfig| {
        RewardPipeline::from_config(&cfg, vec![Arc::new(LengthPlugin::new(0))], None).unwrap()
    };
    let score = |p: RewardPipeline, answer: &str| {
        let mut batch = vec![answered("a", &["paris"], answer)];
        async move {
            p.score(&mut batch).await;
            batch.remove(0)
        }
    };
    let cfg = |primary: Option<&str>| RewardConfig {
        primary: primary.map(String::from),
        ..RewardConfig::default()
    };
    // Default: the gated rule reward (f1).
    assert_eq!(score(with(cfg(None)), "paris").await.reward, Some(1.0));
    assert_eq!(
        score(with(cfg(Some("format"))), "rome").await.reward,
        Some(1.0)
    );
    assert_eq!(
        score(with(cfg(Some("length"))), "rome").await.reward,
        Some(4.0)
    );
    let weighted = RewardConfig {
        weights: [("f1".to_string(), 1.0), ("length".to_string(), 0.5)].into(),
        ..RewardConfig::default()
    };
    let t = score(with(weighted), "paris").await;
    assert_eq!(t.reward, Some(1.0 + 0.5 * 5.0));
    assert!(t.errors.is_empty(), "{:?}", t.errors);
}

#[test]
fn unknown_reward_names_list_what_is_recorded() {
    let err = |cfg: RewardConfig| {
        RewardPipeline::from_config(&cfg, vec![Arc::new(LengthPlugin::new(0))], None)
            .err()
            .expect("an error")
            .to_string()
    };
    let e = err(RewardConfig {
        primary: Some("lenght".into()),
        ..RewardConfig::default()
    });
    assert!(
        e.contains("reward.primary") && e.contains("`lenght`"),
        "{e}"
    );
    assert!(e.contains("f1, em, cem, format, length"), "{e}");
    let e = err(RewardConfig {
        primary: Some("judge".into()),
        ..RewardConfig::default()
    });
    assert!(e.contains("reward.primary"), "{e}");
    let e = err(RewardConfig {
        weights: [("brevity".to_string(), 1.0)].into(),
        ..RewardConfig::default()
    });
    assert!(e.contains("reward.weights.brevity"), "{e}");
    let e = err(RewardConfig {
        primary: Some("f1".into()),
        weights: [("f1".to_string(), 1.0)].into(),
        ..RewardConfig::default()
    });
    assert!(
        e.contains("reward.weights") && e.contains("not both"),
        "{e}"
    );
    let e = err(RewardConfig {
        plugin_timeout_s: Some(0.0),
        ..RewardConfig::default()
    });
    assert!(e.contains("reward.plugin_timeout_s"), "{e}");
    let judge = Some(Arc::new(Judge) as Arc<dyn Scorer>);
    let cfg = RewardConfig {
        primary: Some("judge".into()),
        ..RewardConfig::default()
    };
    assert!(RewardPipeline::from_config(&cfg, Vec::new(), judge).is_ok());
}

#[tokio::test]
async fn a_hanging_plugin_marks_its_trajectories_and_the_run_goes_on() {
    let cfg = RewardConfig {
        plugin_timeout_s: Some(0.2),
        ..RewardConfig::default()
    };
    let pipeline = RewardPipeline::from_config(&cfg, vec![Arc::new(Hangs)], None).unwrap();
    let mut batch = vec![answered("a", &["x"], "x"), answered("b", &["x"], "y")];
    pipeline.score(&mut batch).await;
    for t in &batch {
        assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
        assert!(t.errors[0]
            .message
            .contains("`hangs` failed: timed out after 0.2 s"));
        assert!(t.rewards.contains_key("f1") && !t.rewards.contains_key("hangs"));
    }
    // The rule reward still trains (the primary is not the plugin).
    assert_eq!(
        batch.iter().map(|t| t.reward).collect::<Vec<_>>(),
        [Some(1.0), Some(0.0)]
    );
}
