//! The engine thread: owns the model and the KV cache, and loops over commands, admission
//! (prefill into a free cache slot), one batched decode step over every running request, sampling
//! and finishing. Requests join and leave the batch at any step; running requests always occupy
//! cache slots `0..running.len()` (a finished request's slot is refilled by the last one).

use crate::generate::api::{
    Command, Detokenize, FinishReason, GenerateOutput, GenerateRequest, GeneratorHandle,
    SharedStats, StopMatch, UpdateOptions, WeightUpdate,
};
use crate::generate::sampler::{sample, RequestSampler, Sampled};
use crate::model::{read_hf_weights, KvCache, QwenModel};
use crate::{Result, TorchError};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Longest context used when the model allows more and none is asked for.
const DEFAULT_CONTEXT_CAP: usize = 32768;

/// How the engine runs.
#[derive(Clone)]
pub struct GeneratorOptions {
    /// Most requests decoded together (the running batch, and the number of cache slots).
    pub max_running: usize,
    /// Most tokens (prompt + output) of one request; 0 means min(max_position_embeddings, 32768).
    pub max_context: usize,
    /// Turns ids into text for stop strings; requests with stop strings fail without one.
    pub detokenizer: Option<Arc<dyn Detokenize>>,
    /// The policy version of the weights the model starts with.
    pub initial_version: u64,
    /// Cache positions per slot reserved at start; the cache grows (doubling) as requests need.
    pub initial_capacity: usize,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        GeneratorOptions {
            max_running: 32,
            max_context: 0,
            detokenizer: None,
            initial_version: 0,
            initial_capacity: 256,
        }
    }
}

/// Starts the engine thread on `model` and returns a handle to it.
pub fn spawn(model: QwenModel, options: GeneratorOptions) -> Result<GeneratorHandle> {
    let max_context = resolve_max_context(&model, options.max_context)?;
    if options.max_running == 0 {
        return Err(TorchError::config("max_running", "must be at least 1"));
    }
    let capacity = options.initial_capacity.clamp(1, max_context) as i64;
    let cache = KvCache::new(&model, options.max_running as i64, capacity)?;
    let stats = Arc::new(SharedStats::default());
    stats
        .version
        .store(options.initial_version, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = Engine::new(model, cache, &options, max_context, stats.clone());
    std::thread::Builder::new()
        .name("asearcher-generator".into())
        .spawn(move || engine.run(rx))
        .map_err(|e| TorchError::EngineStopped(format!("cannot start the engine thread: {e}")))?;
    Ok(GeneratorHandle::new(tx, stats))
}

fn resolve_max_context(model: &QwenModel, asked: usize) -> Result<usize> {
    let limit = model.config().max_position_embeddings as usize;
    match asked {
        0 => Ok(limit.min(DEFAULT_CONTEXT_CAP)),
        n if n > limit => Err(TorchError::config(
            "max_context",
            format!("{n} exceeds the model's max_position_embeddings ({limit})"),
        )),
        n if n < 2 => Err(TorchError::config(
            "max_context",
            "must be at least 2 (a prompt token and a new one)",
        )),
        n => Ok(n),
    }
}

type Reply = oneshot::Sender<Result<GenerateOutput>>;

/// A request waiting for a cache slot.
struct Waiting {
    request: GenerateRequest,
    reply: Reply,
    submitted: Instant,
}

/// A request in the running batch; its cache slot is its index in `Engine::running`.
struct Active {
    request: GenerateRequest,
    reply: Reply,
    sampler: RequestSampler,
    output_ids: Vec<u32>,
    logprobs: Vec<f32>,
    versions: Vec<u64>,
    submitted: Instant,
    admitted: Instant,
    /// Tokens of output decoded for stop-string checks (covers the longest stop string).
    stop_window: usize,
}

impl Active {
    /// Tokens whose keys/values are in the cache: the prompt and all output but the last token.
    fn cached(&self) -> i64 {
        (self.request.input_ids.len() + self.output_ids.len()) as i64 - 1
    }

    fn total_tokens(&self) -> usize {
        self.request.input_ids.len() + self.output_ids.len()
    }

    fn push(&mut self, token: u32, logprob: f32, version: u64) {
        self.output_ids.push(token);
        self.logprobs.push(logprob);
        self.versions.push(version);
    }

    fn into_output(self, finish: FinishReason) -> (Reply, GenerateOutput) {
        let now = Instant::now();
        let output = GenerateOutput {
            rid: self.request.rid,
            output_ids: self.output_ids,
            output_logprobs: self.logprobs,
            output_versions: self.versions,
            finish,
            prompt_tokens: self.request.input_ids.len(),
            queue_seconds: (self.admitted - self.submitted).as_secs_f64(),
            total_seconds: (now - self.submitted).as_secs_f64(),
        };
        (self.reply, output)
    }
}

struct Engine {
    model: QwenModel,
    cache: KvCache,
    max_running: usize,
    max_context: usize,
    detokenizer: Option<Arc<dyn Detokenize>>,
    eos: Vec<u32>,
    vocab: usize,
    stats: Arc<SharedStats>,
    waiting: VecDeque<Waiting>,
    running: Vec<Active>,
    paused: bool,
    /// No handle is left: finish the work in hand, then exit.
    closed: bool,
    version: u64,
}

/// Runs `f`, turning a panic into an error that names `what`.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(TorchError::EngineStopped(format!("{what} panicked: {msg}")))
    })
}

