//! HTTP tests of the page reader against local axum servers. Every server listens on 127.0.0.1,
//! and every other address a test names must be refused before any connection is made.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asearcher_tools::{AddressPolicy, PageReader, PageReaderConfig, ReaderMode, ToolError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;

/// Requests the fake Jina reader saw: path and query, Authorization header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

const MIB: usize = 1024 * 1024;

const ARTICLE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Why the Sky Is Blue</title>
<script>window.analytics = "SCRIPTJUNK";</script><style>.x { color: red }</style></head>
<body>
<nav class="menu"><a href="/">Home</a> | <a href="/news">NAVJUNK News</a> | <a href="/about">About</a></nav>
<div id="content"><article>
<h1>Why the Sky Is Blue</h1>
<p>Sunlight reaches Earth's atmosphere and is scattered in all directions by the gases and particles
in the air. Blue light is scattered more than the other colours because it travels as shorter,
smaller waves. This is why we see a blue sky most of the time.</p>
<p>This effect is called Rayleigh scattering, after the British physicist Lord Rayleigh, who first
described it in the nineteenth century. The amount of scattering grows steeply as the wavelength
gets shorter, roughly with the inverse fourth power of the wavelength.</p>
<p>Closer to the horizon the sky looks paler, because the light we see there has passed through
more air and has been scattered again and again, mixing the colours back towards white.</p>
</article></div>
<footer>FOOTERJUNK &copy; 2024 Example Science</footer>
</body></html>"#;

