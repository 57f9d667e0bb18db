//! The generator's contract with its callers (model server, rollout engine, Python): requests,
//! sampling parameters, outputs, statistics, and [`GeneratorHandle`], which talks to the engine
//! thread over a channel. The engine thread owns the model and the KV cache; nothing here touches
//! tensors except [`WeightUpdate::Tensors`].

use crate::{Result, TorchError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How to pick the next token. Defaults follow SGLang: temperature 1, no top-p/top-k cut.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate for this request.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus cut in (0, 1]; 1 keeps every token.
    pub top_p: f64,
    /// Keep the k most likely tokens; -1 (or 0) keeps every token.
    pub top_k: i64,
    /// Generation stops when the decoded output ends with one of these (needs a detokenizer).
    pub stop: Vec<String>,
    /// Generation stops after emitting one of these ids (in addition to the model's EOS ids).
    pub stop_token_ids: Vec<u32>,
    /// Do not stop on the model's EOS ids.
    pub ignore_eos: bool,
    /// Seed of this request's sampler; the same seed, prompt and weights give the same output.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks ranges; the error names the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(TorchError::config(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(TorchError::config(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if self.top_k < -1 {
            return Err(TorchError::config(
                "top_k",
                format!("must be -1 (off) or positive, got {}", self.top_k),
            ));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(TorchError::config("stop", "stop strings must not be empty"));
        }
        Ok(())
    }
}

/// One generation request. `rid` must be unique among live requests (used by abort).
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub rid: String,
    pub input_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// What ended a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// An EOS id, a stop id (`Token`) or a stop string (`Text`) was produced; the matched stop is
    /// kept in the output, as SGLang does with `no_stop_trim`.
    Stop { matched: StopMatch },
    /// `max_new_tokens` reached, or the context limit of the model/cache.
    Length,
    /// Aborted by `abort`, `abort_all`, a weight update that aborts, or shutdown.
    Abort { message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum StopMatch {
    Token(u32),
    Text(String),
}

/// The result of one request: generated ids, the logprob of each under the sampling distribution
/// (after temperature, before top-p/top-k cuts; raw logits when greedy), and the policy version
/// that produced each token.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub rid: String,
    pub output_ids: Vec<u32>,
    pub output_logprobs: Vec<f32>,
    pub output_versions: Vec<u64>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Seconds from submission to the first decode step that included the request.
    pub queue_seconds: f64,
    /// Seconds from submission to completion.
    pub total_seconds: f64,
}

/// Where new weights come from.
pub enum WeightUpdate {
    /// A directory in HF layout (config.json + *.safetensors, sharded or not).
    FromDisk(PathBuf),
    /// Named tensors (HF names) to copy into the model, e.g. from an in-process trainer.
    Tensors(Vec<(String, tch::Tensor)>),
}

/// Options of a weight update.
#[derive(Debug, Clone, Default)]
pub struct UpdateOptions {
    /// The new policy version; `None` means current version + 1.
    pub version: Option<u64>,
    /// Abort every in-flight request (finish reason Abort) instead of continuing it on the new
    /// weights.
    pub abort_in_flight: bool,
    /// Recompute the KV cache of continuing requests under the new weights (what an interrupted
    /// and re-sent request gets on a server); otherwise old entries are kept.
    pub recompute_cache: bool,
}

/// Counters readable at any time without waiting for the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneratorStats {
    pub running: u64,
    pub waiting: u64,
    pub finished: u64,
    pub aborted: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub decode_steps: u64,
    pub version: u64,
    pub paused: bool,
}

/// Counters shared by the engine (writer) and the handles (readers).
#[derive(Debug, Default)]
pub struct SharedStats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub finished: AtomicU64,
    pub aborted: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub decode_steps: AtomicU64,
    pub version: AtomicU64,
    pub paused: std::sync::atomic::AtomicBool,
}

impl SharedStats {
    pub fn snapshot(&self) -> GeneratorStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GeneratorStats {
            running: get(&self.running),
            waiting: get(&self.waiting),
            finished: get(&self.finished),
            aborted: get(&self.aborted),
            prompt_tokens: get(&self.prompt_tokens),
            generated_tokens: get(&self.generated_tokens),
            decode_steps: get(&self.decode_steps),
            version: get(&self.version),
            paused: self.paused.load(Ordering::Relaxed),
        }
    }
}

