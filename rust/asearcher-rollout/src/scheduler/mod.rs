//! The rollout scheduler: runs groups of `n` trajectories per question on tokio (one task per
//! trajectory), admits a group only while the concurrency bound and the staleness gate of
//! asynchronous RL leave room for all of it, isolates failures per trajectory (retry, drop or
//! keep), scores complete groups, optionally drops zero-variance groups, and queues the rest for
//! the consumer (the trainer or the evaluation runner), which sets the policy version.
//!
//! Concurrency: all gate state sits in one mutex held for a few instructions per event; counters
//! are atomics; nothing scans the live trajectories, so tens of thousands of them cost a tokio
//! task each.
//!
//! Every admitted group stays registered in the gate until it is ready (or dropped), and each of
//! its samples records its run in a shared slot, so [`RolloutEngine::snapshot`] can list all work
//! admitted and not consumed and [`RolloutEngine::resume`] can continue it (see `snapshot.rs`).

mod config;
mod snapshot;
mod source;
mod stats;
mod watch;

pub use config::{admission_capacity, OnError, RolloutConfig};
pub use snapshot::{EngineSnapshot, PendingGroup, PendingSample};
pub use source::{NextQuestion, QuestionSource};
pub use stats::{Percentiles, RolloutStats, Staleness};

use crate::client::LlmBackend;
use crate::questions::Question;
use crate::reward::Scorer;
use crate::runner::{
    empty_trajectory, is_failure, lock_live, replay, run_live, LiveRun, RunContext, RunLimits,
    RunSpec, StatsSink,
};
use crate::{Result, RolloutError};
use asearcher_agent::agent::{Agent, StopReason};
use asearcher_agent::trajectory::{Trajectory, TrajectoryError};
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::Toolbox;
use futures::FutureExt;
use serde::Serialize;
use stats::Collector;
use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use watch::FailureWatch;

/// Builds the agent of one sample (question, sample index). An error becomes a failed
/// trajectory (error kind `"agent"`), handled like any failure.
pub type AgentFactory =
    Arc<dyn Fn(&Question, u32) -> std::result::Result<Box<dyn Agent>, String> + Send + Sync>;

/// What the engine runs against.
#[derive(Clone)]
pub struct EngineParts {
    pub backend: Arc<dyn LlmBackend>,
    pub toolbox: Option<Toolbox>,
    pub tokenizer: Arc<Tokenizer>,
    pub agents: AgentFactory,
    /// Scores each complete group (e.g. [`crate::reward::RewardPipeline`]).
    pub scorer: Arc<dyn Scorer>,
    /// Seeds each generation request from this and its rid (see
    /// [`crate::runner::RunContext::sampling_seed`]); `None`: unseeded.
    pub sampling_seed: Option<u64>,
}

/// A complete, scored group: the kept trajectories of one question, in sample order.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Admission order (0, 1, ...).
    pub index: u64,
    #[serde(serialize_with = "serialize_question")]
    pub question: Arc<Question>,
    pub epoch: u32,
    /// The policy version when the group was admitted.
    pub admitted_version: u64,
    pub trajectories: Vec<Trajectory>,
    /// Runs each trajectory took (1 unless retried), aligned with `trajectories`.
    pub attempts: Vec<u32>,
}

fn serialize_question<S: serde::Serializer>(
    q: &Arc<Question>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    q.as_ref().serialize(s)
}

impl Group {
    pub fn rewards(&self) -> Vec<Option<f64>> {
        self.trajectories.iter().map(|t| t.reward).collect()
    }
}

/// The gate's state; one mutex, held briefly.
#[derive(Default)]
struct Gate {
    version: u64,
    /// Admitted trajectories not yet accepted or rejected.
    in_flight: usize,
    accepted: u64,
    ready: VecDeque<Group>,
    /// No more groups will be admitted (source exhausted, drained or stopped).
    closed: bool,
    stopped: bool,
    next_index: u64,
    /// Admitted groups not yet ready or dropped, by index (what a snapshot lists as in flight).
    admitted: BTreeMap<u64, Arc<AdmittedGroup>>,
}

/// One sample of an admitted group: the record of its current run and where it stands.
struct SampleSlot {
    live: Mutex<LiveRun>,
    /// Its run ended and it is kept (the record is final).
    finished: AtomicBool,
    /// It failed and was dropped (a snapshot leaves it out).
    dropped: AtomicBool,
    /// The run it is on (1 for the first).
    attempt: AtomicU32,
}

