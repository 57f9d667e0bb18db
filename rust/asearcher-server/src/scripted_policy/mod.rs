//! The scripted policy server: an LLM test double that speaks SGLang's native protocol
//! ([`native`]: `/generate`, abort, pause/continue, weight updates, health, info) and OpenAI's
//! chat API as an LLM judge ([`judge`]), answering by fixed, deterministic rules ([`rules`]) over
//! the question and the `<information>` observations of the prompt, with a latency model that
//! sleeps instead of burning CPU ([`live`]). Rollout tests and benchmarks run against it.

mod fast_decode;
mod judge;
pub mod live;
mod native;
pub mod rules;
#[cfg(test)]
mod tests;

use crate::http_api::ApiError;
use asearcher_tokenizer::{Tokenizer, TokenizerError};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
pub use live::ServerStats;
use live::{Latency, Live};
pub use rules::Spread;
use rules::{question_key, Rules};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Settings of the scripted policy server. Every field has a default; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptedPolicyConfig {
    /// Bind address (default `127.0.0.1`: the server has no authentication).
    pub host: String,
    /// Port; 0 (default) picks a free one.
    pub port: u16,
    /// Gold answers by question (default none). Questions match after lower-casing and
    /// collapsing whitespace.
    pub answers: HashMap<String, Vec<String>>,
    /// A questions jsonl (`{"question": str, "answer": str | [str]}` per line, other keys
    /// ignored) whose answers are added to `answers` (default none).
    pub questions_file: Option<PathBuf>,
    /// Searches before answering: a number (default 1) or `[min, max]`, chosen per question by
    /// hash(question, seed).
    pub searches: Spread,
    /// Probability (by hash(rid, seed)) that an answer is a deliberate `unknown` (default 0).
    pub wrong_rate: f64,
    /// Probability (by hash(rid, seed)) of a protocol-breaking reply (default 0).
    pub garbage_rate: f64,
    /// Filler words inside `<think>`: a number (default 0) or `[min, max]` chosen by hash(rid).
    pub think_tokens: Spread,
    /// Fixed delay of every `/generate` request, in ms (default 0).
    pub latency_ms: f64,
    /// Delay per output token, in ms (default 0).
    pub ms_per_token: f64,
    /// Server-wide output tokens per second (default none: unlimited). With it, requests share
    /// one capacity like a GPU: a request ends no earlier than its place on a virtual clock that
    /// advances by its tokens / this rate.
    pub tokens_per_s_total: Option<f64>,
    /// Probability (by hash(prompt, seed)) that the judge replies unparseable text (default 0).
    pub judge_garbage_rate: f64,
    /// Seed of every hash-based choice (default 0).
    pub seed: u64,
    /// The model name of OpenAI responses and `/v1/models` (default `scripted-policy`).
    pub served_model_name: String,
}

impl Default for ScriptedPolicyConfig {
    fn default() -> Self {
        ScriptedPolicyConfig {
            host: "127.0.0.1".into(),
            port: 0,
            answers: HashMap::new(),
            questions_file: None,
            searches: Spread::Fixed(1),
            wrong_rate: 0.0,
            garbage_rate: 0.0,
            think_tokens: Spread::Fixed(0),
            latency_ms: 0.0,
            ms_per_token: 0.0,
            tokens_per_s_total: None,
            judge_garbage_rate: 0.0,
            seed: 0,
            served_model_name: "scripted-policy".into(),
        }
    }
}

/// Why the scripted server could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum ScriptedPolicyError {
    #[error("invalid scripted policy setting `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("{path}:{line}: {msg}")]
    QuestionsFile {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn config_error(field: &str, msg: impl std::fmt::Display) -> ScriptedPolicyError {
    ScriptedPolicyError::Config {
        field: field.into(),
        msg: msg.to_string(),
    }
}

impl ScriptedPolicyConfig {
    /// Parses a JSON config; errors name the offending key.
    pub fn from_json(text: &str) -> Result<Self, ScriptedPolicyError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            config_error(&field, e.into_inner())
        })
    }

    /// Checks ranges and rates.
    pub fn validate(&self) -> Result<(), ScriptedPolicyError> {
        for (field, rate) in [
            ("wrong_rate", self.wrong_rate),
            ("garbage_rate", self.garbage_rate),
            ("judge_garbage_rate", self.judge_garbage_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(config_error(
                    field,
                    format!("must be in [0, 1], got {rate}"),
                ));
            }
        }
        for (field, v) in [
            ("latency_ms", self.latency_ms),
            ("ms_per_token", self.ms_per_token),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(config_error(field, format!("must be >= 0, got {v}")));
            }
        }
        if let Some(r) = self
            .tokens_per_s_total
            .filter(|r| !(r.is_finite() && *r > 0.0))
        {
            return Err(config_error(
                "tokens_per_s_total",
                format!("must be > 0, got {r}"),
            ));
        }
        for (field, s) in [
            ("searches", self.searches),
            ("think_tokens", self.think_tokens),
        ] {
            if let Some(msg) = s.problem() {
                return Err(config_error(field, msg));
            }
        }
        Ok(())
    }

    /// The gold answers of `answers` and `questions_file`, by question key.
    fn gold_answers(&self) -> Result<HashMap<String, Vec<String>>, ScriptedPolicyError> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(path) = &self.questions_file {
            for (q, answers) in read_questions(path)? {
                out.entry(question_key(&q)).or_default().extend(answers);
            }
        }
        for (q, answers) in &self.answers {
            out.entry(question_key(q))
                .or_default()
                .extend(answers.iter().cloned());
        }
        Ok(out)
    }

    fn rules(&self) -> Result<Rules, ScriptedPolicyError> {
        Ok(Rules {
            answers: self.gold_answers()?,
            searches: self.searches,
            wrong_rate: self.wrong_rate,
            garbage_rate: self.garbage_rate,
            think_tokens: self.think_tokens,
            seed: self.seed,
        })
    }
}

