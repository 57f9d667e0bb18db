//! Test servers on loopback speaking SGLang's `/generate` and OpenAI's `/v1/completions` and
//! `/v1/chat/completions`, with behaviour a test controls while they run: latency, HTTP error
//! statuses, garbage JSON, aborts after some tokens (each bumping the weight version, as a
//! weight update does), the answer shapes of different SGLang versions, and a crash that drops
//! every connection.
//!
//! Generation rule: the token at absolute position `p` (prompt included) is `1000 + p` with
//! logprob `-p / 1000`, so a generation re-sent after an abort continues exactly where it
//! stopped and the concatenation can be checked against an uninterrupted one.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server does; change it while it runs with [`MockServer::set`].
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Tokens per answer (capped by the request's budget); reaching the budget is `length`.
    pub tokens: usize,
    pub delay: Duration,
    /// Answer this HTTP status to the next `status_times` generation calls.
    pub status: u16,
    pub status_times: usize,
    /// Answer invalid JSON with status 200.
    pub garbage: bool,
    /// The next `aborts` generation calls end with finish `abort` after `abort_after` tokens,
    /// and each bumps the weight version.
    pub aborts: usize,
    pub abort_after: usize,
    /// SGLang shape: leave out `output_ids` (ids only inside `output_token_logprobs`).
    pub ids_in_logprobs_only: bool,
    /// SGLang shape: `weight_version` as a number instead of a string.
    pub version_as_int: bool,
    /// SGLang shape: report `output_token_versions`.
    pub per_token_versions: bool,
    /// SGLang: report one more logprob entry than output ids (a broken server).
    pub extra_logprob: bool,
    /// OpenAI shape: include `choices[0].token_ids`.
    pub token_ids_field: bool,
    /// OpenAI shape: `logprobs.tokens` as text, not `token_id:N` (no way to recover ids).
    pub text_tokens: bool,
    /// Status of `/health`.
    pub health_status: u16,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            tokens: 4,
            delay: Duration::ZERO,
            status: 500,
            status_times: 0,
            garbage: false,
            aborts: 0,
            abort_after: 0,
            ids_in_logprobs_only: false,
            version_as_int: false,
            per_token_versions: true,
            extra_logprob: false,
            token_ids_field: false,
            text_tokens: false,
            health_status: 200,
        }
    }
}

#[derive(Default)]
pub struct MockState {
    behaviour: Mutex<Behaviour>,
    pub version: AtomicU64,
    /// Generation calls received (chat included).
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub aborted: Mutex<Vec<String>>,
    pub auth_headers: Mutex<Vec<String>>,
    pub health_checks: AtomicUsize,
    dead: AtomicBool,
}

/// A running test server.
pub struct MockServer {
    pub url: String,
    pub state: Arc<MockState>,
    kill: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start(behaviour: Behaviour) -> Self {
        quiet_crashes();
        let state = Arc::new(MockState {
            behaviour: Mutex::new(behaviour),
            ..MockState::default()
        });
        let (kill, kill_rx) = tokio::sync::watch::channel(false);
        let app = Router::new()
            .route("/generate", post(generate))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat))
            .route("/health", get(health))
            .route("/abort_request", post(abort_request))
            .route("/pause_generation", post(pause))
            .route("/update_weights_from_disk", post(update_weights))
            .with_state(Ctx {
                state: state.clone(),
                kill: kill_rx,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockServer {
            url,
            state,
            kill,
            task,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().expect("behaviour"));
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.state.bodies.lock().expect("bodies").clone()
    }

    /// Crashes the server: stops accepting, and every request in flight or arriving on an open
    /// connection loses its connection without an answer.
    pub fn kill(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        let _ = self.kill.send(true);
        self.task.abort();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<MockState>,
    kill: tokio::sync::watch::Receiver<bool>,
}

const CRASH: &str = "test server killed: dropping the connection";

/// Drops the connection as a crashed process would (the connection task ends by panic).
fn crash() -> ! {
    std::panic::panic_any(CRASH)
}

/// Keeps the simulated crashes out of the test output (other panics are reported as usual).
fn quiet_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&CRASH) {
                default(info);
            }
        }));
    });
}

