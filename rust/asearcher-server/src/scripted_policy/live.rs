//! The scripted server's live state: the weight version, pause, the in-flight requests (so they
//! can be aborted), the latency model (per-request delay plus an optional server-wide token
//! budget, a virtual clock) and the counters behind `/get_server_info`.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// The latency model's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub latency_ms: f64,
    pub ms_per_token: f64,
    pub tokens_per_s_total: Option<f64>,
}

impl Latency {
    fn is_zero(&self) -> bool {
        self.latency_ms <= 0.0 && self.ms_per_token <= 0.0 && self.tokens_per_s_total.is_none()
    }
}

/// When a request's tokens appear: the first after `first_token`, the rest evenly until `end`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first_token: Instant,
    pub end: Instant,
    pub tokens: usize,
}

impl Schedule {
    /// Tokens produced by `t` (all of them at `end`).
    pub fn produced_at(&self, t: Instant) -> usize {
        if t >= self.end {
            return self.tokens;
        }
        if t <= self.first_token {
            return 0;
        }
        let span = (self.end - self.first_token).as_secs_f64();
        let done = (t - self.first_token).as_secs_f64() / span;
        ((self.tokens as f64 * done).floor() as usize).min(self.tokens)
    }
}

fn ms(x: f64) -> Duration {
    Duration::from_secs_f64((x.max(0.0)) / 1000.0)
}

struct InFlight {
    rid: String,
    abort: oneshot::Sender<&'static str>,
}

struct Inner {
    version: u64,
    paused: bool,
    next_key: u64,
    in_flight: HashMap<u64, InFlight>,
    /// The virtual clock of the server-wide token budget: when its capacity is next free.
    busy_until: Option<Instant>,
}

/// Counters of `/get_server_info` and the Python handle's `stats()`.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub aborted: AtomicU64,
    pub searches: AtomicU64,
    pub answers: AtomicU64,
    pub notes: AtomicU64,
    pub garbage: AtomicU64,
    pub judge_requests: AtomicU64,
    pub in_flight: AtomicU64,
}

/// A snapshot of the counters and the live state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerStats {
    /// `/generate` requests answered (aborted ones included).
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Output tokens returned (partial outputs of aborted requests included).
    pub generated_tokens: u64,
    pub aborted: u64,
    /// Replies by kind.
    pub searches: u64,
    pub answers: u64,
    pub notes: u64,
    pub garbage: u64,
    pub judge_requests: u64,
    /// Requests being answered now (waiting out their latency or a pause).
    pub in_flight: u64,
    pub version: u64,
    pub paused: bool,
}

/// Shared by every handler.
pub struct Live {
    inner: Mutex<Inner>,
    paused_tx: watch::Sender<bool>,
    latency: Latency,
    pub counters: Counters,
}

/// A request admitted to run: its version, schedule and abort signal. Dropping it (the request
/// finished or its client went away) forgets the request.
pub struct Admission {
    pub version: u64,
    pub schedule: Schedule,
    pub abort: Option<oneshot::Receiver<&'static str>>,
    key: Option<u64>,
    live: Arc<Live>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.live.lock().in_flight.remove(&key);
        }
    }
}

