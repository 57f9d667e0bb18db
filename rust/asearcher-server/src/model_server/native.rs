//! SGLang's native endpoints: `/generate` (text or ids, one or a batch, logprobs, the policy
//! version of every token), `/update_weights_from_disk`, `/pause_generation`,
//! `/continue_generation`, `/abort_request`, `/flush_cache`, health and info.

use super::{
    check_prompt, output_text, parse_body, reject_stream, require_n_one, require_neutral, run_jobs,
    stop_strings, token_texts, ApiError, ApiResult, AppState, Job,
};
use asearcher_torch::generate::{
    FinishReason, GenerateOutput, SamplingParams, StopMatch, UpdateOptions, WeightUpdate,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// `sampling_params` of `/generate`. Options we do not implement are accepted only with their
/// neutral value, so a client never silently gets something else than it asked for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeSampling {
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

/// How the text of the outputs is made.
#[derive(Debug, Clone, Copy)]
struct TextOptions {
    skip_special_tokens: bool,
    no_stop_trim: bool,
}

impl NativeSampling {
    fn into_params(self) -> Result<(SamplingParams, TextOptions), ApiError> {
        let p = "sampling_params";
        require_neutral(&format!("{p}.min_p"), self.min_p, 0.0)?;
        require_neutral(
            &format!("{p}.frequency_penalty"),
            self.frequency_penalty,
            0.0,
        )?;
        require_neutral(&format!("{p}.presence_penalty"), self.presence_penalty, 0.0)?;
        require_neutral(
            &format!("{p}.repetition_penalty"),
            self.repetition_penalty,
            1.0,
        )?;
        require_neutral(
            &format!("{p}.min_new_tokens"),
            self.min_new_tokens.map(|n| n as f64),
            0.0,
        )?;
        require_n_one(&format!("{p}.n"), self.n)?;
        if self.spaces_between_special_tokens == Some(false) {
            return Err(ApiError::unsupported(
                &format!("{p}.spaces_between_special_tokens"),
                "only true is supported",
            ));
        }
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            max_new_tokens: self.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            stop: stop_strings(&format!("{p}.stop"), self.stop.as_ref())?,
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            seed: self.sampling_seed.or(self.seed),
        };
        params.validate().map_err(|e| match e {
            asearcher_torch::TorchError::Config { name, msg } => {
                ApiError::bad(&format!("{p}.{name}"), msg)
            }
            other => other.into(),
        })?;
        let text = TextOptions {
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            no_stop_trim: self.no_stop_trim.unwrap_or(false),
        };
        Ok((params, text))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    text: Option<Value>,
    input_ids: Option<Value>,
    sampling_params: Option<NativeSampling>,
    return_logprob: Option<bool>,
    /// Accepted for compatibility; prompt logprobs are never returned.
    logprob_start_len: Option<i64>,
    top_logprobs_num: Option<usize>,
    return_text_in_logprobs: Option<bool>,
    rid: Option<Value>,
    stream: Option<bool>,
}

/// The prompts of a request and whether it was a batch.
struct Prompts {
    ids: Vec<Vec<u32>>,
    batch: bool,
}

fn ids_list(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

fn prompts(st: &AppState, body: &GenerateBody) -> Result<Prompts, ApiError> {
    match (&body.text, &body.input_ids) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "text",
            "give either `text` or `input_ids`, not both",
        )),
        (None, None) => Err(ApiError::bad("text", "give `text` or `input_ids`")),
        (Some(Value::String(s)), None) => Ok(Prompts {
            ids: vec![st.tok.encode(s, true)?],
            batch: false,
        }),
        (Some(Value::Array(items)), None) if !items.is_empty() => {
            let ids = items
                .iter()
                .map(|t| match t {
                    Value::String(s) => Ok(st.tok.encode(s, true)?),
                    _ => Err(ApiError::bad("text", "a batch must be a list of strings")),
                })
                .collect::<Result<_, _>>()?;
            Ok(Prompts { ids, batch: true })
        }
        (Some(_), None) => Err(ApiError::bad(
            "text",
            "must be a string or a non-empty list of strings",
        )),
        (None, Some(v)) => {
            let items = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                ApiError::bad(
                    "input_ids",
                    "must be a non-empty list of token ids, or of lists",
                )
            })?;
            if items.iter().all(Value::is_array) {
                let ids = items
                    .iter()
                    .map(|x| ids_list(x).ok_or_else(bad_ids))
                    .collect::<Result<_, _>>()?;
                Ok(Prompts { ids, batch: true })
            } else {
                Ok(Prompts {
                    ids: vec![ids_list(v).ok_or_else(bad_ids)?],
                    batch: false,
                })
            }
        }
    }
}

fn bad_ids() -> ApiError {
    ApiError::bad(
        "input_ids",
        "token ids must be integers in [0, 2^32); a batch is a list of such lists",
    )
}

