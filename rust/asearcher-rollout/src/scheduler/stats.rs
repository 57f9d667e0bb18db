//! Live statistics of the rollout engine: counters in atomics, latencies in bounded reservoirs
//! of recent values, throughput over a sliding window of one-second buckets. Cheap to update from
//! thousands of tasks and cheap to read (a snapshot copies at most a few thousand floats).

use crate::runner::StatsSink;
use asearcher_agent::agent::StopReason;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Latency samples kept for percentiles (the most recent ones).
const RESERVOIR: usize = 4096;
/// Seconds of the tokens/s window.
const RATE_WINDOW_S: u64 = 10;

const STOP_REASONS: [StopReason; 6] = [
    StopReason::Answered,
    StopReason::MaxTurns,
    StopReason::ContextBudget,
    StopReason::ProtocolFailures,
    StopReason::Timeout,
    StopReason::Error,
];

fn stop_index(r: StopReason) -> usize {
    STOP_REASONS
        .iter()
        .position(|s| *s == r)
        .unwrap_or(STOP_REASONS.len() - 1)
}

fn stop_name(r: StopReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{r:?}"))
}

/// The most recent `RESERVOIR` values in a ring.
#[derive(Default)]
struct Recent {
    values: Vec<f64>,
    next: usize,
}

impl Recent {
    fn push(&mut self, v: f64) {
        if self.values.len() < RESERVOIR {
            self.values.push(v);
        } else {
            self.values[self.next] = v;
        }
        self.next = (self.next + 1) % RESERVOIR;
    }

    fn percentiles(&self) -> Percentiles {
        let mut v = self.values.clone();
        v.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| -> Option<f64> {
            (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
        };
        Percentiles {
            p50: at(0.5),
            p95: at(0.95),
            samples: v.len(),
        }
    }
}

/// p50 / p95 over the most recent samples (`None` before the first one).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub samples: usize,
}

/// Output tokens per one-second bucket over the last `RATE_WINDOW_S` seconds.
struct Rate {
    started: Instant,
    buckets: VecDeque<(u64, u64)>,
}

impl Rate {
    fn add(&mut self, tokens: u64) {
        let sec = self.started.elapsed().as_secs();
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += tokens,
            _ => self.buckets.push_back((sec, tokens)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|(s, _)| s + RATE_WINDOW_S < sec)
        {
            self.buckets.pop_front();
        }
    }

    fn per_second(&self) -> f64 {
        let elapsed = self.started.elapsed().as_secs_f64();
        let now = elapsed as u64;
        let from = now.saturating_sub(RATE_WINDOW_S);
        let tokens: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s >= from)
            .map(|(_, n)| n)
            .sum();
        let span = (elapsed - from as f64).max(1e-3);
        tokens as f64 / span
    }
}

/// Version lag of consumed trajectories: consumer's version minus the oldest policy version that
/// produced a token of the trajectory (its admission version when it has no tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Staleness {
    pub consumed: u64,
    pub mean: f64,
    pub max: u64,
    /// Trajectories by lag (`lag -> count`).
    pub histogram: BTreeMap<u64, u64>,
}

/// A snapshot of the engine's statistics (trajectory counts unless named otherwise).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutStats {
    /// Trajectories whose agent loop is running now.
    pub running: usize,
    /// Admitted and not yet accepted or rejected (running, waiting for their group, scoring):
    /// what the gate counts as in flight.
    pub in_flight: usize,
    pub admitted: u64,
    /// Samples whose final run ended without failure.
    pub finished: u64,
    /// Samples whose final run failed (kept or dropped).
    pub failed: u64,
    /// Extra runs of failed samples.
    pub retried: u64,
    /// Failed samples dropped.
    pub dropped: u64,
    /// Groups dropped because every sample was dropped.
    pub dropped_groups: u64,
    /// Groups dropped by the zero-variance filter.
    pub filtered_groups: u64,
    /// Of those, the groups whose every sample scored 0 or less (none solved the question);
    /// the others were solved by every sample.
    pub filtered_unsolved: u64,
    /// Samples cancelled by a shutdown.
    pub cancelled: u64,
    /// Unfinished samples of a snapshot that this engine continued ([`super::RolloutEngine::resume`]).
    pub resumed_samples: u64,
    /// Recorded turns replayed into rebuilt agents.
    pub replayed_turns: u64,
    /// Resumed samples restarted from scratch because their replay diverged.
    pub replay_restarts: u64,
    pub ready_groups: usize,
    /// Trajectories handed to the consumer or waiting in the ready queue.
    pub accepted: u64,
    pub version: u64,
    /// Questions taken from the source (the resume position).
    pub position: u64,
    /// Generations (turns) done, all runs included.
    pub turns: u64,
    pub output_tokens: u64,
    /// Output tokens per second over the last 10 s.
    pub tokens_per_s: f64,
    pub tool_calls: u64,
    pub tool_errors: u64,
    pub gen_latency_ms: Percentiles,
    pub tool_latency_ms: Percentiles,
    /// Seconds (since the engine started) with at least one generation request in flight: the
    /// policy's busy time. Over a wall-clock span, its growth / the span is the generation
    /// utilisation.
    pub gen_busy_s: f64,
    /// The integral of in-flight generation requests over time (request-seconds): its growth /
    /// a span is the mean number of requests being generated.
    pub gen_request_s: f64,
    /// Groups waiting for (or in) scoring.
    pub pending_rewards: usize,
    /// Final stop reasons of finished and failed samples.
    pub stop_reasons: BTreeMap<String, u64>,
    pub staleness: Staleness,
}

