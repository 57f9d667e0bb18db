//! [`ServerPool`]: an [`LlmBackend`] over many servers of one protocol. It picks the least-loaded
//! healthy server (in-flight requests), keeps a trajectory on the server that holds its KV cache
//! (sticky affinity, sharded map, O(1) per request), marks a server that fails transiently
//! unhealthy for a cooldown and moves the request to another one with jittered back-off, brings
//! servers back through health probes, re-sends aborted generations with the tokens produced so
//! far, and gives every output token the policy version that produced it.

use super::http::backoff;
use super::openai::OpenAiCompletionsServer;
use super::sglang::SglangServer;
use super::{FinishReason, GenOutput, GenRequest, LlmBackend, RawOutput, ServerProtocol};
use crate::{Result, RolloutError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Number of shards of the affinity and live-request maps.
const SHARDS: usize = 64;

/// How the pool routes, retries and checks its servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Timeout of one server call, in seconds (a whole generation). Default 600.
    pub request_timeout_secs: f64,
    /// Timeout of one health probe, in seconds. Default 5.
    pub health_timeout_secs: f64,
    /// Server calls per generation part at most, across servers (failover included). Every
    /// server is tried once before any is tried again. Default 6.
    pub max_attempts: u32,
    /// First back-off between attempts, in milliseconds; doubles each attempt, with jitter
    /// (uniform in [d/2, d]). Default 50.
    pub backoff_base_ms: u64,
    /// Longest back-off, in milliseconds. Default 5000.
    pub backoff_max_ms: u64,
    /// How long a server that failed transiently gets no requests, in seconds (a successful
    /// health probe ends it early). Default 10.
    pub unhealthy_cooldown_secs: f64,
    /// Seconds between background health probes of every server; 0 = no background probes
    /// (a server comes back when its cooldown ends). Default 5.
    pub health_check_interval_secs: f64,
    /// A trajectory stays on its server while that server's in-flight count exceeds the
    /// least-loaded server's by at most this much. Default 8.
    pub affinity_slack: u32,
    /// Re-sends of an aborted generation (e.g. by a weight update) before the partial output is
    /// returned with finish `abort`. Default 16.
    pub max_resends: u32,
}

impl asearcher_config::Document for PoolConfig {}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            request_timeout_secs: 600.0,
            health_timeout_secs: 5.0,
            max_attempts: 6,
            backoff_base_ms: 50,
            backoff_max_ms: 5000,
            unhealthy_cooldown_secs: 10.0,
            health_check_interval_secs: 5.0,
            affinity_slack: 8,
            max_resends: 16,
        }
    }
}

fn positive_secs(field: &str, v: f64) -> Result<Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(RolloutError::config(
            field,
            format!("must be a positive number of seconds, got {v}"),
        ))
    }
}

impl PoolConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        positive_secs("request_timeout_secs", self.request_timeout_secs)?;
        positive_secs("health_timeout_secs", self.health_timeout_secs)?;
        if self.max_attempts == 0 {
            return Err(RolloutError::config("max_attempts", "must be at least 1"));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(RolloutError::config(
                "backoff_base_ms",
                format!(
                    "{} exceeds backoff_max_ms {}",
                    self.backoff_base_ms, self.backoff_max_ms
                ),
            ));
        }
        if !(self.unhealthy_cooldown_secs.is_finite() && self.unhealthy_cooldown_secs >= 0.0) {
            return Err(RolloutError::config(
                "unhealthy_cooldown_secs",
                "must be >= 0",
            ));
        }
        if !(self.health_check_interval_secs.is_finite() && self.health_check_interval_secs >= 0.0)
        {
            return Err(RolloutError::config(
                "health_check_interval_secs",
                "must be >= 0 (0: off)",
            ));
        }
        Ok(())
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_secs)
    }
}

/// One server's counters, as [`ServerPool::stats`] reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub address: String,
    pub healthy: bool,
    pub in_flight: u32,
    /// Calls sent (re-sends and retries included).
    pub requests: u64,
    /// Calls that failed (any error).
    pub failures: u64,
    /// Output tokens received.
    pub tokens: u64,
    pub last_error: Option<String>,
}

