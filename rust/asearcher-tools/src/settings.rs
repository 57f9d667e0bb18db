//! The tools' settings as plain, serialisable configs (seconds as numbers, secrets as the names
//! of environment variables, networks as strings), one per client: [`RetrievalSettings`],
//! [`WebSearchSettings`] and [`PageReaderSettings`]. They are part of the config schema (so the
//! Python dataclasses and docs/config.md list them) and build the runtime configs, checking
//! every value; errors name the setting.

use crate::backoff::RetryPolicy;
use crate::page::{AddressPolicy, PageReaderConfig, ReaderMode};
use crate::{Result, RetrievalClientConfig, SerperConfig, ToolError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Settings of a retrieval client: Search-R1/ASearcher retrieval servers with failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalSettings {
    /// Base URLs of the servers, e.g. `http://127.0.0.1:8000`.
    pub endpoints: Vec<String>,
    /// Timeout of one request, seconds.
    pub timeout_s: f64,
    /// Retries after a failed request (transient failures only).
    pub retries: u32,
    /// First back-off between retries, seconds (doubling, with jitter).
    pub backoff_s: f64,
    /// Requests in flight per server at most.
    pub max_concurrency: usize,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            timeout_s: 60.0,
            retries: 3,
            backoff_s: 0.25,
            max_concurrency: 16,
        }
    }
}

impl asearcher_config::Document for RetrievalSettings {}
impl asearcher_config::Document for WebSearchSettings {}
impl asearcher_config::Document for PageReaderSettings {}

impl RetrievalSettings {
    /// The client's config; a bad value is a config error naming it.
    pub fn to_config(&self) -> Result<RetrievalClientConfig> {
        Ok(RetrievalClientConfig {
            endpoints: self.endpoints.clone(),
            timeout: seconds("timeout_s", self.timeout_s)?,
            retry: retry_policy(self.retries, self.backoff_s)?,
            max_concurrency: self.max_concurrency,
        })
    }
}

/// Settings of Serper-protocol web search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WebSearchSettings {
    /// The API's base URL; `null`: `https://google.serper.dev`.
    pub base_url: Option<String>,
    /// The environment variable holding the API key (the key itself never appears in a config).
    pub api_key_env: String,
    /// Timeout of one request, seconds.
    pub timeout_s: f64,
    /// Retries after a failed request (transient failures only).
    pub retries: u32,
    /// First back-off between retries, seconds (doubling, with jitter).
    pub backoff_s: f64,
    /// Requests in flight at most.
    pub max_concurrency: usize,
}

impl Default for WebSearchSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key_env: SerperConfig::KEY_ENV.into(),
            timeout_s: 30.0,
            retries: 3,
            backoff_s: 0.25,
            max_concurrency: 10,
        }
    }
}

impl WebSearchSettings {
    /// Checks the values that need no secret (the key is read only when the client is built).
    pub fn validate(&self) -> Result<()> {
        seconds("timeout_s", self.timeout_s)?;
        retry_policy(self.retries, self.backoff_s).map(drop)
    }

    /// The client's config with the key read from `api_key_env` (a missing key is an error
    /// naming the variable).
    pub fn to_config(&self) -> Result<SerperConfig> {
        let mut cfg = SerperConfig::from_env(self.base_url.as_deref(), &self.api_key_env)?;
        cfg.timeout = seconds("timeout_s", self.timeout_s)?;
        cfg.retry = retry_policy(self.retries, self.backoff_s)?;
        cfg.max_concurrency = self.max_concurrency;
        Ok(cfg)
    }
}

/// How pages are read: fetched directly under an address policy, or through a reader service.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PageMode {
    /// Fetch each URL directly; only public addresses unless the policy allows more.
    #[default]
    Direct,
    /// Ask a Jina-style reader service (`reader_url`) for the page's text.
    Jina,
}

/// Settings of the page reader behind the agent's `<access>` tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PageReaderSettings {
    /// `direct` or `jina`.
    pub mode: PageMode,
    /// The reader service's URL (`jina` mode), e.g. `https://r.jina.ai`.
    pub reader_url: Option<String>,
    /// The environment variable holding the reader service's key (sent when set).
    pub api_key_env: String,
    /// Limit of one attempt (connect, every redirect hop and the body), seconds.
    pub timeout_s: f64,
    /// Largest body accepted, bytes after decompression.
    pub max_bytes: usize,
    /// Redirect hops followed at most.
    pub max_redirects: usize,
    /// Permit private addresses (10/8, 172.16/12, 192.168/16, fc00::/7, CGNAT); metadata
    /// endpoints stay refused.
    pub allow_private: bool,
    /// Permit loopback addresses (127/8, ::1).
    pub allow_loopback: bool,
    /// Networks always permitted (`10.1.2.0/24`, a bare address means that address alone).
    pub allowed_networks: Vec<String>,
    /// Retries after a transient failure (connect errors, HTTP 5xx, timeouts).
    pub retries: u32,
}

