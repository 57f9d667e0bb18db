//! A whole run: seeds read and checked, the event log read back (finished seeds are not redone),
//! pending seeds grown concurrently, each finished one appended to the log, then the output
//! files written from the log in seed order.

use crate::config::{Role, SynthConfig};
use crate::ledger::Seed;
use crate::llm::RoleClient;
use crate::machine::{grow, Ctx, SeedOutcome};
use crate::{Result, SynthError};
use asearcher_tools::Toolbox;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub const EVENTS: &str = "events.jsonl";

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    pub seeds: usize,
    /// Seeds finished by an earlier run and read back from the log.
    pub resumed: usize,
    /// Seeds with at least one committed edit (the QAs written).
    pub accepted: usize,
    pub report: Value,
}

/// Reads a seeds jsonl: `question`, `answer` (a string or a list: gold first) or `answers`,
/// optional `id` (default `<file stem>-<line>`), `facts`, `hops`. Bad lines, duplicate ids and
/// an empty file are errors naming the line.
pub fn read_seeds(path: &Path) -> Result<Vec<Seed>> {
    let text = std::fs::read_to_string(path).map_err(|e| SynthError::io(path, e))?;
    let stem = path
        .file_stem()
        .map_or("seed".into(), |s| s.to_string_lossy().into_owned());
    let mut seeds = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| SynthError::BadSeed {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let question = v
            .get("question")
            .and_then(Value::as_str)
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| bad("no `question` string".into()))?;
        let answer: Vec<String> = match v.get("answer").or_else(|| v.get("answers")) {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if answer.iter().all(|a| a.trim().is_empty()) {
            return Err(bad("no `answer` (a string or a list of strings)".into()));
        }
        let id = v
            .get("id")
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .unwrap_or_else(|| format!("{stem}-{}", i + 1));
        if !seen.insert(id.clone()) {
            return Err(bad(format!("duplicate id {id:?}")));
        }
        let facts = v
            .get("facts")
            .and_then(Value::as_array)
            .map(|f| {
                f.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let hops = v.get("hops").and_then(Value::as_u64).unwrap_or(1) as u32;
        seeds.push(Seed {
            id,
            question: question.to_string(),
            answer,
            facts,
            hops,
        });
    }
    if seeds.is_empty() {
        return Err(SynthError::BadSeed {
            path: path.to_path_buf(),
            line: 0,
            msg: "no seeds in the file".into(),
        });
    }
    Ok(seeds)
}

fn sha16(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The id of the QA grown from `seed` under a config: the same inputs, the same id.
fn qa_id(seed: &Seed, config_sha: &str) -> String {
    let key = format!("{}\0{}\0{}", seed.id, seed.question, config_sha);
    format!("syn-{}", sha16(key.as_bytes()))
}

/// The config's identity: everything that changes what is generated (not concurrency).
fn config_sha(config: &SynthConfig) -> String {
    let mut v = serde_json::to_value(config).expect("a config serialises");
    v.as_object_mut().map(|o| {
        o.remove("max_concurrent_seeds");
        o.remove("limit")
    });
    for role in ["proposer", "rewriter", "judge", "solver"] {
        if let Some(r) = v.get_mut(role).and_then(Value::as_object_mut) {
            for k in [
                "url",
                "api_key_env",
                "timeout_s",
                "max_attempts",
                "max_concurrent",
            ] {
                r.remove(k);
            }
        }
    }
    sha16(v.to_string().as_bytes())
}

fn clients(config: &SynthConfig) -> Result<[Arc<RoleClient>; 4]> {
    let mut limits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut make = |role: Role| -> Result<Arc<RoleClient>> {
        let rc = config.role(role);
        let limit = limits
            .entry(rc.url.trim_end_matches('/').to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(rc.max_concurrent.max(1))))
            .clone();
        Ok(Arc::new(RoleClient::new(role, rc, limit)?))
    };
    Ok([
        make(Role::Proposer)?,
        make(Role::Rewriter)?,
        make(Role::Judge)?,
        make(Role::Solver)?,
    ])
}

/// Outcomes already in the log, by seed id; refuses a log written under another config.
fn read_log(path: &Path, sha: &str) -> Result<HashMap<String, SeedOutcome>> {
    let mut done = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(done);
    };
    for (i, line) in text.lines().enumerate() {
        // A line cut by a kill is incomplete JSON: the seed is simply redone.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        match v.get("kind").and_then(Value::as_str) {
            Some("header") if v["config_sha"] != sha => {
                return Err(SynthError::config(
                    "config",
                    format!(
                        "{} was written by a run with another config (sha {}; this one is \
                         {sha}): use another output directory, or the same config",
                        path.display(),
                        v["config_sha"]
                    ),
                ))
            }
            Some("finished") => {
                let outcome: SeedOutcome =
                    serde_json::from_value(v["outcome"].clone()).map_err(|e| {
                        SynthError::BadSeed {
                            path: path.to_path_buf(),
                            line: i + 1,
                            msg: format!("unreadable outcome: {e}"),
                        }
                    })?;
                done.insert(outcome.seed.id.clone(), outcome);
            }
            _ => {}
        }
    }
    Ok(done)
}