fn request_error(rid: &str, msg: impl Into<String>) -> TorchError {
    TorchError::Request {
        rid: rid.to_string(),
        msg: msg.into(),
    }
}

impl Engine {
    fn new(
        model: QwenModel,
        cache: KvCache,
        options: &GeneratorOptions,
        max_context: usize,
        stats: Arc<SharedStats>,
    ) -> Self {
        let eos = model.eos_token_ids();
        let vocab = model.config().vocab_size as usize;
        Engine {
            model,
            cache,
            max_running: options.max_running,
            max_context,
            detokenizer: options.detokenizer.clone(),
            eos,
            vocab,
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
            paused: false,
            closed: false,
            version: options.initial_version,
        }
    }

    fn has_work(&self) -> bool {
        !self.paused && !(self.running.is_empty() && self.waiting.is_empty())
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        tracing::debug!(
            max_running = self.max_running,
            max_context = self.max_context,
            "generator started"
        );
        while self.drain_commands(&mut rx) {
            if self.paused {
                continue;
            }
            self.admit();
            self.decode_step();
            self.publish_counts();
            if self.closed && !self.has_work() {
                break;
            }
        }
        self.abort_everything("the generator was shut down");
        tracing::debug!("generator stopped");
        // The model and cache are freed before the channel closes, so a closed channel means the
        // memory is back.
        drop(self);
        drop(rx);
    }

