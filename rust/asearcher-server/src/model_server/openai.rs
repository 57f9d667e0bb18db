//! OpenAI's API: `GET /v1/models`, `POST /v1/completions` (prompt as a string, strings, ids or
//! lists of ids) and `POST /v1/chat/completions` (messages rendered with the model's chat
//! template). One choice per prompt (`n` = 1), no streaming.

use super::{
    check_prompt, output_text, parse_body, reject_stream, require_n_one, require_neutral, run_jobs,
    stop_strings, token_texts, unix_now, ApiError, ApiResult, AppState, Job,
};
use asearcher_tokenizer::ChatOptions;
use asearcher_torch::generate::{FinishReason, GenerateOutput, SamplingParams};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub(super) async fn models(State(st): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": st.info.name,
            "object": "model",
            "created": st.created,
            "owned_by": "asearcher",
            "root": st.model_path().display().to_string(),
            "max_model_len": st.info.context_length,
        }],
    }))
    .into_response())
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != st.info.name => Err(ApiError::not_found(
            "model",
            format!(
                "The model `{m}` does not exist (this server serves `{}`).",
                st.info.name
            ),
        )),
        _ => Ok(()),
    }
}

fn finish_reason(out: &GenerateOutput) -> &'static str {
    match out.finish {
        FinishReason::Stop { .. } => "stop",
        FinishReason::Length => "length",
        FinishReason::Abort { .. } => "abort",
    }
}

fn usage(outs: &[GenerateOutput]) -> Value {
    let prompt: usize = outs.iter().map(|o| o.prompt_tokens).sum();
    let completion: usize = outs.iter().map(|o| o.output_ids.len()).sum();
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Declares a request body with the sampling fields both endpoints share, and `sampling()` that
/// collects them (serde's `flatten` cannot be combined with `deny_unknown_fields`).
macro_rules! body_with_sampling {
    ($name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($(#[$fm])* $field: $ty,)*
            temperature: Option<f64>,
            top_p: Option<f64>,
            top_k: Option<i64>,
            stop: Option<Value>,
            seed: Option<u64>,
            n: Option<usize>,
            stream: Option<bool>,
            frequency_penalty: Option<f64>,
            presence_penalty: Option<f64>,
            stop_token_ids: Option<Vec<u32>>,
            ignore_eos: Option<bool>,
            skip_special_tokens: Option<bool>,
        }

        impl $name {
            fn sampling(&self) -> Sampling {
                Sampling {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    stop: self.stop.clone(),
                    seed: self.seed,
                    n: self.n,
                    stream: self.stream,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    stop_token_ids: self.stop_token_ids.clone(),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Default)]
struct Sampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stop: Option<Value>,
    seed: Option<u64>,
    n: Option<usize>,
    stream: Option<bool>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
}

impl Sampling {
    /// OpenAI's defaults: temperature 1, top_p 1.
    fn params(&self, max_tokens: usize) -> Result<SamplingParams, ApiError> {
        reject_stream(self.stream)?;
        require_n_one("n", self.n)?;
        require_neutral("frequency_penalty", self.frequency_penalty, 0.0)?;
        require_neutral("presence_penalty", self.presence_penalty, 0.0)?;
        let params = SamplingParams {
            max_new_tokens: max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(-1),
            stop: stop_strings("stop", self.stop.as_ref())?,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            seed: self.seed,
        };
        params.validate()?;
        Ok(params)
    }
}

body_with_sampling!(CompletionBody {
    model: Option<String>,
    prompt: Value,
    max_tokens: Option<usize>,
    logprobs: Option<u32>,
    echo: Option<bool>,
    user: Option<String>,
    /// vLLM extension: logprob tokens as `"token_id:<id>"` instead of their text.
    return_tokens_as_token_ids: Option<bool>,
    /// vLLM extension: keep the matched stop string in `text`.
    include_stop_str_in_output: Option<bool>,
});

fn completion_prompts(st: &AppState, prompt: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::bad(
            "prompt",
            "must be a string, a list of strings, a list of token ids or a list of such lists",
        )
    };
    let ids = |v: &Value| -> Result<Vec<u32>, ApiError> {
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    match prompt {
        Value::String(s) => Ok(vec![st.tok.encode(s, true)?]),
        Value::Array(items) if items.is_empty() => Err(bad()),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|s| Ok(st.tok.encode(s.as_str().unwrap_or_default(), true)?))
            .collect(),
        Value::Array(items) if items.iter().all(Value::is_array) => items.iter().map(ids).collect(),
        Value::Array(_) => Ok(vec![ids(prompt)?]),
        _ => Err(bad()),
    }
}

/// `{"tokens", "token_logprobs", "top_logprobs": null, "text_offset"}` of one choice.
fn completion_logprobs(st: &AppState, out: &GenerateOutput, as_ids: bool) -> Value {
    let tokens = if as_ids {
        out.output_ids
            .iter()
            .map(|id| format!("token_id:{id}"))
            .collect()
    } else {
        token_texts(&st.tok, &out.output_ids)
    };
    let mut offset = 0;
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let at = offset;
            offset += t.chars().count();
            at
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": out.output_logprobs,
        "top_logprobs": Value::Null,
        "text_offset": offsets,
    })
}

pub(super) async fn completions(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: CompletionBody = parse_body(&body)?;
    check_model(&st, body.model.as_deref())?;
    if body.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "echo is not supported"));
    }
    let _ = body.user;
    let params = body.sampling().params(body.max_tokens.unwrap_or(16))?;
    let prompts = completion_prompts(&st, &body.prompt)?;
    for ids in &prompts {
        check_prompt(&st, "prompt", ids)?;
    }
    let id = st.next_rid("cmpl-");
    let jobs = prompts
        .into_iter()
        .enumerate()
        .map(|(i, input_ids)| Job {
            rid: format!("{id}-{i}"),
            input_ids,
            params: params.clone(),
        })
        .collect();
    let outs = run_jobs(&st, jobs).await?;
    let skip = body.skip_special_tokens.unwrap_or(true);
    let keep_stop = body.include_stop_str_in_output.unwrap_or(false);
    let as_ids = body.return_tokens_as_token_ids.unwrap_or(false);
    let choices = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            Ok(json!({
                "index": i,
                "text": output_text(&st.tok, o, skip, keep_stop)?,
                "logprobs": if body.logprobs.is_some() { completion_logprobs(&st, o, as_ids) } else { Value::Null },
                "finish_reason": finish_reason(o),
                "token_ids": o.output_ids,
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": unix_now(),
        "model": st.info.name,
        "choices": choices,
        "usage": usage(&outs),
    }))
    .into_response())
}

