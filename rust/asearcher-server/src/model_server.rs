//! The embedded model server: one tch generator and one tokenizer behind SGLang's native protocol
//! ([`native`]: `/generate`, weight updates, pause/continue, abort, health, info) and OpenAI's
//! ([`openai`]: `/v1/models`, `/v1/completions`, `/v1/chat/completions`). Requests batch in the
//! generator; every failure is reported to the request that caused it and the server keeps
//! serving. Errors are OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`).

mod native;
mod openai;

use asearcher_tokenizer::{Tokenizer, TokenizerError};
use asearcher_torch::generate::{
    Detokenize, FinishReason, GenerateOutput, GenerateRequest, GeneratorHandle, GeneratorOptions,
    SamplingParams, StopMatch,
};
use asearcher_torch::model::QwenModel;
use asearcher_torch::TorchError;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub(crate) use crate::http_api::{parse_body, stop_strings, ApiError, ApiResult};

/// Settings of the model server.
#[derive(Debug, Clone)]
pub struct ModelServerConfig {
    /// HF model directory: config.json, *.safetensors, tokenizer.json, tokenizer_config.json.
    pub model_dir: PathBuf,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub device: tch::Device,
    pub kind: tch::Kind,
    /// Most requests decoded together.
    pub max_running: usize,
    /// Longest sequence (prompt + output); `None` uses the model's `max_position_embeddings`.
    pub max_context: Option<usize>,
    /// The name `/v1/models` reports and `model` fields must match; default: the directory name.
    pub served_model_name: Option<String>,
}

impl ModelServerConfig {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        ModelServerConfig {
            model_dir: model_dir.into(),
            host: "127.0.0.1".into(),
            port: 30000,
            device: tch::Device::Cpu,
            kind: tch::Kind::Float,
            max_running: 32,
            max_context: None,
            served_model_name: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ModelServerError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Torch(#[from] TorchError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The tokenizer as the generator's detokenizer (for stop strings); special tokens are kept so
/// stop strings such as `<|im_end|>` match.
struct TokenizerDetok(Arc<Tokenizer>);

impl Detokenize for TokenizerDetok {
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, false).unwrap_or_default()
    }
}

/// What the info endpoints report about the loaded model.
#[derive(Debug, Clone)]
struct ModelInfo {
    name: String,
    model_type: String,
    device: String,
    dtype: String,
    max_running: usize,
    context_length: usize,
    vocab_size: usize,
}

/// Shared by every handler.
struct AppState {
    gen: GeneratorHandle,
    tok: Arc<Tokenizer>,
    info: ModelInfo,
    /// Where the current weights came from.
    model_path: Mutex<PathBuf>,
    tokenizer_path: PathBuf,
    rid_seq: AtomicU64,
    created: u64,
    /// One weight update at a time.
    update_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    fn next_rid(&self, prefix: &str) -> String {
        let n = self.rid_seq.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{:x}{n:06x}", self.created)
    }

    fn model_path(&self) -> PathBuf {
        self.model_path.lock().expect("model path lock").clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl From<TorchError> for ApiError {
    fn from(e: TorchError) -> Self {
        match &e {
            TorchError::Config { name, msg } => ApiError::bad(name, msg),
            TorchError::Request { .. } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            },
            TorchError::EngineStopped(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                kind: "service_unavailable",
                param: None,
                code: None,
            },
            _ => ApiError::internal(e),
        }
    }
}

/// Rejects a sampling option we do not implement unless it has its neutral value.
fn require_neutral(param: &str, v: Option<f64>, neutral: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if x != neutral => Err(ApiError::unsupported(
            param,
            format!("only {neutral} is supported, got {x}"),
        )),
        _ => Ok(()),
    }
}

fn require_n_one(param: &str, n: Option<usize>) -> Result<(), ApiError> {
    match n {
        Some(n) if n != 1 => Err(ApiError::unsupported(
            param,
            format!("only 1 is supported, got {n}"),
        )),
        _ => Ok(()),
    }
}

fn reject_stream(stream: Option<bool>) -> Result<(), ApiError> {
    if stream == Some(true) {
        return Err(ApiError::unsupported(
            "stream",
            "stream is not supported; send stream=false and read the whole response",
        ));
    }
    Ok(())
}

/// One prompt ready for the generator.
struct Job {
    rid: String,
    input_ids: Vec<u32>,
    params: SamplingParams,
}

/// Checks a prompt against the vocabulary and the context length.
fn check_prompt(st: &AppState, param: &str, ids: &[u32]) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::bad(param, "the prompt is empty"));
    }
    let vocab = st.info.vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(ApiError::bad(
            param,
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    if ids.len() >= st.info.context_length {
        return Err(ApiError::bad(
            param,
            format!(
                "the prompt has {} tokens; the context length is {}",
                ids.len(),
                st.info.context_length
            ),
        ));
    }
    Ok(())
}

/// Aborts its request if dropped before the output arrived (the client went away).
struct AbortOnDrop<'a> {
    gen: &'a GeneratorHandle,
    rid: &'a str,
    armed: bool,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(rid = self.rid, "client went away; aborting its request");
            let _ = self.gen.abort(self.rid);
        }
    }
}

