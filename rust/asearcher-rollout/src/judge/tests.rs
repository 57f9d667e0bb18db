//! Judge tests against the scripted policy server's OpenAI judge on loopback.

use super::*;
use crate::testkit::tokenizer;
use asearcher_server::{ScriptedPolicyConfig, ScriptedPolicyHandle, ScriptedPolicyServer};

async fn judge_server(garbage_rate: f64) -> ScriptedPolicyHandle {
    let cfg = ScriptedPolicyConfig {
        judge_garbage_rate: garbage_rate,
        ..Default::default()
    };
    ScriptedPolicyServer::start(cfg, tokenizer())
        .await
        .expect("start the scripted server")
}

fn traj(answers: &[&str], answer: Option<&str>) -> Trajectory {
    let mut t = Trajectory::new(
        "q1",
        0,
        "In which city was Grado Rith born?",
        answers.iter().map(|a| a.to_string()).collect(),
        "asearcher",
    );
    t.answer = answer.map(str::to_string);
    t
}

fn scorer(url: &str, max_retries: u32) -> JudgeScorer {
    let cfg = JudgeConfig {
        max_retries,
        ..JudgeConfig::new(url, "scripted-policy")
    };
    JudgeScorer::from_config(cfg).expect("judge config")
}

#[tokio::test]
async fn verdicts_are_scored_one_or_zero() {
    let server = judge_server(0.0).await;
    let judge = scorer(&server.url(), 3);
    let mut batch = vec![
        traj(&["Simomora"], Some("simomora")),
        traj(&["Simomora"], Some("Tragrad")),
        traj(&["Bissti", "Simomora"], Some("The city of Simomora.")),
        traj(&["Simomora"], None),
    ];
    judge.score(&mut batch).await;
    let scores: Vec<f64> = batch.iter().map(|t| t.rewards[JUDGE_KEY]).collect();
    assert_eq!(scores, [1.0, 0.0, 1.0, 0.0]);
    assert!(batch.iter().all(|t| t.errors.is_empty()));
    // 1 + 1 + 2 (first gold incorrect, second correct) + 0 (no answer: no call).
    assert_eq!(server.stats().judge_requests, 4);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_verdict_scores_zero_after_bounded_retries() {
    let server = judge_server(1.0).await;
    let judge = scorer(&server.url(), 2);
    let mut batch = vec![traj(&["Simomora"], Some("Simomora"))];
    judge.score(&mut batch).await;
    let t = &batch[0];
    assert_eq!(t.rewards[JUDGE_KEY], 0.0);
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert_eq!(t.errors[0].kind, "reward");
    assert!(
        t.errors[0].message.contains("Hmm, it is hard to say"),
        "the raw reply is recorded: {}",
        t.errors[0].message
    );
    assert!(t.errors[0].message.contains("after 3 calls"));
    assert_eq!(server.stats().judge_requests, 3, "max_retries + 1 calls");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_judge_is_recorded_not_raised() {
    let server = judge_server(0.0).await;
    let url = server.url();
    server.shutdown().await.unwrap();
    let judge = scorer(&url, 1);
    let mut batch = vec![traj(&["Simomora"], Some("Simomora"))];
    judge.score(&mut batch).await;
    assert_eq!(batch[0].rewards[JUDGE_KEY], 0.0);
    assert!(
        batch[0].errors[0].message.contains("after 2 calls"),
        "{:?}",
        batch[0].errors
    );
}

#[test]
fn verdicts_parse_leniently() {
    let cases = [
        (
            r#"{"rationale": "same", "judgement": "correct"}"#,
            Some(Verdict::Correct),
        ),
        (
            "```json\n{\"rationale\": \"x\", \"judgement\": \"Incorrect\"}\n```",
            Some(Verdict::Incorrect),
        ),
        (
            "Sure. {\"note\": 1} Here: {\"judgement\": \" CORRECT \"} done",
            Some(Verdict::Correct),
        ),
        (r#"{"judgment": "incorrect"}"#, Some(Verdict::Incorrect)),
        (r#"{"judgement": "maybe"}"#, None),
        ("correct", None),
        ("{not json", None),
        ("", None),
    ];
    for (reply, want) in cases {
        assert_eq!(parse_verdict(reply), want, "{reply}");
    }
}

#[test]
fn prompts_hold_the_convention_lines() {
    let p = render_prompt(DEFAULT_JUDGE_PROMPT, "Q?", "Koford", "It is\nKoford");
    assert!(p.contains("\nGround truth: Koford\n"), "{p}");
    assert!(p.contains("\nResponse: It is Koford\n"), "{p}");
    assert!(p.contains("Question: Q?"), "{p}");
}

#[test]
fn bad_configs_name_their_field() {
    let err =
        serde_json::from_str::<JudgeConfig>(r#"{"url": "http://x", "model": "m", "retries": 2}"#)
            .unwrap_err();
    assert!(err.to_string().contains("retries"), "{err}");
    let cfg: JudgeConfig = serde_json::from_str(r#"{"url": "http://x", "model": "m"}"#).unwrap();
    assert_eq!((cfg.max_retries, cfg.temperature), (3, 0.0));
    let cases = [
        (
            JudgeConfig {
                max_retries: 11,
                ..cfg.clone()
            },
            "judge.max_retries",
        ),
        (
            JudgeConfig {
                prompt: "Ground truth: {ground_truth}".into(),
                ..cfg.clone()
            },
            "judge.prompt",
        ),
        (
            JudgeConfig {
                timeout_s: 0.0,
                ..cfg.clone()
            },
            "judge.timeout_s",
        ),
        (
            JudgeConfig {
                url: "not a url".into(),
                ..cfg.clone()
            },
            "judge.url",
        ),
    ];
    for (bad, field) in cases {
        let err = JudgeScorer::from_config(bad)
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains(&format!("`{field}`")), "{err}");
    }
}
