//! The agent loop of ONE trajectory: asks the agent for its next step, performs it (a generation
//! through the [`LlmBackend`], a search or page access through the [`Toolbox`]), hands the result
//! back and records every turn on the [`Trajectory`]. Owns the per-trajectory wall-clock limit and
//! the tool error policy. Model output and tool failures never panic here: they end up as turns,
//! protocol issues and [`TrajectoryError`]s.
//!
//! The record of a run in progress lives in a [`LiveRun`] behind a mutex, so a snapshot can copy
//! it between turns (a turn being generated is not in it yet); [`replay`] brings a rebuilt agent
//! back to the state of a recorded run so that [`run_live`] can continue it.

use crate::client::{
    request_seed, FinishReason, GenOutput, GenRequest, LlmBackend, SamplingParams,
};
use crate::questions::Question;
use asearcher_agent::agent::{
    Agent, AgentStep, GenFinish, GenerateCall, Generation, ObservedDoc, StopReason, ToolCall,
    ToolKind, ToolObservation,
};
use asearcher_agent::trajectory::{ToolCallRecord, Trajectory, TrajectoryError, TurnRecord};
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::{Document, ToolOutput, Toolbox};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod replay;
pub use replay::{replay, Divergence, Replayed};

/// What a failed tool call does to its trajectory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorPolicy {
    /// Show the agent a short error observation and go on (the call's record keeps the error).
    #[default]
    Observe,
    /// The trajectory fails (stop reason `Error`, error kind `"tool"`).
    Fail,
}

/// Limits a researcher sets on each trajectory.
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    /// Wall-clock limit of one trajectory; `None`: no limit.
    pub timeout: Option<Duration>,
    pub tool_errors: ToolErrorPolicy,
}

/// Where the runner reports what it does (the scheduler's live statistics). Called on the tokio
/// workers: implementations must be cheap and must not block.
pub trait StatsSink: Send + Sync {
    /// A generation request was sent (each is followed by one [`Self::generation_ended`]).
    fn generation_began(&self) {}
    /// The request of a [`Self::generation_began`] came back, failed or was cancelled.
    fn generation_ended(&self) {}
    fn generation(&self, latency_ms: f64, output_tokens: usize);
    /// A tool call ended; `error` is its failure (after the toolbox's retries).
    fn tool_call(&self, latency_ms: f64, tool: &str, error: Option<&str>);
}

/// Reports a generation request's start, and its end when dropped (whatever ends it).
struct InFlight(Option<Arc<dyn StatsSink>>);

impl InFlight {
    fn begin(stats: Option<Arc<dyn StatsSink>>) -> Self {
        if let Some(s) = &stats {
            s.generation_began();
        }
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.generation_ended();
        }
    }
}

/// Everything a trajectory runs against. Cheap to clone.
#[derive(Clone)]
pub struct RunContext {
    pub backend: Arc<dyn LlmBackend>,
    /// `None`: tool calls fail (handled by the tool error policy).
    pub toolbox: Option<Toolbox>,
    /// The agent's tokenizer: decodes generations and gives the EOS ids.
    pub tokenizer: Arc<Tokenizer>,
    pub limits: RunLimits,
    pub stats: Option<Arc<dyn StatsSink>>,
    /// Seeds every generation request with [`request_seed`]`(seed, rid)` (rids name the
    /// trajectory, attempt and turn), so sampling does not depend on timing or batching on a
    /// backend that honours seeds. `None`: unseeded.
    pub sampling_seed: Option<u64>,
}

/// Which run this is: the trajectory id, its question and sample index, and the attempt (1 for
/// the first run; retries of a failed sample count up).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub id: String,
    pub question: Arc<Question>,
    pub sample: u32,
    pub attempt: u32,
}

impl RunSpec {
    /// The sticky-routing key of this run (a hash of its id and attempt).
    pub fn affinity(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.id, self.attempt).hash(&mut h);
        h.finish()
    }

    fn rid(&self, turn: usize) -> String {
        if self.attempt <= 1 {
            format!("{}-{turn}", self.id)
        } else {
            format!("{}~{}-{turn}", self.id, self.attempt)
        }
    }
}

/// A trajectory counts as failed (for retry / drop / keep) when it stopped on an error.
pub fn is_failure(t: &Trajectory) -> bool {
    t.stop_reason == StopReason::Error
}