async fn run_job(gen: &GeneratorHandle, job: Job) -> Result<GenerateOutput, ApiError> {
    let rid = job.rid.clone();
    let mut guard = AbortOnDrop {
        gen,
        rid: &rid,
        armed: true,
    };
    let out = gen
        .generate(GenerateRequest {
            rid: job.rid,
            input_ids: job.input_ids,
            params: job.params,
        })
        .await;
    guard.armed = false;
    Ok(out?)
}

/// Runs the jobs concurrently (they batch in the generator); the first failure fails the call.
async fn run_jobs(st: &AppState, jobs: Vec<Job>) -> Result<Vec<GenerateOutput>, ApiError> {
    let outs = futures::future::join_all(jobs.into_iter().map(|j| run_job(&st.gen, j))).await;
    outs.into_iter().collect()
}

/// The output text as SGLang returns it: special tokens skipped on request, and the matched stop
/// (string or token) trimmed unless `no_stop_trim`. `output_ids` always keep every token.
fn output_text(
    tok: &Tokenizer,
    out: &GenerateOutput,
    skip_special_tokens: bool,
    no_stop_trim: bool,
) -> Result<String, ApiError> {
    let ids = match (&out.finish, no_stop_trim) {
        (
            FinishReason::Stop {
                matched: StopMatch::Token(_),
            },
            false,
        ) if !out.output_ids.is_empty() => &out.output_ids[..out.output_ids.len() - 1],
        _ => &out.output_ids[..],
    };
    let mut text = tok.decode(ids, skip_special_tokens)?;
    if let (
        FinishReason::Stop {
            matched: StopMatch::Text(s),
        },
        false,
    ) = (&out.finish, no_stop_trim)
    {
        if let Some(pos) = text.find(s.as_str()) {
            text.truncate(pos);
        }
    }
    Ok(text)
}

/// The text of each output token on its own (for logprob listings).
fn token_texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.decode(&[id], false).unwrap_or_default())
        .collect()
}

/// Builds the router (used by [`ModelServer`] and by tests).
fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/generate", post(native::generate))
        .route(
            "/update_weights_from_disk",
            post(native::update_weights_from_disk),
        )
        .route("/pause_generation", post(native::pause_generation))
        .route("/continue_generation", post(native::continue_generation))
        .route("/abort_request", post(native::abort_request))
        .route(
            "/flush_cache",
            post(native::flush_cache).get(native::flush_cache),
        )
        .route("/health", get(native::health))
        .route("/health_generate", get(native::health_generate))
        .route("/get_model_info", get(native::get_model_info))
        .route("/get_server_info", get(native::get_server_info))
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
        })
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(st)
}

/// Loads the tokenizer and the model and starts the generator (blocking; seconds for big models).
fn load_state(cfg: &ModelServerConfig) -> Result<AppState, ModelServerError> {
    if cfg.max_running == 0 {
        return Err(TorchError::config("max_running", "must be at least 1").into());
    }
    let tok = Arc::new(Tokenizer::from_dir(&cfg.model_dir)?);
    let model = QwenModel::load(&cfg.model_dir, cfg.device, cfg.kind)?;
    let mc = model.config();
    let model_ctx = usize::try_from(mc.max_position_embeddings).unwrap_or(usize::MAX);
    let context_length = cfg.max_context.unwrap_or(model_ctx.min(32768));
    if context_length < 2 {
        return Err(TorchError::config("max_context", "must be at least 2").into());
    }
    let info = ModelInfo {
        name: cfg.served_model_name.clone().unwrap_or_else(|| {
            cfg.model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        }),
        model_type: mc.model_type.as_str().to_string(),
        device: asearcher_torch::device_name(cfg.device),
        dtype: asearcher_torch::dtype_name(cfg.kind).into(),
        max_running: cfg.max_running,
        context_length,
        vocab_size: usize::try_from(mc.vocab_size)
            .unwrap_or(0)
            .max(tok.vocab_size()),
    };
    let options = GeneratorOptions {
        max_running: cfg.max_running,
        max_context: context_length,
        detokenizer: Some(Arc::new(TokenizerDetok(tok.clone()))),
        ..GeneratorOptions::default()
    };
    let gen = asearcher_torch::generate::spawn(model, options)?;
    Ok(AppState {
        gen,
        tok,
        info,
        model_path: Mutex::new(cfg.model_dir.clone()),
        tokenizer_path: cfg.model_dir.clone(),
        rid_seq: AtomicU64::new(0),
        created: unix_now(),
        update_lock: tokio::sync::Mutex::new(()),
    })
}

/// A loaded, bound, not yet serving model server.
pub struct ModelServer {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl ModelServer {
    /// Loads the model (on the blocking pool) and binds the listening socket, so the address is
    /// known before serving.
    pub async fn bind(cfg: ModelServerConfig) -> Result<Self, ModelServerError> {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|source| ModelServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let state = tokio::task::spawn_blocking(move || load_state(&cfg))
            .await
            .map_err(|e| TorchError::EngineStopped(format!("model loading panicked: {e}")))??;
        Ok(ModelServer {
            listener,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The generator behind the server (for in-process weight updates and stats).
    pub fn generator(&self) -> GeneratorHandle {
        self.state.gen.clone()
    }

    /// Serves until `shutdown` resolves (in-flight generations are then aborted, so their
    /// clients get what was generated so far), then stops the generator.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let gen = self.state.gen.clone();
        let on_shutdown = gen.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = on_shutdown.abort_all();
            let _ = on_shutdown.resume();
        };
        let result = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await;
        gen.shutdown();
        result
    }
}
