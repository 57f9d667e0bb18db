//! Rewards of finished trajectories: the contracts ([`RewardPlugin`], [`Scorer`]), the rule scorer
//! (F1 / EM / CEM, format gate, invalid-answer penalty), plugins as scorers, the pipeline that
//! composes them and picks the training reward, and [`BatchingPlugin`], which gathers
//! trajectories from many concurrent groups into one plugin call per batch.
//!
//! Plugins are awaited on the tokio workers: a plugin that does blocking work (a Python function
//! holding the GIL, a CPU-heavy model) must run it through `tokio::task::spawn_blocking` or on a
//! thread of its own and await the result, or it stalls every trajectory on that worker.

use asearcher_agent::protocol::ParsedTurn;
use asearcher_agent::reward::{self as rules, AnswerMetric, RewardSpec};
use asearcher_agent::trajectory::{Trajectory, TrajectoryError};
use async_trait::async_trait;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a plugin could not score one trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginFailure {
    pub message: String,
    /// The Python traceback, when the plugin is Python code that raised.
    pub traceback: Option<String>,
}

/// A user's reward function (a Python plugin through `asearcher-py`, or Rust). Called with
/// batches of finished trajectories, off the tokio workers by the implementation's choice.
#[async_trait]
pub trait RewardPlugin: Send + Sync {
    /// The key the score is recorded under in `Trajectory::rewards`.
    fn name(&self) -> &str;
    /// One result per trajectory, in order.
    async fn score_batch(&self, batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>>;
}

/// Scores finished trajectories in place: fills `rewards` and `reward`, and records failures
/// (with tracebacks) in `errors` instead of returning them. What the scheduler calls.
#[async_trait]
pub trait Scorer: Send + Sync {
    async fn score(&self, batch: &mut [Trajectory]);
}

/// The rule metric a [`RuleScorer`] trains on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleMetric {
    #[default]
    F1,
    Em,
    Cem,
}

impl RuleMetric {
    /// The key its score is recorded under (`"f1"`, `"em"`, `"cem"`).
    pub fn key(self) -> &'static str {
        match self {
            RuleMetric::F1 => "f1",
            RuleMetric::Em => "em",
            RuleMetric::Cem => "cem",
        }
    }

    /// The metric named by a key, if it is a rule metric.
    pub fn from_key(key: &str) -> Option<Self> {
        [RuleMetric::F1, RuleMetric::Em, RuleMetric::Cem]
            .into_iter()
            .find(|m| m.key() == key)
    }

    fn answer_metric(self) -> AnswerMetric {
        match self {
            RuleMetric::F1 => AnswerMetric::F1,
            RuleMetric::Em => AnswerMetric::ExactMatch,
            RuleMetric::Cem => AnswerMetric::CoverExactMatch,
        }
    }
}

/// The rewards of a run, in one place: the rule reward every trajectory gets (ASearcher's
/// F1/EM/CEM with a format gate), which recorded score trains (`primary`, or a weighted sum of
/// scores), and how long a reward plugin may take. The same config in training files,
/// `Trainer`, `RolloutEngine` and `evaluate` (where every score is reported and the training
/// reward is unused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// The rule score: `f1`, `em` (exact match) or `cem` (cover exact match).
    pub metric: RuleMetric,
    /// The rule reward is 0 when a protocol turn broke the protocol or the trajectory never
    /// answered.
    pub format_gate: bool,
    /// Rule reward for answering "invalid" to a question whose gold answers do not say so (-0.5
    /// in ASearcher); `null`: no penalty.
    pub invalid_answer_penalty: Option<f64>,
    /// The score trained on (each trajectory's `reward`). `null`: the rule reward (`metric`
    /// after the format gate and the penalty). Otherwise any recorded score: `f1`, `em`, `cem`
    /// (the rule reward when it is `metric`, else the ungated score), `format`, `judge` (with a
    /// judge), or a reward plugin's name. A name nothing records is an error listing the
    /// available ones.
    pub primary: Option<String>,
    /// Train on a weighted sum of recorded scores instead, e.g. `{f1 = 1.0, brevity = 0.1}`
    /// (TRL's `reward_weights`; scores as recorded, ungated); empty: off. Not with `primary`.
    pub weights: BTreeMap<String, f64>,
    /// Seconds a reward plugin may take for one batch; past it the batch's trajectories get a
    /// `reward` error (and no reward) and the run goes on. `null`: no limit.
    pub plugin_timeout_s: Option<f64>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        let rule = RuleRewardConfig::default();
        Self {
            metric: rule.metric,
            format_gate: rule.format_gate,
            invalid_answer_penalty: rule.invalid_answer_penalty,
            primary: None,
            weights: BTreeMap::new(),
            plugin_timeout_s: Some(300.0),
        }
    }
}