body_with_sampling!(ChatBody {
    model: Option<String>,
    messages: Vec<Value>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
    user: Option<String>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    /// Extension (vLLM/SGLang): more chat-template variables, e.g. `enable_thinking`.
    chat_template_kwargs: Option<Map<String, Value>>,
    add_generation_prompt: Option<bool>,
});

/// Messages whose `content` is a list of `{"type": "text", "text"}` parts get the parts joined
/// by newlines (as vLLM does); other part types are refused.
fn flatten_content(messages: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            let param = format!("messages[{i}]");
            let obj = m
                .as_object_mut()
                .ok_or_else(|| ApiError::bad(&param, "must be an object"))?;
            if !obj.get("role").is_some_and(Value::is_string) {
                return Err(ApiError::bad(&param, "needs a string `role`"));
            }
            if let Some(Value::Array(parts)) = obj.get("content") {
                let texts = parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => Ok(t.clone()),
                            _ => Err(ApiError::unsupported(
                                &format!("{param}.content"),
                                "only text content parts are supported",
                            )),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?;
                obj.insert("content".into(), Value::String(texts.join("\n")));
            }
            Ok(m)
        })
        .collect()
}

fn chat_logprobs(st: &AppState, out: &GenerateOutput) -> Value {
    let tokens = token_texts(&st.tok, &out.output_ids);
    let content: Vec<Value> = tokens
        .into_iter()
        .zip(&out.output_logprobs)
        .map(
            |(t, lp)| json!({"token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []}),
        )
        .collect();
    json!({ "content": content })
}

pub(super) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: ChatBody = parse_body(&body)?;
    check_model(&st, body.model.as_deref())?;
    if body.top_logprobs.unwrap_or(0) > 0 {
        return Err(ApiError::unsupported(
            "top_logprobs",
            "top logprobs are not returned; logprobs=true gives the sampled tokens'",
        ));
    }
    match body.tool_choice.as_ref().and_then(Value::as_str) {
        None | Some("auto") | Some("none")
            if !matches!(body.tool_choice, Some(Value::Object(_))) => {}
        _ => {
            return Err(ApiError::unsupported(
                "tool_choice",
                "only auto/none: tool calls are left in the text for the caller to parse",
            ))
        }
    }
    let _ = body.user;
    if body.messages.is_empty() {
        return Err(ApiError::bad("messages", "must not be empty"));
    }
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .unwrap_or(st.info.context_length);
    let params = body.sampling().params(max_tokens)?;
    let opts = ChatOptions {
        add_generation_prompt: body.add_generation_prompt.unwrap_or(true),
        tools: body.tools.clone(),
        extra: body.chat_template_kwargs.clone().unwrap_or_default(),
        ..ChatOptions::default()
    };
    let messages = flatten_content(body.messages)?;
    let input_ids = st.tok.encode_chat(&messages, &opts)?;
    check_prompt(&st, "messages", &input_ids)?;
    let id = st.next_rid("chatcmpl-");
    let outs = run_jobs(
        &st,
        vec![Job {
            rid: id.clone(),
            input_ids,
            params,
        }],
    )
    .await?;
    let out = &outs[0];
    let skip = body.skip_special_tokens.unwrap_or(true);
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": st.info.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": output_text(&st.tok, out, skip, false)?},
            "logprobs": if body.logprobs == Some(true) { chat_logprobs(&st, out) } else { Value::Null },
            "finish_reason": finish_reason(out),
        }],
        "usage": usage(&outs),
    }))
    .into_response())
}
