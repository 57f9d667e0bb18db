//! Web search over the Serper protocol: `POST {base}/search` with header `X-API-KEY` and JSON
//! `{"q", "num"}`; hits come from `organic[*].{title, link, snippet}`.

use crate::backoff::RetryPolicy;
use crate::retrieval::{normalise_base, send_json};
use crate::{Document, Result, ToolError};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Settings of a [`SerperClient`]. The key is a secret: it is never printed by `Debug`.
#[derive(Clone)]
pub struct SerperConfig {
    pub base_url: String,
    pub api_key: String,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub max_concurrency: usize,
}

impl std::fmt::Debug for SerperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerperConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl SerperConfig {
    pub const DEFAULT_BASE_URL: &'static str = "https://google.serper.dev";
    pub const KEY_ENV: &'static str = "SERPER_API_KEY";

    /// Settings with the key read from the environment variable `key_env`.
    pub fn from_env(base_url: Option<&str>, key_env: &str) -> Result<Self> {
        let api_key = std::env::var(key_env)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ToolError::MissingSecret {
                var: key_env.into(),
                what: "the Serper web search API key".into(),
            })?;
        Ok(Self {
            base_url: base_url.unwrap_or(Self::DEFAULT_BASE_URL).to_string(),
            api_key,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_concurrency: 10,
        })
    }
}

#[derive(Deserialize)]
struct SerperAnswer {
    #[serde(default)]
    organic: Vec<OrganicHit>,
}

#[derive(Deserialize)]
struct OrganicHit {
    #[serde(default)]
    title: String,
    #[serde(default)]
    link: String,
    #[serde(default)]
    snippet: String,
}

/// A web search client speaking the Serper protocol. Cheap to clone.
#[derive(Clone)]
pub struct SerperClient {
    http: reqwest::Client,
    endpoint: String,
    cfg: Arc<SerperConfig>,
    permits: Arc<Semaphore>,
}

impl SerperClient {
    pub fn new(cfg: SerperConfig) -> Result<Self> {
        let endpoint = format!("{}/search", normalise_base(&cfg.base_url)?);
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| ToolError::config("http client", e.to_string()))?;
        let permits = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
        Ok(Self {
            http,
            endpoint,
            cfg: Arc::new(cfg),
            permits,
        })
    }

    /// The top `k` web results for `query`; a document's text is the result's snippet.
    pub async fn search(&self, query: &str, k: usize) -> Result<Vec<Document>> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let body = json!({"q": query, "num": k});
        let answer = self
            .cfg
            .retry
            .run("web search", |_| {
                let req = self
                    .http
                    .post(&self.endpoint)
                    .header("X-API-KEY", &self.cfg.api_key)
                    .json(&body);
                send_json::<SerperAnswer>(req, "serper", &self.endpoint, self.cfg.timeout)
            })
            .await?;
        Ok(answer
            .organic
            .into_iter()
            .take(k)
            .map(to_document)
            .collect())
    }
}

fn to_document(hit: OrganicHit) -> Document {
    Document {
        id: hit.link.clone(),
        title: hit.title,
        text: hit.snippet,
        url: Some(hit.link),
        score: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_never_debug_printed() {
        let cfg = SerperConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_key: "sk-very-secret".into(),
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            max_concurrency: 1,
        };
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }

    #[test]
    fn missing_key_names_the_variable() {
        let err = SerperConfig::from_env(None, "ASEARCHER_TEST_SURELY_UNSET_KEY").unwrap_err();
        assert!(
            err.to_string().contains("ASEARCHER_TEST_SURELY_UNSET_KEY"),
            "{err}"
        );
    }
}
