//! SGLang's native endpoints on the scripted policy: `/generate` (one prompt as ids or text; the
//! reply made by the rules, cut at stop strings, stop token ids and `max_new_tokens`, delayed by
//! the latency model), `/abort_request`, `/pause_generation`, `/continue_generation`,
//! `/update_weights_from_disk` (bumps the version; no file is read), health and info.

use super::live::InFlightCount;
use super::rules::{cut_at_stop, read_prompt, remaining, token_logprob, Action, Request};
use super::AppState;
use crate::http_api::{parse_body, parse_weight_version, stop_strings, ApiError, ApiResult};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// `sampling_params`: the keys our model server accepts plus what SGLang clients commonly send.
/// The scripted policy does not sample, so values are type-checked and otherwise ignored, except
/// `max_new_tokens`, `stop`, `stop_token_ids`, `no_stop_trim` and `skip_special_tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted and type-checked, not used by the rules
struct Sampling {
    max_new_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    stop: Option<Value>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    skip_special_tokens: Option<bool>,
    spaces_between_special_tokens: Option<bool>,
    no_stop_trim: Option<bool>,
    seed: Option<u64>,
    sampling_seed: Option<u64>,
    n: Option<usize>,
    min_new_tokens: Option<usize>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
}

/// What of `sampling_params` shapes the reply.
struct Limits {
    max_new_tokens: usize,
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    no_stop_trim: bool,
    skip_special_tokens: bool,
}

