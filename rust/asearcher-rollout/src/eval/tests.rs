//! Evaluation tests: the scripted policy server (SGLang `/generate` and its OpenAI judge) on
//! loopback behind a [`ServerPool`], the asearcher agent, a real BM25 index over the sample
//! corpus, and benchmarks written to a temporary directory.

use super::*;
use crate::client::pool::{PoolConfig, ServerPool};
use crate::testkit::{tokenizer, toolbox};
use asearcher_server::{ScriptedPolicyConfig, ScriptedPolicyHandle, ScriptedPolicyServer};
use std::sync::Mutex;

const SAMPLE_QUESTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_questions.jsonl"
);

/// `alpha` (4 questions) and `beta` (3), plus a directory that is not a benchmark.
fn write_benchmarks(root: &Path) {
    let text = std::fs::read_to_string(SAMPLE_QUESTIONS).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (name, range) in [("alpha", 0..4), ("beta", 10..13)] {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(QUESTIONS_FILE), lines[range].join("\n") + "\n").unwrap();
    }
    std::fs::create_dir_all(root.join("notes")).unwrap();
}

async fn policy_server(wrong_rate: f64) -> ScriptedPolicyHandle {
    let cfg = ScriptedPolicyConfig {
        questions_file: Some(SAMPLE_QUESTIONS.into()),
        wrong_rate,
        ..Default::default()
    };
    ScriptedPolicyServer::start(cfg, tokenizer()).await.unwrap()
}

fn parts(url: &str) -> EvalParts {
    let pool = ServerPool::sglang(&[url], PoolConfig::default()).unwrap();
    EvalParts {
        backend: Arc::new(pool),
        toolbox: Some(toolbox()),
        tokenizer: tokenizer(),
        plugins: Vec::new(),
    }
}

/// The asearcher agent with its default instructions and a line break after the question: the
/// scripted server reads the question to the end of its line, and the chat template puts
/// `<|im_end|>` right after the default template's last line (see the report of this branch).
fn agent() -> AgentConfig {
    let mut prompt =
        asearcher_agent::prompts::template_specs(asearcher_agent::agents::AgentKind::Asearcher)
            .iter()
            .find(|t| t.name == "prompt")
            .map(|t| t.default.to_string())
            .unwrap();
    prompt.push('\n');
    let mut cfg = AgentConfig::default();
    cfg.prompts.insert("prompt".to_string(), prompt);
    cfg
}

fn config(data: &Path, out: &Path, k: u32) -> EvalConfig {
    EvalConfig {
        agent: agent(),
        k,
        output_dir: out.to_path_buf(),
        rollout: RolloutConfig {
            max_concurrent: 16,
            ..Default::default()
        },
        ..EvalConfig::new(data)
    }
}

fn no_progress(_: EvalProgress) {}

