//! The evaluation report: Avg@k and Pass@k of every metric per benchmark (as the ASearcher
//! paper reports them), computed from the saved trajectories (the latest record of each sample),
//! with every failure counted (failed trajectories, failed tool calls, reward errors per stage),
//! a fixed-width table that shows them, the run's warnings and an atomic JSON writer.

use super::{latest_records, EvalConfig};
use crate::runner::is_failure;
use crate::{Result, RolloutError};
use asearcher_agent::trajectory::Trajectory;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

/// Metrics shown first in tables, in this order; any others follow in name order.
const METRIC_ORDER: [&str; 4] = ["f1", "em", "cem", "judge"];

/// Avg@k and Pass@k of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricScore {
    /// Mean over questions of the mean over the question's runs.
    pub avg_at_k: f64,
    /// Mean over questions of the best of the question's runs.
    pub pass_at_k: f64,
}

/// The results of one benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkReport {
    pub name: String,
    pub k: u32,
    /// Questions with at least one saved run.
    pub questions: usize,
    pub trajectories: usize,
    /// Trajectories that ended in an error (they score 0).
    pub failed: usize,
    /// Trajectories with any recorded error (a failed tool call, a reward that failed, ...).
    pub with_errors: usize,
    /// Trajectories with at least one failed tool call.
    #[serde(default)]
    pub with_tool_errors: usize,
    /// Tool calls in all, and those that failed.
    #[serde(default)]
    pub tool_calls: usize,
    #[serde(default)]
    pub failed_tool_calls: usize,
    /// Trajectories with a reward error, by stage (a plugin's name, `judge`, `primary`,
    /// `scorer`; `reward` for errors saved without a stage).
    #[serde(default)]
    pub reward_errors: BTreeMap<String, usize>,
    /// Trajectories with at least one reward error (any stage).
    #[serde(default)]
    pub with_reward_errors: usize,
    pub mean_turns: f64,
    pub mean_tool_calls: f64,
    /// By metric key (`f1`, `em`, `cem`, `format`, `judge`, plugin names). A run that lacks a
    /// metric another run has counts 0 for it.
    pub metrics: BTreeMap<String, MetricScore>,
    /// Trajectories already in the file when this run started, and run by it.
    pub resumed: usize,
    pub ran: usize,
    /// The first error of a failed trajectory (kind: message), to name the cause.
    #[serde(default)]
    pub first_error: Option<String>,
}

/// The results of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub k: u32,
    pub data_dir: String,
    pub output_dir: String,
    pub agent: String,
    /// The judge's model, when a judge was used.
    pub judge: Option<String>,
    pub benchmarks: Vec<BenchmarkReport>,
}

/// Computes a benchmark's report from its trajectories: only those of `questions` with a sample
/// below `k` count, the latest record of each (question, sample) pair.
pub fn summarize(
    name: &str,
    k: u32,
    questions: &[crate::questions::Question],
    trajectories: &[Trajectory],
) -> BenchmarkReport {
    let ids: HashSet<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    let mut latest: Vec<((&str, u32), &Trajectory)> = latest_records(trajectories)
        .into_iter()
        .filter(|((id, sample), _)| *sample < k && ids.contains(id))
        .collect();
    latest.sort_by_key(|(key, _)| *key);
    let mut runs: BTreeMap<&str, Vec<&Trajectory>> = BTreeMap::new();
    for ((id, _), t) in latest {
        runs.entry(id).or_default().push(t);
    }
    let all: Vec<&Trajectory> = runs.values().flatten().copied().collect();
    let keys: BTreeSet<&str> = all
        .iter()
        .flat_map(|t| t.rewards.keys().map(String::as_str))
        .collect();
    let metrics = keys
        .into_iter()
        .map(|key| (key.to_string(), metric_score(&runs, key)))
        .collect();
    BenchmarkReport {
        name: name.to_string(),
        k,
        questions: runs.len(),
        trajectories: all.len(),
        failed: all.iter().filter(|t| is_failure(t)).count(),
        with_errors: all.iter().filter(|t| !t.errors.is_empty()).count(),
        with_tool_errors: all.iter().filter(|t| t.failed_tool_calls() > 0).count(),
        tool_calls: all.iter().map(|t| t.tool_calls()).sum(),
        failed_tool_calls: all.iter().map(|t| t.failed_tool_calls()).sum(),
        reward_errors: reward_errors(&all),
        with_reward_errors: all
            .iter()
            .filter(|t| !t.reward_error_stages().is_empty())
            .count(),
        first_error: all
            .iter()
            .filter(|t| is_failure(t))
            .find_map(|t| t.errors.first())
            .map(|e| format!("{}: {}", e.kind, e.message)),
        mean_turns: mean(all.iter().map(|t| t.num_turns() as f64)),
        mean_tool_calls: mean(all.iter().map(|t| t.tool_calls() as f64)),
        metrics,
        resumed: 0,
        ran: 0,
    }
}

/// Trajectories with a reward error, by stage (each trajectory counted once per stage).
fn reward_errors(all: &[&Trajectory]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for t in all {
        for stage in t.reward_error_stages() {
            *out.entry(stage.to_string()).or_default() += 1;
        }
    }
    out
}

/// Stages whose errors are about a metric of their own (not the training reward or the whole
/// scorer): a plugin's column, the judge's.
fn is_metric_stage(stage: &str) -> bool {
    !matches!(stage, "primary" | "scorer" | "reward")
}

fn metric_score(runs: &BTreeMap<&str, Vec<&Trajectory>>, key: &str) -> MetricScore {
    let value = |t: &&Trajectory| t.rewards.get(key).copied().unwrap_or(0.0);
    let avg_at_k = mean(runs.values().map(|r| mean(r.iter().map(value))));
    let pass_at_k = mean(
        runs.values()
            .map(|r| r.iter().map(value).fold(f64::NEG_INFINITY, f64::max)),
    );
    MetricScore {
        avg_at_k,
        pass_at_k,
    }
}

