//! The engine thread: owns the model and the KV cache, and loops over commands, admission
//! (the waiting requests that fit are prefilled together, one padded pass, into free cache
//! slots), one batched decode step over every running request, sampling
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
    /// Most padded prompt tokens (requests x longest prompt) prefilled together in one forward
    /// pass when requests are admitted; bounds the activation memory of a batch of long prompts.
    /// A request longer than this is still admitted, alone. 0 means no bound.
    pub max_prefill_tokens: usize,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        GeneratorOptions {
            max_running: 32,
            max_context: 0,
            detokenizer: None,
            initial_version: 0,
            initial_capacity: 256,
            max_prefill_tokens: 8192,
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
    // libtorch's intra-op thread count is per thread (OpenMP): a new thread would run every op on
    // one core, so the engine thread takes the caller's setting.
    let threads = tch::get_num_threads();
    std::thread::Builder::new()
        .name("asearcher-generator".into())
        .spawn(move || {
            tch::set_num_threads(threads);
            engine.run(rx)
        })
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
    max_prefill_tokens: usize,
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

/// The tokens of `active` whose keys/values belong in the cache.
fn cached_tokens(active: &Active) -> Vec<u32> {
    let cached = active.cached() as usize;
    active
        .request
        .input_ids
        .iter()
        .chain(&active.output_ids)
        .take(cached)
        .copied()
        .collect()
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
            max_prefill_tokens: options.max_prefill_tokens,
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
        !self.paused && (!self.running.is_empty() || !self.waiting.is_empty())
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
        !self.closed || self.has_work()
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
        if let Some(&bad) = request
            .input_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab)
        {
            return Err(request_error(
                rid,
                format!(
                    "input_ids holds token {bad}, outside the vocabulary of {}",
                    self.vocab
                ),
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

    /// Moves waiting requests into free slots: one batched prefill, first tokens, and those
    /// that end at once finish.
    fn admit(&mut self) {
        if self.paused {
            return;
        }
        let mut batch = self.take_admissible();
        if batch.is_empty() {
            return;
        }
        let base = self.running.len();
        let count = batch.len();
        match guarded("prefill", || self.prefill_batch_first(&mut batch, base)) {
            Ok(sampled) => {
                for (mut active, (&t, &lp)) in batch
                    .into_iter()
                    .zip(sampled.tokens.iter().zip(&sampled.logprobs))
                {
                    active.push(t, lp, self.version);
                    self.admitted(active);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, count, "batched prefill failed; prefilling one by one");
                for mut active in batch {
                    let slot = self.running.len() as i64;
                    match guarded("prefill", || self.prefill_first(&mut active, slot)) {
                        Ok(()) => self.admitted(active),
                        Err(e) => self.fail(active, "prefill", e),
                    }
                }
            }
        }
        self.retire_from(base);
    }

    /// Pops the waiting requests that can start now, up to the free slots and the prefill token
    /// budget (at least one); invalid ones fail here, and those asking for no tokens finish.
    fn take_admissible(&mut self) -> Vec<Active> {
        let mut batch: Vec<Active> = Vec::new();
        let mut longest = 0;
        while self.running.len() + batch.len() < self.max_running {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let len = next.request.input_ids.len();
            let widest = longest.max(len);
            let over =
                self.max_prefill_tokens > 0 && (batch.len() + 1) * widest > self.max_prefill_tokens;
            if over && !batch.is_empty() {
                break;
            }
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            if let Err(e) = self.check(&waiting.request) {
                let _ = waiting.reply.send(Err(e));
                continue;
            }
            let active = self.activate(waiting);
            if active.request.params.max_new_tokens == 0 {
                self.finish(active, FinishReason::Length);
                continue;
            }
            longest = widest;
            batch.push(active);
        }
        batch
    }

    /// A prefilled request with its first token joins the running batch (its slot is its index).
    fn admitted(&mut self, active: Active) {
        tracing::debug!(
            rid = %active.request.rid,
            prompt_tokens = active.request.input_ids.len(),
            slot = self.running.len(),
            "request admitted"
        );
        self.stats
            .prompt_tokens
            .fetch_add(active.request.input_ids.len() as u64, Ordering::Relaxed);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        self.running.push(active);
    }

    /// Runs every prompt of `batch` in one pass into slots `base..` and samples first tokens.
    fn prefill_batch_first(&mut self, batch: &mut [Active], base: usize) -> Result<Sampled> {
        let prompts: Vec<&[u32]> = batch
            .iter()
            .map(|a| a.request.input_ids.as_slice())
            .collect();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        self.reserve(longest as i64 + 1)?;
        let slots: Vec<i64> = (0..batch.len()).map(|i| (base + i) as i64).collect();
        let starts = vec![0; batch.len()];
        let logits = self
            .model
            .prefill_batch(&mut self.cache, &slots, &prompts, &starts)?;
        // Sampler rows are drawn only once the prefill has succeeded, so a fallback after a failed
        // prefill draws the same random numbers.
        let rows: Vec<_> = batch.iter_mut().map(|a| a.sampler.next_row()).collect();
        sample(&logits, &rows)
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
                    self.fail(
                        active,
                        "decode step",
                        TorchError::EngineStopped(e.to_string()),
                    );
                }
            }
        }
    }

    fn decode_and_sample(&mut self) -> Result<Sampled> {
        let needed = self
            .running
            .iter()
            .map(|a| a.cached() + 1)
            .max()
            .unwrap_or(1);
        self.reserve(needed)?;
        let tokens: Vec<u32> = self
            .running
            .iter()
            .map(|a| a.output_ids[a.output_ids.len() - 1])
            .collect();
        let positions: Vec<i64> = self.running.iter().map(Active::cached).collect();
        let logits = self.model.decode(&mut self.cache, &tokens, &positions)?;
        let rows: Vec<_> = self
            .running
            .iter_mut()
            .map(|a| a.sampler.next_row())
            .collect();
        sample(&logits, &rows)
    }

    /// Finishes every request whose last token ends it, keeping slots compact.
    fn retire_finished(&mut self) {
        self.retire_from(0);
    }

    /// Finishes the requests in slots `from..` whose last token ends them, keeping slots compact.
    fn retire_from(&mut self, from: usize) {
        for i in (from..self.running.len()).rev() {
            if let Some(reason) = self.finish_reason(&self.running[i]) {
                match self.remove_slot(i) {
                    Ok(active) => self.finish(active, reason),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot compact the KV cache");
                        for active in std::mem::take(&mut self.running) {
                            self.fail(
                                active,
                                "cache compaction",
                                TorchError::EngineStopped(e.to_string()),
                            );
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
            guarded("copy_slot", || {
                self.cache.copy_slot(last as i64, i as i64, len)
            })?;
        }
        Ok(self.running.swap_remove(i))
    }

    fn finish_reason(&self, active: &Active) -> Option<FinishReason> {
        let &last = active.output_ids.last()?;
        let params = &active.request.params;
        if (!params.ignore_eos && self.eos.contains(&last)) || params.stop_token_ids.contains(&last)
        {
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
        // Counts first, so a caller reading stats after its answer sees them.
        self.publish_counts();
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
        self.publish_counts();
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
            self.abort_running(&format!(
                "aborted by the weight update to version {version}"
            ));
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

    /// Re-runs the prompt and output so far of every running request under the current weights:
    /// in batched passes (within the prefill token budget), falling back to one request at a time
    /// when a batch fails so that only a failing request is dropped.
    fn recompute_cache(&mut self) {
        let tokens: Vec<Vec<u32>> = self.running.iter().map(cached_tokens).collect();
        let mut failed = Vec::new();
        for range in self.prefill_groups(&tokens) {
            let slots: Vec<i64> = range.clone().map(|i| i as i64).collect();
            let prompts: Vec<&[u32]> = range.clone().map(|i| tokens[i].as_slice()).collect();
            let starts = vec![0; slots.len()];
            let batched = guarded("recompute", || {
                self.model
                    .prefill_batch(&mut self.cache, &slots, &prompts, &starts)
                    .map(drop)
            });
            if batched.is_ok() {
                continue;
            }
            for i in range {
                let result = guarded("recompute", || {
                    self.model
                        .prefill(&mut self.cache, i as i64, &tokens[i], 0)
                        .map(drop)
                });
                if let Err(e) = result {
                    failed.push((i, e));
                }
            }
        }
        // Highest slot first, so removing one does not move another that still has to go.
        for (i, e) in failed.into_iter().rev() {
            match self.remove_slot(i) {
                Ok(active) => self.fail(active, "cache recompute", e),
                Err(copy) => return self.fail_all_running("cache compaction", copy),
            }
        }
    }

    /// Splits rows `0..seqs.len()` into consecutive groups whose padded size (rows x longest)
    /// stays within the prefill token budget (a group has at least one row).
    fn prefill_groups(&self, seqs: &[Vec<u32>]) -> Vec<std::ops::Range<usize>> {
        let mut groups = Vec::new();
        let (mut start, mut longest) = (0, 0);
        for (i, seq) in seqs.iter().enumerate() {
            let widest = longest.max(seq.len());
            let over =
                self.max_prefill_tokens > 0 && (i - start + 1) * widest > self.max_prefill_tokens;
            if over && i > start {
                groups.push(start..i);
                start = i;
                longest = seq.len();
            } else {
                longest = widest;
            }
        }
        if start < seqs.len() {
            groups.push(start..seqs.len());
        }
        groups
    }

    fn publish_counts(&self) {
        let s = &self.stats;
        s.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        s.waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::api::SamplingParams;
    use crate::model::QwenConfig;
    use std::collections::HashMap;
    use std::path::Path;
    use tch::{Device, Kind, Tensor};

    const VOCAB: i64 = 64;
    const HIDDEN: i64 = 32;

    fn config() -> QwenConfig {
        let json = format!(
            r#"{{"model_type": "qwen2", "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
            "max_position_embeddings": 256, "rope_theta": 10000.0, "eos_token_id": 2}}"#
        );
        QwenConfig::from_json(&json, Path::new("config.json")).unwrap()
    }

    /// HF-named random weights of the tiny model in [`config`].
    fn weights(seed: i64) -> Vec<(String, Tensor)> {
        tch::manual_seed(seed);
        let r = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.3;
        let norm = || Tensor::rand([HIDDEN], (Kind::Float, Device::Cpu)) + 0.5;
        let mut named = vec![
            ("model.embed_tokens.weight".to_string(), r(&[VOCAB, HIDDEN])),
            ("model.norm.weight".to_string(), norm()),
            ("lm_head.weight".to_string(), r(&[VOCAB, HIDDEN])),
        ];
        for i in 0..2 {
            let p = format!("model.layers.{i}.");
            let shapes: [(&str, Vec<i64>); 12] = [
                ("self_attn.q_proj.weight", vec![32, HIDDEN]),
                ("self_attn.q_proj.bias", vec![32]),
                ("self_attn.k_proj.weight", vec![16, HIDDEN]),
                ("self_attn.k_proj.bias", vec![16]),
                ("self_attn.v_proj.weight", vec![16, HIDDEN]),
                ("self_attn.v_proj.bias", vec![16]),
                ("self_attn.o_proj.weight", vec![HIDDEN, 32]),
                ("mlp.gate_proj.weight", vec![64, HIDDEN]),
                ("mlp.up_proj.weight", vec![64, HIDDEN]),
                ("mlp.down_proj.weight", vec![HIDDEN, 64]),
                ("input_layernorm.weight", vec![HIDDEN]),
                ("post_attention_layernorm.weight", vec![HIDDEN]),
            ];
            for (name, shape) in shapes {
                let t = if name.ends_with("layernorm.weight") {
                    norm()
                } else {
                    r(&shape)
                };
                named.push((format!("{p}{name}"), t));
            }
        }
        named
    }

    fn model(seed: i64) -> QwenModel {
        let tensors: HashMap<String, Tensor> = weights(seed).into_iter().collect();
        QwenModel::from_tensors(config(), tensors, Device::Cpu, Kind::Float).unwrap()
    }

    /// Shows each id as `<id>`, so stop strings can target token boundaries or span tokens.
    struct Angle;
    impl Detokenize for Angle {
        fn decode(&self, ids: &[u32]) -> String {
            ids.iter().map(|i| format!("<{i}>")).collect()
        }
    }

    fn request(rid: &str, input_ids: Vec<u32>, params: SamplingParams) -> GenerateRequest {
        GenerateRequest {
            rid: rid.into(),
            input_ids,
            params,
        }
    }

    fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ignore_eos: true,
            max_new_tokens,
            ..SamplingParams::default()
        }
    }

    fn start(options: GeneratorOptions) -> GeneratorHandle {
        spawn(model(0), options).unwrap()
    }

    #[test]
    fn stop_string_spanning_tokens_ends_the_request() {
        let g = start(GeneratorOptions {
            detokenizer: Some(Arc::new(Angle)),
            ..GeneratorOptions::default()
        });
        let full = g
            .generate_blocking(request("full", vec![5, 6, 7], greedy(12)))
            .unwrap();
        let ids = &full.output_ids;
        // The end of token 3 and the start of token 4, as text.
        let stop = format!("{}><{}", ids[3] % 10, ids[4]);
        let cut = (0..ids.len())
            .find(|&k| Angle.decode(&ids[..=k]).contains(&stop))
            .unwrap();
        let mut params = greedy(12);
        params.stop = vec![stop.clone()];
        let out = g
            .generate_blocking(request("stopped", vec![5, 6, 7], params))
            .unwrap();
        assert_eq!(out.output_ids, ids[..=cut].to_vec());
        assert_eq!(
            out.finish,
            FinishReason::Stop {
                matched: StopMatch::Text(stop)
            }
        );
    }

    #[test]
    fn stop_strings_without_detokenizer_and_duplicate_rids_are_errors() {
        let g = start(GeneratorOptions::default());
        let mut params = greedy(4);
        params.stop = vec!["x".into()];
        let err = g
            .generate_blocking(request("needs-text", vec![5], params))
            .unwrap_err();
        assert!(err.to_string().contains("needs-text") && err.to_string().contains("detokenizer"));

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = g.submit(request("twin", vec![5, 6], greedy(200))).unwrap();
        let second = g.submit(request("twin", vec![7], greedy(2))).unwrap();
        let err = rt.block_on(second).unwrap_err();
        assert!(err.to_string().contains("same rid"), "{err}");
        assert_eq!(rt.block_on(first).unwrap().output_ids.len(), 200);
    }

    #[test]
    fn tensor_update_swaps_weights_and_versions() {
        let g = start(GeneratorOptions {
            initial_version: 3,
            ..GeneratorOptions::default()
        });
        let before = g
            .generate_blocking(request("a", vec![9, 8], greedy(8)))
            .unwrap();
        assert_eq!(before.output_versions, vec![3; 8]);
        let v = g
            .update_weights_blocking(WeightUpdate::Tensors(weights(1)), UpdateOptions::default())
            .unwrap();
        assert_eq!((v, g.version()), (4, 4));
        let after = g
            .generate_blocking(request("b", vec![9, 8], greedy(8)))
            .unwrap();
        let fresh = spawn(model(1), GeneratorOptions::default()).unwrap();
        let want = fresh
            .generate_blocking(request("c", vec![9, 8], greedy(8)))
            .unwrap();
        assert_eq!(after.output_ids, want.output_ids);
        assert_eq!(after.output_versions, vec![4; 8]);

        let mut bad = weights(2);
        bad.pop();
        let err = g
            .update_weights_blocking(WeightUpdate::Tensors(bad), UpdateOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(g.version(), 4);
    }

    #[test]
    fn cache_grows_past_its_initial_capacity() {
        let g = start(GeneratorOptions {
            initial_capacity: 2,
            max_running: 3,
            ..GeneratorOptions::default()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let prompts: [Vec<u32>; 3] = [vec![3], vec![4, 5, 6, 7, 8, 9], vec![10, 11]];
        let pending: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                g.submit(request(&format!("r{i}"), p.clone(), greedy(12)))
                    .unwrap()
            })
            .collect();
        let batched: Vec<_> = pending
            .into_iter()
            .map(|f| rt.block_on(f).unwrap())
            .collect();
        let roomy = start(GeneratorOptions::default());
        for (p, out) in prompts.iter().zip(&batched) {
            let alone = roomy
                .generate_blocking(request("x", p.clone(), greedy(12)))
                .unwrap();
            assert_eq!(out.output_ids, alone.output_ids);
        }
    }

    /// Requests submitted while paused are admitted together on resume (in prefill batches of
    /// at most `max_prefill_tokens` padded tokens); each output equals the request run alone,
    /// and an invalid request among them fails alone.
    fn check_batched_admission(max_prefill_tokens: usize) {
        let g = start(GeneratorOptions {
            max_running: 4,
            max_prefill_tokens,
            ..GeneratorOptions::default()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(g.pause()).unwrap();
        let prompts: [Vec<u32>; 4] = [
            vec![3, 4, 5],
            vec![9],
            vec![1, 99],
            vec![10, 11, 12, 13, 14],
        ];
        let pending: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                g.submit(request(&format!("r{i}"), p.clone(), greedy(6)))
                    .unwrap()
            })
            .collect();
        g.resume().unwrap();
        let results: Vec<_> = pending.into_iter().map(|f| rt.block_on(f)).collect();
        let err = results[2].as_ref().unwrap_err().to_string();
        assert!(err.contains("r2") && err.contains("99"), "{err}");
        let alone = start(GeneratorOptions::default());
        for i in [0, 1, 3] {
            let want = alone
                .generate_blocking(request("x", prompts[i].clone(), greedy(6)))
                .unwrap();
            assert_eq!(
                results[i].as_ref().unwrap().output_ids,
                want.output_ids,
                "r{i}"
            );
        }
    }

    #[test]
    fn waiting_requests_are_prefilled_together() {
        check_batched_admission(0);
        check_batched_admission(6);
    }

    #[test]
    fn shutdown_aborts_and_later_calls_fail() {
        let g = start(GeneratorOptions::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pending = g.submit(request("long", vec![5], greedy(200))).unwrap();
        while g.stats().decode_steps < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        g.shutdown();
        let out = rt.block_on(pending).unwrap();
        assert!(matches!(out.finish, FinishReason::Abort { .. }));
        while g.is_alive() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let err = g
            .generate_blocking(request("late", vec![5], greedy(2)))
            .unwrap_err();
        assert!(matches!(err, TorchError::EngineStopped(_)), "{err}");
    }

    #[test]
    fn options_are_checked() {
        let err = spawn(
            model(0),
            GeneratorOptions {
                max_context: 10_000,
                ..GeneratorOptions::default()
            },
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("max_context"), "{err}");
        let err = spawn(
            model(0),
            GeneratorOptions {
                max_running: 0,
                ..GeneratorOptions::default()
            },
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("max_running"), "{err}");
    }
}