impl Live {
    pub fn new(latency: Latency) -> Arc<Self> {
        let (paused_tx, _) = watch::channel(false);
        Arc::new(Live {
            inner: Mutex::new(Inner {
                version: 0,
                paused: false,
                next_key: 0,
                in_flight: HashMap::new(),
                busy_until: None,
            }),
            paused_tx,
            latency,
            counters: Counters::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under every panic point (plain field updates).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Waits while generation is paused, then registers a request of `tokens` output tokens:
    /// reads the version and books its time, atomically with respect to aborts and updates.
    pub async fn admit(self: &Arc<Self>, rid: &str, tokens: usize) -> Admission {
        loop {
            let mut paused_rx = {
                let mut inner = self.lock();
                if !inner.paused {
                    return self.register(&mut inner, rid, tokens);
                }
                self.paused_tx.subscribe()
            };
            let _ = paused_rx.wait_for(|p| !*p).await;
        }
    }

    fn register(self: &Arc<Self>, inner: &mut Inner, rid: &str, tokens: usize) -> Admission {
        let now = Instant::now();
        let schedule = self.schedule(inner, now, tokens);
        let (key, abort) = if self.latency.is_zero() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            let key = inner.next_key;
            inner.next_key += 1;
            inner.in_flight.insert(
                key,
                InFlight {
                    rid: rid.to_string(),
                    abort: tx,
                },
            );
            (Some(key), Some(rx))
        };
        Admission {
            version: inner.version,
            schedule,
            abort,
            key,
            live: self.clone(),
        }
    }

    /// The request's own delay, stretched to its place on the server-wide virtual clock.
    fn schedule(&self, inner: &mut Inner, now: Instant, tokens: usize) -> Schedule {
        let l = self.latency;
        let first_token = now + ms(l.latency_ms);
        let mut end = first_token + ms(l.ms_per_token * tokens as f64);
        if let Some(rate) = l.tokens_per_s_total.filter(|r| *r > 0.0) {
            let start = inner.busy_until.map_or(now, |b| b.max(now));
            let booked = start + Duration::from_secs_f64(tokens as f64 / rate);
            inner.busy_until = Some(booked);
            end = end.max(booked);
        }
        Schedule {
            first_token: first_token.min(end),
            end,
            tokens,
        }
    }

    fn abort_where(
        inner: &mut Inner,
        why: &'static str,
        pick: impl Fn(&InFlight) -> bool,
    ) -> usize {
        let keys: Vec<u64> = inner
            .in_flight
            .iter()
            .filter(|(_, f)| pick(f))
            .map(|(k, _)| *k)
            .collect();
        for key in &keys {
            if let Some(f) = inner.in_flight.remove(key) {
                let _ = f.abort.send(why);
            }
        }
        keys.len()
    }

    /// Aborts the in-flight requests with this id; returns how many there were.
    pub fn abort_rid(&self, rid: &str) -> usize {
        Self::abort_where(&mut self.lock(), "aborted by /abort_request", |f| {
            f.rid == rid
        })
    }

    pub fn abort_all(&self, why: &'static str) -> usize {
        Self::abort_where(&mut self.lock(), why, |_| true)
    }

    /// Aborts everything in flight and holds new requests until [`Live::resume`].
    pub fn pause(&self) -> usize {
        let n = {
            let mut inner = self.lock();
            inner.paused = true;
            Self::abort_where(&mut inner, "aborted by /pause_generation", |_| true)
        };
        self.paused_tx.send_replace(true);
        n
    }

    pub fn resume(&self) {
        self.lock().paused = false;
        self.paused_tx.send_replace(false);
    }

    /// Aborts everything in flight, then moves to `version` (or the next one); returns the new
    /// version and how many requests were aborted.
    pub fn update_weights(&self, version: Option<u64>) -> (u64, usize) {
        let mut inner = self.lock();
        let n = Self::abort_where(&mut inner, "aborted by a weight update", |_| true);
        inner.version = version.unwrap_or(inner.version + 1);
        (inner.version, n)
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (version, paused) = {
            let inner = self.lock();
            (inner.version, inner.paused)
        };
        ServerStats {
            requests: get(&c.requests),
            prompt_tokens: get(&c.prompt_tokens),
            generated_tokens: get(&c.generated_tokens),
            aborted: get(&c.aborted),
            searches: get(&c.searches),
            answers: get(&c.answers),
            notes: get(&c.notes),
            garbage: get(&c.garbage),
            judge_requests: get(&c.judge_requests),
            in_flight: get(&c.in_flight),
            version,
            paused,
        }
    }
}

/// Counts a request as in flight while it lives.
pub struct InFlightCount<'a>(&'a AtomicU64);

impl<'a> InFlightCount<'a> {
    pub fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightCount(counter)
    }
}

impl Drop for InFlightCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produced_tokens_grow_with_time() {
        let t0 = Instant::now();
        let s = Schedule {
            first_token: t0 + Duration::from_millis(10),
            end: t0 + Duration::from_millis(110),
            tokens: 100,
        };
        assert_eq!(s.produced_at(t0), 0);
        assert_eq!(s.produced_at(t0 + Duration::from_millis(60)), 50);
        assert_eq!(s.produced_at(t0 + Duration::from_secs(1)), 100);
    }

    #[tokio::test]
    async fn the_token_budget_queues_requests() {
        let live = Live::new(Latency {
            tokens_per_s_total: Some(1000.0),
            ..Latency::default()
        });
        let a = live.admit("a", 100).await;
        let b = live.admit("b", 100).await;
        let gap = b.schedule.end - a.schedule.end;
        assert!(gap >= Duration::from_millis(99), "{gap:?}");
    }

    #[tokio::test]
    async fn updates_abort_in_flight_and_bump_the_version() {
        let live = Live::new(Latency {
            latency_ms: 10_000.0,
            ..Latency::default()
        });
        let mut a = live.admit("a", 10).await;
        assert_eq!(a.version, 0);
        assert_eq!(live.update_weights(None), (1, 1));
        let why = a.abort.take().unwrap().await.unwrap();
        assert_eq!(why, "aborted by a weight update");
        assert_eq!(live.update_weights(Some(7)), (7, 0));
        assert_eq!(live.admit("b", 1).await.version, 7);
    }
}