    /// Handles queued commands: waits for one when there is nothing else to do. Returns false to
    /// stop the engine.
    fn drain_commands(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) -> bool {
        if !self.has_work() && !self.closed {
            match rx.blocking_recv() {
                Some(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                None => return false,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return false;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.publish_counts();
        !(self.closed && !self.has_work())
    }

    /// Applies one command; false means shut down.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Generate { request, reply } => self.enqueue(request, reply),
            Command::Abort { rid } => self.abort_rid(&rid),
            Command::AbortAll => self.abort_all("aborted by abort_all"),
            Command::Pause { done } => {
                self.paused = true;
                self.stats.paused.store(true, Ordering::Relaxed);
                let _ = done.send(());
            }
            Command::Resume => {
                self.paused = false;
                self.stats.paused.store(false, Ordering::Relaxed);
            }
            Command::UpdateWeights {
                update,
                options,
                reply,
            } => {
                let result = self.update_weights(update, &options);
                let _ = reply.send(result);
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn is_live(&self, rid: &str) -> bool {
        self.running.iter().any(|a| a.request.rid == rid)
            || self.waiting.iter().any(|w| w.request.rid == rid)
    }

    fn enqueue(&mut self, request: GenerateRequest, reply: Reply) {
        if self.is_live(&request.rid) {
            let err = request_error(&request.rid, "another live request has the same rid");
            let _ = reply.send(Err(err));
            return;
        }
        self.waiting.push_back(Waiting {
            request,
            reply,
            submitted: Instant::now(),
        });
    }

    /// Why a request cannot be served at all, if it cannot.
    fn check(&self, request: &GenerateRequest) -> Result<()> {
        let rid = &request.rid;
        let n = request.input_ids.len();
        if n == 0 {
            return Err(request_error(rid, "input_ids is empty"));
        }
        if n >= self.max_context {
            return Err(request_error(
                rid,
                format!(
                    "prompt of {n} tokens leaves no room for output within max_context {}",
                    self.max_context
                ),
            ));
        }
        if let Some(&bad) = request.input_ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(request_error(
                rid,
                format!("input_ids holds token {bad}, outside the vocabulary of {}", self.vocab),
            ));
        }
        if !request.params.stop.is_empty() && self.detokenizer.is_none() {
            return Err(request_error(
                rid,
                "stop strings need a detokenizer, and this generator has none",
            ));
        }
        request.params.validate()
    }

    /// Moves waiting requests into free slots: prefill, first token, maybe finish at once.
    fn admit(&mut self) {
        while self.running.len() < self.max_running && !self.paused {
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            if let Err(e) = self.check(&waiting.request) {
                let _ = waiting.reply.send(Err(e));
                continue;
            }
            let mut active = self.activate(waiting);
            if active.request.params.max_new_tokens == 0 {
                self.finish(active, FinishReason::Length);
                continue;
            }
            let slot = self.running.len() as i64;
            match guarded("prefill", || self.prefill_first(&mut active, slot)) {
                Ok(()) => {
                    tracing::debug!(
                        rid = %active.request.rid,
                        prompt_tokens = active.request.input_ids.len(),
                        slot,
                        "request admitted"
                    );
                    self.stats
                        .prompt_tokens
                        .fetch_add(active.request.input_ids.len() as u64, Ordering::Relaxed);
                    self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
                    match self.finish_reason(&active) {
                        Some(reason) => self.finish(active, reason),
                        None => self.running.push(active),
                    }
                }
                Err(e) => self.fail(active, "prefill", e),
            }
        }
    }

    fn activate(&self, waiting: Waiting) -> Active {
        let stop_window = waiting
            .request
            .params
            .stop
            .iter()
            .map(|s| s.len() + 1)
            .max()
            .unwrap_or(0);
        Active {
            sampler: RequestSampler::new(&waiting.request.params),
            request: waiting.request,
            reply: waiting.reply,
            output_ids: Vec::new(),
            logprobs: Vec::new(),
            versions: Vec::new(),
            submitted: waiting.submitted,
            admitted: Instant::now(),
            stop_window,
        }
    }

    /// Grows every slot's capacity to at least `needed` positions (doubling, up to max_context).
    fn reserve(&mut self, needed: i64) -> Result<()> {
        let capacity = self.cache.capacity();
        if needed <= capacity {
            return Ok(());
        }
        let grown = (capacity * 2).min(self.max_context as i64).max(needed);
        tracing::debug!(from = capacity, to = grown, "growing the KV cache");
        self.cache.ensure_capacity(grown)
    }

    /// Runs the prompt into `slot` and samples the first output token.
    fn prefill_first(&mut self, active: &mut Active, slot: i64) -> Result<()> {
        let ids = &active.request.input_ids;
        self.reserve(ids.len() as i64 + 1)?;
        let logits = self.model.prefill(&mut self.cache, slot, ids, 0)?;
        let row = active.sampler.next_row();
        let Sampled { tokens, logprobs } = sample(&logits.f_unsqueeze(0)?, &[row])?;
        active.push(tokens[0], logprobs[0], self.version);
        Ok(())
    }

    /// One token for every running request.
    fn decode_step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        match guarded("decode step", || self.decode_and_sample()) {
            Ok(sampled) => {
                for (active, (&t, &lp)) in self
                    .running
                    .iter_mut()
                    .zip(sampled.tokens.iter().zip(&sampled.logprobs))
                {
                    active.push(t, lp, self.version);
                }
                self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .generated_tokens
                    .fetch_add(sampled.tokens.len() as u64, Ordering::Relaxed);
                self.retire_finished();
            }
            Err(e) => {
                tracing::warn!(error = %e, "decode step failed; failing the running requests");
                for active in std::mem::take(&mut self.running) {
                    self.fail(active, "decode step", TorchError::EngineStopped(e.to_string()));
                }
            }
        }
    }

    fn decode_and_sample(&mut self) -> Result<Sampled> {
        let needed = self.running.iter().map(|a| a.cached() + 1).max().unwrap_or(1);
        self.reserve(needed)?;
        let tokens: Vec<u32> = self.running.iter().map(|a| a.output_ids[a.output_ids.len() - 1]).collect();
        let positions: Vec<i64> = self.running.iter().map(Active::cached).collect();
        let logits = self.model.decode(&mut self.cache, &tokens, &positions)?;
        let rows: Vec<_> = self.running.iter_mut().map(|a| a.sampler.next_row()).collect();
        sample(&logits, &rows)
    }

    /// Finishes every request whose last token ends it, keeping slots compact.
    fn retire_finished(&mut self) {
        for i in (0..self.running.len()).rev() {
            if let Some(reason) = self.finish_reason(&self.running[i]) {
                match self.remove_slot(i) {
                    Ok(active) => self.finish(active, reason),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot compact the KV cache");
                        for active in std::mem::take(&mut self.running) {
                            self.fail(active, "cache compaction", TorchError::EngineStopped(e.to_string()));
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Takes the request in slot `i` out of the batch; the last slot moves into its place.
    fn remove_slot(&mut self, i: usize) -> Result<Active> {
        let last = self.running.len() - 1;
        if i != last {
            let len = self.running[last].cached();
            guarded("copy_slot", || self.cache.copy_slot(last as i64, i as i64, len))?;
        }
        Ok(self.running.swap_remove(i))
    }

    fn finish_reason(&self, active: &Active) -> Option<FinishReason> {
        let &last = active.output_ids.last()?;
        let params = &active.request.params;
        if (!params.ignore_eos && self.eos.contains(&last)) || params.stop_token_ids.contains(&last) {
            return Some(FinishReason::Stop {
                matched: StopMatch::Token(last),
            });
        }
        if let Some(text) = self.stop_string_hit(active) {
            return Some(FinishReason::Stop {
                matched: StopMatch::Text(text),
            });
        }
        if active.output_ids.len() >= params.max_new_tokens
            || active.total_tokens() >= self.max_context
        {
            return Some(FinishReason::Length);
        }
        None
    }

    /// The first stop string found in the decoded tail of the output. Every step checks, so a
    /// stop string can only appear in the tail that the newest token completed.
    fn stop_string_hit(&self, active: &Active) -> Option<String> {
        let detok = self.detokenizer.as_ref()?;
        let stops = &active.request.params.stop;
        if stops.is_empty() {
            return None;
        }
        let out = &active.output_ids;
        let tail = &out[out.len().saturating_sub(active.stop_window)..];
        let text = detok.decode(tail);
        stops.iter().find(|s| text.contains(s.as_str())).cloned()
    }

    fn finish(&mut self, active: Active, reason: FinishReason) {
        let counter = if matches!(reason, FinishReason::Abort { .. }) {
            &self.stats.aborted
        } else {
            &self.stats.finished
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (reply, output) = active.into_output(reason);
        tracing::debug!(
            rid = %output.rid,
            output_tokens = output.output_ids.len(),
            finish = ?output.finish,
            seconds = output.total_seconds,
            "request finished"
        );
        let _ = reply.send(Ok(output));
    }

    fn fail(&mut self, active: Active, what: &str, e: TorchError) {
        tracing::warn!(rid = %active.request.rid, error = %e, "{what} failed");
        let err = request_error(&active.request.rid, format!("{what} failed: {e}"));
        let _ = active.reply.send(Err(err));
    }

    fn abort_waiting(&mut self, waiting: Waiting, message: &str) {
        let active = self.activate(waiting);
        self.finish(
            active,
            FinishReason::Abort {
                message: message.into(),
            },
        );
    }

    fn abort_rid(&mut self, rid: &str) {
        let message = format!("request `{rid}` aborted");
        if let Some(i) = self.waiting.iter().position(|w| w.request.rid == rid) {
            if let Some(waiting) = self.waiting.remove(i) {
                self.abort_waiting(waiting, &message);
            }
        } else if let Some(i) = self.running.iter().position(|a| a.request.rid == rid) {
            match self.remove_slot(i) {
                Ok(active) => self.finish(active, FinishReason::Abort { message }),
                Err(e) => {
                    let active = self.running.swap_remove(i);
                    self.finish(active, FinishReason::Abort { message });
                    self.fail_all_running("cache compaction", e);
                }
            }
        }
    }

    fn fail_all_running(&mut self, what: &str, e: TorchError) {
        for active in std::mem::take(&mut self.running) {
            self.fail(active, what, TorchError::EngineStopped(e.to_string()));
        }
    }

    fn abort_running(&mut self, message: &str) {
        for active in std::mem::take(&mut self.running) {
            self.finish(
                active,
                FinishReason::Abort {
                    message: message.into(),
                },
            );
        }
    }

    fn abort_all(&mut self, message: &str) {
        self.abort_running(message);
        for waiting in std::mem::take(&mut self.waiting) {
            self.abort_waiting(waiting, message);
        }
    }

    fn abort_everything(&mut self, message: &str) {
        self.abort_all(message);
        self.publish_counts();
    }

    /// Swaps the weights; on failure the old weights and version stay.
    fn update_weights(&mut self, update: WeightUpdate, options: &UpdateOptions) -> Result<u64> {
        let started = Instant::now();
        let (source, named) = match update {
            WeightUpdate::FromDisk(dir) => {
                let named = guarded("reading weights", || read_hf_weights(&dir))?;
                (dir.display().to_string(), named)
            }
            WeightUpdate::Tensors(named) => ("tensors".to_string(), named),
        };
        guarded("set_weights", || self.model.set_weights(&named))?;
        let version = options.version.unwrap_or(self.version + 1);
        self.version = version;
        self.stats.version.store(version, Ordering::Relaxed);
        if options.abort_in_flight {
            self.abort_running(&format!("aborted by the weight update to version {version}"));
        } else if options.recompute_cache {
            self.recompute_cache();
        }
        tracing::info!(
            version,
            source = %source,
            tensors = named.len(),
            running = self.running.len(),
            seconds = started.elapsed().as_secs_f64(),
            "weights updated"
        );
        Ok(version)
    }

    /// Re-runs the prompt and output so far of every running request under the current weights.
    fn recompute_cache(&mut self) {
        for i in (0..self.running.len()).rev() {
            let active = &self.running[i];
            let cached = active.cached() as usize;
            let tokens: Vec<u32> = active
                .request
                .input_ids
                .iter()
                .chain(&active.output_ids)
                .take(cached)
                .copied()
                .collect();
            let result = guarded("recompute", || {
                self.model.prefill(&mut self.cache, i as i64, &tokens, 0).map(drop)
            });
            if let Err(e) = result {
                match self.remove_slot(i) {
                    Ok(active) => self.fail(active, "cache recompute", e),
                    Err(copy) => return self.fail_all_running("cache compaction", copy),
                }
            }
        }
    }

    fn publish_counts(&self) {
        let s = &self.stats;
        s.running.store(self.running.len() as u64, Ordering::Relaxed);
        s.waiting.store(self.waiting.len() as u64, Ordering::Relaxed);
    }
}