impl asearcher_config::Document for RewardConfig {}

/// The scores the rule scorer records on every trajectory.
pub const RULE_SCORES: [&str; 4] = ["f1", "em", "cem", "format"];

impl RewardConfig {
    /// The rule part.
    pub fn rule(&self) -> RuleRewardConfig {
        RuleRewardConfig {
            metric: self.metric,
            format_gate: self.format_gate,
            invalid_answer_penalty: self.invalid_answer_penalty,
        }
    }

    /// Checks the values that need no knowledge of the plugins; errors name `reward.<field>`.
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(t) = self.plugin_timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(crate::RolloutError::config(
                    "reward.plugin_timeout_s",
                    format!("must be a positive number of seconds (or null), got {t}"),
                ));
            }
        }
        if self.primary.is_some() && !self.weights.is_empty() {
            return Err(crate::RolloutError::config(
                "reward.weights",
                "give either `primary` or `weights`, not both",
            ));
        }
        if let Some((k, w)) = self.weights.iter().find(|(_, w)| !w.is_finite()) {
            return Err(crate::RolloutError::config(
                format!("reward.weights.{k}"),
                format!("must be a finite number, got {w}"),
            ));
        }
        Ok(())
    }

    /// Checks `primary` and `weights` against the scores the pipeline records (`available`).
    fn check_names(&self, available: &[String]) -> crate::Result<()> {
        let unknown = |field: String, name: &str| {
            crate::RolloutError::config(
                field,
                format!(
                    "`{name}` is not a recorded score; available: {}",
                    available.join(", ")
                ),
            )
        };
        if let Some(p) = &self.primary {
            if !available.contains(p) {
                return Err(unknown("reward.primary".into(), p));
            }
        }
        for k in self.weights.keys() {
            if !available.contains(k) {
                return Err(unknown(format!("reward.weights.{k}"), k));
            }
        }
        Ok(())
    }
}

/// The rule part of a [`RewardConfig`] (ASearcher's rule reward). Defaults: F1, format gate on, no
/// penalty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleRewardConfig {
    /// The rule score trained on: `f1`, `em` (exact match) or `cem` (cover exact match).
    pub metric: RuleMetric,
    /// Score 0 when a protocol turn broke the protocol or the trajectory never answered.
    pub format_gate: bool,
    /// Score for answering "invalid" to a question whose gold answers do not say so (-0.5 in
    /// ASearcher); `None`: no penalty.
    pub invalid_answer_penalty: Option<f64>,
}

impl Default for RuleRewardConfig {
    fn default() -> Self {
        Self {
            metric: RuleMetric::F1,
            format_gate: true,
            invalid_answer_penalty: None,
        }
    }
}

/// Records `f1`, `em`, `cem` (the answer against the gold answers, ungated: evaluation metrics)
/// and `format` (1 or 0) on every trajectory, and sets `reward` to the configured metric after
/// the format gate and the invalid-answer penalty.
#[derive(Debug, Clone, Default)]
pub struct RuleScorer {
    cfg: RuleRewardConfig,
}

impl RuleScorer {
    pub fn new(cfg: RuleRewardConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &RuleRewardConfig {
        &self.cfg
    }

    /// Scores one trajectory in place.
    pub fn score_one(&self, t: &mut Trajectory) {
        let spec = RewardSpec {
            metric: self.cfg.metric.answer_metric(),
            format_gate: self.cfg.format_gate,
            invalid_answer_penalty: self.cfg.invalid_answer_penalty,
        };
        let turns = protocol_turns(t);
        let answer = t.answer.as_deref();
        let breakdown = rules::score(&spec, answer, &t.answers, &turns);
        for metric in [RuleMetric::F1, RuleMetric::Em, RuleMetric::Cem] {
            let value = answer.map_or(0.0, |a| metric.answer_metric().score(a, &t.answers));
            t.rewards.insert(metric.key().into(), value);
        }
        t.rewards
            .insert("format".into(), if breakdown.format_ok { 1.0 } else { 0.0 });
        t.reward = Some(breakdown.score);
    }
}

/// The turns that followed the tag protocol or tried to: those with a parsed action or a protocol
/// issue. Turns an agent did not parse (page notes, summaries) do not count for the format gate.
fn protocol_turns(t: &Trajectory) -> Vec<ParsedTurn> {
    t.turns
        .iter()
        .filter(|turn| turn.action.is_some() || !turn.issues.is_empty())
        .map(|turn| ParsedTurn {
            action: turn.action.clone(),
            issues: turn.issues.clone(),
        })
        .collect()
}

#[async_trait]
impl Scorer for RuleScorer {
    async fn score(&self, batch: &mut [Trajectory]) {
        for t in batch.iter_mut() {
            self.score_one(t);
        }
    }
}

/// A [`RewardPlugin`] as a scoring stage: records each score under the plugin's name; a failure
/// (or a panic, or a missing result) becomes a `"reward"` error on that trajectory only.
pub struct PluginScorer {
    plugin: Arc<dyn RewardPlugin>,
    timeout: Option<Duration>,
}

impl PluginScorer {
    pub fn new(plugin: Arc<dyn RewardPlugin>) -> Self {
        Self {
            plugin,
            timeout: None,
        }
    }

