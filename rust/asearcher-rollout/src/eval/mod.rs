//! Evaluation of an agent on QA benchmarks: [`EvalConfig`], [`run_eval`] and the report
//! ([`report`]). Benchmarks sit in the `{data_dir}/{name}/test.jsonl` layout; each question runs
//! `k` times through the [`RolloutEngine`]; every trajectory is appended to
//! `{output_dir}/{name}/trajectories.jsonl` as its group finishes, so an interrupted run loses at
//! most the groups in flight and a re-run only runs the samples missing from that file or failed
//! in it (a failed sample is never done; its re-run keeps the earlier errors). A re-run continues
//! only what this setup would itself have produced: `{output_dir}/fingerprint.json` records the
//! agent, reward, judge, model and tools, and every saved trajectory's question is checked
//! against the data; a difference is refused before anything is written (see
//! [`asearcher_config::fingerprint`]). Avg@k and Pass@k of every recorded reward are computed
//! from the file and saved to `{output_dir}/results.json`; a run whose every trajectory or
//! every tool call failed is an error after that file is written.

pub mod report;

pub use report::{summarize, BenchmarkReport, EvalReport, MetricScore};

use crate::client::LlmBackend;
use crate::judge::{JudgeConfig, JudgeScorer};
use crate::questions::{read_questions, Question};
use crate::reward::{RewardConfig, RewardPipeline, RewardPlugin, Scorer};
use crate::runner::is_failure;
use crate::scheduler::{
    AgentFactory, EngineParts, OnError, QuestionSource, RolloutConfig, RolloutEngine,
};
use crate::{Result, RolloutError};
use asearcher_agent::agents::{build_agent, AgentConfig};
use asearcher_agent::trajectory::{
    append_jsonl, read_jsonl, JsonlError, TornLine, Trajectory, TrajectoryError,
};
use asearcher_config::fingerprint::{self, Difference, Resume, ResumeMode};
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::Toolbox;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file of a benchmark's questions inside its directory.
pub const QUESTIONS_FILE: &str = "test.jsonl";
/// The file of a benchmark's trajectories inside its output directory.
pub const TRAJECTORIES_FILE: &str = "trajectories.jsonl";
/// The report inside the output directory.
pub const RESULTS_FILE: &str = "results.json";

/// Everything about an evaluation run. Only `data_dir` has no default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Directory holding one subdirectory per benchmark, each with a `test.jsonl`.
    pub data_dir: PathBuf,
    /// Benchmarks to run (subdirectory names); `None`: every subdirectory holding a
    /// `test.jsonl`, in name order.
    pub benchmarks: Option<Vec<String>>,
    /// Runs per question. Default 4.
    pub k: u32,
    /// Where trajectories and `results.json` go. Default `eval_out`.
    pub output_dir: PathBuf,
    /// Only the first this many questions of each benchmark. Default: all.
    pub max_questions: Option<usize>,
    /// The engine's settings; `group_size` is set to `k`, the staleness gate is off, zero-variance
    /// filtering is off and failed trajectories are kept (they score 0).
    pub rollout: RolloutConfig,
    /// The agent evaluated (kind, turns, prompts, sampling).
    pub agent: AgentConfig,
    /// The rule reward; every rule score (f1, em, cem, format) is recorded as a metric.
    pub reward: RewardConfig,
    /// An LLM judge; its verdicts are recorded as the `judge` metric.
    pub judge: Option<JudgeConfig>,
    /// What to do when `output_dir` holds results: continue them only if they came from the same
    /// setup (`match`, default; a difference is an error naming each field), delete them and
    /// start over (`restart`), or continue with the differences recorded (`allow_changes`).
    pub resume: ResumeMode,
    /// A warning is logged (and the CLI prints it) when the share of failed trajectories, of
    /// trajectories with a failed tool call, or of one reward stage's errors exceeds this.
    /// Default 0.1.
    pub warn_error_rate: f64,
    /// Seeds every generation request from this and the request id (question, sample, turn), so
    /// sampled runs (`k` > 1 at a temperature) repeat on a backend that honours seeds (the
    /// embedded generator; SGLang with deterministic sampling). Default none: unseeded.
    pub seed: Option<u64>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            data_dir: PathBuf::new(),
            benchmarks: None,
            k: 4,
            output_dir: PathBuf::from("eval_out"),
            max_questions: None,
            rollout: RolloutConfig::default(),
            agent: AgentConfig::default(),
            reward: RewardConfig::default(),
            judge: None,
            resume: ResumeMode::Match,
            warn_error_rate: 0.1,
            seed: None,
        }
    }
}

