//! The LLM roles over the OpenAI chat protocol: a prompt rendered from its template, one call,
//! the reply's JSON object parsed tolerantly (code fences, prose around it), and one repair
//! request when it is not valid or lacks a field. Every failure is a [`Reject`] with its reason,
//! never a panic or a hang (timeouts are the client's).

use crate::config::{Role, RoleConfig};
use crate::{Result, SynthError};
use asearcher_rollout::client::openai::ChatClient;
use asearcher_rollout::client::ChatModel;
use asearcher_tokenizer::ChatMessage;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Why a step failed; recorded as the rejection reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// A short stable code (`bad_json`, `llm_error`, `entity_not_in_question`, ...).
    pub code: String,
    pub detail: String,
}

impl Reject {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Reject {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

/// One role's client and its endpoint's concurrency bound.
pub struct RoleClient {
    pub role: Role,
    pub config: RoleConfig,
    client: ChatClient,
    limit: Arc<Semaphore>,
}

impl RoleClient {
    pub fn new(role: Role, config: RoleConfig, limit: Arc<Semaphore>) -> Result<Self> {
        let client = ChatClient::new(config.chat_config())
            .map_err(|e| SynthError::config(role.name(), e.to_string()))?;
        Ok(RoleClient {
            role,
            config,
            client,
            limit,
        })
    }

    async fn chat(&self, messages: &[ChatMessage]) -> std::result::Result<String, Reject> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| Reject::new("llm_error", "the endpoint's limiter closed"))?;
        self.client
            .chat(messages, self.config.max_tokens, self.config.temperature)
            .await
            .map_err(|e| Reject::new("llm_error", format!("{}: {e}", self.role.name())))
    }

    /// Asks `prompt` and returns the reply's JSON object, which must hold every key of
    /// `required`; one repair request when it does not. Returns the raw replies too.
    pub async fn ask_json(
        &self,
        prompt: &str,
        required: &[&str],
    ) -> (std::result::Result<Value, Reject>, Vec<String>) {
        let mut messages = vec![user(prompt)];
        let mut raw = Vec::new();
        for attempt in 0..2 {
            let reply = match self.chat(&messages).await {
                Ok(r) => r,
                Err(e) => return (Err(e), raw),
            };
            raw.push(reply.clone());
            match parse_object(&reply, required) {
                Ok(v) => return (Ok(v), raw),
                Err(why) if attempt == 0 => {
                    messages.push(ChatMessage {
                        role: "assistant".into(),
                        content: Some(reply),
                        extra: Default::default(),
                    });
                    messages.push(user(&format!(
                        "That reply is not usable: {why}. Reply again with only the JSON object, \
                         with the keys {}.",
                        required.join(", ")
                    )));
                }
                Err(why) => return (Err(Reject::new("bad_json", why)), raw),
            }
        }
        unreachable!("two attempts return")
    }
}

fn user(text: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        content: Some(text.to_string()),
        extra: Default::default(),
    }
}

/// The first JSON object in `reply` (inside code fences or prose) holding every `required` key.
pub fn parse_object(reply: &str, required: &[&str]) -> std::result::Result<Value, String> {
    let mut last_err = "no JSON object in the reply".to_string();
    for (start, _) in reply.match_indices('{') {
        let mut de = serde_json::Deserializer::from_str(&reply[start..]).into_iter::<Value>();
        match de.next() {
            Some(Ok(v @ Value::Object(_))) => {
                let missing: Vec<&str> = required
                    .iter()
                    .copied()
                    .filter(|k| v.get(k).is_none_or(Value::is_null))
                    .collect();
                if missing.is_empty() {
                    return Ok(v);
                }
                last_err = format!("the JSON object lacks {}", missing.join(", "));
            }
            Some(Err(e)) => last_err = format!("invalid JSON: {e}"),
            _ => {}
        }
    }
    Err(last_err)
}

/// A string field of a reply (trimmed), or a rejection naming it.
pub fn text_field(v: &Value, key: &str) -> std::result::Result<String, Reject> {
    match v.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(Reject::new(
            "incomplete_reply",
            format!("`{key}` is not a non-empty string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_found_in_fences_and_prose_and_missing_keys_named() {
        let v = parse_object("Sure!\n```json\n{\"action\": \"stop\"}\n```", &["action"]).unwrap();
        assert_eq!(v["action"], "stop");
        let v = parse_object(
            "{\"a\": 1} then {\"action\": \"inject\", \"entity\": \"X\"}",
            &["action"],
        )
        .unwrap();
        assert_eq!(v["entity"], "X");
        let e = parse_object("{\"action\": null}", &["action"]).unwrap_err();
        assert!(e.contains("lacks action"), "{e}");
        let e = parse_object("no json here", &["action"]).unwrap_err();
        assert!(e.contains("no JSON object"), "{e}");
        let e = parse_object("{\"action\": ", &["action"]).unwrap_err();
        assert!(e.contains("invalid JSON"), "{e}");
    }
}