/// One server and its routing state.
struct Slot {
    id: u64,
    server: Arc<dyn ServerProtocol>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    tokens: AtomicU64,
    /// Milliseconds since the pool's epoch until which the server gets no requests; 0: healthy.
    unhealthy_until_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The policy version this server serves, as far as the pool knows: set by weight syncs
    /// (per server, so a server that failed an update keeps its old tag) and raised by the
    /// versions the server reports.
    version: AtomicU64,
}

impl Slot {
    fn healthy(&self, now_ms: u64) -> bool {
        self.unhealthy_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn record_error(&self, e: &RolloutError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }
}

/// Counts a call in flight and registers its request id; on drop (also when the caller's
/// future is dropped) undoes both, and asks the server to abort the request if the call did not
/// complete.
struct InFlight<'a> {
    slot: Arc<Slot>,
    live: &'a ShardedMap<String, u64>,
    rid: String,
    done: bool,
}

impl<'a> InFlight<'a> {
    fn start(slot: Arc<Slot>, live: &'a ShardedMap<String, u64>, rid: &str) -> Self {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        slot.requests.fetch_add(1, Ordering::Relaxed);
        live.insert(rid.to_string(), slot.id);
        InFlight {
            slot,
            live,
            rid: rid.to_string(),
            done: false,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.live.remove(&self.rid);
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let server = self.slot.server.clone();
            let rid = std::mem::take(&mut self.rid);
            rt.spawn(async move {
                if let Err(e) = server.abort(&rid).await {
                    tracing::debug!(server = server.address(), rid, error = %e, "abort of an abandoned request failed");
                }
            });
        }
    }
}

/// A map split in [`SHARDS`] mutex-guarded parts by key hash, so tens of thousands of
/// concurrent trajectories do not contend on one lock. Shrinks after bursts of removals.
struct ShardedMap<K, V> {
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

impl<K: std::hash::Hash + Eq, V: Clone> ShardedMap<K, V> {
    fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let m = &self.shards[(h as usize) % SHARDS];
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: &K) -> Option<V> {
        self.shard(key).get(key).cloned()
    }

    fn insert(&self, key: K, value: V) {
        self.shard(&key).insert(key, value);
    }

    fn remove(&self, key: &K) {
        let mut shard = self.shard(key);
        shard.remove(key);
        if shard.capacity() > 64 && shard.len() * 4 < shard.capacity() {
            let len = shard.len();
            shard.shrink_to(len * 2);
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    fn capacity(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.capacity()))
            .sum()
    }

    fn entries(&self) -> Vec<(K, V)>
    where
        K: Clone,
    {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            if let Ok(m) = s.lock() {
                all.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        all
    }
}

struct Inner {
    config: PoolConfig,
    kind: String,
    slots: RwLock<Arc<[Arc<Slot>]>>,
    next_id: AtomicU64,
    /// Trajectory -> id of the server it is pinned to.
    affinity: ShardedMap<u64, u64>,
    /// Request id of a call in flight -> id of its server (for `abort_all`).
    live: ShardedMap<String, u64>,
    version: AtomicU64,
    /// Rotates the start of the least-loaded scan so ties spread over servers.
    rotor: AtomicUsize,
    epoch: Instant,
}

/// Many inference servers behind one [`LlmBackend`].
#[derive(Clone)]
pub struct ServerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPool")
            .field("servers", &self.addresses())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl ServerPool {
    /// A pool over SGLang servers at `addresses` (`http://host:port`).
    pub fn sglang(addresses: &[impl AsRef<str>], config: PoolConfig) -> Result<Self> {
        config.validate()?;
        let timeout = config.request_timeout();
        let servers = build_servers(addresses, |a| {
            Ok(Arc::new(SglangServer::new(a, timeout)?) as Arc<dyn ServerProtocol>)
        })?;
        Self::with_kind(servers, config, "sglang")
    }

    /// A pool over OpenAI-compatible servers (`/v1/completions`) serving `model`; the API key,
    /// if any, is read from the environment variable `api_key_env`.
    pub fn openai(
        addresses: &[impl AsRef<str>],
        model: &str,
        api_key_env: Option<&str>,
        config: PoolConfig,
    ) -> Result<Self> {
        config.validate()?;
        let timeout = config.request_timeout();
        let servers = build_servers(addresses, |a| {
            let s = OpenAiCompletionsServer::new(a, model, api_key_env, timeout)?;
            Ok(Arc::new(s) as Arc<dyn ServerProtocol>)
        })?;
        Self::with_kind(servers, config, "openai")
    }

    /// A pool over servers built elsewhere.
    pub fn new(servers: Vec<Arc<dyn ServerProtocol>>, config: PoolConfig) -> Result<Self> {
        Self::with_kind(servers, config, "inference")
    }

    fn with_kind(
        servers: Vec<Arc<dyn ServerProtocol>>,
        config: PoolConfig,
        kind: &str,
    ) -> Result<Self> {
        config.validate()?;
        let interval = config.health_check_interval_secs;
        let pool = ServerPool {
            inner: Arc::new(Inner {
                config,
                kind: kind.to_string(),
                slots: RwLock::new(Arc::from(Vec::new())),
                next_id: AtomicU64::new(0),
                affinity: ShardedMap::new(),
                live: ShardedMap::new(),
                version: AtomicU64::new(0),
                rotor: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        };
        for s in servers {
            pool.add_server(s);
        }
        if interval > 0.0 {
            pool.spawn_health_checks(Duration::from_secs_f64(interval));
        }
        Ok(pool)
    }

    /// Starts the background health probes if a tokio runtime is running here (else servers
    /// come back when their cooldown ends). The task stops when the pool is dropped.
    fn spawn_health_checks(&self, every: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime: health checks are lazy (cooldown only)");
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.check_health().await;
            }
        });
    }

