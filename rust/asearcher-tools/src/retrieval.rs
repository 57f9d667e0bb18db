//! Client for Search-R1/ASearcher retrieval servers: `POST /retrieve`, `POST /access`.
//!
//! Several addresses may serve the same index: requests go round-robin, a failing address is
//! skipped for the next one, rounds are retried with back-off, and each address has a bound on
//! concurrent requests.

use crate::backoff::RetryPolicy;
use crate::error::error_chain;
use crate::{Document, Page, Result, ToolError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Settings of a [`RetrievalClient`].
#[derive(Debug, Clone)]
pub struct RetrievalClientConfig {
    /// Base URLs such as `http://127.0.0.1:8000`.
    pub endpoints: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Concurrent requests allowed per endpoint.
    pub max_concurrency: usize,
}

impl Default for RetrievalClientConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            max_concurrency: 16,
        }
    }
}

struct Endpoint {
    base: String,
    permits: Semaphore,
}

/// A failover client for one logical retrieval service. Cheap to clone.
#[derive(Clone)]
pub struct RetrievalClient {
    http: reqwest::Client,
    endpoints: Arc<Vec<Endpoint>>,
    next: Arc<AtomicUsize>,
    cfg: RetrievalClientConfig,
}

impl RetrievalClient {
    pub fn new(cfg: RetrievalClientConfig) -> Result<Self> {
        if cfg.endpoints.is_empty() {
            return Err(ToolError::config(
                "endpoints",
                "at least one retrieval server address is needed",
            ));
        }
        let mut endpoints = Vec::new();
        for raw in &cfg.endpoints {
            let base = normalise_base(raw)?;
            endpoints.push(Endpoint {
                base,
                permits: Semaphore::new(cfg.max_concurrency.max(1)),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .no_proxy()
            .build()
            .map_err(|e| ToolError::config("http client", e.to_string()))?;
        Ok(Self {
            http,
            endpoints: Arc::new(endpoints),
            next: Arc::new(AtomicUsize::new(0)),
            cfg,
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.base.clone()).collect()
    }

    /// Top-`k` documents for each query, in query order.
    pub async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        let body = json!({"queries": queries, "topk": k, "return_scores": true});
        let resp: ResultEnvelope<Vec<Vec<Value>>> = self.post("/retrieve", &body).await?;
        if resp.result.len() != queries.len() {
            return Err(ToolError::Backend {
                backend: "retrieval".into(),
                url: "/retrieve".into(),
                msg: format!(
                    "asked {} queries, got {} result lists",
                    queries.len(),
                    resp.result.len()
                ),
            });
        }
        Ok(resp
            .result
            .into_iter()
            .map(|hits| hits.into_iter().filter_map(parse_hit).collect())
            .collect())
    }

    /// Pages for `urls` (`None` where the server has no such page).
    pub async fn access_batch(&self, urls: &[String]) -> Result<Vec<Option<Page>>> {
        let resp: ResultEnvelope<Vec<Option<Value>>> =
            self.post("/access", &json!({"urls": urls})).await?;
        if resp.result.len() != urls.len() {
            return Err(ToolError::Backend {
                backend: "retrieval".into(),
                url: "/access".into(),
                msg: format!("asked {} urls, got {} pages", urls.len(), resp.result.len()),
            });
        }
        Ok(resp
            .result
            .into_iter()
            .map(|p| p.and_then(parse_page))
            .collect())
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        self.cfg
            .retry
            .run("retrieval request", |_| self.round(path, body))
            .await
    }

    /// One round: each endpoint in turn (starting round-robin) until one answers.
    async fn round<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        let n = self.endpoints.len();
        let mut errors = vec![String::new(); n];
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let ep = &self.endpoints[(start + i) % n];
            match self.post_once(ep, path, body).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    tracing::warn!(endpoint = %ep.base, error = %e, "retrieval request failed; trying next");
                    errors[(start + i) % n] = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
        Err(ToolError::AllBackendsFailed {
            backend: "retrieval".into(),
            errors,
        })
    }

    async fn post_once<T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        path: &str,
        body: &Value,
    ) -> Result<T> {
        let _permit = ep.permits.acquire().await.expect("semaphore never closed");
        let url = format!("{}{}", ep.base, path);
        send_json(
            self.http.post(&url).json(body),
            "retrieval",
            &url,
            self.cfg.timeout,
        )
        .await
    }
}

/// Sends a request and decodes a JSON answer, mapping failures to tool errors.
pub(crate) async fn send_json<T: DeserializeOwned>(
    req: reqwest::RequestBuilder,
    backend: &str,
    url: &str,
    timeout: Duration,
) -> Result<T> {
    let backend_err = |msg: String| ToolError::Backend {
        backend: backend.into(),
        url: url.into(),
        msg,
    };
    let resp = req
        .send()
        .await
        .map_err(|e| classify(e, backend, url, timeout))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| classify(e, backend, url, timeout))?;
    if status.is_client_error() {
        let msg = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        return Err(ToolError::Rejected {
            backend: backend.into(),
            url: url.into(),
            status: status.as_u16(),
            msg,
        });
    }
    if !status.is_success() {
        return Err(backend_err(format!("HTTP {status}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| backend_err(format!("malformed JSON answer: {e}")))
}

pub(crate) fn classify(
    e: reqwest::Error,
    backend: &str,
    url: &str,
    timeout: Duration,
) -> ToolError {
    if e.is_timeout() {
        ToolError::Timeout {
            what: format!("{backend} request"),
            url: url.into(),
            secs: timeout.as_secs_f64(),
        }
    } else {
        ToolError::Backend {
            backend: backend.into(),
            url: url.into(),
            msg: error_chain(&e),
        }
    }
}

pub(crate) fn normalise_base(raw: &str) -> Result<String> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let parsed = url::Url::parse(&with_scheme)
        .map_err(|e| ToolError::config("endpoint", format!("{raw:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ToolError::config(
            "endpoint",
            format!("{raw:?}: scheme must be http or https"),
        ));
    }
    let path = parsed.path().trim_end_matches('/');
    if let Some(route) = ["/retrieve", "/access", "/health"]
        .into_iter()
        .find(|r| path.ends_with(r))
    {
        let base = with_scheme.trim_end_matches('/');
        let base = &base[..base.len() - route.len()];
        return Err(ToolError::config(
            "endpoint",
            format!("{raw:?} is the server's `{route}` route; give its base URL, e.g. {base:?}"),
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[derive(Deserialize)]
struct ResultEnvelope<T> {
    result: T,
}

/// A hit is either a bare document or `{"document": doc, "score": s}`.
fn parse_hit(v: Value) -> Option<Document> {
    match v {
        Value::Object(mut m) if m.contains_key("document") => {
            let score = m.get("score").and_then(Value::as_f64).map(|s| s as f32);
            parse_doc(m.remove("document")?).map(|d| Document { score, ..d })
        }
        other => parse_doc(other),
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn parse_doc(v: Value) -> Option<Document> {
    let (title, text) = match (str_field(&v, "contents"), str_field(&v, "text")) {
        (Some(c), _) => Document::split_contents(&c),
        (None, Some(t)) => (String::new(), t),
        (None, None) => return None,
    };
    Some(Document {
        id: str_field(&v, "id").unwrap_or_default(),
        title: str_field(&v, "title").unwrap_or(title),
        text,
        url: str_field(&v, "url"),
        score: v.get("score").and_then(Value::as_f64).map(|s| s as f32),
    })
}

fn parse_page(v: Value) -> Option<Page> {
    let contents = str_field(&v, "contents").or_else(|| str_field(&v, "page"))?;
    Some(Page {
        url: str_field(&v, "url").unwrap_or_default(),
        title: str_field(&v, "title").unwrap_or_default(),
        contents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_hit_shapes() {
        let bare = json!({"id": "1", "contents": "\"T\"\nbody", "url": "u"});
        let scored = json!({"document": {"contents": "plain"}, "score": 2.5});
        let d = parse_hit(bare).unwrap();
        assert_eq!(
            (d.title.as_str(), d.text.as_str(), d.url.as_deref()),
            ("T", "body", Some("u"))
        );
        let s = parse_hit(scored).unwrap();
        assert_eq!((s.text.as_str(), s.score), ("plain", Some(2.5)));
        assert!(parse_hit(json!({"nothing": 1})).is_none());
    }

    #[test]
    fn endpoint_addresses_are_checked() {
        assert_eq!(
            normalise_base("127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert!(normalise_base("ftp://x").is_err());
        assert!(RetrievalClient::new(RetrievalClientConfig::default()).is_err());
        let e = normalise_base("http://10.0.0.5:8000/retrieve/")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`/retrieve` route") && e.contains("\"http://10.0.0.5:8000\""),
            "{e}"
        );
        assert!(normalise_base("host:8000/api/access").is_err());
        assert_eq!(
            normalise_base("https://x.org/retrieval/v1").unwrap(),
            "https://x.org/retrieval/v1"
        );
    }
}