/// An empty trajectory for `spec` (no turns yet; stop reason `Error` until the run sets one).
pub fn empty_trajectory(spec: &RunSpec, agent: &str) -> Trajectory {
    let q = &spec.question;
    let mut t = Trajectory::new(&q.id, spec.sample, &q.question, q.answers.clone(), agent);
    t.id = spec.id.clone();
    t.metadata = q.metadata.clone();
    t
}

/// A tool observation as the agent was shown it, kept so that a resumed run can replay the call
/// without asking the tool again (a live web search may answer differently).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RecordedObservation {
    pub text: String,
    #[serde(default)]
    pub docs: Vec<ObservedDoc>,
    #[serde(default)]
    pub chunks: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl From<ToolObservation> for RecordedObservation {
    fn from(o: ToolObservation) -> Self {
        Self {
            text: o.text,
            docs: o.docs,
            chunks: o.chunks,
            error: o.error,
        }
    }
}

impl From<RecordedObservation> for ToolObservation {
    fn from(o: RecordedObservation) -> Self {
        Self {
            text: o.text,
            docs: o.docs,
            chunks: o.chunks,
            error: o.error,
        }
    }
}

/// The record of a run in progress: the trajectory with its complete turns so far, and the
/// observation of each turn's tool call (aligned with the turns; `None` where there was none).
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub trajectory: Trajectory,
    pub observations: Vec<Option<RecordedObservation>>,
}

impl LiveRun {
    pub fn new(trajectory: Trajectory) -> Self {
        Self {
            trajectory,
            observations: Vec::new(),
        }
    }
}

/// Locks a live run (a poisoned lock still holds a consistent record: it is only held for
/// plain field updates).
pub fn lock_live(live: &Mutex<LiveRun>) -> MutexGuard<'_, LiveRun> {
    live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs one trajectory to its end and returns its record. Never fails: inference errors,
/// failed tools (under [`ToolErrorPolicy::Fail`]) and the wall-clock limit end the trajectory
/// with the turns done so far, a stop reason and a recorded error. The backend's routing state
/// for the trajectory is released on every exit, cancellation included.
pub async fn run_trajectory(ctx: &RunContext, agent: Box<dyn Agent>, spec: RunSpec) -> Trajectory {
    let live = Mutex::new(LiveRun::new(empty_trajectory(&spec, agent.name())));
    run_live(ctx, agent, spec, &live, None).await;
    live.into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .trajectory
}

/// Runs one trajectory to its end, recording into `live` as it goes (see [`run_trajectory`]).
/// `from`: where a [`replay`] left the agent (`live` then holds the replayed turns); `None`: the
/// agent is fresh and `live` holds an empty trajectory.
pub async fn run_live(
    ctx: &RunContext,
    agent: Box<dyn Agent>,
    spec: RunSpec,
    live: &Mutex<LiveRun>,
    from: Option<Replayed>,
) {
    let started = Instant::now();
    let _release = ReleaseOnDrop {
        backend: ctx.backend.clone(),
        affinity: spec.affinity(),
    };
    let prior_s = {
        let mut l = lock_live(live);
        l.trajectory.agent = agent.name().to_string();
        l.trajectory.elapsed_s
    };
    let mut run = Run {
        live,
        ctx,
        agent,
        spec,
        deadline: ctx.limits.timeout.map(|t| started + t),
        previous: from.and_then(|r| r.previous),
        timeout: ctx.limits.timeout,
    };
    let stop = run.drive().await;
    let answer = run.agent.answer();
    let mut l = lock_live(live);
    l.trajectory.stop_reason = stop;
    l.trajectory.answer = answer;
    l.trajectory.elapsed_s = prior_s + started.elapsed().as_secs_f64();
}

struct ReleaseOnDrop {
    backend: Arc<dyn LlmBackend>,
    affinity: u64,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.backend.release(self.affinity);
    }
}

/// Why a step ended the trajectory.
struct Stopped(StopReason);

struct Run<'a> {
    ctx: &'a RunContext,
    agent: Box<dyn Agent>,
    spec: RunSpec,
    live: &'a Mutex<LiveRun>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    /// The previous turn's prompt and output (what the next prompt may extend).
    previous: Option<(Arc<Vec<u32>>, Vec<u32>)>,
}