/// The event log, appended to by the run's own loop only (one writer).
struct Log {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Log {
    fn append(&mut self, v: &Value) -> Result<()> {
        writeln!(self.file, "{v}")
            .and_then(|()| self.file.flush())
            .map_err(|e| SynthError::io(&self.path, e))
    }
}

/// Seeds whose calls all went unanswered, with nothing answered before, that stop a run.
const UNANSWERED_LIMIT: usize = 4;

/// The endpoint error of a seed that got no LLM answer at all (every rejection `llm_error`).
fn endpoint_failure(o: &SeedOutcome) -> Option<String> {
    let all_failed = !o.rejects.is_empty() && o.rejects.iter().all(|r| r == "llm_error");
    if !all_failed || !o.state.edits.is_empty() {
        return None;
    }
    let detail = o.steps.iter().rev().find_map(|s| {
        (s.kind == "reject").then(|| s.detail["detail"].as_str().unwrap_or_default().to_string())
    });
    Some(detail.unwrap_or_default())
}

/// Grows every seed not finished yet into `out`, then writes the outputs (see the crate docs).
/// `on_seed(finished, total)` after each seed.
pub async fn synthesize(
    config: &SynthConfig,
    seeds: Vec<Seed>,
    out: &Path,
    name: &str,
    toolbox: Toolbox,
    on_seed: &(dyn Fn(usize, usize) + Sync),
) -> Result<RunStats> {
    config.validate()?;
    let seeds: Vec<Seed> = if config.limit > 0 {
        seeds.into_iter().take(config.limit).collect()
    } else {
        seeds
    };
    std::fs::create_dir_all(out).map_err(|e| SynthError::io(out, e))?;
    let sha = config_sha(config);
    let log_path = out.join(EVENTS);
    let mut done = read_log(&log_path, &sha)?;
    let fresh = !log_path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SynthError::io(&log_path, e))?;
    let mut log = Log {
        file,
        path: log_path.clone(),
    };
    if fresh {
        log.append(&json!({"kind": "header", "config_sha": sha, "config": config}))?;
    }
    let [proposer, rewriter, judge, solver] = clients(config)?;
    let ctx = Ctx {
        config: config.clone(),
        proposer,
        rewriter,
        judge,
        solver,
        toolbox,
    };
    let resumed = seeds.iter().filter(|s| done.contains_key(&s.id)).count();
    let total = seeds.len();
    let mut finished = resumed;
    on_seed(resumed, total);
    let pending: Vec<Seed> = seeds
        .iter()
        .filter(|s| !done.contains_key(&s.id))
        .cloned()
        .collect();
    let mut stream = futures::stream::iter(pending.into_iter().map(|s| grow(&ctx, s)))
        .buffer_unordered(config.max_concurrent_seeds.max(1));
    let (mut answered, mut unanswered) = (resumed, 0);
    while let Some(outcome) = stream.next().await {
        // A seed whose every call failed at the endpoint is not finished: a later run redoes it.
        if let Some(detail) = endpoint_failure(&outcome) {
            unanswered += 1;
            if answered == 0 && (unanswered >= UNANSWERED_LIMIT || unanswered == total) {
                return Err(SynthError::Unanswered {
                    seeds: unanswered,
                    detail,
                });
            }
            continue;
        }
        answered += 1;
        log.append(&json!({"kind": "finished", "outcome": outcome}))?;
        finished += 1;
        on_seed(finished, total);
        done.insert(outcome.seed.id.clone(), outcome);
    }
    drop(stream);
    let outcomes: Vec<&SeedOutcome> = seeds.iter().filter_map(|s| done.get(&s.id)).collect();
    write_outputs(config, &sha, &outcomes, out, name)?;
    let report = report(&outcomes);
    write_json(&out.join("report.json"), &report)?;
    Ok(RunStats {
        seeds: total,
        resumed,
        accepted: outcomes
            .iter()
            .filter(|o| !o.state.edits.is_empty())
            .count(),
        report,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialises");
    std::fs::write(path, text + "\n").map_err(|e| SynthError::io(path, e))
}

fn write_lines(path: &Path, lines: &[Value]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SynthError::io(dir, e))?;
    }
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| SynthError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SynthError::io(path, e))
}

