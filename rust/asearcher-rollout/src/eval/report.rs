//! The evaluation report: Avg@k and Pass@k of every metric per benchmark (as the ASearcher
//! paper reports them), computed from the saved trajectories, with a fixed-width table and an
//! atomic JSON writer.

use super::EvalConfig;
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
    pub mean_turns: f64,
    pub mean_tool_calls: f64,
    /// By metric key (`f1`, `em`, `cem`, `format`, `judge`, plugin names). A run that lacks a
    /// metric another run has counts 0 for it.
    pub metrics: BTreeMap<String, MetricScore>,
    /// Trajectories already in the file when this run started, and run by it.
    pub resumed: usize,
    pub ran: usize,
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
/// below `k` count, the first of each (question, sample) pair.
pub fn summarize(
    name: &str,
    k: u32,
    questions: &[crate::questions::Question],
    trajectories: &[Trajectory],
) -> BenchmarkReport {
    let ids: HashSet<&str> = questions.iter().map(|q| q.id.as_str()).collect();
    let mut seen = HashSet::new();
    let mut runs: BTreeMap<&str, Vec<&Trajectory>> = BTreeMap::new();
    for t in trajectories {
        if t.sample < k
            && ids.contains(t.question_id.as_str())
            && seen.insert((t.question_id.as_str(), t.sample))
        {
            runs.entry(t.question_id.as_str()).or_default().push(t);
        }
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
        mean_turns: mean(all.iter().map(|t| t.num_turns() as f64)),
        mean_tool_calls: mean(all.iter().map(|t| t.tool_calls() as f64)),
        metrics,
        resumed: 0,
        ran: 0,
    }
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

    /// The metric keys of all benchmarks, the usual ones first.
    pub fn metric_keys(&self) -> Vec<String> {
        let keys: BTreeSet<&str> = self
            .benchmarks
            .iter()
            .flat_map(|b| b.metrics.keys().map(String::as_str))
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
    /// Pass@k of each metric, then failed trajectories and mean turns.
    pub fn to_table(&self) -> String {
        let k = self.k;
        let mut header = vec!["benchmark".to_string(), "n".to_string()];
        for key in self.metric_keys() {
            header.push(format!("{key} avg@{k}"));
            header.push(format!("{key} pass@{k}"));
        }
        header.extend(["failed".to_string(), "turns".to_string()]);
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
            match b.metrics.get(&key) {
                Some(m) => {
                    row.push(format!("{:.3}", m.avg_at_k));
                    row.push(format!("{:.3}", m.pass_at_k));
                }
                None => row.extend(["-".to_string(), "-".to_string()]),
            }
        }
        row.push(b.failed.to_string());
        row.push(format!("{:.1}", b.mean_turns));
        row
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