impl asearcher_config::Document for EvalConfig {
    fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.data_dir, &mut self.output_dir] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

impl EvalConfig {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EvalConfig {
            data_dir: data_dir.into(),
            ..EvalConfig::default()
        }
    }

    /// The engine's config: `rollout` with the evaluation's fixed settings.
    pub fn rollout_config(&self) -> RolloutConfig {
        RolloutConfig {
            group_size: self.k,
            max_staleness: None,
            filter_zero_variance: Some(false),
            on_error: OnError::Keep,
            ..self.rollout.clone()
        }
    }

    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(RolloutError::config(
                "data_dir",
                "required: the directory of <benchmark>/test.jsonl",
            ));
        }
        if self.k == 0 {
            return Err(RolloutError::config("k", "must be at least 1"));
        }
        if self.max_questions == Some(0) {
            return Err(RolloutError::config("max_questions", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.warn_error_rate) {
            return Err(RolloutError::config(
                "warn_error_rate",
                format!("must be within [0, 1], got {}", self.warn_error_rate),
            ));
        }
        self.rollout_config().validate().map_err(|e| match e {
            RolloutError::Config { field, message } => {
                RolloutError::config(format!("rollout.{field}"), message)
            }
            other => other,
        })?;
        if let Some(judge) = &self.judge {
            judge.validate()?;
        }
        Ok(())
    }
}

/// What an evaluation runs against.
#[derive(Clone)]
pub struct EvalParts {
    pub backend: Arc<dyn LlmBackend>,
    pub toolbox: Option<Toolbox>,
    pub tokenizer: Arc<Tokenizer>,
    /// Reward plugins; each one's score becomes a metric under its name.
    pub plugins: Vec<Arc<dyn RewardPlugin>>,
}

/// Progress of a run, sent after each finished group (and once at the start of a benchmark).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalProgress {
    pub benchmark: String,
    /// Position of the benchmark in the run (0-based) and the number of benchmarks.
    pub index: usize,
    pub benchmarks: usize,
    /// Trajectories of this benchmark in its file (earlier runs included) and in all.
    pub done: usize,
    pub total: usize,
}

/// The benchmarks to run: the configured ones (each must hold a `test.jsonl`) or every
/// subdirectory of `data_dir` that holds one, sorted.
pub fn benchmark_names(cfg: &EvalConfig) -> Result<Vec<String>> {
    if let Some(names) = &cfg.benchmarks {
        if names.is_empty() {
            return Err(RolloutError::config("benchmarks", "the list is empty"));
        }
        for name in names {
            let path = cfg.data_dir.join(name).join(QUESTIONS_FILE);
            if !path.is_file() {
                return Err(RolloutError::config(
                    "benchmarks",
                    format!("benchmark `{name}`: {} does not exist", path.display()),
                ));
            }
        }
        return Ok(names.clone());
    }
    let entries =
        std::fs::read_dir(&cfg.data_dir).map_err(|e| RolloutError::io(&cfg.data_dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| RolloutError::io(&cfg.data_dir, e))?;
        if entry.path().join(QUESTIONS_FILE).is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        return Err(RolloutError::config(
            "data_dir",
            format!(
                "no subdirectory of {} holds a {QUESTIONS_FILE}",
                cfg.data_dir.display()
            ),
        ));
    }
    names.sort();
    Ok(names)
}

/// A benchmark's questions (the first `max_questions`); ids must be unique (resuming keys on them).
pub fn load_benchmark(cfg: &EvalConfig, name: &str) -> Result<Vec<Question>> {
    let path = cfg.data_dir.join(name).join(QUESTIONS_FILE);
    let mut questions = read_questions(&path)?;
    if let Some(n) = cfg.max_questions {
        questions.truncate(n);
    }
    let mut seen = HashSet::new();
    for q in &questions {
        if !seen.insert(q.id.as_str()) {
            return Err(RolloutError::BadData {
                path,
                message: format!(
                    "question id `{}` occurs twice (results are saved and resumed by id)",
                    q.id
                ),
            });
        }
    }
    Ok(questions)
}