/// Reads `(question, answers)` from a questions jsonl; errors name file:line.
fn read_questions(path: &Path) -> Result<Vec<(String, Vec<String>)>, ScriptedPolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScriptedPolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, msg: String| ScriptedPolicyError::QuestionsFile {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let question = v
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(i + 1, "no string field `question`".into()))?;
        let answers = match v.get("answer").or_else(|| v.get("answers")) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad(
                        i + 1,
                        "`answer` must be a string or a list of strings".into(),
                    )
                })?,
            _ => {
                return Err(bad(
                    i + 1,
                    "no field `answer` (a string or a list of strings)".into(),
                ))
            }
        };
        out.push((question.to_string(), answers));
    }
    Ok(out)
}

/// Shared by every handler.
struct AppState {
    tok: Arc<Tokenizer>,
    /// Fast prompt decoding when the tokenizer is byte-level.
    bytes: Option<fast_decode::ByteTable>,
    rules: Rules,
    judge_garbage_rate: f64,
    model_name: String,
    live: Arc<Live>,
    rid_seq: AtomicU64,
}

fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/generate", post(native::generate))
        .route("/abort_request", post(native::abort_request))
        .route("/pause_generation", post(native::pause_generation))
        .route("/continue_generation", post(native::continue_generation))
        .route(
            "/update_weights_from_disk",
            post(native::update_weights_from_disk),
        )
        .route("/health", get(native::health))
        .route("/health_generate", get(native::health))
        .route("/get_server_info", get(native::get_server_info))
        .route("/get_model_info", get(native::get_model_info))
        .route("/v1/models", get(judge::models))
        .route("/v1/chat/completions", post(judge::chat_completions))
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

/// A configured, bound, not yet serving scripted policy server.
pub struct ScriptedPolicyServer {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl ScriptedPolicyServer {
    /// Checks the config, reads the questions file and binds the socket (the address is known
    /// before serving).
    pub async fn bind(
        cfg: ScriptedPolicyConfig,
        tok: Arc<Tokenizer>,
    ) -> Result<Self, ScriptedPolicyError> {
        cfg.validate()?;
        let rules = cfg.rules()?;
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|source| ScriptedPolicyError::Bind { addr, source })?;
        let live = Live::new(Latency {
            latency_ms: cfg.latency_ms,
            ms_per_token: cfg.ms_per_token,
            tokens_per_s_total: cfg.tokens_per_s_total,
        });
        let table_tok = tok.clone();
        let bytes = tokio::task::spawn_blocking(move || fast_decode::ByteTable::build(&table_tok))
            .await
            .unwrap_or(None);
        let state = AppState {
            tok,
            bytes,
            rules,
            judge_garbage_rate: cfg.judge_garbage_rate,
            model_name: cfg.served_model_name,
            live,
            rid_seq: AtomicU64::new(0),
        };
        Ok(ScriptedPolicyServer {
            listener,
            state: Arc::new(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The live counters and state (readable while serving).
    pub fn stats_source(&self) -> Arc<Live> {
        self.state.live.clone()
    }

    /// Serves until `shutdown` resolves; in-flight requests are then aborted, so their clients
    /// get what was produced so far.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let live = self.state.live.clone();
        let shutdown = async move {
            shutdown.await;
            live.abort_all("aborted: the server is shutting down");
            live.resume();
        };
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds and serves in the background of the current tokio runtime.
    pub async fn start(
        cfg: ScriptedPolicyConfig,
        tok: Arc<Tokenizer>,
    ) -> Result<ScriptedPolicyHandle, ScriptedPolicyError> {
        let server = Self::bind(cfg, tok).await?;
        let addr = server
            .local_addr()
            .map_err(|source| ScriptedPolicyError::Bind {
                addr: "the bound socket".into(),
                source,
            })?;
        let live = server.stats_source();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = server
                .serve(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "scripted policy server stopped with an error");
            }
            result
        });
        tracing::info!(%addr, "scripted policy server listening");
        Ok(ScriptedPolicyHandle {
            addr,
            live,
            stop_tx: Some(tx),
            task: Some(task),
        })
    }
}

/// A scripted policy server running in the background; dropping it stops the server.
pub struct ScriptedPolicyHandle {
    addr: SocketAddr,
    live: Arc<Live>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl ScriptedPolicyHandle {
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> ServerStats {
        self.live.stats()
    }

    /// Stops serving and waits until the server is down.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }

    /// Asks the server to stop without waiting; returns the task to wait on, if still running.
    pub fn stop(&mut self) -> Option<tokio::task::JoinHandle<std::io::Result<()>>> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.task.take()
    }
}

impl Drop for ScriptedPolicyHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}