    /// A batch the plugin has not scored within `timeout` fails (each trajectory gets a
    /// `reward` error); the plugin's late results are dropped.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Scorer for PluginScorer {
    async fn score(&self, batch: &mut [Trajectory]) {
        let name = self.plugin.name().to_string();
        let call = call_plugin(self.plugin.as_ref(), batch);
        let results = match self.timeout {
            None => call.await,
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                let message = format!("timed out after {:.1} s", limit.as_secs_f64());
                vec![failure(message); batch.len()]
            }),
        };
        for (t, result) in batch.iter_mut().zip(results) {
            match result {
                Ok(score) => {
                    t.rewards.insert(name.clone(), score);
                }
                Err(failure) => t.errors.push(TrajectoryError {
                    traceback: failure.traceback,
                    ..TrajectoryError::new(
                        "reward",
                        format!("reward `{name}` failed: {}", failure.message),
                    )
                    .at_stage(name.clone())
                }),
            }
        }
    }
}

/// Calls a plugin once, turning a panic or a wrong number of results into per-item failures.
async fn call_plugin(
    plugin: &dyn RewardPlugin,
    batch: &[Trajectory],
) -> Vec<Result<f64, PluginFailure>> {
    let n = batch.len();
    match AssertUnwindSafe(plugin.score_batch(batch))
        .catch_unwind()
        .await
    {
        Ok(results) if results.len() == n => results,
        Ok(results) => {
            let message = format!("returned {} results for {n} trajectories", results.len());
            vec![failure(message); n]
        }
        Err(_) => vec![failure("panicked".into()); n],
    }
}

fn failure(message: String) -> Result<f64, PluginFailure> {
    Err(PluginFailure {
        message,
        traceback: None,
    })
}

/// The scorer the scheduler runs: the rule scorer, then each extra stage in order (plugins, a
/// judge), then the training reward taken from the primary score. The primary is a rule metric
/// (`"f1"`, `"em"`, `"cem"`: the gated rule reward) or the key a stage records (a plugin's name,
/// `"judge"`); when that score is missing (its stage failed), `reward` is `None`.
pub struct RewardPipeline {
    rule: RuleScorer,
    stages: Vec<Arc<dyn Scorer>>,
    primary: String,
    /// A weighted sum of scores as the training reward (instead of `primary` when not empty).
    weights: BTreeMap<String, f64>,
}

impl RewardPipeline {
    /// Rule rewards only; the primary is the rule metric.
    pub fn new(rule: RuleScorer) -> Self {
        let primary = rule.config().metric.key().to_string();
        Self {
            rule,
            stages: Vec::new(),
            primary,
            weights: BTreeMap::new(),
        }
    }

    /// The pipeline a [`RewardConfig`] describes: rule scores, then each plugin (with the
    /// config's timeout), then `judge` (recorded as `judge`); `primary` and `weights` must name
    /// scores that are recorded (the error lists them). The one place rewards are assembled.
    pub fn from_config(
        cfg: &RewardConfig,
        plugins: Vec<Arc<dyn RewardPlugin>>,
        judge: Option<Arc<dyn Scorer>>,
    ) -> crate::Result<Self> {
        cfg.validate()?;
        let mut available: Vec<String> = RULE_SCORES.map(String::from).to_vec();
        let timeout = cfg.plugin_timeout_s.map(Duration::from_secs_f64);
        let mut pipeline = RewardPipeline::new(RuleScorer::new(cfg.rule()));
        for plugin in plugins {
            available.push(plugin.name().to_string());
            let stage = PluginScorer::new(plugin).with_timeout(timeout);
            pipeline = pipeline.with_stage(Arc::new(stage));
        }
        if let Some(judge) = judge {
            available.push("judge".into());
            pipeline = pipeline.with_stage(judge);
        }
        cfg.check_names(&available)?;
        if let Some(p) = &cfg.primary {
            pipeline = pipeline.with_primary(p.clone());
        }
        pipeline.weights = cfg.weights.clone();
        Ok(pipeline)
    }

    /// Adds a plugin stage (its score is recorded under its name).
    pub fn with_plugin(self, plugin: Arc<dyn RewardPlugin>) -> Self {
        self.with_stage(Arc::new(PluginScorer::new(plugin)))
    }