/// Counts the call, waits its delay (crashing if killed meanwhile), and returns the behaviour
/// to answer with, or an error response.
async fn begin(ctx: &Ctx, body: &Value) -> Result<(Behaviour, InFlightGuard), Response> {
    if ctx.state.dead.load(Ordering::SeqCst) {
        crash();
    }
    ctx.state.requests.fetch_add(1, Ordering::SeqCst);
    ctx.state.bodies.lock().expect("bodies").push(body.clone());
    let guard = InFlightGuard::new(ctx.state.clone());
    let b = ctx.state.behaviour.lock().expect("behaviour").clone();
    let mut kill = ctx.kill.clone();
    tokio::select! {
        _ = tokio::time::sleep(b.delay) => {}
        _ = kill.wait_for(|k| *k) => crash(),
    }
    if ctx.state.dead.load(Ordering::SeqCst) {
        crash();
    }
    if b.status_times > 0 {
        ctx.state.behaviour.lock().expect("behaviour").status_times -= 1;
        let status = StatusCode::from_u16(b.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err((
            status,
            Json(json!({"error": {"message": format!("injected {}", b.status)}})),
        )
            .into_response());
    }
    if b.garbage {
        return Err((StatusCode::OK, "{\"meta_info\": [not json").into_response());
    }
    Ok((b, guard))
}

struct InFlightGuard(Arc<MockState>);

impl InFlightGuard {
    fn new(state: Arc<MockState>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(state)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One generation by the rule of the module: ids, logprobs, version, finish.
struct Made {
    ids: Vec<u32>,
    logprobs: Vec<f64>,
    version: u64,
    finish: &'static str,
}

fn make(state: &MockState, b: &Behaviour, prompt_len: usize, budget: usize) -> Made {
    let aborting = {
        let mut live = state.behaviour.lock().expect("behaviour");
        if live.aborts > 0 {
            live.aborts -= 1;
            true
        } else {
            false
        }
    };
    let n = if aborting {
        b.abort_after.min(budget)
    } else {
        b.tokens.min(budget)
    };
    let positions = prompt_len..prompt_len + n;
    let version = if aborting {
        state.version.fetch_add(1, Ordering::SeqCst)
    } else {
        state.version.load(Ordering::SeqCst)
    };
    Made {
        ids: positions.clone().map(|p| 1000 + p as u32).collect(),
        logprobs: positions.map(|p| -(p as f64) / 1000.0).collect(),
        version,
        finish: if aborting {
            "abort"
        } else if n == budget {
            "length"
        } else {
            "stop"
        },
    }
}

fn ids_len(v: Option<&Value>) -> usize {
    v.and_then(Value::as_array).map_or(0, Vec::len)
}

async fn generate(State(ctx): State<Ctx>, Json(body): Json<Value>) -> Response {
    let (b, _guard) = match begin(&ctx, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let budget = body
        .pointer("/sampling_params/max_new_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(16) as usize;
    let m = make(&ctx.state, &b, ids_len(body.get("input_ids")), budget);
    let mut entries: Vec<Value> = m
        .ids
        .iter()
        .zip(&m.logprobs)
        .map(|(id, lp)| json!([lp, id, null]))
        .collect();
    if b.extra_logprob {
        entries.push(json!([-0.5, 7, null]));
    }
    let mut meta = json!({
        "finish_reason": {"type": m.finish},
        "weight_version": if b.version_as_int { json!(m.version) } else { json!(m.version.to_string()) },
        "output_token_logprobs": entries,
    });
    if b.per_token_versions {
        meta["output_token_versions"] = json!(vec![m.version; m.ids.len()]);
    }
    let mut answer = json!({"text": "", "meta_info": meta});
    if !b.ids_in_logprobs_only {
        answer["output_ids"] = json!(m.ids);
    }
    Json(answer).into_response()
}

async fn completions(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record_auth(&ctx.state, &headers);
    let (b, _guard) = match begin(&ctx, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let budget = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as usize;
    let m = make(&ctx.state, &b, ids_len(body.get("prompt")), budget);
    let tokens: Vec<String> = m
        .ids
        .iter()
        .map(|id| {
            if b.text_tokens {
                format!("tok{id}")
            } else {
                format!("token_id:{id}")
            }
        })
        .collect();
    let mut choice = json!({
        "index": 0,
        "text": "",
        "logprobs": {"tokens": tokens, "token_logprobs": m.logprobs, "top_logprobs": null},
        "finish_reason": m.finish,
    });
    if b.token_ids_field {
        choice["token_ids"] = json!(m.ids);
    }
    Json(json!({"id": "cmpl-1", "object": "text_completion", "choices": [choice]})).into_response()
}

async fn chat(State(ctx): State<Ctx>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record_auth(&ctx.state, &headers);
    if let Err(r) = begin(&ctx, &body).await {
        return r;
    }
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("reply to: {last}")}, "finish_reason": "stop"}]
    }))
    .into_response()
}

fn record_auth(state: &MockState, headers: &HeaderMap) {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        state.auth_headers.lock().expect("auth").push(v.to_string());
    }
}

async fn health(State(ctx): State<Ctx>) -> Response {
    if ctx.state.dead.load(Ordering::SeqCst) {
        crash();
    }
    ctx.state.health_checks.fetch_add(1, Ordering::SeqCst);
    let status = ctx.state.behaviour.lock().expect("behaviour").health_status;
    StatusCode::from_u16(status)
        .unwrap_or(StatusCode::OK)
        .into_response()
}

async fn abort_request(State(ctx): State<Ctx>, Json(body): Json<Value>) -> Response {
    let rid = body
        .get("rid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    ctx.state.aborted.lock().expect("aborted").push(rid);
    Json(json!({"success": true})).into_response()
}

async fn pause(Json(_): Json<Value>) -> Response {
    Json(json!({"success": true, "message": "paused"})).into_response()
}

/// Refuses paths that do not exist, as our model server does (with `success: false`).
async fn update_weights(State(ctx): State<Ctx>, Json(body): Json<Value>) -> Response {
    let path = body
        .get("model_path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !std::path::Path::new(path).exists() {
        return Json(json!({"success": false, "message": format!("no checkpoint at {path}")}))
            .into_response();
    }
    if let Some(v) = body
        .get("weight_version")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
    {
        ctx.state.version.store(v, Ordering::SeqCst);
    }
    Json(json!({"success": true, "message": "updated"})).into_response()
}