fn rids(
    st: &AppState,
    rid: Option<&Value>,
    n: usize,
    batch: bool,
) -> Result<Vec<String>, ApiError> {
    match rid {
        None | Some(Value::Null) => Ok((0..n).map(|_| st.next_rid("")).collect()),
        Some(Value::String(s)) if !batch => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if batch && items.len() == n => items
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad("rid", "must be strings"))
            })
            .collect(),
        Some(_) if batch => Err(ApiError::bad(
            "rid",
            format!("a batch of {n} needs a list of {n} string ids"),
        )),
        Some(_) => Err(ApiError::bad("rid", "must be a string")),
    }
}

fn finish_json(out: &GenerateOutput) -> Value {
    match &out.finish {
        FinishReason::Stop {
            matched: StopMatch::Token(id),
        } => json!({"type": "stop", "matched": id}),
        FinishReason::Stop {
            matched: StopMatch::Text(s),
        } => json!({"type": "stop", "matched": s}),
        FinishReason::Length => json!({"type": "length", "length": out.output_ids.len()}),
        FinishReason::Abort { message } => json!({"type": "abort", "message": message}),
    }
}

struct LogprobOptions {
    on: bool,
    with_text: bool,
}

fn output_json(
    st: &AppState,
    out: &GenerateOutput,
    text: TextOptions,
    lp: &LogprobOptions,
) -> Result<Value, ApiError> {
    let version = out
        .output_versions
        .last()
        .copied()
        .unwrap_or(st.gen.version());
    let mut meta = json!({
        "id": out.rid,
        "finish_reason": finish_json(out),
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.output_ids.len(),
        "cached_tokens": 0,
        "weight_version": version.to_string(),
        "output_token_versions": out.output_versions,
        "e2e_latency": out.total_seconds,
        "queue_time": out.queue_seconds,
    });
    if lp.on {
        let texts = if lp.with_text {
            token_texts(&st.tok, &out.output_ids)
                .into_iter()
                .map(Value::String)
                .collect()
        } else {
            vec![Value::Null; out.output_ids.len()]
        };
        let entries: Vec<Value> = out
            .output_logprobs
            .iter()
            .zip(&out.output_ids)
            .zip(texts)
            .map(|((lp, id), t)| json!([lp, id, t]))
            .collect();
        meta["output_token_logprobs"] = Value::Array(entries);
        meta["input_token_logprobs"] = Value::Array(Vec::new());
    }
    Ok(json!({
        "text": output_text(&st.tok, out, text.skip_special_tokens, text.no_stop_trim)?,
        "output_ids": out.output_ids,
        "meta_info": meta,
    }))
}