/// Runs every benchmark, writes `results.json` and returns the report. `progress` is called
/// on the calling task (keep it cheap). Everything that can refuse the run (config, data,
/// agent, a resume of another setup) is checked before anything is written.
pub async fn run_eval(
    cfg: &EvalConfig,
    parts: EvalParts,
    progress: &(dyn Fn(EvalProgress) + Send + Sync),
) -> Result<EvalReport> {
    cfg.validate()?;
    let names = benchmark_names(cfg)?;
    let data = names
        .iter()
        .map(|name| load_benchmark(cfg, name))
        .collect::<Result<Vec<_>>>()?;
    if parts.toolbox.is_none() {
        tracing::warn!(
            "no toolbox was given: every search and access the agent makes fails with \"no \
             search tools are configured\" (pass toolbox=, or --index / --retrieval)"
        );
    }
    let fields = eval_fingerprint(cfg, &parts).await;
    let plugins = parts.plugins;
    let engine_parts = EngineParts {
        backend: parts.backend,
        toolbox: parts.toolbox,
        tokenizer: parts.tokenizer.clone(),
        agents: agent_factory(&cfg.agent, parts.tokenizer)?,
        scorer: build_scorer(cfg, plugins)?,
        sampling_seed: cfg.seed,
    };
    let resume = check_resume(cfg, &fields, &names, &data)?;
    if resume == Resume::Restart {
        remove_results(cfg, &names)?;
    }
    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| RolloutError::io(&cfg.output_dir, e))?;
    fingerprint::record(&cfg.output_dir, "eval", &fields, &resume).map_err(fingerprint_error)?;
    let mut benchmarks = Vec::with_capacity(names.len());
    for (index, (name, questions)) in names.iter().zip(&data).enumerate() {
        let run = BenchmarkRun {
            cfg,
            name,
            questions,
            index,
            count: names.len(),
        };
        benchmarks.push(run.run(&engine_parts, progress).await?);
    }
    let report = EvalReport::new(cfg, benchmarks);
    report.write_json(&cfg.output_dir.join(RESULTS_FILE))?;
    for warning in report.warnings(cfg.warn_error_rate) {
        tracing::warn!("{warning}");
    }
    if let Some(why) = report.all_failed() {
        return Err(RolloutError::RunFailed {
            message: format!(
                "{why}; the results are saved in {} (a re-run retries the failed trajectories)",
                cfg.output_dir.join(RESULTS_FILE).display()
            ),
        });
    }
    Ok(report)
}

/// What determines an evaluation's results, for `fingerprint.json`: the agent (kind, turns,
/// prompts, sampling), the reward and its plugins, the judge, the limits that change a
/// trajectory, the model served and the tools. Not `k`, `max_questions` or `benchmarks`: a run
/// with more of them extends the saved one.
pub async fn eval_fingerprint(cfg: &EvalConfig, parts: &EvalParts) -> Map<String, Value> {
    let plugins: Vec<&str> = parts.plugins.iter().map(|p| p.name()).collect();
    let fields = json!({
        "agent": cfg.agent,
        "reward": cfg.reward,
        "plugins": plugins,
        "judge": cfg.judge,
        "seed": cfg.seed,
        "rollout": {
            "trajectory_timeout_s": cfg.rollout.trajectory_timeout_s,
            "tool_errors": cfg.rollout.tool_errors,
        },
        "model": parts.backend.identity().await,
        "tools": parts.toolbox.as_ref().map(Toolbox::identity),
    });
    match fields {
        Value::Object(map) => map,
        _ => unreachable!("a json object"),
    }
}

/// The fingerprint decision, plus the data check: every saved trajectory's question and answers
/// must equal the benchmark's (keyed `data.<benchmark>.<question id>`).
fn check_resume(
    cfg: &EvalConfig,
    fields: &Map<String, Value>,
    names: &[String],
    data: &[Vec<Question>],
) -> Result<Resume> {
    let resume = fingerprint::check_resume(&cfg.output_dir, "eval", fields, cfg.resume)
        .map_err(fingerprint_error)?;
    if resume == Resume::Restart {
        return Ok(resume);
    }
    let mut changed = Vec::new();
    for (name, questions) in names.iter().zip(data) {
        let file = cfg.output_dir.join(name).join(TRAJECTORIES_FILE);
        changed.extend(data_differences(
            name,
            questions,
            &read_trajectories(&file)?,
        ));
    }
    if changed.is_empty() {
        return Ok(resume);
    }
    match (cfg.resume, resume) {
        (ResumeMode::AllowChanges, Resume::Changed(mut all)) => {
            all.extend(changed);
            Ok(Resume::Changed(all))
        }
        (ResumeMode::AllowChanges, _) => Ok(Resume::Changed(changed)),
        _ => Err(fingerprint_error(
            fingerprint::ResumeMismatch {
                dir: cfg.output_dir.clone(),
                kind: "eval".into(),
                differences: changed,
            }
            .into(),
        )),
    }
}