impl Default for PageReaderSettings {
    fn default() -> Self {
        let cfg = PageReaderConfig::default();
        Self {
            mode: PageMode::Direct,
            reader_url: None,
            api_key_env: "JINA_API_KEY".into(),
            timeout_s: cfg.timeout.as_secs_f64(),
            max_bytes: cfg.max_bytes,
            max_redirects: cfg.max_redirects,
            allow_private: false,
            allow_loopback: false,
            allowed_networks: Vec::new(),
            retries: cfg.retries,
        }
    }
}

impl PageReaderSettings {
    /// The reader's config (the reader key read from `api_key_env` when set).
    pub fn to_config(&self) -> Result<PageReaderConfig> {
        let mode = match (self.mode, &self.reader_url) {
            (PageMode::Direct, _) => ReaderMode::Direct,
            (PageMode::Jina, Some(base_url)) => ReaderMode::Jina {
                base_url: base_url.clone(),
                api_key: std::env::var(&self.api_key_env)
                    .ok()
                    .filter(|k| !k.is_empty()),
            },
            (PageMode::Jina, None) => {
                return Err(ToolError::config(
                    "reader_url",
                    "mode 'jina' needs a reader_url",
                ))
            }
        };
        Ok(PageReaderConfig {
            mode,
            timeout: seconds("timeout_s", self.timeout_s)?,
            max_bytes: self.max_bytes,
            max_redirects: self.max_redirects,
            policy: AddressPolicy {
                allow_private: self.allow_private,
                allow_loopback: self.allow_loopback,
                allowed_networks: parse_networks(&self.allowed_networks)?,
            },
            retries: self.retries,
            ..PageReaderConfig::default()
        })
    }
}

/// A back-off policy from a retry count and a first delay in seconds.
pub fn retry_policy(retries: u32, backoff_s: f64) -> Result<RetryPolicy> {
    let base_delay = seconds_within("backoff_s", backoff_s, true, 3600)?;
    let max_delay = RetryPolicy::default().max_delay.max(base_delay);
    Ok(RetryPolicy {
        retries,
        base_delay,
        max_delay,
    })
}

/// A positive duration of at most a week (larger values are surely a mistake, and would
/// overflow deadlines).
pub fn seconds(name: &str, s: f64) -> Result<Duration> {
    seconds_within(name, s, false, 7 * 24 * 3600)
}

/// `s` seconds as a duration, if finite and in `0..=max_secs` (0 itself only with `allow_zero`).
fn seconds_within(name: &str, s: f64, allow_zero: bool, max_secs: u64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| (allow_zero || !d.is_zero()) && *d <= Duration::from_secs(max_secs))
        .ok_or_else(|| {
            ToolError::config(
                name,
                format!("must be between 0 and {max_secs} seconds, got {s}"),
            )
        })
}

/// Networks in CIDR form; a bare address is that address alone.
pub fn parse_networks(nets: &[String]) -> Result<Vec<ipnet::IpNet>> {
    nets.iter()
        .map(|n| {
            let with_len = if n.contains('/') {
                n.clone()
            } else if n.contains(':') {
                format!("{n}/128")
            } else {
                format!("{n}/32")
            };
            with_len
                .parse()
                .map_err(|e| ToolError::config("allowed_networks", format!("{n:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_and_bad_values_name_their_setting() {
        let r = RetrievalSettings::default().to_config().unwrap();
        assert_eq!(r.timeout, Duration::from_secs(60));
        assert_eq!(r.retry.base_delay, Duration::from_millis(250));
        let bad = RetrievalSettings {
            timeout_s: -1.0,
            ..RetrievalSettings::default()
        };
        assert!(bad
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("timeout_s"));
        let p = PageReaderSettings::default().to_config().unwrap();
        assert_eq!(p, PageReaderConfig::default());
        let jina = PageReaderSettings {
            mode: PageMode::Jina,
            ..PageReaderSettings::default()
        };
        assert!(jina
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("reader_url"));
        let nets = PageReaderSettings {
            allowed_networks: vec!["10.1.2.3".into(), "fd00::/8".into(), "nope".into()],
            ..PageReaderSettings::default()
        };
        let e = nets.to_config().unwrap_err().to_string();
        assert!(e.contains("allowed_networks") && e.contains("nope"), "{e}");
        let ok = parse_networks(&["10.1.2.3".into(), "fd00::/8".into()]).unwrap();
        assert_eq!(ok[0].to_string(), "10.1.2.3/32");
        let web = WebSearchSettings {
            api_key_env: "ASEARCHER_TEST_NO_SUCH_KEY".into(),
            ..WebSearchSettings::default()
        };
        let e = web.to_config().unwrap_err().to_string();
        assert!(e.contains("ASEARCHER_TEST_NO_SUCH_KEY"), "{e}");
    }
}