fn write_outputs(
    config: &SynthConfig,
    sha: &str,
    outcomes: &[&SeedOutcome],
    out: &Path,
    name: &str,
) -> Result<()> {
    let mut qas = Vec::new();
    let mut provenance = Vec::new();
    let prompts = &config.prompts;
    let prompt_sha: BTreeMap<&str, String> = [
        ("propose", &prompts.propose),
        ("inject", &prompts.inject),
        ("fuzz", &prompts.fuzz),
        ("judge", &prompts.judge),
        ("solve", &prompts.solve),
    ]
    .into_iter()
    .map(|(k, t)| (k, sha16(t.as_bytes())))
    .collect();
    let models: BTreeMap<&str, String> =
        [Role::Proposer, Role::Rewriter, Role::Judge, Role::Solver]
            .into_iter()
            .map(|r| (r.name(), config.role(r).model))
            .collect();
    for o in outcomes {
        let id = qa_id(&o.seed, sha);
        let s = &o.state;
        let accepted = !s.edits.is_empty();
        if accepted {
            qas.push(json!({
                "id": id, "question": s.question, "answer": s.answer, "hops": s.hops,
                "n_inject": s.n_inject, "n_fuzz": s.n_fuzz, "solve_rate": s.solve_rate,
                "tool_calls_median": Value::Null, "source": o.seed.id,
            }));
        }
        provenance.push(json!({
            "id": id, "source": o.seed.id, "accepted": accepted, "ended_by": o.ended_by,
            "seed": o.seed, "final": s, "steps": o.steps, "llm_calls": o.llm_calls,
            "tool_calls": o.tool_calls, "models": models, "prompt_sha256": prompt_sha,
            "config_sha256": sha,
        }));
    }
    write_lines(&out.join("qas.jsonl"), &qas)?;
    write_lines(&out.join(name).join("test.jsonl"), &qas)?;
    write_lines(&out.join("provenance.jsonl"), &provenance)
}

/// The stage a rejection code belongs to.
fn stage(code: &str) -> &'static str {
    match code {
        c if c.starts_with("quality_") => "quality",
        "too_easy" | "easier" => "difficulty",
        "shortcut_clause" | "one_passage" => "shortcut",
        "bad_json" | "incomplete_reply" | "llm_error" | "prompt_error" | "bad_action" => "llm",
        "tool_error" => "tool",
        _ => "validation",
    }
}

fn report(outcomes: &[&SeedOutcome]) -> Value {
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_stage: BTreeMap<&str, u64> = BTreeMap::new();
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        *ended.entry(o.ended_by.clone()).or_default() += 1;
        for r in &o.rejects {
            *by_reason.entry(r.clone()).or_default() += 1;
            *by_stage.entry(stage(r)).or_default() += 1;
        }
    }
    let accepted: Vec<&&SeedOutcome> = outcomes
        .iter()
        .filter(|o| !o.state.edits.is_empty())
        .collect();
    let n = accepted.len().max(1) as f64;
    let sum = |f: &dyn Fn(&SeedOutcome) -> f64| outcomes.iter().map(|o| f(o)).sum::<f64>();
    let commits = sum(&|o| o.state.edits.len() as f64);
    let candidates = sum(&|o| f64::from(o.candidates));
    json!({
        "seeds": outcomes.len(),
        "accepted": accepted.len(),
        "candidates": candidates,
        "commits": commits,
        "commit_rate": if candidates > 0.0 { commits / candidates } else { 0.0 },
        "rejects_by_reason": by_reason,
        "rejects_by_stage": by_stage,
        "ended_by": ended,
        "llm_calls": sum(&|o| f64::from(o.llm_calls)),
        "tool_calls": sum(&|o| f64::from(o.tool_calls)),
        "per_accepted": {
            "llm_calls": sum(&|o| f64::from(o.llm_calls)) / n,
            "tool_calls": sum(&|o| f64::from(o.tool_calls)) / n,
            "hops": accepted.iter().map(|o| f64::from(o.state.hops)).sum::<f64>() / n,
            "n_inject": accepted.iter().map(|o| f64::from(o.state.n_inject)).sum::<f64>() / n,
            "n_fuzz": accepted.iter().map(|o| f64::from(o.state.n_fuzz)).sum::<f64>() / n,
        },
    })
}