/// Saved trajectories whose question or answers differ from the benchmark's (the first 10).
fn data_differences(name: &str, questions: &[Question], saved: &[Trajectory]) -> Vec<Difference> {
    let by_id: HashMap<&str, &Question> = questions.iter().map(|q| (q.id.as_str(), q)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in saved {
        let Some(q) = by_id.get(t.question_id.as_str()) else {
            continue;
        };
        if (t.question != q.question || t.answers != q.answers) && seen.insert(&t.question_id) {
            out.push(Difference {
                key: format!("data.{name}.{}", q.id),
                saved: json!({"question": t.question, "answers": t.answers}),
                now: json!({"question": q.question, "answers": q.answers}),
            });
        }
    }
    out.truncate(10);
    out
}

/// Deletes what an evaluation writes into `output_dir` (and nothing else).
fn remove_results(cfg: &EvalConfig, names: &[String]) -> Result<()> {
    let mut files = vec![
        cfg.output_dir.join(RESULTS_FILE),
        cfg.output_dir.join(fingerprint::FINGERPRINT_FILE),
    ];
    files.extend(
        names
            .iter()
            .map(|n| cfg.output_dir.join(n).join(TRAJECTORIES_FILE)),
    );
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::info!(file = %file.display(), "removed (resume = restart)"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RolloutError::io(&file, e)),
        }
    }
    Ok(())
}

/// A fingerprint error as the engine's: a mismatch keeps its own variant (its message lists the
/// differences), a damaged file is an I/O error on it.
pub fn fingerprint_error(e: fingerprint::FingerprintError) -> RolloutError {
    match e {
        fingerprint::FingerprintError::Mismatch(m) => RolloutError::ResumeMismatch(m),
        fingerprint::FingerprintError::File { path, message } => {
            RolloutError::io(path, std::io::Error::other(message))
        }
    }
}

/// Builds the agent of each sample; the config is checked once up front.
fn agent_factory(agent: &AgentConfig, tok: Arc<Tokenizer>) -> Result<AgentFactory> {
    build_agent(agent, tok.clone(), "a question to check the agent config")
        .map_err(|e| RolloutError::config("agent", e.to_string()))?;
    let agent = agent.clone();
    Ok(Arc::new(move |q: &Question, _sample: u32| {
        build_agent(&agent, tok.clone(), &q.question).map_err(|e| e.to_string())
    }))
}

/// Rule metrics, then the plugins, then the judge.
fn build_scorer(cfg: &EvalConfig, plugins: Vec<Arc<dyn RewardPlugin>>) -> Result<Arc<dyn Scorer>> {
    let judge = match &cfg.judge {
        Some(j) => Some(Arc::new(JudgeScorer::from_config(j.clone())?) as Arc<dyn Scorer>),
        None => None,
    };
    Ok(Arc::new(RewardPipeline::from_config(
        &cfg.reward,
        plugins,
        judge,
    )?))
}

/// Converts a trajectory-file error into the engine's error type (keeping path and line).
pub fn jsonl_error(e: JsonlError) -> RolloutError {
    match e {
        JsonlError::Io { path, source } => RolloutError::Io { path, source },
        JsonlError::Parse { path, line, msg } => RolloutError::BadLine {
            path,
            line,
            message: format!("not a trajectory: {msg}"),
        },
        JsonlError::Serialise { id, msg } => {
            RolloutError::config("trajectory", format!("`{id}` cannot be serialised: {msg}"))
        }
    }
}

/// The trajectories of a file (none if it does not exist); a torn last line is skipped.
pub fn read_trajectories(path: &Path) -> Result<Vec<Trajectory>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    read_jsonl(path, TornLine::Skip).map_err(jsonl_error)
}

