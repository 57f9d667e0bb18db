//! Guarded page fetching for the agent's `<access>` tool: [`PageReader`] fetches a URL the agent
//! chose and returns its readable text as a [`Page`].
//!
//! This module owns the safety of those fetches. Only http/https URLs are fetched, every address
//! connected to (IP literals, resolved host names, every redirect hop) must pass the
//! [`AddressPolicy`] (no loopback, private, link-local, metadata, ... addresses by default),
//! proxies are never used, and each fetch is bounded in time, redirects and decompressed size
//! and limited to text-like content types. It also owns HTML-to-text conversion
//! ([`html_to_text`]) and cutting long pages into chunks ([`chunk_page`]).
//!
//! Submodules: `guard` (address policy, URL checks, the filtering DNS resolver) and `extract`
//! (content types, charsets, HTML-to-text, chunking).

#![warn(missing_docs)]
mod extract;
mod guard;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use url::Url;

use crate::backoff::RetryPolicy;
use crate::doc::Page;
use crate::error::{error_chain, Result, ToolError};
use extract::{body_kind, decode_body, looks_like_html, looks_like_text, media_type, BodyKind};
use guard::{check_url, find_refusal, GuardedResolver};

pub use extract::{chunk_page, html_to_text, PageChunking};
pub use guard::AddressPolicy;

/// Where pages are read from.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ReaderMode {
    /// Fetch the URL directly, under the [`AddressPolicy`].
    #[default]
    Direct,
    /// Ask a Jina-style reader service: `GET {base_url}/{url}` returns the page as text. The
    /// service is trusted configuration: the address policy does not apply to `base_url`.
    Jina {
        /// The reader endpoint, e.g. `https://r.jina.ai`.
        base_url: String,
        /// Sent as `Authorization: Bearer KEY` when set.
        api_key: Option<String>,
    },
}

impl fmt::Debug for ReaderMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderMode::Direct => f.write_str("Direct"),
            ReaderMode::Jina { base_url, api_key } => f
                .debug_struct("Jina")
                .field("base_url", base_url)
                .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// Settings of a [`PageReader`].
#[derive(Debug, Clone, PartialEq)]
pub struct PageReaderConfig {
    /// Direct fetching or a Jina-style reader service.
    pub mode: ReaderMode,
    /// Limit for one attempt: connecting, all redirect hops and the whole body (30 s).
    pub timeout: Duration,
    /// Largest body accepted, counted after decompression (5 MiB).
    pub max_bytes: usize,
    /// Redirect hops followed at most (5).
    pub max_redirects: usize,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Which addresses direct fetches may connect to.
    pub policy: AddressPolicy,
    /// Retries after the first attempt, for transient failures only: connect errors, HTTP 5xx
    /// and timeouts (2).
    pub retries: u32,
}

impl Default for PageReaderConfig {
    fn default() -> Self {
        Self {
            mode: ReaderMode::Direct,
            timeout: Duration::from_secs(30),
            max_bytes: 5 * 1024 * 1024,
            max_redirects: 5,
            user_agent: format!(
                "Mozilla/5.0 (compatible; asearcher/{}; +https://github.com/asearcher/asearcher)",
                env!("CARGO_PKG_VERSION")
            ),
            policy: AddressPolicy::default(),
            retries: 2,
        }
    }
}

/// Fetches pages and turns them into readable text. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct PageReader {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: PageReaderConfig,
    client: reqwest::Client,
}

impl fmt::Debug for PageReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageReader")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// A failed attempt and whether trying again may help.
struct Failure {
    error: ToolError,
    transient: bool,
}

impl Failure {
    fn fatal(error: ToolError) -> Self {
        Failure {
            error,
            transient: false,
        }
    }
}

/// A fetched body before text extraction.
struct Fetched {
    final_url: Url,
    content_type: Option<String>,
    kind: BodyKind,
    body: Vec<u8>,
}

const BACKEND: &str = "page";
const JINA_BACKEND: &str = "jina";
const ACCEPT_DIRECT: &str =
    "text/html,application/xhtml+xml,text/plain;q=0.9,application/xml;q=0.8,*/*;q=0.5";

