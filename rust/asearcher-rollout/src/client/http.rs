//! HTTP plumbing shared by the protocol clients: a validated base address with its reqwest
//! client ([`Endpoint`]), the mapping of transport failures to [`RolloutError`] (every error
//! names the server), API keys read from environment variables and never shown ([`ApiKey`]),
//! and the jittered exponential back-off used by the pool and the chat client.

use crate::{Result, RolloutError};
use rand::Rng;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Longest excerpt of a server's error body kept in an error message.
const BODY_EXCERPT: usize = 600;

/// An API key read from an environment variable. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Reads the key from the environment variable `var`; `field` names the config field that
    /// named the variable (for the error when it is unset or empty).
    pub fn from_env(field: &str, var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(ApiKey(key.trim().to_string())),
            Ok(_) => Err(RolloutError::config(
                field,
                format!("environment variable {var} is empty"),
            )),
            Err(_) => Err(RolloutError::config(
                field,
                format!("environment variable {var} is not set (it should hold the API key)"),
            )),
        }
    }

    /// Reads the key if a variable is named.
    pub fn from_optional_env(field: &str, var: Option<&str>) -> Result<Option<Self>> {
        var.map(|v| Self::from_env(field, v)).transpose()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Checks that `address` is an absolute http(s) URL with a host and returns it without a
/// trailing slash. `field` names the config field in the error.
pub fn base_url(field: &str, address: &str) -> Result<String> {
    let trimmed = address.trim().trim_end_matches('/');
    let bad = |why: &str| RolloutError::config(field, format!("server address {address:?}: {why}"));
    let no_scheme = || {
        bad(&format!(
            "no http:// or https:// scheme (did you mean \"http://{trimmed}\"?)"
        ))
    };
    let url = match reqwest::Url::parse(trimmed) {
        Ok(url) => url,
        Err(_) if !trimmed.contains("://") => return Err(no_scheme()),
        Err(e) => return Err(bad(&e.to_string())),
    };
    if !trimmed.contains("://") {
        return Err(no_scheme());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    for route in ["/generate", "/v1/completions", "/v1/chat/completions"] {
        if let Some(base) = trimmed.strip_suffix(route) {
            return Err(bad(&format!(
                "give the server's base address, without the `{route}` route (did you mean {base:?}?)"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base address takes no query or fragment"));
    }
    Ok(trimmed.to_string())
}

/// One server's base address and the HTTP client that talks to it.
#[derive(Clone)]
pub struct Endpoint {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    key: Option<ApiKey>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("key", &self.key)
            .finish()
    }
}

impl Endpoint {
    /// `timeout` bounds every call (connect included); zero is refused.
    pub fn new(address: &str, timeout: Duration, key: Option<ApiKey>) -> Result<Self> {
        let base = base_url("address", address)?;
        if timeout.is_zero() {
            return Err(RolloutError::config("timeout", "must be positive"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| RolloutError::config("address", format!("HTTP client for {base}: {e}")))?;
        Ok(Endpoint {
            base,
            client,
            timeout,
            key,
        })
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(ApiKey(k)) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// POSTs a JSON body to `{base}{path}` and parses the JSON answer.
    pub async fn post<B: serde::Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value> {
        let rb = self.client.post(format!("{}{path}", self.base)).json(body);
        let bytes = self.send(rb).await?;
        self.parse_json(path, &bytes)
    }

    /// GETs `{base}{path}` and parses the JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let bytes = self
            .send(self.client.get(format!("{}{path}", self.base)))
            .await?;
        self.parse_json(path, &bytes)
    }

    /// Sends a request (authorized) and returns the body of a 2xx answer.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<bytes::Bytes> {
        let resp = self
            .authorize(rb)
            .send()
            .await
            .map_err(|e| self.send_error(e))?;
        self.success_body(resp).await
    }

    fn parse_json(&self, path: &str, bytes: &[u8]) -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|e| RolloutError::Protocol {
            server: self.base.clone(),
            message: format!(
                "{path} answered invalid JSON ({e}): {}",
                excerpt(&String::from_utf8_lossy(bytes))
            ),
        })
    }

    /// GETs `{base}{path}`; any 2xx is success, the body is ignored (SGLang's `/health` is
    /// empty).
    pub async fn get_ok(&self, path: &str) -> Result<()> {
        let rb = self.client.get(format!("{}{path}", self.base));
        self.send(rb).await.map(|_| ())
    }

    async fn success_body(&self, resp: reqwest::Response) -> Result<bytes::Bytes> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.send_error(e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(RolloutError::Status {
            server: self.base.clone(),
            status: status.as_u16(),
            body: error_message(&bytes),
        })
    }

    fn send_error(&self, e: reqwest::Error) -> RolloutError {
        if e.is_timeout() {
            RolloutError::Timeout {
                server: self.base.clone(),
                secs: self.timeout.as_secs_f64(),
            }
        } else {
            RolloutError::Connection {
                server: self.base.clone(),
                message: error_chain(&e),
            }
        }
    }
}

/// The server's own message from an error body (`{"error": {"message"}}`, `{"message"}`,
/// `{"detail"}`), else an excerpt of the body.
fn error_message(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
    });
    excerpt(message.unwrap_or(&text))
}

/// The error and its causes, joined (reqwest's top-level message alone hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= BODY_EXCERPT {
        return text.to_string();
    }
    let cut: String = text.chars().take(BODY_EXCERPT).collect();
    format!("{cut}...")
}

/// Delay before retry number `attempt` (1-based): `base * 2^(attempt-1)` capped at `max`, then
/// "equal jitter" (uniform in [d/2, d]) so that clients retrying together spread out.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = base.saturating_mul(1u32 << exp).min(max);
    if d.is_zero() {
        return d;
    }
    let half = d / 2;
    half + d.mul_f64(rand::rng().random_range(0.0..=0.5))
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn addresses_get_hints_for_a_missing_scheme_or_a_route() {
        let e = base_url("servers", "localhost:30000")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("servers") && e.contains("\"http://localhost:30000\""),
            "{e}"
        );
        let e = base_url("servers", "127.0.0.1:30000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean"), "{e}");
        let e = base_url("servers", "http://h:1/generate")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`/generate` route") && e.contains("\"http://h:1\""),
            "{e}"
        );
        assert_eq!(base_url("servers", "http://h:1/").unwrap(), "http://h:1");
    }
}