pub(super) async fn generate(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: GenerateBody = parse_body(&body)?;
    reject_stream(body.stream)?;
    if body.top_logprobs_num.unwrap_or(0) > 0 {
        return Err(ApiError::unsupported(
            "top_logprobs_num",
            "top logprobs are not returned; use return_logprob for the sampled tokens",
        ));
    }
    let _ = body.logprob_start_len;
    let prompts = prompts(&st, &body)?;
    let param = if body.text.is_some() {
        "text"
    } else {
        "input_ids"
    };
    for ids in &prompts.ids {
        check_prompt(&st, param, ids)?;
    }
    let rids = rids(&st, body.rid.as_ref(), prompts.ids.len(), prompts.batch)?;
    let (params, text) = body.sampling_params.unwrap_or_default().into_params()?;
    let jobs = prompts
        .ids
        .into_iter()
        .zip(rids)
        .map(|(input_ids, rid)| Job {
            rid,
            input_ids,
            params: params.clone(),
        })
        .collect();
    let outs = run_jobs(&st, jobs).await?;
    let lp = LogprobOptions {
        on: body.return_logprob.unwrap_or(false),
        with_text: body.return_text_in_logprobs.unwrap_or(false),
    };
    let mut results = outs
        .iter()
        .map(|o| output_json(&st, o, text, &lp))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if prompts.batch {
        Json(Value::Array(results)).into_response()
    } else {
        Json(results.swap_remove(0)).into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateWeightsBody {
    model_path: String,
    /// Accepted for compatibility: weights are always read as HF safetensors.
    load_format: Option<String>,
    abort_all_requests: Option<bool>,
    weight_version: Option<Value>,
    /// Accepted for compatibility: there is no prefix cache to flush.
    flush_cache: Option<bool>,
}

pub(super) async fn update_weights_from_disk(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: UpdateWeightsBody = parse_body(&body)?;
    if let Some(fmt) = body.load_format.as_deref() {
        if !matches!(fmt, "auto" | "safetensors") {
            return Err(ApiError::unsupported(
                "load_format",
                format!("only auto / safetensors, got {fmt:?}"),
            ));
        }
    }
    let _ = body.flush_cache;
    let version = crate::http_api::parse_weight_version(body.weight_version.as_ref())?;
    let abort = body.abort_all_requests.unwrap_or(false);
    let path = PathBuf::from(&body.model_path);
    let _one_at_a_time = st.update_lock.lock().await;
    let stats = st.gen.stats();
    let in_flight = (stats.running + stats.waiting) as usize;
    let options = UpdateOptions {
        version,
        abort_in_flight: abort,
        ..UpdateOptions::default()
    };
    let result = st
        .gen
        .update_weights(WeightUpdate::FromDisk(path.clone()), options)
        .await;
    match result {
        Ok(v) => {
            *st.model_path.lock().expect("model path lock") = path;
            tracing::info!(version = v, model_path = %body.model_path, "weights updated");
            Ok(Json(json!({
                "success": true,
                "message": format!("weights loaded from {}; weight_version {v}", body.model_path),
                "num_paused_requests": if abort { 0 } else { in_flight },
                "weight_version": v.to_string(),
            }))
            .into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, model_path = %body.model_path, "weight update failed");
            Ok((
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "success": false,
                    "message": format!("failed to update weights from {}: {e}; still serving weight_version {}", body.model_path, st.gen.version()),
                    "num_paused_requests": 0,
                })),
            )
                .into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    mode: Option<String>,
}

/// `mode`: `abort` (default, as SGLang: in-flight requests end with finish reason abort),
/// `in_place` or `retract` (requests stay and continue after `/continue_generation`).
pub(super) async fn pause_generation(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: PauseBody = parse_body(&body)?;
    let mode = body.mode.as_deref().unwrap_or("abort");
    match mode {
        "abort" => st.gen.abort_all()?,
        "in_place" | "retract" => {}
        other => {
            return Err(ApiError::bad(
                "mode",
                format!("unknown mode {other:?} (abort, in_place, retract)"),
            ))
        }
    }
    st.gen.pause().await?;
    Ok(
        Json(json!({"success": true, "message": format!("generation paused ({mode})")}))
            .into_response(),
    )
}

pub(super) async fn continue_generation(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let _: serde_json::Map<String, Value> = parse_body(&body)?;
    st.gen.resume()?;
    Ok(Json(json!({"success": true, "message": "generation continued"})).into_response())
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
    match (body.abort_all.unwrap_or(false), body.rid) {
        (true, _) => st.gen.abort_all()?,
        (false, Some(rid)) if !rid.is_empty() => st.gen.abort(&rid)?,
        (false, _) => return Err(ApiError::bad("rid", "give `rid` or `abort_all: true`")),
    }
    Ok(Json(json!({"success": true})).into_response())
}

pub(super) async fn flush_cache() -> ApiResult {
    Ok(
        Json(json!({"success": true, "message": "Cache flushed (no prefix cache to flush)."}))
            .into_response(),
    )
}

pub(super) async fn health(State(st): State<Arc<AppState>>) -> ApiResult {
    if !st.gen.is_alive() {
        return Err(asearcher_torch::TorchError::EngineStopped(
            "the engine thread has exited".into(),
        )
        .into());
    }
    Ok(Json(json!({"status": "ok"})).into_response())
}

/// Generates one token to prove the engine works; 503 when it does not.
pub(super) async fn health_generate(State(st): State<Arc<AppState>>) -> ApiResult {
    let job = Job {
        rid: st.next_rid("health-"),
        input_ids: vec![0],
        params: SamplingParams {
            max_new_tokens: 1,
            temperature: 0.0,
            ignore_eos: true,
            ..SamplingParams::default()
        },
    };
    let out = run_jobs(&st, vec![job]).await.map_err(|mut e| {
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        e
    })?;
    Ok(Json(json!({"status": "ok", "generated_tokens": out[0].output_ids.len()})).into_response())
}

pub(super) async fn get_model_info(State(st): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(json!({
        "model_path": st.model_path().display().to_string(),
        "tokenizer_path": st.tokenizer_path.display().to_string(),
        "served_model_name": st.info.name,
        "is_generation": true,
        "model_type": st.info.model_type,
        "weight_version": st.gen.version().to_string(),
        "context_length": st.info.context_length,
        "vocab_size": st.info.vocab_size,
        "eos_token_ids": st.tok.eos_token_ids(),
    }))
    .into_response())
}

pub(super) async fn get_server_info(State(st): State<Arc<AppState>>) -> ApiResult {
    let s = st.gen.stats();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model_path": st.model_path().display().to_string(),
        "served_model_name": st.info.name,
        "device": st.info.device,
        "dtype": st.info.dtype,
        "max_running_requests": st.info.max_running,
        "context_length": st.info.context_length,
        "weight_version": s.version.to_string(),
        "stream": false,
        "stats": {
            "running": s.running, "waiting": s.waiting, "finished": s.finished,
            "aborted": s.aborted, "prompt_tokens": s.prompt_tokens,
            "generated_tokens": s.generated_tokens, "decode_steps": s.decode_steps,
            "version": s.version, "paused": s.paused,
        },
    }))
    .into_response())
}