impl PageReader {
    /// Builds a reader; fails with `ToolError::Config` on a zero timeout or size limit, an
    /// invalid user agent, or a Jina `base_url` that is not an http(s) URL.
    pub fn new(cfg: PageReaderConfig) -> Result<Self> {
        if cfg.timeout.is_zero() {
            return Err(ToolError::config("timeout", "must be greater than zero"));
        }
        if cfg.max_bytes == 0 {
            return Err(ToolError::config("max_bytes", "must be greater than zero"));
        }
        HeaderValue::from_str(&cfg.user_agent).map_err(|e| {
            ToolError::config("user_agent", format!("not a valid header value: {e}"))
        })?;
        let builder = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .no_proxy()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout);
        let builder = match &cfg.mode {
            ReaderMode::Direct => builder
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(GuardedResolver {
                    policy: Arc::new(cfg.policy.clone()),
                })),
            ReaderMode::Jina { base_url, api_key } => {
                let base = Url::parse(base_url).map_err(|e| {
                    ToolError::config("jina base_url", format!("{base_url:?}: {e}"))
                })?;
                if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
                    return Err(ToolError::config(
                        "jina base_url",
                        format!("{base_url:?} is not an http(s) URL"),
                    ));
                }
                if let Some(key) = api_key {
                    HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                        ToolError::config("jina api_key", "not a valid header value")
                    })?;
                }
                builder.redirect(reqwest::redirect::Policy::limited(cfg.max_redirects))
            }
        };
        let client = builder
            .build()
            .map_err(|e| ToolError::config("page reader", error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner { cfg, client }),
        })
    }

    /// The settings this reader was built with.
    pub fn config(&self) -> &PageReaderConfig {
        &self.inner.cfg
    }

    /// Fetches `url` and returns its readable text: HTML is converted with [`html_to_text`],
    /// other text types are returned as they are (title empty). `Page::url` is the final URL
    /// after redirects (in Jina mode, the requested URL).
    ///
    /// Errors: `Refused` for policy violations (scheme, address, content type, size, too many
    /// redirects; never retried), `Timeout` when an attempt exceeds the timeout, `Backend` for
    /// HTTP errors (status >= 400) and connection failures.
    pub async fn fetch(&self, url: &str) -> Result<Page> {
        let cfg = &self.inner.cfg;
        let mut target = Url::parse(url.trim())
            .map_err(|e| ToolError::refused(url, format!("invalid URL: {e}")))?;
        target.set_fragment(None);
        check_url(&target, None).map_err(|reason| ToolError::refused(url, reason))?;

        let backoff = RetryPolicy {
            retries: cfg.retries,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        let mut attempt = 0u32;
        let fetched = loop {
            let outcome = match tokio::time::timeout(cfg.timeout, self.attempt(url, &target)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure {
                    error: self.timeout_error(url),
                    transient: true,
                }),
            };
            match outcome {
                Ok(fetched) => break fetched,
                Err(Failure { error, transient }) => {
                    if !transient || attempt >= cfg.retries {
                        return Err(error);
                    }
                    attempt += 1;
                    tracing::debug!(%url, attempt, error = %error, "page fetch failed; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        };
        self.to_page(url, fetched).await
    }

    fn timeout_error(&self, url: &str) -> ToolError {
        ToolError::Timeout {
            what: "page fetch".into(),
            url: url.into(),
            secs: self.inner.cfg.timeout.as_secs_f64(),
        }
    }

    /// One attempt: request (following redirects in direct mode) and read the body.
    async fn attempt(&self, url: &str, target: &Url) -> std::result::Result<Fetched, Failure> {
        let cfg = &self.inner.cfg;
        let client = &self.inner.client;
        match &cfg.mode {
            ReaderMode::Direct => {
                let mut hop_url = target.clone();
                let mut hops = 0usize;
                loop {
                    let via = |reason: String| {
                        if hops == 0 {
                            reason
                        } else {
                            format!("redirected to {hop_url}: {reason}")
                        }
                    };
                    if let Err(reason) = check_url(&hop_url, Some(&cfg.policy)) {
                        return Err(Failure::fatal(ToolError::refused(url, via(reason))));
                    }
                    let resp = client
                        .get(hop_url.clone())
                        .header(ACCEPT, ACCEPT_DIRECT)
                        .send()
                        .await
                        .map_err(|e| self.send_failure(url, BACKEND, &e, via))?;
                    let status = resp.status();
                    if !matches!(
                        status,
                        StatusCode::MOVED_PERMANENTLY
                            | StatusCode::FOUND
                            | StatusCode::SEE_OTHER
                            | StatusCode::TEMPORARY_REDIRECT
                            | StatusCode::PERMANENT_REDIRECT
                    ) {
                        return self.read(url, BACKEND, hop_url, resp).await;
                    }
                    let location = resp
                        .headers()
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|loc| hop_url.join(loc.trim()).ok());
                    let Some(mut next) = location else {
                        return Err(Failure::fatal(ToolError::Backend {
                            backend: BACKEND.into(),
                            url: url.into(),
                            msg: format!("HTTP {status} without a valid Location header"),
                        }));
                    };
                    hops += 1;
                    if hops > cfg.max_redirects {
                        return Err(Failure::fatal(ToolError::refused(
                            url,
                            format!(
                                "too many redirects (more than max_redirects = {})",
                                cfg.max_redirects
                            ),
                        )));
                    }
                    next.set_fragment(None);
                    tracing::debug!(from = %hop_url, to = %next, "page fetch: redirect");
                    hop_url = next;
                }
            }
            ReaderMode::Jina { base_url, api_key } => {
                // The reader fetches the target from its own network: an IP-literal target in
                // a forbidden range is refused here too (host names are the reader's to resolve).
                if let Err(reason) = check_url(target, Some(&cfg.policy)) {
                    return Err(Failure::fatal(ToolError::refused(url, reason)));
                }
                let endpoint = format!("{}/{}", base_url.trim_end_matches('/'), target.as_str());
                let mut req = client
                    .get(&endpoint)
                    .header(ACCEPT, "text/plain, */*;q=0.5");
                if let Some(key) = api_key {
                    req = req.bearer_auth(key);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| self.send_failure(url, JINA_BACKEND, &e, |r| r))?;
                self.read(url, JINA_BACKEND, target.clone(), resp).await
            }
        }
    }

    /// Classifies a reqwest error from sending a request.
    fn send_failure(
        &self,
        url: &str,
        backend: &str,
        err: &reqwest::Error,
        via: impl FnOnce(String) -> String,
    ) -> Failure {
        if let Some(refusal) = find_refusal(err) {
            return Failure::fatal(ToolError::refused(url, via(refusal.to_string())));
        }
        if err.is_timeout() {
            return Failure {
                error: self.timeout_error(url),
                transient: true,
            };
        }
        if err.is_redirect() {
            return Failure::fatal(ToolError::refused(
                url,
                format!(
                    "too many redirects (more than max_redirects = {})",
                    self.inner.cfg.max_redirects
                ),
            ));
        }
        let transient = err.is_connect();
        let what = if transient {
            "cannot connect"
        } else {
            "request failed"
        };
        Failure {
            error: ToolError::Backend {
                backend: backend.into(),
                url: url.into(),
                msg: format!("{what}: {}", error_chain(err)),
            },
            transient,
        }
    }

    /// Checks status, content type and size, and reads the (decompressed) body.
    async fn read(
        &self,
        url: &str,
        backend: &str,
        final_url: Url,
        mut resp: reqwest::Response,
    ) -> std::result::Result<Fetched, Failure> {
        let cfg = &self.inner.cfg;
        let status = resp.status();
        if status.is_client_error() {
            return Err(Failure::fatal(ToolError::Rejected {
                backend: backend.into(),
                url: url.into(),
                status: status.as_u16(),
                msg: format!("HTTP {status}"),
            }));
        }
        if status.as_u16() >= 300 {
            let transient = status.is_server_error();
            return Err(Failure {
                error: ToolError::Backend {
                    backend: backend.into(),
                    url: url.into(),
                    msg: format!("HTTP {status}"),
                },
                transient,
            });
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let media = media_type(content_type.as_deref().unwrap_or(""));
        let Some(kind) = body_kind(&media) else {
            return Err(Failure::fatal(ToolError::refused(
                url,
                format!("content type `{media}` is not text"),
            )));
        };
        let too_large = |what: String| {
            Failure::fatal(ToolError::refused(
                url,
                format!("{what} larger than max_bytes ({} bytes)", cfg.max_bytes),
            ))
        };
        if let Some(len) = resp.content_length() {
            if len > cfg.max_bytes as u64 {
                return Err(too_large(format!("body of {len} bytes is")));
            }
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > cfg.max_bytes {
                        return Err(too_large("body is".into()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(Failure {
                        error: self.timeout_error(url),
                        transient: true,
                    })
                }
                Err(e) => {
                    return Err(Failure::fatal(ToolError::Backend {
                        backend: backend.into(),
                        url: url.into(),
                        msg: format!("reading the body failed: {}", error_chain(&e)),
                    }))
                }
            }
        }
        if kind == BodyKind::Unknown && !looks_like_text(&body) {
            return Err(Failure::fatal(ToolError::refused(
                url,
                "the response has no content type and its body does not look like text",
            )));
        }
        Ok(Fetched {
            final_url,
            content_type,
            kind,
            body,
        })
    }

    /// Turns a fetched body into a page.
    async fn to_page(&self, url: &str, fetched: Fetched) -> Result<Page> {
        let Fetched {
            final_url,
            content_type,
            kind,
            body,
        } = fetched;
        let jina = matches!(self.inner.cfg.mode, ReaderMode::Jina { .. });
        let page_url = final_url.to_string();
        let is_html_hint = kind == BodyKind::Html;
        let text = decode_body(&body, content_type.as_deref(), is_html_hint);
        let html = match kind {
            BodyKind::Html => true,
            BodyKind::Text => false,
            BodyKind::Unknown => looks_like_html(&text),
        };
        if !html {
            let title = if jina {
                jina_title(&text)
            } else {
                String::new()
            };
            return Ok(Page {
                url: page_url,
                title,
                contents: text,
            });
        }
        let doc_url = page_url.clone();
        let (title, contents) =
            tokio::task::spawn_blocking(move || html_to_text(&text, Some(&doc_url)))
                .await
                .map_err(|e| ToolError::Backend {
                    backend: BACKEND.into(),
                    url: url.into(),
                    msg: format!("HTML extraction failed: {e}"),
                })?;
        Ok(Page {
            url: page_url,
            title,
            contents,
        })
    }
}

/// The title line of a Jina reader response (`Title: ...` on the first line), if any.
fn jina_title(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("Title:"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reader_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<PageReader>();
    }

    #[test]
    fn default_config() {
        let cfg = PageReaderConfig::default();
        assert_eq!(cfg.mode, ReaderMode::Direct);
        assert_eq!(cfg.timeout, Duration::from_secs(30));
        assert_eq!(cfg.max_bytes, 5 * 1024 * 1024);
        assert_eq!(cfg.max_redirects, 5);
        assert_eq!(cfg.retries, 2);
        assert_eq!(cfg.policy, AddressPolicy::default());
        assert!(!cfg.policy.allow_private && !cfg.policy.allow_loopback);
        assert!(cfg.policy.allowed_networks.is_empty());
        assert!(cfg.user_agent.contains("asearcher"));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad =
            |cfg: PageReaderConfig| matches!(PageReader::new(cfg), Err(ToolError::Config { .. }));
        assert!(bad(PageReaderConfig {
            timeout: Duration::ZERO,
            ..Default::default()
        }));
        assert!(bad(PageReaderConfig {
            max_bytes: 0,
            ..Default::default()
        }));
        assert!(bad(PageReaderConfig {
            user_agent: "bad\nagent".into(),
            ..Default::default()
        }));
        let jina = |base: &str| PageReaderConfig {
            mode: ReaderMode::Jina {
                base_url: base.into(),
                api_key: None,
            },
            ..Default::default()
        };
        assert!(bad(jina("not a url")));
        assert!(bad(jina("ftp://reader.example")));
        assert!(PageReader::new(jina("https://r.jina.ai/")).is_ok());
    }

    #[test]
    fn api_key_is_not_in_debug_output() {
        let mode = ReaderMode::Jina {
            base_url: "https://r.jina.ai".into(),
            api_key: Some("sk-SECRET".into()),
        };
        let shown = format!("{mode:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("r.jina.ai"), "{shown}");
    }

    #[tokio::test]
    async fn bad_schemes_and_urls_are_refused_without_requests() {
        let reader = PageReader::new(PageReaderConfig::default()).unwrap();
        for url in [
            "file:///etc/passwd",
            "ftp://example.com/x",
            "gopher://example.com/",
            "not a url",
            "data:text/plain,hi",
        ] {
            match reader.fetch(url).await {
                Err(ToolError::Refused { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{url}: expected Refused, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn literal_addresses_are_refused_before_connecting() {
        // All of these would fail to connect or hang if the guard let them through; Refused
        // proves no connection was attempted.
        let reader = PageReader::new(PageReaderConfig {
            timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap();
        let cases = [
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://10.1.2.3/", "private"),
            ("http://[::ffff:127.0.0.1]:9/", "loopback"),
            ("http://2130706433/", "loopback"),
            ("http://0x7f.1/", "loopback"),
            ("http://[fd00:ec2::254]/", "metadata"),
            ("http://0.0.0.0:9/", "unspecified"),
            ("http://[::]:9/", "unspecified"),
            ("https://100.100.100.200/", "metadata"),
        ];
        for (url, class) in cases {
            match reader.fetch(url).await {
                Err(ToolError::Refused { reason, .. }) => {
                    assert!(reason.contains(class), "{url}: {reason}")
                }
                other => panic!("{url}: expected Refused, got {other:?}"),
            }
        }
    }

    #[test]
    fn policy_table() {
        let default = AddressPolicy::default();
        let refused: &[(&str, &str)] = &[
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("fc00::1", "private"),
            ("fd12:3456::1", "private"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("0.1.2.3", "reserved"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.254", "CGNAT"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.1.2.3", "multicast"),
            ("ff02::1", "multicast"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.5", "documentation"),
            ("2001:db8::1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.8", "reserved"),
            ("169.254.169.254", "metadata"),
            ("100.100.100.200", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::127.0.0.1", "loopback"),
            ("::ffff:0:192.168.0.1", "private"),
            ("64:ff9b::a00:1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2001::1", "reserved"),
            ("fec0::1", "private"),
            ("100::1", "reserved"),
        ];
        for (addr, class) in refused {
            let reason = default.check(ip(addr)).expect_err(addr);
            assert!(reason.contains(class), "{addr}: {reason}");
            assert!(
                reason.contains(&format!("address {}", ip(addr))),
                "{addr}: {reason}"
            );
        }
        assert_eq!(
            default.check(ip("10.0.0.1")).unwrap_err(),
            "address 10.0.0.1 is private (set allow_private to permit)"
        );
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
        ] {
            assert_eq!(default.check(ip(addr)), Ok(()), "{addr}");
        }

        let loopback = AddressPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        for addr in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(loopback.check(ip(addr)), Ok(()), "{addr}");
        }
        assert!(loopback.check(ip("10.0.0.1")).is_err());

        let private = AddressPolicy {
            allow_private: true,
            ..Default::default()
        };
        for addr in [
            "10.0.0.1",
            "192.168.0.1",
            "172.20.1.1",
            "fd12::1",
            "100.64.1.1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(private.check(ip(addr)), Ok(()), "{addr}");
        }
        for addr in [
            "127.0.0.1",
            "169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "169.254.1.1",
        ] {
            assert!(private.check(ip(addr)).is_err(), "{addr}");
        }

        let listed = AddressPolicy {
            allowed_networks: vec![
                "127.0.0.1/32".parse().unwrap(),
                "169.254.169.254/32".parse().unwrap(),
                "fe80::/10".parse().unwrap(),
            ],
            ..Default::default()
        };
        for addr in [
            "127.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "8.8.8.8",
        ] {
            assert_eq!(listed.check(ip(addr)), Ok(()), "{addr}");
        }
        for addr in ["127.0.0.2", "::1", "10.0.0.1"] {
            assert!(listed.check(ip(addr)).is_err(), "{addr}");
        }
    }

    #[test]
    fn jina_title_line() {
        assert_eq!(
            jina_title("Title: Hello World\n\nURL Source: x"),
            "Hello World"
        );
        assert_eq!(jina_title("no title here"), "");
    }
}