    /// Adds a scoring stage (an LLM judge, or anything implementing [`Scorer`]).
    pub fn with_stage(mut self, stage: Arc<dyn Scorer>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Takes the training reward from this score (see the type's docs).
    pub fn with_primary(mut self, key: impl Into<String>) -> Self {
        self.primary = key.into();
        self
    }

    pub fn primary(&self) -> &str {
        &self.primary
    }
}

#[async_trait]
impl Scorer for RewardPipeline {
    async fn score(&self, batch: &mut [Trajectory]) {
        self.rule.score(batch).await;
        let rule_rewards: Vec<Option<f64>> = batch.iter().map(|t| t.reward).collect();
        for stage in &self.stages {
            stage.score(batch).await;
        }
        let primary_is_rule =
            RuleMetric::from_key(&self.primary) == Some(self.rule.config().metric);
        for (t, rule_reward) in batch.iter_mut().zip(rule_rewards) {
            let missing;
            (t.reward, missing) = if !self.weights.is_empty() {
                let (sum, name) = weighted_sum(&self.weights, &t.rewards);
                (sum, format!("weighted score `{name}`"))
            } else if primary_is_rule {
                (rule_reward, format!("primary reward `{}`", self.primary))
            } else {
                let score = t.rewards.get(&self.primary).copied();
                (score, format!("primary reward `{}`", self.primary))
            };
            if t.reward.is_none() && !t.errors.iter().any(|e| e.kind == "reward") {
                let message = format!("no stage recorded the {missing}");
                t.errors
                    .push(TrajectoryError::new("reward", message).at_stage("primary"));
            }
        }
    }
}

/// `Σ weight * score` over the weighted scores, or `None` and the first missing score's name.
fn weighted_sum(
    weights: &BTreeMap<String, f64>,
    scores: &BTreeMap<String, f64>,
) -> (Option<f64>, String) {
    let mut total = 0.0;
    for (name, w) in weights {
        match scores.get(name) {
            Some(s) => total += w * s,
            None => return (None, name.clone()),
        }
    }
    (Some(total), String::new())
}

/// How a [`BatchingPlugin`] forms batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most trajectories per plugin call. Default 64.
    pub max_batch: usize,
    /// How long the first trajectory of a batch waits for more, in ms. Default 20.
    pub max_wait_ms: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_wait_ms: 20,
        }
    }
}

struct Pending {
    trajectory: Trajectory,
    reply: oneshot::Sender<Result<f64, PluginFailure>>,
}

/// Wraps a plugin so that trajectories from many concurrent callers (one group each) reach it in
/// batches of up to `max_batch`, each batch closed `max_wait_ms` after its first trajectory.
/// One batch is scored at a time, by a task started on the first call. The inner plugin must not
/// block the tokio worker (see the module docs).
pub struct BatchingPlugin {
    inner: Arc<dyn RewardPlugin>,
    cfg: BatchingConfig,
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl BatchingPlugin {
    pub fn new(inner: Arc<dyn RewardPlugin>, cfg: BatchingConfig) -> Self {
        Self {
            inner,
            cfg: BatchingConfig {
                max_batch: cfg.max_batch.max(1),
                ..cfg
            },
            queue: OnceLock::new(),
        }
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Pending> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(score_batches(self.inner.clone(), self.cfg, rx));
            tx
        })
    }
}

#[async_trait]
impl RewardPlugin for BatchingPlugin {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn score_batch(&self, batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>> {
        let queue = self.queue();
        let replies: Vec<_> = batch
            .iter()
            .map(|t| {
                let (reply, answer) = oneshot::channel();
                let pending = Pending {
                    trajectory: t.clone(),
                    reply,
                };
                // A closed queue drops `pending`, and its reply reports the failure below.
                let _ = queue.send(pending);
                answer
            })
            .collect();
        let mut out = Vec::with_capacity(replies.len());
        for answer in replies {
            out.push(
                answer
                    .await
                    .unwrap_or_else(|_| failure("the batching task stopped".into())),
            );
        }
        out
    }
}

/// The batching task: waits for a first trajectory, gathers more until the batch is full or its
/// wait is over, scores the batch with one plugin call and sends each result back.
async fn score_batches(
    plugin: Arc<dyn RewardPlugin>,
    cfg: BatchingConfig,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let wait = Duration::from_millis(cfg.max_wait_ms);
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + wait;
        let mut items = vec![first];
        while items.len() < cfg.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let (trajectories, replies): (Vec<_>, Vec<_>) =
            items.into_iter().map(|p| (p.trajectory, p.reply)).unzip();
        let results = call_plugin(plugin.as_ref(), &trajectories).await;
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests;