/// How long generation requests were in flight: busy time (at least one) and request-seconds.
struct GenClock {
    active: i64,
    since: Instant,
    busy: f64,
    requests: f64,
}

impl GenClock {
    fn new() -> Self {
        Self {
            active: 0,
            since: Instant::now(),
            busy: 0.0,
            requests: 0.0,
        }
    }

    /// Accounts the time since the last change, then moves the in-flight count by `delta`.
    fn change(&mut self, delta: i64) {
        self.advance();
        self.active = (self.active + delta).max(0);
    }

    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.since).as_secs_f64();
        if self.active > 0 {
            self.busy += dt;
            self.requests += dt * self.active as f64;
        }
        self.since = now;
    }

    /// (busy seconds, request-seconds) up to now.
    fn read(&mut self) -> (f64, f64) {
        self.advance();
        (self.busy, self.requests)
    }
}

/// The engine's counters; the runner reports into it through [`StatsSink`].
pub(crate) struct Collector {
    pub admitted: AtomicU64,
    pub running: AtomicUsize,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub dropped_groups: AtomicU64,
    pub filtered_groups: AtomicU64,
    pub filtered_unsolved: AtomicU64,
    pub cancelled: AtomicU64,
    pub resumed_samples: AtomicU64,
    pub replayed_turns: AtomicU64,
    pub replay_restarts: AtomicU64,
    pub pending_rewards: AtomicUsize,
    turns: AtomicU64,
    output_tokens: AtomicU64,
    tool_calls: AtomicU64,
    tool_errors: AtomicU64,
    stop_reasons: [AtomicU64; STOP_REASONS.len()],
    gen_latency: Mutex<Recent>,
    tool_latency: Mutex<Recent>,
    gen_clock: Mutex<GenClock>,
    rate: Mutex<Rate>,
    staleness: Mutex<(Staleness, u64)>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Collector {
    pub fn new() -> Self {
        Self {
            admitted: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_groups: AtomicU64::new(0),
            filtered_groups: AtomicU64::new(0),
            filtered_unsolved: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            resumed_samples: AtomicU64::new(0),
            replayed_turns: AtomicU64::new(0),
            replay_restarts: AtomicU64::new(0),
            pending_rewards: AtomicUsize::new(0),
            turns: AtomicU64::new(0),
            output_tokens: AtomicU64::new(0),
            tool_calls: AtomicU64::new(0),
            tool_errors: AtomicU64::new(0),
            stop_reasons: Default::default(),
            gen_latency: Mutex::default(),
            tool_latency: Mutex::default(),
            gen_clock: Mutex::new(GenClock::new()),
            rate: Mutex::new(Rate {
                started: Instant::now(),
                buckets: VecDeque::new(),
            }),
            staleness: Mutex::default(),
        }
    }

    pub fn stop_reason(&self, r: StopReason) {
        self.stop_reasons[stop_index(r)].fetch_add(1, Relaxed);
    }

    pub fn consumed(&self, lag: u64) {
        let mut guard = locked(&self.staleness);
        let (s, sum) = &mut *guard;
        s.consumed += 1;
        *sum += lag;
        s.max = s.max.max(lag);
        s.mean = *sum as f64 / s.consumed as f64;
        *s.histogram.entry(lag).or_default() += 1;
    }

    /// Fills the counters of `out` (the gate's fields are the scheduler's).
    pub fn fill(&self, out: &mut RolloutStats) {
        out.running = self.running.load(Relaxed);
        out.admitted = self.admitted.load(Relaxed);
        out.finished = self.finished.load(Relaxed);
        out.failed = self.failed.load(Relaxed);
        out.retried = self.retried.load(Relaxed);
        out.dropped = self.dropped.load(Relaxed);
        out.dropped_groups = self.dropped_groups.load(Relaxed);
        out.filtered_groups = self.filtered_groups.load(Relaxed);
        out.filtered_unsolved = self.filtered_unsolved.load(Relaxed);
        out.cancelled = self.cancelled.load(Relaxed);
        out.resumed_samples = self.resumed_samples.load(Relaxed);
        out.replayed_turns = self.replayed_turns.load(Relaxed);
        out.replay_restarts = self.replay_restarts.load(Relaxed);
        out.pending_rewards = self.pending_rewards.load(Relaxed);
        out.turns = self.turns.load(Relaxed);
        out.output_tokens = self.output_tokens.load(Relaxed);
        out.tool_calls = self.tool_calls.load(Relaxed);
        out.tool_errors = self.tool_errors.load(Relaxed);
        out.tokens_per_s = locked(&self.rate).per_second();
        out.gen_latency_ms = locked(&self.gen_latency).percentiles();
        (out.gen_busy_s, out.gen_request_s) = locked(&self.gen_clock).read();
        out.tool_latency_ms = locked(&self.tool_latency).percentiles();
        out.stop_reasons = STOP_REASONS
            .iter()
            .zip(&self.stop_reasons)
            .map(|(r, n)| (stop_name(*r), n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.staleness = locked(&self.staleness).0.clone();
    }
}

impl StatsSink for Collector {
    fn generation_began(&self) {
        locked(&self.gen_clock).change(1);
    }

    fn generation_ended(&self) {
        locked(&self.gen_clock).change(-1);
    }

    fn generation(&self, latency_ms: f64, output_tokens: usize) {
        self.turns.fetch_add(1, Relaxed);
        self.output_tokens.fetch_add(output_tokens as u64, Relaxed);
        locked(&self.gen_latency).push(latency_ms);
        locked(&self.rate).add(output_tokens as u64);
    }

    fn tool_call(&self, latency_ms: f64, _tool: &str, error: Option<&str>) {
        self.tool_calls.fetch_add(1, Relaxed);
        if error.is_some() {
            self.tool_errors.fetch_add(1, Relaxed);
        }
        locked(&self.tool_latency).push(latency_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservoir_is_bounded_and_percentiles_follow_recent_values() {
        let mut r = Recent::default();
        assert_eq!(r.percentiles().p50, None);
        for i in 0..10_000 {
            r.push(if i < 5_000 {
                1_000.0
            } else {
                f64::from(i % 100)
            });
        }
        let p = r.percentiles();
        assert_eq!(p.samples, RESERVOIR);
        assert_eq!(r.values.len(), RESERVOIR);
        // Only the recent values (0..100) count; the old 1000s were pushed out.
        assert!((49.0..=50.0).contains(&p.p50.unwrap()), "{p:?}");
        assert!((94.0..=95.0).contains(&p.p95.unwrap()), "{p:?}");
    }

    #[test]
    fn the_generation_clock_counts_busy_time_and_request_seconds() {
        let c = Collector::new();
        let read = |c: &Collector| {
            let mut s = RolloutStats::default();
            c.fill(&mut s);
            (s.gen_busy_s, s.gen_request_s)
        };
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(read(&c), (0.0, 0.0), "idle time is not busy");
        c.generation_began();
        c.generation_began();
        std::thread::sleep(std::time::Duration::from_millis(40));
        c.generation_ended();
        std::thread::sleep(std::time::Duration::from_millis(40));
        c.generation_ended();
        let (busy, requests) = read(&c);
        assert!(busy >= 0.08, "{busy}");
        // Two in flight for the first half, one for the second: between 1x and 2x the busy time.
        assert!(
            requests >= busy + 0.04 && requests <= 2.0 * busy,
            "{requests} vs {busy}"
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(
            read(&c),
            (busy, requests),
            "nothing in flight: the clock stands still"
        );
    }

    #[test]
    fn counters_and_staleness_show_in_the_snapshot() {
        let c = Collector::new();
        c.generation(10.0, 7);
        c.generation(30.0, 3);
        c.tool_call(5.0, "search", Some("down"));
        c.stop_reason(StopReason::Timeout);
        c.stop_reason(StopReason::Timeout);
        c.consumed(0);
        c.consumed(3);
        let mut s = RolloutStats::default();
        c.fill(&mut s);
        assert_eq!(
            (s.turns, s.output_tokens, s.tool_calls, s.tool_errors),
            (2, 10, 1, 1)
        );
        assert!(s.tokens_per_s > 0.0);
        assert_eq!(s.stop_reasons.get("timeout"), Some(&2));
        assert_eq!(s.stop_reasons.len(), 1);
        assert_eq!(
            (s.staleness.consumed, s.staleness.max, s.staleness.mean),
            (2, 3, 1.5)
        );
        assert_eq!(s.gen_latency_ms.p95, Some(30.0));
        assert!(serde_json::to_string(&s)
            .unwrap()
            .contains("\"tokens_per_s\""));
    }
}