impl SampleSlot {
    fn new(live: LiveRun, finished: bool, attempt: u32) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(live),
            finished: AtomicBool::new(finished),
            dropped: AtomicBool::new(false),
            attempt: AtomicU32::new(attempt),
        })
    }
}

/// A group from admission until it is ready or dropped.
struct AdmittedGroup {
    index: u64,
    question: Arc<Question>,
    epoch: u32,
    version: u64,
    samples: Vec<Arc<SampleSlot>>,
}

struct Inner {
    cfg: RolloutConfig,
    run: RunContext,
    agents: AgentFactory,
    scorer: Arc<dyn Scorer>,
    gate: Mutex<Gate>,
    source: Mutex<QuestionSource>,
    stats: Arc<Collector>,
    watch: Arc<FailureWatch>,
    /// Wakes the admission loop (a slot freed, the version changed, a shutdown).
    admit: Notify,
    /// Wakes consumers (a group is ready, the run ended).
    ready: Notify,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Gate {
    /// Ready groups the consumer may take now: all of them, or (`ordered`) those admitted
    /// before every group still running.
    fn releasable(&self, ordered: bool) -> usize {
        match (ordered, self.admitted.keys().next()) {
            (true, Some(&first_running)) => self.ready.partition_point(|g| g.index < first_running),
            _ => self.ready.len(),
        }
    }

    /// Queues a ready group: at the back, or (`ordered`) in admission order.
    fn push_ready(&mut self, group: Group, ordered: bool) {
        let at = if ordered {
            self.ready.partition_point(|g| g.index < group.index)
        } else {
            self.ready.len()
        };
        self.ready.insert(at, group);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The asynchronous rollout engine. Dropping it cancels all in-flight work (as
/// [`RolloutEngine::shutdown`] does, without waiting).
pub struct RolloutEngine {
    inner: Arc<Inner>,
}

impl RolloutEngine {
    /// Checks `cfg` and starts admitting groups from `source`. Must be called inside a tokio
    /// runtime (the engine's tasks run on it).
    pub fn start(cfg: RolloutConfig, parts: EngineParts, source: QuestionSource) -> Result<Self> {
        Self::launch(
            cfg,
            parts,
            source,
            Gate::default(),
            Arc::new(Collector::new()),
        )
    }

    /// Starts the engine's tasks: the admitted groups of `gate` (a resumed engine's) first, then
    /// the admission loop.
    fn launch(
        cfg: RolloutConfig,
        parts: EngineParts,
        source: QuestionSource,
        gate: Gate,
        stats: Arc<Collector>,
    ) -> Result<Self> {
        cfg.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RolloutError::config(
                "runtime",
                "the rollout engine must be started inside a tokio runtime",
            )
        })?;
        let run = RunContext {
            backend: parts.backend,
            toolbox: parts.toolbox,
            tokenizer: parts.tokenizer,
            limits: RunLimits {
                timeout: cfg.trajectory_timeout_s.map(Duration::from_secs_f64),
                tool_errors: cfg.tool_errors,
            },
            stats: None,
            sampling_seed: parts.sampling_seed,
        };
        let cancel = CancellationToken::new();
        let watch = Arc::new(FailureWatch::new(cfg.fail_fast_after, cancel.clone()));
        let run = RunContext {
            stats: Some(Arc::new(EngineSink {
                stats: stats.clone(),
                watch: watch.clone(),
            }) as Arc<dyn StatsSink>),
            ..run
        };
        let resumed: Vec<Arc<AdmittedGroup>> = gate.admitted.values().cloned().collect();
        let inner = Arc::new(Inner {
            cfg,
            run,
            agents: parts.agents,
            scorer: parts.scorer,
            gate: Mutex::new(gate),
            source: Mutex::new(source),
            stats,
            watch,
            admit: Notify::new(),
            ready: Notify::new(),
            cancel,
            tasks: TaskTracker::new(),
        });
        for group in resumed {
            let this = inner.clone();
            inner.tasks.spawn_on(this.run_group(group), &runtime);
        }
        let admission = inner.clone();
        inner.tasks.spawn_on(admission.admission_loop(), &runtime);
        Ok(Self { inner })
    }

    pub fn config(&self) -> &RolloutConfig {
        &self.inner.cfg
    }

    /// Sets the policy version (the trainer, after each update); wakes the admission loop.
    pub fn set_version(&self, version: u64) {
        let mut gate = lock(&self.inner.gate);
        if version < gate.version {
            tracing::warn!(
                from = gate.version,
                to = version,
                "policy version set backwards"
            );
        }
        gate.version = version;
        drop(gate);
        self.inner.admit.notify_one();
    }

    pub fn version(&self) -> u64 {
        lock(&self.inner.gate).version
    }

    /// Questions taken from the source so far (where a resumed run starts its source).
    pub fn position(&self) -> u64 {
        lock(&self.inner.source).position()
    }

    /// Waits until `groups` groups are ready and returns them in completion order (admission
    /// order with `ordered`). When the
    /// source is exhausted (or drained) and nothing is in flight, returns what is left (a final
    /// partial batch), then `None`. `None` also after a shutdown. With a staleness gate, asking
    /// for more than `(eta + 1) * batch_size` groups without bumping the version waits forever.
    pub async fn next_batch(&self, groups: usize) -> Option<Vec<Group>> {
        let want = groups.max(1);
        loop {
            let notified = self.inner.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut gate = lock(&self.inner.gate);
                if gate.stopped {
                    return None;
                }
                let ended = gate.closed && gate.in_flight == 0;
                let releasable = gate.releasable(self.inner.cfg.ordered);
                if releasable >= want || (ended && releasable > 0) {
                    let n = want.min(releasable);
                    let batch: Vec<Group> = gate.ready.drain(..n).collect();
                    self.record_consumed(&batch, gate.version);
                    return Some(batch);
                }
                if ended {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The next ready group, without waiting.
    pub fn try_next_group(&self) -> Option<Group> {
        let mut gate = lock(&self.inner.gate);
        if gate.releasable(self.inner.cfg.ordered) == 0 {
            return None;
        }
        let group = gate.ready.pop_front()?;
        self.record_consumed(std::slice::from_ref(&group), gate.version);
        Some(group)
    }

    /// Stops admitting groups, waits for those in flight to finish, and returns every ready
    /// group. Empty after a shutdown.
    pub async fn drain(&self) -> Vec<Group> {
        self.inner.close();
        let mut out = Vec::new();
        while let Some(batch) = self.next_batch(usize::MAX).await {
            out.extend(batch);
        }
        out
    }

    /// Cancels all in-flight work and waits for the engine's tasks to end. Trajectories cut short
    /// are counted as `cancelled`; waiting consumers get `None`.
    pub async fn shutdown(&self) {
        self.inner.stop();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Whether the source is exhausted (or drained) and nothing is in flight or ready.
    pub fn is_done(&self) -> bool {
        let gate = lock(&self.inner.gate);
        gate.stopped || (gate.closed && gate.in_flight == 0 && gate.ready.is_empty())
    }

    /// The systematic failure that stopped the engine (see `rollout.fail_fast_after`), if any:
    /// after `next_batch` returns `None`, check this before treating the run as complete.
    pub fn failure(&self) -> Option<RolloutError> {
        self.inner.watch.failure()
    }

    /// A snapshot of the live statistics.
    pub fn stats(&self) -> RolloutStats {
        let mut s = RolloutStats::default();
        self.inner.stats.fill(&mut s);
        {
            let gate = lock(&self.inner.gate);
            s.in_flight = gate.in_flight;
            s.accepted = gate.accepted;
            s.version = gate.version;
            s.ready_groups = gate.ready.len();
        }
        s.position = self.position();
        s
    }

    fn record_consumed(&self, groups: &[Group], version: u64) {
        for g in groups {
            for t in &g.trajectories {
                let oldest = t
                    .turns
                    .iter()
                    .flat_map(|turn| turn.output_versions.iter().copied())
                    .min()
                    .unwrap_or(g.admitted_version);
                self.inner.stats.consumed(version.saturating_sub(oldest));
            }
        }
    }
}

impl Drop for RolloutEngine {
    fn drop(&mut self) {
        self.inner.stop();
    }
}

/// How one sample ended (a kept sample's record is final in its slot).
enum SampleEnd {
    Kept,
    Dropped,
    Cancelled,
}

impl Inner {
    fn close(&self) {
        lock(&self.gate).closed = true;
        self.admit.notify_one();
        self.ready.notify_waiters();
    }

    fn stop(&self) {
        {
            let mut gate = lock(&self.gate);
            gate.closed = true;
            gate.stopped = true;
        }
        self.cancel.cancel();
        self.admit.notify_one();
        self.ready.notify_waiters();
    }

    /// Admits groups while the gate leaves room for a whole one; sleeps until woken otherwise.
    async fn admission_loop(self: Arc<Self>) {
        let n = self.cfg.group_size as usize;
        loop {
            match self.try_admit(n) {
                Admission::Admitted(group) => {
                    let this = self.clone();
                    self.tasks.spawn(this.run_group(group));
                }
                Admission::Wait => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = self.admit.notified() => {}
                    }
                }
                Admission::Closed => {
                    self.ready.notify_waiters();
                    return;
                }
            }
        }
    }

    fn try_admit(&self, n: usize) -> Admission {
        let mut gate = lock(&self.gate);
        if gate.closed {
            return Admission::Closed;
        }
        let capacity = admission_capacity(
            self.cfg.max_concurrent,
            gate.in_flight,
            gate.accepted,
            gate.version,
            self.cfg.max_staleness,
            self.cfg.batch_trajectories(),
        );
        let mut source = lock(&self.source);
        if source.is_exhausted() {
            gate.closed = true;
            return Admission::Closed;
        }
        if capacity < n as u64 {
            return Admission::Wait;
        }
        let Some(next) = source.next_question() else {
            gate.closed = true;
            return Admission::Closed;
        };
        drop(source);
        gate.in_flight += n;
        let index = gate.next_index;
        gate.next_index += 1;
        self.stats.admitted.fetch_add(n as u64, Relaxed);
        let group = Arc::new(admitted_group(next, index, gate.version, n as u32));
        gate.admitted.insert(index, group.clone());
        Admission::Admitted(group)
    }

    /// Runs the unfinished samples of a group, then scores and queues it.
    async fn run_group(self: Arc<Self>, group: Arc<AdmittedGroup>) {
        let handles: Vec<_> = group
            .samples
            .iter()
            .map(|slot| {
                (!slot.finished.load(SeqCst)).then(|| {
                    let spec = sample_spec(&group, slot);
                    self.tasks
                        .spawn(self.clone().run_sample(spec, slot.clone()))
                })
            })
            .collect();
        let (mut trajectories, mut attempts) = (Vec::new(), Vec::new());
        for (slot, handle) in group.samples.iter().zip(handles) {
            if let Some(handle) = handle {
                match handle.await {
                    Ok(SampleEnd::Kept) => {}
                    Ok(SampleEnd::Dropped) => continue,
                    Ok(SampleEnd::Cancelled) | Err(_) => return,
                }
            }
            trajectories.push(lock_live(&slot.live).trajectory.clone());
            attempts.push(slot.attempt.load(SeqCst));
        }
        let done = Group {
            index: group.index,
            question: group.question.clone(),
            epoch: group.epoch,
            admitted_version: group.version,
            trajectories,
            attempts,
        };
        self.finish_group(done).await;
    }

    /// Runs one sample, retrying failed runs as configured. A sample whose slot holds recorded
    /// turns (a resumed one) continues from them.
    async fn run_sample(self: Arc<Self>, mut spec: RunSpec, slot: Arc<SampleSlot>) -> SampleEnd {
        let mut resume = !lock_live(&slot.live).trajectory.turns.is_empty();
        loop {
            self.stats.running.fetch_add(1, Relaxed);
            let ran = tokio::select! {
                _ = self.cancel.cancelled() => false,
                _ = self.attempt(&spec, &slot, resume) => true,
            };
            resume = false;
            self.stats.running.fetch_sub(1, Relaxed);
            if !ran {
                self.stats.cancelled.fetch_add(1, Relaxed);
                if self.watch.is_tripped() {
                    self.stop();
                }
                return SampleEnd::Cancelled;
            }
            let (failed, stop, errors) = {
                let live = lock_live(&slot.live);
                let t = &live.trajectory;
                (is_failure(t), t.stop_reason, t.errors.clone())
            };
            if !failed {
                self.watch.trajectory_ok();
                self.stats.finished.fetch_add(1, Relaxed);
                self.stats.stop_reason(stop);
                slot.finished.store(true, SeqCst);
                return SampleEnd::Kept;
            }
            if let Some(first) = errors.first() {
                if self.watch.trajectory_failed(&first.kind, &first.message) {
                    tracing::error!(trajectory = %spec.id, kind = %first.kind, error = %first.message, "systematic failure: stopping the rollout engine");
                    self.stop();
                    return SampleEnd::Cancelled;
                }
            }
            let retry = self.cfg.on_error == OnError::Retry && spec.attempt < self.cfg.max_attempts;
            tracing::debug!(trajectory = %spec.id, attempt = spec.attempt, retry, ?errors, "trajectory failed");
            if retry {
                self.stats.retried.fetch_add(1, Relaxed);
                spec.attempt += 1;
                slot.attempt.store(spec.attempt, SeqCst);
                continue;
            }
            self.stats.failed.fetch_add(1, Relaxed);
            self.stats.stop_reason(stop);
            if self.cfg.on_error == OnError::Keep {
                slot.finished.store(true, SeqCst);
                return SampleEnd::Kept;
            }
            tracing::warn!(trajectory = %spec.id, attempts = spec.attempt, ?errors, "dropping a failed trajectory");
            self.stats.dropped.fetch_add(1, Relaxed);
            slot.dropped.store(true, SeqCst);
            self.release(1);
            return SampleEnd::Dropped;
        }
    }

    /// One run of a sample into its slot: from its recorded turns when `resume` (after a replay;
    /// a replay that diverges restarts the sample), from scratch otherwise. An agent that cannot
    /// be built or panics leaves a failed trajectory.
    async fn attempt(&self, spec: &RunSpec, slot: &SampleSlot, resume: bool) {
        if !resume {
            *lock_live(&slot.live) = LiveRun::new(empty_trajectory(spec, "unknown"));
        }
        let Some(mut agent) = self.build_agent(spec, slot) else {
            return;
        };
        let mut from = None;
        if resume {
            match self.replay(spec, slot, agent.as_mut()).await {
                Some(replayed) => from = Some(replayed),
                None => {
                    *lock_live(&slot.live) = LiveRun::new(empty_trajectory(spec, "unknown"));
                    let Some(fresh) = self.build_agent(spec, slot) else {
                        return;
                    };
                    agent = fresh;
                }
            }
        }
        let run = run_live(&self.run, agent, spec.clone(), &slot.live, from);
        if let Err(panic) = AssertUnwindSafe(run).catch_unwind().await {
            let message = format!("the agent panicked: {}", panic_message(&panic));
            lock_live(&slot.live).trajectory = agent_failure(spec, message);
        }
    }

    /// The sample's agent from the factory; `None` (with a failed trajectory in the slot) when it
    /// cannot be built.
    fn build_agent(&self, spec: &RunSpec, slot: &SampleSlot) -> Option<Box<dyn Agent>> {
        match (self.agents)(&spec.question, spec.sample) {
            Ok(agent) => Some(agent),
            Err(message) => {
                let failure = agent_failure(spec, format!("cannot build the agent: {message}"));
                lock_live(&slot.live).trajectory = failure;
                None
            }
        }
    }

    /// Replays the slot's recorded turns into `agent`; `None` (counted) when it diverges.
    async fn replay(
        &self,
        spec: &RunSpec,
        slot: &SampleSlot,
        agent: &mut dyn Agent,
    ) -> Option<crate::runner::Replayed> {
        let replayed = AssertUnwindSafe(replay(&self.run, agent, &slot.live))
            .catch_unwind()
            .await;
        let why = match replayed {
            Ok(Ok(replayed)) => {
                self.stats
                    .replayed_turns
                    .fetch_add(replayed.turns as u64, Relaxed);
                return Some(replayed);
            }
            Ok(Err(divergence)) => divergence.to_string(),
            Err(panic) => format!("the agent panicked in replay: {}", panic_message(&panic)),
        };
        tracing::warn!(trajectory = %spec.id, %why, "restarting a resumed sample from scratch");
        self.stats.replay_restarts.fetch_add(1, Relaxed);
        None
    }

    /// Frees `k` in-flight slots without accepting them (dropped or filtered).
    fn release(&self, k: usize) {
        lock(&self.gate).in_flight -= k;
        self.admit.notify_one();
        self.ready.notify_waiters();
    }

    /// Forgets a group that will never be ready (dropped or filtered), freeing `k` slots.
    fn forget_group(&self, index: u64, k: usize) {
        {
            let mut gate = lock(&self.gate);
            gate.admitted.remove(&index);
            gate.in_flight -= k;
        }
        self.admit.notify_one();
        self.ready.notify_waiters();
    }

    /// Scores a complete group, filters it, and queues it for the consumer.
    async fn finish_group(&self, mut group: Group) {
        let kept = group.trajectories.len();
        if kept == 0 {
            self.stats.dropped_groups.fetch_add(1, Relaxed);
            self.forget_group(group.index, 0);
            return;
        }
        self.stats.pending_rewards.fetch_add(1, Relaxed);
        let scored = tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.score(&mut group.trajectories) => true,
        };
        self.stats.pending_rewards.fetch_sub(1, Relaxed);
        if !scored {
            return;
        }
        if self.cfg.filter_zero_variance == Some(true) && zero_variance(&group.trajectories) {
            self.stats.filtered_groups.fetch_add(1, Relaxed);
            if group
                .trajectories
                .iter()
                .all(|t| t.reward.is_none_or(|r| r <= 0.0))
            {
                self.stats.filtered_unsolved.fetch_add(1, Relaxed);
            }
            self.forget_group(group.index, kept);
            return;
        }
        {
            let mut gate = lock(&self.gate);
            gate.admitted.remove(&group.index);
            gate.in_flight -= kept;
            gate.accepted += kept as u64;
            gate.push_ready(group, self.cfg.ordered);
        }
        self.admit.notify_one();
        self.ready.notify_waiters();
    }

    async fn score(&self, batch: &mut [Trajectory]) {
        if let Err(panic) = AssertUnwindSafe(self.scorer.score(batch))
            .catch_unwind()
            .await
        {
            let message = format!("the scorer panicked: {}", panic_message(&panic));
            for t in batch.iter_mut() {
                t.reward = None;
                t.errors
                    .push(TrajectoryError::new("reward", message.clone()).at_stage("scorer"));
            }
        }
    }
}

/// The runner's stats sink: the engine's counters and the systematic-failure watch.
struct EngineSink {
    stats: Arc<Collector>,
    watch: Arc<FailureWatch>,
}

impl StatsSink for EngineSink {
    fn generation_began(&self) {
        self.stats.generation_began();
    }

    fn generation_ended(&self) {
        self.stats.generation_ended();
    }

    fn generation(&self, latency_ms: f64, output_tokens: usize) {
        self.stats.generation(latency_ms, output_tokens);
    }

    fn tool_call(&self, latency_ms: f64, tool: &str, error: Option<&str>) {
        self.stats.tool_call(latency_ms, tool, error);
        if self.watch.tool_call(tool, error) {
            tracing::error!(
                tool,
                error,
                "systematic failure of tool calls: stopping the rollout engine"
            );
        }
    }
}

enum Admission {
    Admitted(Arc<AdmittedGroup>),
    Wait,
    Closed,
}

/// A new group of `n` samples with empty records.
fn admitted_group(next: NextQuestion, index: u64, version: u64, n: u32) -> AdmittedGroup {
    let samples = (0..n)
        .map(|sample| {
            let spec = RunSpec {
                id: trajectory_id(&next, sample),
                question: next.question.clone(),
                sample,
                attempt: 1,
            };
            SampleSlot::new(LiveRun::new(empty_trajectory(&spec, "unknown")), false, 1)
        })
        .collect();
    AdmittedGroup {
        index,
        question: next.question,
        epoch: next.epoch,
        version,
        samples,
    }
}

/// The run spec of a sample slot (its id and sample index are on its record).
fn sample_spec(group: &AdmittedGroup, slot: &SampleSlot) -> RunSpec {
    let live = lock_live(&slot.live);
    RunSpec {
        id: live.trajectory.id.clone(),
        question: group.question.clone(),
        sample: live.trajectory.sample,
        attempt: slot.attempt.load(SeqCst),
    }
}

/// `"{question_id}#{sample}"`, with `@{epoch}` after the question id from the second epoch on.
fn trajectory_id(next: &NextQuestion, sample: u32) -> String {
    if next.epoch == 0 {
        format!("{}#{sample}", next.question.id)
    } else {
        format!("{}@{}#{sample}", next.question.id, next.epoch)
    }
}

/// Whether every reward of the group is the same (missing rewards compare as equal to each other).
fn zero_variance(trajectories: &[Trajectory]) -> bool {
    let first = trajectories.first().map(|t| t.reward);
    trajectories.iter().all(|t| Some(t.reward) == first)
}

fn agent_failure(spec: &RunSpec, message: String) -> Trajectory {
    let mut t = empty_trajectory(spec, "unknown");
    t.stop_reason = StopReason::Error;
    t.errors.push(TrajectoryError::new("agent", message));
    t
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

#[cfg(test)]
mod tests;