impl Sampling {
    fn limits(self) -> Result<Limits, ApiError> {
        if let Some(n) = self.n.filter(|n| *n != 1) {
            return Err(ApiError::bad(
                "sampling_params.n",
                format!("only 1 is supported, got {n}"),
            ));
        }
        Ok(Limits {
            max_new_tokens: self.max_new_tokens.unwrap_or(128),
            stop: stop_strings("sampling_params.stop", self.stop.as_ref())?,
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            no_stop_trim: self.no_stop_trim.unwrap_or(false),
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    text: Option<String>,
    input_ids: Option<Vec<u32>>,
    sampling_params: Option<Sampling>,
    return_logprob: Option<bool>,
    logprob_start_len: Option<i64>,
    top_logprobs_num: Option<usize>,
    return_text_in_logprobs: Option<bool>,
    rid: Option<String>,
    stream: Option<bool>,
}

/// Why a reply ended.
#[derive(Debug, Clone, PartialEq)]
enum Finish {
    StopText(String),
    StopToken(u32),
    /// The reply ended without meeting a stop (the scripted policy appends no EOS).
    Ended,
    Length,
    Abort(&'static str),
}

impl Finish {
    fn to_json(&self, tokens: usize) -> Value {
        match self {
            Finish::StopText(s) => json!({"type": "stop", "matched": s}),
            Finish::StopToken(id) => json!({"type": "stop", "matched": id}),
            Finish::Ended => json!({"type": "stop", "matched": null}),
            Finish::Length => json!({"type": "length", "length": tokens}),
            Finish::Abort(m) => json!({"type": "abort", "message": m}),
        }
    }
}

/// The reply in tokens, before the latency model decides how much of it gets out.
struct Planned {
    ids: Vec<u32>,
    finish: Finish,
}

fn prompt_ids(st: &AppState, body: &GenerateBody) -> Result<Vec<u32>, ApiError> {
    let ids = match (&body.text, &body.input_ids) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "text",
                "give either `text` or `input_ids`, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad("input_ids", "give `input_ids` or `text`")),
        (Some(t), None) => st.tok.encode(t, true)?,
        (None, Some(ids)) => ids.clone(),
    };
    if ids.is_empty() {
        return Err(ApiError::bad("input_ids", "the prompt is empty"));
    }
    Ok(ids)
}

fn decode_prompt(st: &AppState, ids: &[u32]) -> Result<String, ApiError> {
    let out_of_vocab = || {
        let vocab = st.tok.vocab_size();
        let bad = ids
            .iter()
            .find(|&&i| i as usize >= vocab)
            .copied()
            .unwrap_or(0);
        ApiError::bad(
            "input_ids",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        )
    };
    match &st.bytes {
        Some(table) => table.decode(ids).ok_or_else(out_of_vocab),
        None => st
            .tok
            .decode(ids, false)
            .map_err(|e| ApiError::bad("input_ids", e)),
    }
}

fn count_action(st: &AppState, action: &Action) {
    let c = &st.live.counters;
    let counter = match action {
        Action::Notes => &c.notes,
        Action::Answer { .. } => &c.answers,
        Action::Search { .. } => &c.searches,
        Action::Garbage { .. } => &c.garbage,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Applies the rules to the decoded prompt and cuts the reply at the request's limits.
fn plan(st: &AppState, prompt: &str, rid: &str, lim: &Limits) -> Result<Planned, ApiError> {
    let view = read_prompt(prompt);
    let req = Request {
        rid,
        stop: &lim.stop,
        max_new_tokens: lim.max_new_tokens,
    };
    let action = st.rules.decide(&view, &req);
    count_action(st, &action);
    let full = st.rules.reply(&action, &view, &req);
    let (cut, matched) = cut_at_stop(remaining(view.tail, &full), &lim.stop);
    let mut ids = st.tok.encode(cut, false)?;
    let mut finish = matched.map_or(Finish::Ended, |s| Finish::StopText(s.to_string()));
    if let Some(p) = ids.iter().position(|id| lim.stop_token_ids.contains(id)) {
        ids.truncate(p + 1);
        finish = Finish::StopToken(ids[p]);
    }
    if ids.len() > lim.max_new_tokens {
        ids.truncate(lim.max_new_tokens);
        finish = Finish::Length;
    }
    Ok(Planned { ids, finish })
}

/// Waits out the latency model; an abort cuts the output to what was produced by then.
async fn deliver(st: &Arc<AppState>, rid: &str, planned: Planned) -> (Vec<u32>, Finish, u64) {
    let mut adm = st.live.admit(rid, planned.ids.len()).await;
    let Some(abort) = adm.abort.take() else {
        return (planned.ids, planned.finish, adm.version);
    };
    let abort = async move {
        match abort.await {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep_until(adm.schedule.end) => (planned.ids, planned.finish, adm.version),
        why = abort => {
            let n = adm.schedule.produced_at(tokio::time::Instant::now());
            let mut ids = planned.ids;
            ids.truncate(n);
            (ids, Finish::Abort(why), adm.version)
        }
    }
}

/// The output text as SGLang shows it: the matched stop trimmed unless `no_stop_trim`.
fn output_text(
    st: &AppState,
    ids: &[u32],
    finish: &Finish,
    lim: &Limits,
) -> Result<String, ApiError> {
    let shown = match finish {
        Finish::StopToken(_) if !lim.no_stop_trim => &ids[..ids.len().saturating_sub(1)],
        _ => ids,
    };
    let mut text = st.tok.decode(shown, lim.skip_special_tokens)?;
    if let (Finish::StopText(s), false) = (finish, lim.no_stop_trim) {
        if text.ends_with(s.as_str()) {
            text.truncate(text.len() - s.len());
        }
    }
    Ok(text)
}

pub(super) async fn generate(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let started = Instant::now();
    let body: GenerateBody = parse_body(&body)?;
    if body.stream == Some(true) {
        return Err(ApiError::bad(
            "stream",
            "streaming is not supported; send stream=false",
        ));
    }
    let _ = (body.logprob_start_len, body.top_logprobs_num);
    let prompt_ids = prompt_ids(&st, &body)?;
    let lim = body.sampling_params.unwrap_or_default().limits()?;
    let rid = body
        .rid
        .clone()
        .unwrap_or_else(|| format!("scripted-{}", st.rid_seq.fetch_add(1, Ordering::Relaxed)));
    let prompt = decode_prompt(&st, &prompt_ids)?;
    let planned = plan(&st, &prompt, &rid, &lim)?;
    let counters = &st.live.counters;
    let (ids, finish, version) = {
        let _count = InFlightCount::new(&counters.in_flight);
        deliver(&st, &rid, planned).await
    };
    counters.requests.fetch_add(1, Ordering::Relaxed);
    counters
        .prompt_tokens
        .fetch_add(prompt_ids.len() as u64, Ordering::Relaxed);
    counters
        .generated_tokens
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    if matches!(finish, Finish::Abort(_)) {
        counters.aborted.fetch_add(1, Ordering::Relaxed);
    }
    let mut meta = json!({
        "id": rid,
        "finish_reason": finish.to_json(ids.len()),
        "prompt_tokens": prompt_ids.len(),
        "completion_tokens": ids.len(),
        "cached_tokens": 0,
        "weight_version": version.to_string(),
        "output_token_versions": vec![version; ids.len()],
        "e2e_latency": started.elapsed().as_secs_f64(),
    });
    if body.return_logprob.unwrap_or(false) {
        meta["output_token_logprobs"] = logprob_entries(
            &st,
            &rid,
            &ids,
            body.return_text_in_logprobs.unwrap_or(false),
        );
        meta["input_token_logprobs"] = json!([]);
    }
    let text = output_text(&st, &ids, &finish, &lim)?;
    Ok(Json(json!({"text": text, "output_ids": ids, "meta_info": meta})).into_response())
}

/// `[[logprob, id, text|null], ...]` for the output tokens.
fn logprob_entries(st: &AppState, rid: &str, ids: &[u32], with_text: bool) -> Value {
    let entries = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let text = if with_text {
                Value::String(st.tok.decode(&[id], false).unwrap_or_default())
            } else {
                Value::Null
            };
            json!([token_logprob(st.rules.seed, rid, i, id), id, text])
        })
        .collect();
    Value::Array(entries)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    rid: Option<String>,
    abort_all: Option<bool>,
}

pub(super) async fn abort_request(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: AbortBody = parse_body(&body)?;
    let n = match (body.abort_all.unwrap_or(false), body.rid) {
        (true, _) => st.live.abort_all("aborted by /abort_request"),
        (false, Some(rid)) if !rid.is_empty() => st.live.abort_rid(&rid),
        (false, _) => return Err(ApiError::bad("rid", "give `rid` or `abort_all: true`")),
    };
    Ok(Json(json!({"success": true, "aborted": n})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    mode: Option<String>,
}

/// Only SGLang's default mode, `abort`: in-flight requests end with finish reason abort and
/// their partial output; new ones wait for `/continue_generation`.
pub(super) async fn pause_generation(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: PauseBody = parse_body(&body)?;
    match body.mode.as_deref() {
        None | Some("abort") => {}
        Some(other) => {
            return Err(ApiError::bad(
                "mode",
                format!("the scripted server supports only \"abort\", got {other:?}"),
            ))
        }
    }
    let n = st.live.pause();
    Ok(Json(
        json!({"success": true, "message": format!("generation paused; {n} requests aborted")}),
    )
    .into_response())
}

pub(super) async fn continue_generation(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let _: serde_json::Map<String, Value> = parse_body(&body)?;
    st.live.resume();
    Ok(Json(json!({"success": true, "message": "generation continued"})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateWeightsBody {
    /// Recorded in the log only: the scripted policy has no weights to read.
    model_path: String,
    weight_version: Option<Value>,
    load_format: Option<String>,
    abort_all_requests: Option<bool>,
    flush_cache: Option<bool>,
}

/// Aborts in-flight requests (their tokens keep the old version) and moves to `weight_version`
/// (default: the next one).
pub(super) async fn update_weights_from_disk(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: UpdateWeightsBody = parse_body(&body)?;
    let _ = (body.load_format, body.abort_all_requests, body.flush_cache);
    let version = parse_weight_version(body.weight_version.as_ref())?;
    let (v, aborted) = st.live.update_weights(version);
    tracing::info!(version = v, aborted, model_path = %body.model_path, "scripted policy: weights \"updated\"");
    Ok(Json(json!({
        "success": true,
        "message": format!("weight_version {v} (scripted: {} not read)", body.model_path),
        "num_paused_requests": 0,
        "weight_version": v.to_string(),
    }))
    .into_response())
}

pub(super) async fn health() -> ApiResult {
    Ok(Json(json!({"status": "ok"})).into_response())
}

pub(super) async fn get_server_info(State(st): State<Arc<AppState>>) -> ApiResult {
    let stats = st.live.stats();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "served_model_name": st.model_name,
        "weight_version": stats.version.to_string(),
        "scripted": true,
        "stats": stats,
    }))
    .into_response())
}

pub(super) async fn get_model_info(State(st): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(json!({
        "model_path": "scripted-policy",
        "tokenizer_path": st.tok.dir().display().to_string(),
        "served_model_name": st.model_name,
        "is_generation": true,
        "weight_version": st.live.version().to_string(),
        "vocab_size": st.tok.vocab_size(),
        "eos_token_ids": st.tok.eos_token_ids(),
    }))
    .into_response())
}