/// The latest record of each (question, sample) pair in file order: a re-run of a failed sample
/// is appended after it and supersedes it.
pub fn latest_records(trajectories: &[Trajectory]) -> HashMap<(&str, u32), &Trajectory> {
    let mut latest = HashMap::new();
    for t in trajectories {
        latest.insert((t.question_id.as_str(), t.sample), t);
    }
    latest
}

/// Samples (`0..k`) of each question that have no record yet or whose latest record failed.
fn missing_samples(
    questions: &[Question],
    k: u32,
    done: &[Trajectory],
) -> HashMap<String, BTreeSet<u32>> {
    let mut missing: HashMap<String, BTreeSet<u32>> = questions
        .iter()
        .map(|q| (q.id.clone(), (0..k).collect()))
        .collect();
    for ((id, sample), t) in latest_records(done) {
        if let Some(samples) = missing.get_mut(id) {
            if !is_failure(t) {
                samples.remove(&sample);
            }
        }
    }
    missing.retain(|_, samples| !samples.is_empty());
    missing
}

/// The errors of the failed records of each (question, sample) pair, oldest first: what a
/// re-run keeps as `earlier_errors`.
fn earlier_errors(done: &[Trajectory]) -> HashMap<(String, u32), Vec<TrajectoryError>> {
    let mut out: HashMap<(String, u32), Vec<TrajectoryError>> = HashMap::new();
    for t in done.iter().filter(|t| is_failure(t)) {
        let errors = out.entry((t.question_id.clone(), t.sample)).or_default();
        for e in t.earlier_errors.iter().chain(&t.errors) {
            if !errors.contains(e) {
                errors.push(e.clone());
            }
        }
    }
    out
}

/// One benchmark of a run.
struct BenchmarkRun<'a> {
    cfg: &'a EvalConfig,
    name: &'a str,
    questions: &'a [Question],
    index: usize,
    count: usize,
}

impl BenchmarkRun<'_> {
    async fn run(
        &self,
        parts: &EngineParts,
        progress: &(dyn Fn(EvalProgress) + Send + Sync),
    ) -> Result<BenchmarkReport> {
        let k = self.cfg.k;
        let questions = self.questions;
        let dir = self.cfg.output_dir.join(self.name);
        std::fs::create_dir_all(&dir).map_err(|e| RolloutError::io(&dir, e))?;
        let file = dir.join(TRAJECTORIES_FILE);
        let saved = read_trajectories(&file)?;
        let mut missing = missing_samples(questions, k, &saved);
        let mut earlier = earlier_errors(&saved);
        drop(saved);
        let total = questions.len() * k as usize;
        let to_run: usize = missing.values().map(BTreeSet::len).sum();
        let resumed = total - to_run;
        let report = |done| progress(self.progress(done, total));
        report(resumed);
        if to_run > 0 {
            tracing::info!(benchmark = self.name, to_run, resumed, "running benchmark");
            let todo: Vec<Question> = questions
                .iter()
                .filter(|q| missing.contains_key(&q.id))
                .cloned()
                .collect();
            let source = QuestionSource::once(todo);
            let engine = RolloutEngine::start(self.cfg.rollout_config(), parts.clone(), source)?;
            let mut done = resumed;
            let result = async {
                while let Some(groups) = engine.next_batch(1).await {
                    for group in groups {
                        let wanted = missing.remove(&group.question.id).unwrap_or_default();
                        let keep: Vec<Trajectory> = group
                            .trajectories
                            .into_iter()
                            .filter(|t| wanted.contains(&t.sample))
                            .map(|mut t| {
                                let key = (t.question_id.clone(), t.sample);
                                t.earlier_errors = earlier.remove(&key).unwrap_or_default();
                                t
                            })
                            .collect();
                        append_jsonl(&file, &keep).map_err(jsonl_error)?;
                        done += keep.len();
                        report(done);
                    }
                }
                Ok::<(), RolloutError>(())
            }
            .await;
            let systematic = engine.failure();
            engine.shutdown().await;
            result?;
            if let Some(failure) = systematic {
                return Err(failure);
            }
        }
        let trajectories = read_trajectories(&file)?;
        let mut summary = summarize(self.name, k, questions, &trajectories);
        summary.resumed = resumed;
        summary.ran = to_run;
        Ok(summary)
    }

    fn progress(&self, done: usize, total: usize) -> EvalProgress {
        EvalProgress {
            benchmark: self.name.to_string(),
            index: self.index,
            benchmarks: self.count,
            done,
            total,
        }
    }
}

#[cfg(test)]
mod tests;