impl Run<'_> {
    fn turns(&self) -> usize {
        lock_live(self.live).trajectory.turns.len()
    }

    async fn drive(&mut self) -> StopReason {
        loop {
            let step = match self.agent.next_step() {
                AgentStep::Finish(reason) => return reason,
                AgentStep::Generate(call) => self.generate(call).await,
                AgentStep::Tool(call) => self.tool(call).await,
            };
            if let Err(Stopped(reason)) = step {
                return reason;
            }
        }
    }

    /// Awaits `fut` unless the trajectory's deadline passes first.
    async fn within<F: Future>(&mut self, fut: F) -> Result<F::Output, Stopped> {
        let Some(deadline) = self.deadline else {
            return Ok(fut.await);
        };
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(out) => Ok(out),
            Err(_) => {
                let secs = self.timeout.map_or(0.0, |t| t.as_secs_f64());
                self.fail(
                    "timeout",
                    format!(
                        "the trajectory ran past its wall-clock limit of {secs:.1}s after {} turns",
                        self.turns()
                    ),
                );
                Err(Stopped(StopReason::Timeout))
            }
        }
    }

    fn fail(&mut self, kind: &str, message: String) {
        let mut live = lock_live(self.live);
        let turn = live.trajectory.turns.len().checked_sub(1);
        tracing::debug!(trajectory = %self.spec.id, kind, %message, "trajectory error");
        live.trajectory.errors.push(TrajectoryError {
            turn,
            ..TrajectoryError::new(kind, message)
        });
    }

    fn request(&self, call: &GenerateCall) -> GenRequest {
        let mut stop_token_ids = call.stop_token_ids.clone();
        for id in self.ctx.tokenizer.eos_token_ids() {
            if !stop_token_ids.contains(id) {
                stop_token_ids.push(*id);
            }
        }
        let rid = self.spec.rid(self.turns());
        GenRequest {
            affinity: Some(self.spec.affinity()),
            input_ids: call.prompt_ids.clone(),
            sampling: SamplingParams {
                temperature: call.sampling.temperature,
                top_p: call.sampling.top_p,
                top_k: call.sampling.top_k,
                max_new_tokens: call.sampling.max_new_tokens,
                stop: call.stop.clone(),
                stop_token_ids,
                seed: self.ctx.sampling_seed.map(|s| request_seed(s, &rid)),
            },
            rid,
        }
    }

    async fn generate(&mut self, call: GenerateCall) -> Result<(), Stopped> {
        let req = self.request(&call);
        let started = Instant::now();
        let backend = self.ctx.backend.clone();
        let in_flight = InFlight::begin(self.ctx.stats.clone());
        let out = self.within(backend.generate(req)).await;
        drop(in_flight);
        let out = out?;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let out = match out
            .map_err(|e| e.to_string())
            .and_then(|o| self.check_output(o))
        {
            Ok(out) => out,
            Err(message) => {
                self.fail("inference", message);
                return Err(Stopped(StopReason::Error));
            }
        };
        if let Some(stats) = &self.ctx.stats {
            stats.generation(latency_ms, out.output_ids.len());
        }
        let text = match self.ctx.tokenizer.decode(&out.output_ids, false) {
            Ok(text) => text,
            Err(e) => {
                self.fail(
                    "inference",
                    format!("cannot decode the output of {}: {e}", out.server),
                );
                return Err(Stopped(StopReason::Error));
            }
        };
        let generation = Generation {
            output_ids: out.output_ids,
            logprobs: out.logprobs,
            versions: out.versions,
            finish: gen_finish(out.finish),
            text,
        };
        let reading = self.agent.on_generation(&call, &generation);
        let prefix = self.shared_prefix(&call.prompt_ids);
        let turn = TurnRecord {
            role: call.role,
            prompt_prefix_len: prefix,
            prompt_ids: call.prompt_ids[prefix..].to_vec(),
            output_ids: generation.output_ids.clone(),
            output_logprobs: generation.logprobs,
            output_versions: generation.versions,
            output_text: generation.text,
            finish: generation.finish,
            action: reading.action,
            issues: reading.issues,
            tool: None,
            server: Some(out.server),
            resends: out.resends,
            gen_latency_ms: latency_ms,
        };
        {
            let mut live = lock_live(self.live);
            live.trajectory.turns.push(turn);
            live.observations.push(None);
        }
        self.previous = Some((call.prompt_ids, generation.output_ids));
        Ok(())
    }

    /// Rejects backend output whose per-token arrays disagree in length.
    fn check_output(&self, out: GenOutput) -> Result<GenOutput, String> {
        let n = out.output_ids.len();
        if out.logprobs.len() != n || out.versions.len() != n {
            return Err(format!(
                "{} returned {n} tokens with {} logprobs and {} versions",
                out.server,
                out.logprobs.len(),
                out.versions.len()
            ));
        }
        Ok(out)
    }

    /// How many leading tokens of `prompt` equal the previous turn's prompt + output.
    fn shared_prefix(&self, prompt: &[u32]) -> usize {
        let Some((prev_prompt, prev_output)) = &self.previous else {
            return 0;
        };
        let previous = prev_prompt.iter().chain(prev_output.iter());
        prompt
            .iter()
            .zip(previous)
            .take_while(|(a, b)| a == b)
            .count()
    }

    async fn tool(&mut self, call: ToolCall) -> Result<(), Stopped> {
        let started = Instant::now();
        let toolbox = self.ctx.toolbox.clone();
        let result = self.within(call_tool(toolbox, &call)).await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        if let Some(stats) = &self.ctx.stats {
            stats.tool_call(
                latency_ms,
                call.kind.name(),
                result.as_ref().err().map(|e| e.as_str()),
            );
        }
        let (observation, record) = match result {
            Ok(out) => observe(&call, out, latency_ms),
            Err(message) => {
                let record = tool_record(
                    &call,
                    latency_ms,
                    false,
                    Some(message.clone()),
                    message.chars().count(),
                );
                let observation = ToolObservation {
                    error: Some(message.clone()),
                    ..ToolObservation::default()
                };
                if self.ctx.limits.tool_errors == ToolErrorPolicy::Fail {
                    self.attach_tool(record, None);
                    self.fail(
                        "tool",
                        format!("{} `{}` failed: {message}", call.kind.name(), call.argument),
                    );
                    return Err(Stopped(StopReason::Error));
                }
                (observation, record)
            }
        };
        self.agent.on_tool(&call, &observation);
        self.attach_tool(record, Some(observation.into()));
        Ok(())
    }

    /// Records a tool call on the last turn (an agent that calls a tool before generating, or
    /// twice after one turn, breaks the agent contract: that is recorded as an "agent" error).
    fn attach_tool(&mut self, record: ToolCallRecord, observation: Option<RecordedObservation>) {
        let unattached = {
            let mut live = lock_live(self.live);
            let LiveRun {
                trajectory,
                observations,
            } = &mut *live;
            match trajectory.turns.last_mut() {
                Some(turn) if turn.tool.is_none() => {
                    turn.tool = Some(record);
                    if let Some(last) = observations.last_mut() {
                        *last = observation;
                    }
                    None
                }
                _ => Some(record),
            }
        };
        if let Some(record) = unattached {
            self.fail(
                "agent",
                format!(
                    "tool call `{}` without a turn of its own to record it on",
                    record.input
                ),
            );
        }
    }
}