    /// Adds a server at runtime.
    pub fn add_server(&self, server: Arc<dyn ServerProtocol>) {
        let slot = Arc::new(Slot {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            server,
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            unhealthy_until_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            version: AtomicU64::new(self.inner.version.load(Ordering::Relaxed)),
        });
        let mut slots = self.inner.slots.write().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = slots.iter().cloned().collect();
        v.push(slot);
        *slots = Arc::from(v);
    }

    /// Removes the server with this address (calls in flight on it finish); false if none.
    /// Trajectories pinned to it are re-pinned on their next request.
    pub fn remove_server(&self, address: &str) -> bool {
        let mut slots = self.inner.slots.write().unwrap_or_else(|p| p.into_inner());
        let v: Vec<_> = slots
            .iter()
            .filter(|s| s.server.address() != address)
            .cloned()
            .collect();
        let removed = v.len() != slots.len();
        *slots = Arc::from(v);
        removed
    }

    pub fn addresses(&self) -> Vec<String> {
        self.inner
            .snapshot()
            .iter()
            .map(|s| s.server.address().to_string())
            .collect()
    }

    /// Sets the policy version of every server (and of servers added later), given to tokens
    /// that no server reports a version for.
    pub fn set_version(&self, version: u64) {
        self.inner.version.store(version, Ordering::Relaxed);
        for slot in self.inner.snapshot().iter() {
            slot.version.store(version, Ordering::Relaxed);
        }
    }

    /// Sets the policy version of the server at `address` alone (the others took another
    /// update, or failed it); false if the pool has no such server.
    pub fn set_server_version(&self, address: &str, version: u64) -> bool {
        let slots = self.inner.snapshot();
        let found: Vec<_> = slots
            .iter()
            .filter(|s| s.server.address() == address)
            .collect();
        for slot in &found {
            slot.version.store(version, Ordering::Relaxed);
        }
        !found.is_empty()
    }

    /// The policy version each server serves, as far as the pool knows, by address.
    pub fn server_versions(&self) -> Vec<(String, u64)> {
        self.inner
            .snapshot()
            .iter()
            .map(|s| {
                let v = s.version.load(Ordering::Relaxed);
                (s.server.address().to_string(), v)
            })
            .collect()
    }

