//! The scripted LLM judge on OpenAI's `POST /v1/chat/completions`. Convention: the last user
//! message holds a line `Ground truth: ...` and a line `Response: ...` (the last of each counts,
//! each read to the end of its line). The verdict is `correct` when the normalised ground truth
//! occurs, as whole words, in the normalised response; the reply content is
//! `{"rationale": "...", "judgement": "correct" | "incorrect"}`, or unparseable prose with
//! probability `judge_garbage_rate` (by hash of the message and the seed).

use super::rules::{hash, unit};
use super::AppState;
use crate::http_api::{parse_body, ApiError, ApiResult};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The request keys OpenAI clients commonly send; sampling options are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted and type-checked, not used by the rules
struct ChatBody {
    model: Option<String>,
    messages: Vec<Value>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    stop: Option<Value>,
    seed: Option<u64>,
    stream: Option<bool>,
    user: Option<String>,
    response_format: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
}

/// The text of a message's `content`: a string or a list of `{"type": "text", "text": ...}`.
fn content_text(msg: &Value) -> String {
    match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The value of the last line starting with `label` (leading spaces allowed).
fn labelled_line<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix(label).map(str::trim))
}

/// SQuAD-style normalisation: lower case, punctuation to spaces, articles dropped, whitespace
/// collapsed.
pub fn normalise(text: &str) -> String {
    let lowered: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    lowered
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `correct` when the normalised ground truth is a whole-word part of the normalised response.
pub fn verdict(ground_truth: &str, response: &str) -> bool {
    let gt = normalise(ground_truth);
    !gt.is_empty() && format!(" {} ", normalise(response)).contains(&format!(" {gt} "))
}

fn judge_reply(st: &AppState, prompt: &str) -> Result<String, ApiError> {
    let garbage = unit(hash(st.rules.seed, &[b"judge", prompt.as_bytes()]));
    if st.judge_garbage_rate > 0.0 && garbage < st.judge_garbage_rate {
        return Ok("Hmm, it is hard to say; the response might be right, or not.".into());
    }
    let missing = |label: &str| {
        ApiError::bad(
            "messages",
            format!(
                "the last user message has no `{label}` line (the scripted judge's convention)"
            ),
        )
    };
    let gt = labelled_line(prompt, "Ground truth:").ok_or_else(|| missing("Ground truth:"))?;
    let response = labelled_line(prompt, "Response:").ok_or_else(|| missing("Response:"))?;
    let (judgement, rationale) = if verdict(gt, response) {
        ("correct", "the response contains the ground truth")
    } else {
        (
            "incorrect",
            "the response does not contain the ground truth",
        )
    };
    Ok(json!({"rationale": rationale, "judgement": judgement}).to_string())
}

pub(super) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let body: ChatBody = parse_body(&body)?;
    if body.stream == Some(true) {
        return Err(ApiError::bad("stream", "streaming is not supported"));
    }
    if let Some(n) = body.n.filter(|n| *n != 1) {
        return Err(ApiError::bad("n", format!("only 1 is supported, got {n}")));
    }
    let user = body
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .ok_or_else(|| ApiError::bad("messages", "no message with role `user`"))?;
    let prompt = content_text(user);
    let content = judge_reply(&st, &prompt)?;
    st.live
        .counters
        .judge_requests
        .fetch_add(1, Ordering::Relaxed);
    let prompt_tokens: usize = body
        .messages
        .iter()
        .map(|m| {
            st.tok
                .encode(&content_text(m), false)
                .map_or(0, |t| t.len())
        })
        .sum();
    let completion_tokens = st.tok.encode(&content, false).map_or(0, |t| t.len());
    let n = st.rid_seq.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Json(json!({
        "id": format!("chatcmpl-scripted-{n}"),
        "object": "chat.completion",
        "created": created,
        "model": body.model.unwrap_or_else(|| st.model_name.clone()),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": null,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response())
}

pub(super) async fn models(State(st): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": st.model_name, "object": "model", "created": 0, "owned_by": "asearcher"}],
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_use_normalised_whole_words() {
        assert!(verdict("Koford", "The answer is koford."));
        assert!(verdict("the Red River", "It is Red river!"));
        assert!(!verdict("Koford", "Kofordia"));
        assert!(!verdict("", "anything"));
    }

    #[test]
    fn labelled_lines_are_the_last_ones() {
        let p = "Ground truth: example\nQuestion: q\nGround truth: Koford\nResponse:  Koford city ";
        assert_eq!(labelled_line(p, "Ground truth:"), Some("Koford"));
        assert_eq!(labelled_line(p, "Response:"), Some("Koford city"));
        assert_eq!(labelled_line("nothing", "Response:"), None);
    }
}