/// The mean; 0 for no values.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

impl EvalReport {
    pub fn new(cfg: &EvalConfig, benchmarks: Vec<BenchmarkReport>) -> Self {
        EvalReport {
            k: cfg.k,
            data_dir: cfg.data_dir.display().to_string(),
            output_dir: cfg.output_dir.display().to_string(),
            agent: cfg.agent.kind.to_string(),
            judge: cfg.judge.as_ref().map(|j| j.model.clone()),
            benchmarks,
        }
    }

    /// The metric keys of all benchmarks, the usual ones first; a reward stage that errored
    /// (even everywhere, so it recorded no score) has its column.
    pub fn metric_keys(&self) -> Vec<String> {
        let keys: BTreeSet<&str> = self
            .benchmarks
            .iter()
            .flat_map(|b| {
                let errored = b.reward_errors.keys().map(String::as_str);
                b.metrics
                    .keys()
                    .map(String::as_str)
                    .chain(errored.filter(|s| is_metric_stage(s)))
            })
            .collect();
        let mut out: Vec<String> = METRIC_ORDER
            .iter()
            .filter(|k| keys.contains(*k))
            .map(|k| k.to_string())
            .collect();
        out.extend(
            keys.into_iter()
                .filter(|k| !METRIC_ORDER.contains(k))
                .map(str::to_string),
        );
        out
    }

    /// A fixed-width table: one row per benchmark; columns `n` (questions), then Avg@k and
    /// Pass@k of each metric (`error` where a stage recorded no score, only errors; a `*` where
    /// some of its scores are missing for errors), then failed trajectories, trajectories with a
    /// failed tool call, trajectories with a reward error, and mean turns.
    pub fn to_table(&self) -> String {
        let k = self.k;
        let mut header = vec!["benchmark".to_string(), "n".to_string()];
        for key in self.metric_keys() {
            header.push(format!("{key} avg@{k}"));
            header.push(format!("{key} pass@{k}"));
        }
        header.extend(["failed", "tool err", "reward err", "turns"].map(String::from));
        let rows: Vec<Vec<String>> = self.benchmarks.iter().map(|b| self.row(b)).collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&header).chain(&rows) {
            out.push_str(&format_line(line, &widths));
            out.push('\n');
        }
        out
    }

    fn row(&self, b: &BenchmarkReport) -> Vec<String> {
        let mut row = vec![b.name.clone(), b.questions.to_string()];
        for key in self.metric_keys() {
            let errors = b.reward_errors.get(&key).copied().unwrap_or(0);
            let mark = if errors > 0 { "*" } else { "" };
            match b.metrics.get(&key) {
                Some(m) => {
                    row.push(format!("{:.3}{mark}", m.avg_at_k));
                    row.push(format!("{:.3}{mark}", m.pass_at_k));
                }
                None if errors > 0 => row.extend(["error".to_string(), "error".to_string()]),
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        row.push(b.failed.to_string());
        row.push(b.with_tool_errors.to_string());
        row.push(b.with_reward_errors.to_string());
        row.push(format!("{:.1}", b.mean_turns));
        row
    }

    /// Why the run produced nothing usable, if so: every trajectory failed, or every tool call.
    pub fn all_failed(&self) -> Option<String> {
        let sum = |f: fn(&BenchmarkReport) -> usize| self.benchmarks.iter().map(f).sum::<usize>();
        let (n, failed) = (sum(|b| b.trajectories), sum(|b| b.failed));
        let (calls, failed_calls) = (sum(|b| b.tool_calls), sum(|b| b.failed_tool_calls));
        if n > 0 && failed == n {
            let example = self.first_error();
            return Some(format!("every trajectory failed ({n} of {n}){example}"));
        }
        if calls > 0 && failed_calls == calls {
            return Some(format!(
                "every tool call failed ({calls} of {calls}): the agent searched without results; check the toolbox (`tools.*` / `toolbox=`)"
            ));
        }
        None
    }

    fn first_error(&self) -> String {
        self.benchmarks
            .iter()
            .find_map(|b| b.first_error.clone())
            .map(|e| format!("; the first error: {e}"))
            .unwrap_or_default()
    }

    /// Warnings for error rates above `rate`: failed trajectories, trajectories with failed
    /// tool calls, and each reward stage's errors, per benchmark.
    pub fn warnings(&self, rate: f64) -> Vec<String> {
        let mut out = Vec::new();
        for b in &self.benchmarks {
            let n = b.trajectories.max(1) as f64;
            let mut check = |count: usize, what: String| {
                if count as f64 / n > rate {
                    out.push(format!(
                        "{}: {count} of {} trajectories {what} ({:.0}% > warn_error_rate {:.0}%)",
                        b.name,
                        b.trajectories,
                        100.0 * count as f64 / n,
                        100.0 * rate
                    ));
                }
            };
            check(b.failed, "failed".into());
            check(b.with_tool_errors, "had a failed tool call".into());
            for (stage, count) in &b.reward_errors {
                check(*count, format!("have a reward error in `{stage}`"));
            }
        }
        out
    }

    /// Writes the report as JSON: to a temporary file next to `path`, then renamed over it.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| RolloutError::io(path, std::io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| RolloutError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| RolloutError::io(path, e))
    }
}

/// The benchmark name left-aligned, the numbers right-aligned, two spaces between columns.
fn format_line(cells: &[String], widths: &[usize]) -> String {
    cells
        .iter()
        .zip(widths)
        .enumerate()
        .map(|(i, (cell, w))| {
            if i == 0 {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
}