pub(crate) async fn call_tool(
    toolbox: Option<Toolbox>,
    call: &ToolCall,
) -> Result<ToolOutput, String> {
    let Some(toolbox) = toolbox else {
        return Err("no search tools are configured for this run".into());
    };
    let out = match call.kind {
        ToolKind::Search => toolbox.search(&call.argument).await,
        ToolKind::Access => toolbox.access(&call.argument).await,
    };
    out.map_err(|e| e.to_string())
}

pub(crate) fn observe(
    call: &ToolCall,
    out: ToolOutput,
    latency_ms: f64,
) -> (ToolObservation, ToolCallRecord) {
    let mut record = tool_record(call, latency_ms, out.cached, None, out.text.chars().count());
    record.observation = Some(out.text.clone());
    let observation = ToolObservation {
        docs: out.docs.into_iter().map(observed_doc).collect(),
        text: out.text,
        chunks: out.chunks,
        error: None,
    };
    (observation, record)
}

fn tool_record(
    call: &ToolCall,
    latency_ms: f64,
    cached: bool,
    error: Option<String>,
    chars: usize,
) -> ToolCallRecord {
    ToolCallRecord {
        tool: call.kind.name().into(),
        input: call.argument.clone(),
        latency_ms,
        cached,
        observation: error.clone(),
        error,
        observation_chars: chars,
    }
}

/// A retrieved document in the Search-R1 shape (`"Title"\ntext`); its url, or its id when it has none.
fn observed_doc(doc: Document) -> ObservedDoc {
    let contents = if doc.title.is_empty() {
        doc.text
    } else {
        format!("\"{}\"\n{}", doc.title, doc.text)
    };
    ObservedDoc {
        url: doc.url.unwrap_or(doc.id),
        contents,
    }
}

fn gen_finish(f: FinishReason) -> GenFinish {
    match f {
        FinishReason::Stop => GenFinish::Stop,
        FinishReason::Length => GenFinish::Length,
        FinishReason::Abort => GenFinish::Abort,
    }
}

#[cfg(test)]
mod tests;