    /// Per-server counters.
    pub fn stats(&self) -> Vec<ServerStats> {
        let now = self.inner.now_ms();
        self.inner
            .snapshot()
            .iter()
            .map(|s| ServerStats {
                address: s.server.address().to_string(),
                healthy: s.healthy(now),
                in_flight: s.in_flight.load(Ordering::Relaxed),
                requests: s.requests.load(Ordering::Relaxed),
                failures: s.failures.load(Ordering::Relaxed),
                tokens: s.tokens.load(Ordering::Relaxed),
                last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// Number of trajectories with routing state (for tests and stats).
    pub fn affinity_len(&self) -> usize {
        self.inner.affinity.len()
    }

    /// Slots allocated by the affinity map (its memory, in entries).
    pub fn affinity_capacity(&self) -> usize {
        self.inner.affinity.capacity()
    }

    /// Asks every server to abort every request the pool has in flight (best effort; errors
    /// are logged). Returns how many aborts were sent. The aborted calls come back with
    /// finish `abort` and are re-sent, up to `max_resends`.
    pub async fn abort_all(&self) -> usize {
        let slots = self.inner.snapshot();
        let calls: Vec<_> = self
            .inner
            .live
            .entries()
            .into_iter()
            .filter_map(|(rid, id)| {
                slots
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| (rid, s.server.clone()))
            })
            .collect();
        let n = calls.len();
        futures::future::join_all(calls.into_iter().map(|(rid, server)| async move {
            if let Err(e) = server.abort(&rid).await {
                tracing::warn!(server = server.address(), rid, error = %e, "abort failed");
            }
        }))
        .await;
        n
    }

    /// Probes every server now (what the background task does each interval).
    pub async fn check_health(&self) {
        self.inner.check_health().await;
    }
}

fn build_servers(
    addresses: &[impl AsRef<str>],
    make: impl Fn(&str) -> Result<Arc<dyn ServerProtocol>>,
) -> Result<Vec<Arc<dyn ServerProtocol>>> {
    if addresses.is_empty() {
        return Err(RolloutError::config(
            "servers",
            "the pool needs at least one server address",
        ));
    }
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            make(a.as_ref()).map_err(|e| match e {
                RolloutError::Config { message, .. } => {
                    RolloutError::config(format!("servers[{i}]"), message)
                }
                other => other,
            })
        })
        .collect()
}

impl Inner {
    fn snapshot(&self) -> Arc<[Arc<Slot>]> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "healthy".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn mark_unhealthy(&self, slot: &Slot, e: &RolloutError) {
        let cooldown = Duration::from_secs_f64(self.config.unhealthy_cooldown_secs);
        let until = self.now_ms() + cooldown.as_millis() as u64;
        let was = slot.unhealthy_until_ms.swap(until, Ordering::Relaxed);
        if was <= self.now_ms() {
            tracing::warn!(server = slot.server.address(), error = %e, cooldown_secs = cooldown.as_secs_f64(), "server marked unhealthy");
        }
    }

    fn mark_healthy(&self, slot: &Slot) {
        let was = slot.unhealthy_until_ms.swap(0, Ordering::Relaxed);
        if was > self.now_ms() {
            tracing::info!(server = slot.server.address(), "server healthy again");
        }
    }

    async fn check_health(&self) {
        let timeout = Duration::from_secs_f64(self.config.health_timeout_secs);
        let slots = self.snapshot();
        let probes = slots.iter().map(|slot| async move {
            let result = match tokio::time::timeout(timeout, slot.server.health()).await {
                Ok(r) => r,
                Err(_) => Err(RolloutError::Timeout {
                    server: slot.server.address().to_string(),
                    secs: timeout.as_secs_f64(),
                }),
            };
            match result {
                Ok(()) => self.mark_healthy(slot),
                Err(e) => {
                    slot.record_error(&e);
                    self.mark_unhealthy(slot, &e);
                }
            }
        });
        futures::future::join_all(probes).await;
    }

    /// The server for the next call: among healthy servers not yet `tried` (else among all
    /// not tried, else among all), the trajectory's pinned one if it is not overloaded, else
    /// the least loaded (which becomes the pin).
    fn pick(&self, affinity: Option<u64>, tried: &[u64]) -> Option<Arc<Slot>> {
        let slots = self.snapshot();
        let now = self.now_ms();
        let untried = |s: &&Arc<Slot>| !tried.contains(&s.id);
        let healthy_untried: Vec<&Arc<Slot>> = slots
            .iter()
            .filter(untried)
            .filter(|s| s.healthy(now))
            .collect();
        let candidates = if !healthy_untried.is_empty() {
            healthy_untried
        } else {
            let untried_any: Vec<_> = slots.iter().filter(untried).collect();
            if untried_any.is_empty() {
                slots.iter().collect()
            } else {
                untried_any
            }
        };
        let least = self.least_loaded(&candidates)?;
        let Some(key) = affinity else {
            return Some(least);
        };
        let slack = self.config.affinity_slack;
        let least_load = least.in_flight.load(Ordering::Relaxed);
        let pinned = self
            .affinity
            .get(&key)
            .and_then(|id| candidates.iter().find(|s| s.id == id).map(|s| (*s).clone()))
            .filter(|s| s.in_flight.load(Ordering::Relaxed) <= least_load.saturating_add(slack));
        match pinned {
            Some(s) => Some(s),
            None => {
                self.affinity.insert(key, least.id);
                Some(least)
            }
        }
    }