/// Avg@k and Pass@k of `key` recomputed by hand from a trajectories file.
fn by_hand(file: &Path, key: &str) -> (f64, f64) {
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in std::fs::read_to_string(file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let qid = v["question_id"].as_str().unwrap().to_string();
        runs.entry(qid)
            .or_default()
            .push(v["rewards"][key].as_f64().unwrap());
    }
    let n = runs.len() as f64;
    let avg = runs
        .values()
        .map(|r| r.iter().sum::<f64>() / r.len() as f64)
        .sum::<f64>()
        / n;
    let pass = runs
        .values()
        .map(|r| r.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / n;
    (avg, pass)
}

use std::collections::BTreeMap;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_benchmarks_report_avg_and_pass_at_k_from_the_saved_trajectories() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.5).await;
    let events = Mutex::new(Vec::new());
    let record = |p: EvalProgress| events.lock().unwrap().push(p);
    let report = run_eval(&config(&data, &out, 3), parts(&server.url()), &record)
        .await
        .unwrap();

    let names: Vec<&str> = report.benchmarks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "sorted, `notes` is no benchmark");
    let mut em_gap = false;
    for (b, n) in report.benchmarks.iter().zip([4, 3]) {
        assert_eq!(
            (b.questions, b.trajectories, b.ran, b.resumed),
            (n, 3 * n, 3 * n, 0)
        );
        assert!(
            b.mean_turns >= 2.0,
            "one search, then an answer: {}",
            b.mean_turns
        );
        let file = out.join(&b.name).join(TRAJECTORIES_FILE);
        for key in ["f1", "em", "cem", "format"] {
            let m = b
                .metrics
                .get(key)
                .unwrap_or_else(|| panic!("{key} missing"));
            assert!(m.avg_at_k <= m.pass_at_k + 1e-12, "{key}: {m:?}");
            let (avg, pass) = by_hand(&file, key);
            assert!(
                close(m.avg_at_k, avg) && close(m.pass_at_k, pass),
                "{key}: {m:?} vs ({avg}, {pass})"
            );
        }
        em_gap |= b.metrics["em"].avg_at_k < b.metrics["em"].pass_at_k;
    }
    assert!(
        em_gap,
        "with wrong answers half the time some question is right only sometimes"
    );

    let saved: EvalReport =
        serde_json::from_str(&std::fs::read_to_string(out.join(RESULTS_FILE)).unwrap()).unwrap();
    assert_eq!(saved, report);
    let table = report.to_table();
    assert!(
        table.lines().next().unwrap().contains("em avg@3"),
        "{table}"
    );
    assert!(
        table.lines().nth(2).unwrap().starts_with("beta "),
        "{table}"
    );

    let events = events.into_inner().unwrap();
    for (name, total) in [("alpha", 12), ("beta", 9)] {
        let dones: Vec<usize> = events
            .iter()
            .filter(|e| e.benchmark == name)
            .map(|e| e.done)
            .collect();
        assert_eq!(dones.first(), Some(&0));
        assert_eq!(dones.last(), Some(&total));
        assert!(dones.windows(2).all(|w| w[0] < w[1]), "{dones:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_only_runs_what_the_file_lacks_and_reports_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.3).await;
    let cfg = config(&data, &out, 2);
    let first = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();

    // An interruption: alpha keeps its first two groups and a torn line; beta is whole.
    let file = out.join("alpha").join(TRAJECTORIES_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    let kept_ids: BTreeSet<String> = lines[..4]
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kept_ids.len(),
        2,
        "groups are written whole, one after the other"
    );
    let torn = &lines[4][..lines[4].len() / 2];
    std::fs::write(&file, format!("{}\n{torn}", lines[..4].join("\n"))).unwrap();
    let before = server.stats().requests;

    let second = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    let alpha = &second.benchmarks[0];
    assert_eq!((alpha.resumed, alpha.ran), (4, 4));
    assert_eq!(
        (second.benchmarks[1].resumed, second.benchmarks[1].ran),
        (6, 0)
    );
    assert!(
        server.stats().requests > before,
        "the missing questions ran"
    );
    let rerun: Vec<Trajectory> = read_trajectories(&file).unwrap();
    assert_eq!(
        rerun.len(),
        8,
        "the torn line is skipped, nothing is counted twice"
    );
    let new_ids: BTreeSet<&str> = rerun[4..].iter().map(|t| t.question_id.as_str()).collect();
    assert!(
        new_ids.is_disjoint(&kept_ids.iter().map(String::as_str).collect()),
        "finished questions are not re-run"
    );
    for (a, b) in first.benchmarks.iter().zip(&second.benchmarks) {
        assert_eq!(a.metrics, b.metrics, "{}", a.name);
        assert_eq!((a.questions, a.trajectories), (b.questions, b.trajectories));
    }

    // A third run finds everything done and sends no request.
    let before = server.stats().requests;
    let third = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    assert_eq!(server.stats().requests, before);
    assert!(third.benchmarks.iter().all(|b| b.ran == 0));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_is_a_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.5).await;
    let cfg = EvalConfig {
        benchmarks: Some(vec!["beta".into()]),
        judge: Some(JudgeConfig::new(server.url(), "scripted-policy")),
        ..config(&data, &out, 2)
    };
    let report = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    assert_eq!(report.judge.as_deref(), Some("scripted-policy"));
    let b = &report.benchmarks[0];
    let judge = b.metrics["judge"];
    assert!(judge.avg_at_k <= judge.pass_at_k);
    let trajectories = read_trajectories(&out.join("beta").join(TRAJECTORIES_FILE)).unwrap();
    for t in &trajectories {
        // The scripted answers are a gold answer or a word that is none: judge and CEM agree.
        assert_eq!(
            t.rewards["judge"], t.rewards["cem"],
            "{:?} vs {:?}",
            t.answer, t.answers
        );
    }
    let answered = trajectories.iter().filter(|t| t.answer.is_some()).count() as u64;
    let judged = server.stats().judge_requests;
    assert!(
        judged >= answered && answered > 0,
        "{judged} judge calls for {answered} answers"
    );
    assert!(report.to_table().contains("judge pass@2"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_layouts_and_lines_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.0).await;
    let run = |cfg: EvalConfig| {
        let parts = parts(&server.url());
        async move {
            run_eval(&cfg, parts, &no_progress)
                .await
                .unwrap_err()
                .to_string()
        }
    };

    let missing = EvalConfig {
        benchmarks: Some(vec!["gamma".into()]),
        ..config(&data, &out, 1)
    };
    let err = run(missing).await;
    assert!(
        err.contains(
            &data
                .join("gamma")
                .join(QUESTIONS_FILE)
                .display()
                .to_string()
        ),
        "{err}"
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = run(config(&empty, &out, 1)).await;
    assert!(
        err.contains("`data_dir`") && err.contains(&empty.display().to_string()),
        "{err}"
    );

    let err = run(config(&tmp.path().join("nowhere"), &out, 1)).await;
    assert!(err.contains("nowhere"), "{err}");

    let beta = data.join("beta").join(QUESTIONS_FILE);
    let mut text = std::fs::read_to_string(&beta).unwrap();
    text.push_str("{\"question\": \"no answer?\"}\n");
    std::fs::write(&beta, text).unwrap();
    let err = run(config(&data, &out, 1)).await;
    assert!(
        err.contains(&format!("{}:4:", beta.display())) && err.contains("answer"),
        "{err}"
    );
    server.shutdown().await.unwrap();
}

#[test]
fn configs_name_bad_fields() {
    let err = serde_json::from_str::<EvalConfig>(r#"{"data_dir": "d", "kk": 3}"#).unwrap_err();
    assert!(err.to_string().contains("kk"), "{err}");
    let cfg: EvalConfig =
        serde_json::from_str(r#"{"data_dir": "d", "rollout": {"max_concurrent": 8}}"#).unwrap();
    assert_eq!(
        (cfg.k, cfg.output_dir.as_path()),
        (4, Path::new("eval_out"))
    );
    let rollout = cfg.rollout_config();
    assert_eq!(
        (rollout.group_size, rollout.max_staleness, rollout.on_error),
        (4, None, OnError::Keep)
    );
    let cases = [
        (
            EvalConfig {
                k: 0,
                ..cfg.clone()
            },
            "`k`",
        ),
        (
            EvalConfig {
                k: 9,
                ..cfg.clone()
            },
            "`rollout.max_concurrent`",
        ),
        (
            EvalConfig {
                max_questions: Some(0),
                ..cfg.clone()
            },
            "`max_questions`",
        ),
    ];
    for (bad, field) in cases {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn avg_and_pass_follow_the_definitions() {
    let qs = vec![
        crate::questions::Question::new("a", "qa?", vec!["x".into()]),
        crate::questions::Question::new("b", "qb?", vec!["y".into()]),
    ];
    let t = |qid: &str, sample: u32, em: Option<f64>| {
        let mut t = Trajectory::new(qid, sample, "q", vec![], "test");
        if let Some(v) = em {
            t.rewards.insert("em".into(), v);
        }
        t
    };
    let trajs = vec![
        t("a", 0, Some(1.0)),
        t("a", 1, Some(0.0)),
        t("a", 2, None),      // a run without the metric counts 0
        t("a", 1, Some(1.0)), // a later record of (question, sample): it supersedes
        t("b", 0, Some(0.0)),
        t("b", 5, Some(1.0)),  // sample >= k: ignored
        t("zz", 0, Some(1.0)), // not a question of the benchmark
    ];
    let r = summarize("x", 3, &qs, &trajs);
    assert_eq!((r.questions, r.trajectories), (2, 4));
    let em = r.metrics["em"];
    assert!(close(em.avg_at_k, (2.0 / 3.0 + 0.0) / 2.0), "{em:?}");
    assert!(close(em.pass_at_k, 0.5), "{em:?}");
}

/// A reward plugin that raises on every trajectory.
struct Broken;

#[async_trait::async_trait]
impl RewardPlugin for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    async fn score_batch(
        &self,
        batch: &[Trajectory],
    ) -> Vec<Result<f64, crate::reward::PluginFailure>> {
        batch
            .iter()
            .map(|_| {
                Err(crate::reward::PluginFailure {
                    message: "ValueError: no".into(),
                    traceback: None,
                })
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_errors_everywhere_shows_as_errors_not_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.0).await;
    let cfg = EvalConfig {
        benchmarks: Some(vec!["beta".into()]),
        ..config(&data, &out, 2)
    };
    let mut p = parts(&server.url());
    p.plugins = vec![Arc::new(Broken)];
    let report = run_eval(&cfg, p, &no_progress).await.unwrap();
    let b = &report.benchmarks[0];
    assert_eq!(
        b.reward_errors.get("broken"),
        Some(&6),
        "{:?}",
        b.reward_errors
    );
    assert_eq!(b.with_reward_errors, 6);
    assert!(!b.metrics.contains_key("broken"));
    assert!(report.metric_keys().contains(&"broken".to_string()));
    let table = report.to_table();
    assert!(
        table.contains("broken avg@2") && table.contains("error"),
        "{table}"
    );
    assert!(table.contains("reward err"), "{table}");
    let warnings = report.warnings(cfg.warn_error_rate);
    assert!(
        warnings.iter().any(|w| w.contains("`broken`")),
        "{warnings:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_trajectories_are_re_run_on_resume_keeping_their_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let cfg = EvalConfig {
        benchmarks: Some(vec!["beta".into()]),
        ..config(&data, &out, 2)
    };
    // A dead server: every trajectory fails, the run is an error, the results are saved.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let err = run_eval(&cfg, parts(&dead), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::RunFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("every trajectory failed (6 of 6)") && msg.contains("inference"),
        "{msg}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(RESULTS_FILE)).unwrap()).unwrap();
    assert_eq!(saved["benchmarks"][0]["failed"], 6);

    // The right server: the failed ones run again (they were never done).
    let server = policy_server(0.0).await;
    let report = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    let b = &report.benchmarks[0];
    assert_eq!((b.resumed, b.ran, b.failed), (0, 6, 0));
    assert!(b.metrics["f1"].avg_at_k > 0.9);
    let file = out.join("beta").join(TRAJECTORIES_FILE);
    let all = read_trajectories(&file).unwrap();
    assert_eq!(all.len(), 12, "the failed records stay in the file");
    for t in &all[6..] {
        assert!(!t.earlier_errors.is_empty(), "{}", t.id);
        assert_eq!(t.earlier_errors[0].kind, "inference");
    }
    server.shutdown().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_of_another_setup_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    let server = policy_server(0.3).await;
    let cfg = EvalConfig {
        benchmarks: Some(vec!["beta".into()]),
        ..config(&data, &out, 2)
    };
    let first = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = vec![];
        for p in [RESULTS_FILE, "fingerprint.json", "beta/trajectories.jsonl"] {
            files.push((dir.join(p), std::fs::read(dir.join(p)).unwrap()));
        }
        files
    };
    let before = snapshot(&out);

    let mut changed = cfg.clone();
    changed.agent.max_turns = Some(20);
    changed.agent.sampling.temperature = 0.5;
    let err = run_eval(&changed, parts(&server.url()), &no_progress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RolloutError::ResumeMismatch(_)), "{msg}");
    assert!(
        msg.contains("agent.max_turns") && msg.contains("agent.sampling.temperature"),
        "{msg}"
    );
    assert!(msg.contains("--restart"), "{msg}");

    // Changed data: a saved question's text differs.
    let q = data.join("beta").join(QUESTIONS_FILE);
    let text = std::fs::read_to_string(&q).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[0]["question"] = "A different question?".into();
    let edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&q, edited.join("\n") + "\n").unwrap();
    let err = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.beta."), "{err}");
    std::fs::write(&q, &text).unwrap();
    assert_eq!(snapshot(&out), before, "refused resumes write nothing");

    // Unchanged: resumed with identical metrics and nothing run.
    let again = run_eval(&cfg, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    assert_eq!(again.benchmarks[0].metrics, first.benchmarks[0].metrics);
    assert_eq!(again.benchmarks[0].ran, 0);

    // Deliberate changes are recorded; a restart starts over.
    let allowed = EvalConfig {
        resume: ResumeMode::AllowChanges,
        ..changed.clone()
    };
    run_eval(&allowed, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    let fp = fingerprint::read(&out).unwrap().unwrap();
    assert_eq!(fp.history.len(), 1);
    assert!(fp.history[0]
        .changes
        .iter()
        .any(|d| d.key == "agent.max_turns"));
    let restart = EvalConfig {
        resume: ResumeMode::Restart,
        ..changed
    };
    let fresh = run_eval(&restart, parts(&server.url()), &no_progress)
        .await
        .unwrap();
    assert_eq!(
        (fresh.benchmarks[0].resumed, fresh.benchmarks[0].ran),
        (0, 6)
    );
    assert!(fingerprint::read(&out).unwrap().unwrap().history.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systematic_failures_stop_the_run_and_name_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    write_benchmarks(&data);
    // Every trajectory fails the same way (a dead server): stopped after fail_fast_after.
    let cfg = config(&data, &out, 4);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let err = run_eval(&cfg, parts(&dead), &no_progress)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RolloutError::Systematic { .. }), "{msg}");
    assert!(
        msg.contains("first 8 trajectories") && msg.contains("inference.servers"),
        "{msg}"
    );

    // No toolbox: every search fails with the same error.
    let server = policy_server(0.0).await;
    let mut p = parts(&server.url());
    p.toolbox = None;
    let cfg = EvalConfig {
        output_dir: tmp.path().join("out2"),
        ..config(&data, &out, 4)
    };
    let err = run_eval(&cfg, p, &no_progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tool calls") && err.contains("toolbox="),
        "{err}"
    );

    // Off: the run ends with every trajectory failed instead.
    let mut cfg = EvalConfig {
        output_dir: tmp.path().join("out3"),
        ..config(&data, &out, 4)
    };
    cfg.rollout.fail_fast_after = None;
    let err = run_eval(&cfg, parts(&dead), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::RunFailed { .. }), "{err}");
    server.shutdown().await.unwrap();
}