#[derive(Default)]
struct Hits(Mutex<HashMap<&'static str, usize>>);

impl Hits {
    fn hit(&self, name: &'static str) -> usize {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(name).or_default();
        *n += 1;
        *n
    }
    fn get(&self, name: &'static str) -> usize {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct AppState {
    hits: Arc<Hits>,
    /// Bytes the streaming handler produced.
    streamed: Arc<AtomicUsize>,
    bomb: Arc<Vec<u8>>,
}

fn host(headers: &HeaderMap) -> String {
    headers[header::HOST].to_str().unwrap().to_string()
}

fn redirect(status: StatusCode, location: &str) -> Response {
    (status, [(header::LOCATION, location.to_string())]).into_response()
}

fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/article",
            get(|State(s): State<AppState>| async move {
                s.hits.hit("article");
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    ARTICLE,
                )
            }),
        )
        .route(
            "/plain",
            get(|State(s): State<AppState>| async move {
                s.hits.hit("plain");
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "Line one <b>kept</b>\n\n  indented  line ünïcode\n",
                )
            }),
        )
        .route(
            "/missing",
            get(|State(s): State<AppState>| async move {
                s.hits.hit("missing");
                (StatusCode::NOT_FOUND, "nope")
            }),
        )
        .route(
            "/flaky",
            get(|State(s): State<AppState>| async move {
                if s.hits.hit("flaky") == 1 {
                    (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
                } else {
                    ([(header::CONTENT_TYPE, "text/plain")], "recovered").into_response()
                }
            }),
        )
        .route("/r1", get(|| async { redirect(StatusCode::FOUND, "/r2") }))
        .route(
            "/r2",
            get(|headers: HeaderMap| async move {
                redirect(
                    StatusCode::MOVED_PERMANENTLY,
                    &format!("http://{}/article#frag", host(&headers)),
                )
            }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                redirect(StatusCode::FOUND, "http://169.254.169.254/latest/meta-data")
            }),
        )
        .route(
            "/to-private",
            get(|| async { redirect(StatusCode::TEMPORARY_REDIRECT, "http://10.1.2.3/") }),
        )
        .route(
            "/to-mapped",
            get(|| async { redirect(StatusCode::FOUND, "http://[::ffff:169.254.169.254]/") }),
        )
        .route(
            "/to-file",
            get(|| async { redirect(StatusCode::FOUND, "file:///etc/passwd") }),
        )
        .route(
            "/to-localhost",
            get(|headers: HeaderMap| async move {
                let port = host(&headers).rsplit(':').next().unwrap().to_string();
                redirect(StatusCode::FOUND, &format!("http://localhost:{port}/plain"))
            }),
        )
        .route(
            "/loop/{n}",
            get(|State(s): State<AppState>, Path(n): Path<u32>| async move {
                s.hits.hit("loop");
                redirect(StatusCode::FOUND, &format!("/loop/{}", n + 1))
            }),
        )
        .route(
            "/huge-stream",
            get(|State(s): State<AppState>| async move {
                // 20 MiB of text in 64 KiB chunks, without a Content-Length.
                let counter = s.streamed.clone();
                let chunk = Bytes::from(
                    "abcdefghijklmnopqrstuvwxyz012345\n".repeat(2048)[..65536].to_string(),
                );
                let stream = futures::stream::iter(0..(20 * MIB / 65536)).map(move |_| {
                    counter.fetch_add(chunk.len(), Ordering::SeqCst);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                (
                    [(header::CONTENT_TYPE, "text/plain")],
                    Body::from_stream(stream),
                )
            }),
        )
        .route(
            "/huge-len",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "x".repeat(2 * MIB)) }),
        )
        .route(
            "/bomb",
            get(|State(s): State<AppState>| async move {
                (
                    [
                        (header::CONTENT_TYPE, "text/html"),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    s.bomb.as_ref().clone(),
                )
            }),
        )
        .route(
            "/octet",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    vec![0u8, 1, 2, 3],
                )
            }),
        )
        .route(
            "/png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
                )
            }),
        )
        .route(
            "/untyped-binary",
            get(|| async { Response::new(Body::from(b"\x00\x01binary\xff\xfe".to_vec())) }),
        )
        .route(
            "/untyped-html",
            get(|| async { Response::new(Body::from(ARTICLE)) }),
        )
        .route(
            "/slow",
            get(|State(s): State<AppState>| async move {
                s.hits.hit("slow");
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .route(
            "/slow-body",
            get(|| async {
                let stream = futures::stream::iter(0..2).then(|i| async move {
                    if i == 1 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Ok::<_, std::io::Error>(Bytes::from_static(b"partial body "))
                });
                (
                    [(header::CONTENT_TYPE, "text/plain")],
                    Body::from_stream(stream),
                )
            }),
        )
        .with_state(state)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

async fn start() -> (SocketAddr, AppState) {
    let state = AppState::default();
    (serve(app(state.clone())).await, state)
}

/// Allows exactly 127.0.0.1, like a test harness would.
fn local_policy() -> AddressPolicy {
    AddressPolicy {
        allowed_networks: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    }
}

fn local_reader(tweak: impl FnOnce(&mut PageReaderConfig)) -> PageReader {
    let mut cfg = PageReaderConfig {
        policy: local_policy(),
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    tweak(&mut cfg);
    PageReader::new(cfg).unwrap()
}

fn expect_refused(result: asearcher_tools::Result<asearcher_tools::Page>, needle: &str) -> String {
    match result {
        Err(ToolError::Refused { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
            reason
        }
        other => panic!("expected Refused containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn article_page_is_extracted() {
    let (addr, _) = start().await;
    let page = local_reader(|_| {})
        .fetch(&format!("http://{addr}/article"))
        .await
        .unwrap();
    assert_eq!(page.url, format!("http://{addr}/article"));
    assert_eq!(page.title, "Why the Sky Is Blue");
    assert!(
        page.contents.contains("Rayleigh scattering"),
        "{}",
        page.contents
    );
    assert!(
        page.contents
            .contains("mixing the colours back towards white."),
        "{}",
        page.contents
    );
    assert!(
        page.contents.contains("most of the time.\n\n"),
        "paragraphs kept: {}",
        page.contents
    );
    for junk in [
        "SCRIPTJUNK",
        "color: red",
        "NAVJUNK",
        "FOOTERJUNK",
        "<p>",
        "&copy;",
    ] {
        assert!(!page.contents.contains(junk), "{junk} in {}", page.contents);
    }
}

#[tokio::test]
async fn plain_text_is_returned_as_is() {
    let (addr, _) = start().await;
    let page = local_reader(|_| {})
        .fetch(&format!("http://{addr}/plain"))
        .await
        .unwrap();
    assert_eq!(page.title, "");
    assert_eq!(
        page.contents,
        "Line one <b>kept</b>\n\n  indented  line ünïcode\n"
    );
}

#[tokio::test]
async fn untyped_bodies_are_sniffed() {
    let (addr, _) = start().await;
    let reader = local_reader(|_| {});
    let page = reader
        .fetch(&format!("http://{addr}/untyped-html"))
        .await
        .unwrap();
    assert_eq!(page.title, "Why the Sky Is Blue");
    assert!(!page.contents.contains("SCRIPTJUNK"));
    expect_refused(
        reader.fetch(&format!("http://{addr}/untyped-binary")).await,
        "does not look like text",
    );
}

#[tokio::test]
async fn http_4xx_is_a_rejection_and_is_not_retried() {
    let (addr, state) = start().await;
    let reader = local_reader(|c| c.retries = 2);
    match reader.fetch(&format!("http://{addr}/missing")).await {
        Err(ToolError::Rejected {
            backend, status, ..
        }) => {
            assert_eq!((backend.as_str(), status), ("page", 404));
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(state.hits.get("missing"), 1);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (addr, state) = start().await;
    let page = local_reader(|c| c.retries = 2)
        .fetch(&format!("http://{addr}/flaky"))
        .await
        .unwrap();
    assert_eq!(page.contents, "recovered");
    assert_eq!(state.hits.get("flaky"), 2);
}

#[tokio::test]
async fn redirect_chain_on_allowed_addresses_is_followed() {
    let (addr, state) = start().await;
    let page = local_reader(|_| {})
        .fetch(&format!("http://{addr}/r1"))
        .await
        .unwrap();
    assert_eq!(
        page.url,
        format!("http://{addr}/article"),
        "final URL after two hops"
    );
    assert_eq!(page.title, "Why the Sky Is Blue");
    assert_eq!(state.hits.get("article"), 1);

    // A redirect to a host name goes through the filtering resolver, which keeps 127.0.0.1.
    let page = local_reader(|_| {})
        .fetch(&format!("http://{addr}/to-localhost"))
        .await
        .unwrap();
    assert_eq!(page.url, format!("http://localhost:{}/plain", addr.port()));
    assert!(page.contents.starts_with("Line one"));
}

#[tokio::test]
async fn redirects_to_forbidden_targets_are_refused() {
    let (addr, _) = start().await;
    // Long timeout and retries: a refusal must come at once and never be retried, and the
    // literal addresses must never be connected to.
    let reader = local_reader(|c| {
        c.timeout = Duration::from_secs(20);
        c.retries = 3;
    });
    let t0 = Instant::now();
    let reason = expect_refused(
        reader.fetch(&format!("http://{addr}/to-metadata")).await,
        "169.254.169.254",
    );
    assert!(reason.contains("metadata"), "{reason}");
    assert!(
        reason.contains("redirected to http://169.254.169.254/latest/meta-data"),
        "{reason}"
    );
    expect_refused(
        reader.fetch(&format!("http://{addr}/to-private")).await,
        "address 10.1.2.3 is private",
    );
    expect_refused(
        reader.fetch(&format!("http://{addr}/to-mapped")).await,
        "metadata",
    );
    expect_refused(
        reader.fetch(&format!("http://{addr}/to-file")).await,
        "scheme `file`",
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn default_policy_refuses_loopback_literal_and_resolved() {
    let (addr, state) = start().await;
    let reader = PageReader::new(PageReaderConfig {
        timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .unwrap();
    expect_refused(
        reader
            .fetch(&format!("http://127.0.0.1:{}/plain", addr.port()))
            .await,
        "address 127.0.0.1 is loopback",
    );
    let reason = expect_refused(
        reader
            .fetch(&format!("http://localhost:{}/plain", addr.port()))
            .await,
        "loopback",
    );
    assert!(reason.contains("localhost"), "{reason}");
    assert_eq!(
        state.hits.get("plain"),
        0,
        "no request may reach the server"
    );

    // allow_loopback opens both paths.
    let reader = PageReader::new(PageReaderConfig {
        policy: AddressPolicy {
            allow_loopback: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    reader
        .fetch(&format!("http://127.0.0.1:{}/plain", addr.port()))
        .await
        .unwrap();
    reader
        .fetch(&format!("http://localhost:{}/plain", addr.port()))
        .await
        .unwrap();
    assert_eq!(state.hits.get("plain"), 2);
}

#[tokio::test]
async fn too_many_redirects_are_refused() {
    let (addr, state) = start().await;
    let reader = local_reader(|c| c.max_redirects = 3);
    expect_refused(
        reader.fetch(&format!("http://{addr}/loop/0")).await,
        "too many redirects",
    );
    assert_eq!(
        state.hits.get("loop"),
        4,
        "the first request and three followed hops"
    );

    let reader = local_reader(|c| c.max_redirects = 0);
    expect_refused(
        reader.fetch(&format!("http://{addr}/r1")).await,
        "too many redirects",
    );
}

#[tokio::test]
async fn huge_pages_are_refused() {
    let (addr, state) = start().await;
    let reader = local_reader(|c| c.max_bytes = MIB);
    let t0 = Instant::now();
    expect_refused(
        reader.fetch(&format!("http://{addr}/huge-stream")).await,
        "larger than max_bytes",
    );
    expect_refused(
        reader.fetch(&format!("http://{addr}/huge-len")).await,
        "body of 2097152 bytes is larger than max_bytes",
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Reading stopped early: the server never got to produce the whole 20 MiB.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let streamed = state.streamed.load(Ordering::SeqCst);
    assert!(streamed < 20 * MIB, "server streamed {streamed} bytes");
}

fn gzip_bomb(decompressed: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![b' '; MIB];
    enc.write_all(b"<html><body>").unwrap();
    for _ in 0..decompressed / MIB {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

#[tokio::test]
async fn gzip_bomb_is_refused_quickly() {
    let bomb = gzip_bomb(100 * MIB);
    assert!(bomb.len() < MIB, "compressed bomb is {} bytes", bomb.len());
    let state = AppState {
        bomb: Arc::new(bomb),
        ..Default::default()
    };
    let addr = serve(app(state)).await;
    let reader = local_reader(|c| c.max_bytes = MIB);
    let t0 = Instant::now();
    expect_refused(
        reader.fetch(&format!("http://{addr}/bomb")).await,
        "larger than max_bytes",
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn binary_content_types_are_refused() {
    let (addr, _) = start().await;
    let reader = local_reader(|_| {});
    expect_refused(
        reader.fetch(&format!("http://{addr}/octet")).await,
        "application/octet-stream",
    );
    expect_refused(
        reader.fetch(&format!("http://{addr}/png")).await,
        "image/png",
    );
}

#[tokio::test]
async fn slow_servers_time_out_and_timeouts_are_retried() {
    let (addr, state) = start().await;
    let reader = local_reader(|c| {
        c.timeout = Duration::from_millis(500);
        c.retries = 1;
    });
    let t0 = Instant::now();
    match reader.fetch(&format!("http://{addr}/slow")).await {
        Err(ToolError::Timeout { secs, .. }) => assert!((secs - 0.5).abs() < 1e-9),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(state.hits.get("slow"), 2, "one retry after the timeout");

    // The limit covers the body too.
    let reader = local_reader(|c| {
        c.timeout = Duration::from_millis(500);
        c.retries = 0;
    });
    let t0 = Instant::now();
    assert!(matches!(
        reader.fetch(&format!("http://{addr}/slow-body")).await,
        Err(ToolError::Timeout { .. })
    ));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn jina_mode_uses_the_reader_endpoint() {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let reader_app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let record = record.clone();
        async move {
            let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_string());
            record.lock().unwrap().push((uri.path_and_query().unwrap().to_string(), auth));
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "Title: Example Domain\n\nURL Source: https://example.com/\n\nMarkdown Content:\nThis domain is for use in examples.")
        }
    });
    let addr = serve(reader_app).await;
    // Default address policy: the reader endpoint is trusted configuration, not policed.
    let cfg = |key: Option<&str>| PageReaderConfig {
        mode: ReaderMode::Jina {
            base_url: format!("http://{addr}/"),
            api_key: key.map(String::from),
        },
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let reader = PageReader::new(cfg(Some("test-key"))).unwrap();
    let page = reader
        .fetch("https://example.com/some/page?q=1")
        .await
        .unwrap();
    assert_eq!(page.url, "https://example.com/some/page?q=1");
    assert_eq!(page.title, "Example Domain");
    assert!(page
        .contents
        .ends_with("This domain is for use in examples."));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "/https://example.com/some/page?q=1");
        assert_eq!(seen[0].1.as_deref(), Some("Bearer test-key"));
    }

    let reader = PageReader::new(cfg(None)).unwrap();
    reader.fetch("http://example.org/").await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[1],
        ("/http://example.org/".to_string(), None)
    );

    // The target must still be http(s).
    expect_refused(reader.fetch("file:///etc/passwd").await, "scheme `file`");
    assert_eq!(seen.lock().unwrap().len(), 2);
}