/// Turns generated ids back into text, for stop strings. Implemented by the tokenizer glue.
pub trait Detokenize: Send + Sync {
    fn decode(&self, ids: &[u32]) -> String;
}

/// Messages from handles to the engine thread.
pub enum Command {
    Generate {
        request: GenerateRequest,
        reply: oneshot::Sender<Result<GenerateOutput>>,
    },
    Abort {
        rid: String,
    },
    AbortAll,
    Pause {
        done: oneshot::Sender<()>,
    },
    Resume,
    UpdateWeights {
        update: WeightUpdate,
        options: UpdateOptions,
        reply: oneshot::Sender<Result<u64>>,
    },
    Shutdown,
}

/// A cheap, cloneable way to talk to a running generator from any thread or task.
#[derive(Clone)]
pub struct GeneratorHandle {
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<SharedStats>,
}

impl GeneratorHandle {
    /// Made by the engine when it starts.
    pub fn new(tx: mpsc::UnboundedSender<Command>, stats: Arc<SharedStats>) -> Self {
        GeneratorHandle { tx, stats }
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.tx
            .send(cmd)
            .map_err(|_| TorchError::EngineStopped("the engine thread has exited".into()))
    }

    fn dropped() -> TorchError {
        TorchError::EngineStopped("the engine dropped the request without answering".into())
    }

    async fn recv<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.await.map_err(|_| Self::dropped())?
    }

    fn recv_blocking<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.blocking_recv().map_err(|_| Self::dropped())?
    }

    fn queue_generate(
        &self,
        request: GenerateRequest,
    ) -> Result<oneshot::Receiver<Result<GenerateOutput>>> {
        request.params.validate()?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Generate { request, reply })?;
        Ok(rx)
    }

    fn queue_update(
        &self,
        update: WeightUpdate,
        options: UpdateOptions,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::UpdateWeights {
            update,
            options,
            reply,
        })?;
        Ok(rx)
    }

    /// Queues a request and waits for its output. Dropping the future does not abort the request;
    /// call [`GeneratorHandle::abort`] for that.
    pub async fn generate(&self, request: GenerateRequest) -> Result<GenerateOutput> {
        Self::recv(self.queue_generate(request)?).await
    }

    /// Queues a request now and returns a future of its output, so that many requests can be
    /// queued in order before waiting on any of them.
    pub fn submit(
        &self,
        request: GenerateRequest,
    ) -> Result<impl std::future::Future<Output = Result<GenerateOutput>> + Send + 'static> {
        Ok(Self::recv(self.queue_generate(request)?))
    }

    /// [`GeneratorHandle::generate`] for callers outside an async runtime.
    pub fn generate_blocking(&self, request: GenerateRequest) -> Result<GenerateOutput> {
        Self::recv_blocking(self.queue_generate(request)?)
    }

    /// Aborts a live or queued request; its output comes back with finish reason Abort and the
    /// tokens generated so far. Unknown ids are ignored.
    pub fn abort(&self, rid: &str) -> Result<()> {
        self.send(Command::Abort { rid: rid.into() })
    }

    pub fn abort_all(&self) -> Result<()> {
        self.send(Command::AbortAll)
    }

    /// Stops scheduling decode steps (requests stay in place) and waits until the current step
    /// has finished. New requests queue up until [`GeneratorHandle::resume`].
    pub async fn pause(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Pause { done })?;
        rx.await
            .map_err(|_| TorchError::EngineStopped("the engine exited while pausing".into()))
    }

    pub fn resume(&self) -> Result<()> {
        self.send(Command::Resume)
    }

    /// Swaps the weights between two decode steps and returns the new version.
    pub async fn update_weights(
        &self,
        update: WeightUpdate,
        options: UpdateOptions,
    ) -> Result<u64> {
        Self::recv(self.queue_update(update, options)?).await
    }

    /// [`GeneratorHandle::update_weights`] for callers outside an async runtime.
    pub fn update_weights_blocking(
        &self,
        update: WeightUpdate,
        options: UpdateOptions,
    ) -> Result<u64> {
        Self::recv_blocking(self.queue_update(update, options)?)
    }

    /// The version that tokens generated from now on will carry.
    pub fn version(&self) -> u64 {
        self.stats.version.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> GeneratorStats {
        self.stats.snapshot()
    }

    /// Asks the engine to abort everything and exit; later calls fail with EngineStopped.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Whether the engine thread is still receiving.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }
}
