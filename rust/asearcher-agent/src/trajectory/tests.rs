//! Trajectory records: deltas, counters, jsonl round trip and torn lines, HTML.

use super::*;
use crate::agents::tests::{drive, tokenizer};
use crate::agents::{build_agent, AgentConfig, AgentKind};

fn sample_run() -> Trajectory {
    let cfg = AgentConfig::new(AgentKind::Asearcher);
    let mut agent = build_agent(&cfg, tokenizer(), "Who wrote <Dracula> & why?").unwrap();
    let outputs = [
        "<search>Dracula author</search>",
        "x < y",
        "<answer>Bram Stoker</answer>",
    ];
    let mut run = drive(
        agent.as_mut(),
        |_, t| outputs[t].to_string(),
        |_| ToolObservation {
            text: "[Doc 1](u):\nBram Stoker wrote Dracula.".into(),
            ..ToolObservation::default()
        },
    )
    .traj;
    run.question = "Who wrote <Dracula> & why?".into();
    run.rewards.insert("f1".into(), 1.0);
    run.reward = Some(1.0);
    run.errors.push(TrajectoryError {
        kind: "reward".into(),
        message: "plugin <bad> raised".into(),
        traceback: Some("Traceback...\nValueError".into()),
        turn: Some(2),
        stage: Some("bad".into()),
    });
    run
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("asearcher-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn delta_is_the_common_prefix() {
    assert_eq!(delta(&[1, 2, 3, 4], &[1, 2, 9]), (2, vec![9]));
    assert_eq!(delta(&[1, 2], &[1, 2, 3]), (2, vec![3]));
    assert_eq!(delta(&[], &[5]), (0, vec![5]));
}

#[test]
fn counters_and_action_turns() {
    let t = sample_run();
    assert_eq!(t.num_turns(), 3);
    assert_eq!(t.tool_calls(), 1);
    assert_eq!(t.failed(), 1);
    assert_eq!(
        t.output_tokens(),
        t.turns.iter().map(|t| t.output_ids.len()).sum::<usize>()
    );
    assert!(t.output_tokens() > 10);
    assert_eq!(t.action_turns().len(), 3);
    assert!(!crate::reward::format_ok(&t.action_turns()));
}

#[test]
fn a_corrupt_prefix_is_an_error_not_a_panic() {
    let mut t = sample_run();
    t.turns[1].prompt_prefix_len = 1_000_000;
    let err = t.to_sequences().unwrap_err();
    assert_eq!((err.turn, err.field), (1, "prompt_prefix_len"));
    assert_eq!(t.full_prompt_ids(1), None);
}

#[test]
fn jsonl_round_trip_and_torn_lines() {
    let path = temp_path("round_trip.jsonl");
    let a = sample_run();
    let mut b = a.clone();
    b.id = "q1#1".into();
    b.sample = 1;
    append_jsonl(&path, &[a.clone(), b.clone()]).unwrap();
    let back = read_jsonl(&path, TornLine::Error).unwrap();
    assert_eq!(back, vec![a.clone(), b.clone()]);
    assert_eq!(
        Trajectory::from_json_line(&a.to_json_line().unwrap()).unwrap(),
        a
    );

    // A writer killed mid-line, then a resumed run appending after it.
    let line = b.to_json_line().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
    drop(file);
    assert_eq!(read_jsonl(&path, TornLine::Skip).unwrap().len(), 2);
    let err = read_jsonl(&path, TornLine::Error).unwrap_err().to_string();
    assert!(err.contains(&format!("{}:3:", path.display())), "{err}");
    append_jsonl(&path, std::slice::from_ref(&a)).unwrap();
    let back = read_jsonl(&path, TornLine::Skip).unwrap();
    assert_eq!(back, vec![a.clone(), b, a]);

    // A line that is not a trajectory at all is always an error naming path:line.
    let bad = temp_path("bad.jsonl");
    std::fs::write(&bad, "{\"id\": 3}\n").unwrap();
    let err = read_jsonl(&bad, TornLine::Skip).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:1:", bad.display())), "{err}");
    let missing = read_jsonl(temp_path("missing.jsonl"), TornLine::Skip).unwrap_err();
    assert!(missing.to_string().contains("missing.jsonl"));
}

#[test]
fn html_escapes_and_folds() {
    let mut t = sample_run();
    t.turns[1].output_text = format!("<script>alert(1)</script>{}", "z".repeat(2_000));
    let html = t.to_html();
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("Who wrote &lt;Dracula&gt; &amp; why?"));
    assert!(html.contains("plugin &lt;bad&gt; raised"));
    assert!(html.contains("<details><summary>"));
    assert!(html.contains("Bram Stoker"));
    assert!(html.contains("NoAction"));
    assert!(html.contains("search <code>Dracula author</code> &middot; 1.5 ms"));
    // What the agent saw, and in the record.
    assert!(
        html.contains("what the agent saw</summary><pre>[Doc 1](u):\nBram Stoker wrote Dracula.")
    );
    let tool = t.turns.iter().find_map(|turn| turn.tool.as_ref()).unwrap();
    assert_eq!(
        tool.observation.as_deref(),
        Some("[Doc 1](u):\nBram Stoker wrote Dracula.")
    );
}