    fn least_loaded(&self, candidates: &[&Arc<Slot>]) -> Option<Arc<Slot>> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| candidates[(start + i) % n])
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))
            .map(|s| (*s).clone())
    }

    /// One generation part with failover: tries servers until one answers or a non-transient
    /// error, at most `max_attempts` calls.
    async fn call(&self, req: &GenRequest) -> Result<(RawOutput, Arc<Slot>)> {
        let cfg = &self.config;
        let mut tried: Vec<u64> = Vec::new();
        let mut failures: Vec<(String, String)> = Vec::new();
        for attempt in 0..cfg.max_attempts {
            if attempt > 0 {
                let base = Duration::from_millis(cfg.backoff_base_ms);
                let max = Duration::from_millis(cfg.backoff_max_ms);
                tokio::time::sleep(backoff(attempt, base, max)).await;
            }
            let Some(slot) = self.pick(req.affinity, &tried) else {
                return Err(RolloutError::config("servers", "the pool has no servers"));
            };
            match self.call_one(&slot, req).await {
                Ok(raw) => return Ok((raw, slot)),
                Err(e) if e.is_transient() => {
                    tracing::debug!(server = slot.server.address(), rid = req.rid, attempt, error = %e, "transient failure; failing over");
                    self.mark_unhealthy(&slot, &e);
                    let address = slot.server.address().to_string();
                    match failures.iter_mut().find(|(a, _)| *a == address) {
                        Some(entry) => entry.1 = e.to_string(),
                        None => failures.push((address, e.to_string())),
                    }
                    if !tried.contains(&slot.id) {
                        tried.push(slot.id);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(RolloutError::AllServersFailed { attempts: failures })
    }

    /// One call to one server, under the request timeout, counted in flight.
    async fn call_one(&self, slot: &Arc<Slot>, req: &GenRequest) -> Result<RawOutput> {
        let mut guard = InFlight::start(slot.clone(), &self.live, &req.rid);
        let timeout = self.config.request_timeout();
        let result = match tokio::time::timeout(timeout, slot.server.generate(req)).await {
            Ok(r) => r.and_then(|raw| check_lengths(slot.server.address(), raw)),
            Err(_) => Err(RolloutError::Timeout {
                server: slot.server.address().to_string(),
                secs: timeout.as_secs_f64(),
            }),
        };
        match &result {
            Ok(raw) => {
                guard.done = true;
                slot.tokens
                    .fetch_add(raw.output_ids.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // A server that answered (4xx, protocol) has nothing left running.
                guard.done = !matches!(e, RolloutError::Timeout { .. });
                slot.record_error(e);
            }
        }
        result
    }

    /// The version of every token of `raw`: the server's per-token versions, else its weight
    /// version, else the version the pool knows that server serves. Raises that server's
    /// version to what it reports.
    fn token_versions(&self, slot: &Slot, raw: &RawOutput) -> Vec<u64> {
        let reported = raw
            .versions
            .as_ref()
            .and_then(|v| v.iter().max().copied())
            .or(raw.weight_version);
        if let Some(v) = reported {
            slot.version.fetch_max(v, Ordering::Relaxed);
        }
        match (&raw.versions, raw.weight_version) {
            (Some(v), _) => v.clone(),
            (None, Some(w)) => vec![w; raw.output_ids.len()],
            (None, None) => vec![slot.version.load(Ordering::Relaxed); raw.output_ids.len()],
        }
    }

    /// The oldest version any server serves (the pool's own when it has no server).
    fn min_version(&self) -> u64 {
        let slots = self.snapshot();
        slots
            .iter()
            .map(|s| s.version.load(Ordering::Relaxed))
            .min()
            .unwrap_or_else(|| self.version.load(Ordering::Relaxed))
    }
}

/// Output ids, logprobs and versions must be equally long (for protocol implementations the
/// pool does not know).
fn check_lengths(server: &str, raw: RawOutput) -> Result<RawOutput> {
    let n = raw.output_ids.len();
    let versions = raw.versions.as_ref().map_or(n, Vec::len);
    if raw.logprobs.len() != n || versions != n {
        return Err(RolloutError::Protocol {
            server: server.to_string(),
            message: format!(
                "{n} output ids, {} logprobs, {versions} versions",
                raw.logprobs.len()
            ),
        });
    }
    Ok(raw)
}

/// Adds one call's output to a generation assembled across re-sends.
fn append(out: &mut GenOutput, raw: RawOutput, versions: Vec<u64>, server: &str) {
    out.output_ids.extend(raw.output_ids);
    out.logprobs.extend(raw.logprobs);
    out.versions.extend(versions);
    out.finish = raw.finish;
    out.server = server.to_string();
}

/// A resent request's seed: the original's, moved on by the resend count (a fresh draw, not a
/// replay of the first tokens' randomness).
pub fn resend_seed(sampling: &super::SamplingParams, resends: u32) -> Option<u64> {
    sampling
        .seed
        .map(|s| super::request_seed(s, &format!("~r{resends}")))
}

/// The request that continues `req` after an abort: the prompt plus everything generated so
/// far, with the rest of the token budget and a fresh request id.
fn resend_request(req: &GenRequest, out: &GenOutput) -> GenRequest {
    let mut input = Vec::with_capacity(req.input_ids.len() + out.output_ids.len());
    input.extend_from_slice(&req.input_ids);
    input.extend_from_slice(&out.output_ids);
    GenRequest {
        rid: format!("{}~r{}", req.rid, out.resends),
        affinity: req.affinity,
        input_ids: Arc::new(input),
        sampling: super::SamplingParams {
            max_new_tokens: req.sampling.max_new_tokens - out.output_ids.len() as u32,
            seed: resend_seed(&req.sampling, out.resends),
            ..req.sampling.clone()
        },
    }
}

#[async_trait]
impl LlmBackend for ServerPool {
    async fn generate(&self, req: GenRequest) -> Result<GenOutput> {
        let inner = &self.inner;
        let budget = req.sampling.max_new_tokens;
        let mut out = GenOutput {
            output_ids: Vec::new(),
            logprobs: Vec::new(),
            versions: Vec::new(),
            finish: FinishReason::Abort,
            server: String::new(),
            resends: 0,
        };
        let mut part = req.clone();
        loop {
            let (raw, slot) = inner.call(&part).await?;
            let produced = raw.output_ids.len();
            let versions = inner.token_versions(&slot, &raw);
            append(&mut out, raw, versions, slot.server.address());
            if out.finish != FinishReason::Abort {
                return Ok(out);
            }
            if out.output_ids.len() as u64 >= u64::from(budget) {
                out.finish = FinishReason::Length;
                return Ok(out);
            }
            if out.resends >= inner.config.max_resends {
                tracing::warn!(
                    rid = req.rid,
                    resends = out.resends,
                    "generation still aborted after max_resends; returning the partial output"
                );
                return Ok(out);
            }
            out.resends += 1;
            if produced == 0 {
                // Aborted before any progress (a server pausing for a weight update): wait a bit.
                let base = Duration::from_millis(inner.config.backoff_base_ms);
                let max = Duration::from_millis(inner.config.backoff_max_ms);
                tokio::time::sleep(backoff(out.resends, base, max)).await;
            }
            part = resend_request(&req, &out);
        }
    }

    fn release(&self, affinity: u64) {
        self.inner.affinity.remove(&affinity);
    }

    /// The oldest version any server serves: tokens of unknown origin are never tagged newer
    /// than they may be.
    fn version(&self) -> u64 {
        self.inner.min_version()
    }

    /// The first server's answer that can be read: every server of a pool serves one model.
    async fn identity(&self) -> String {
        for slot in self.inner.snapshot().iter() {
            if let Some(identity) = slot.server.identity().await {
                return identity;
            }
        }
        asearcher_config::fingerprint::UNKNOWN.into()
    }

    fn describe(&self) -> String {
        let n = self.inner.snapshot().len();
        format!(
            "pool of {n} {} server{}",
            self.inner.kind,
            if n == 1 { "" } else { "s" }
        )
    }
}
