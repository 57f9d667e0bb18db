//! The retrieval server over any search backend (BM25, dense, hybrid). Requests run
//! concurrently (there is no global lock, unlike the original server); with `micro_batch` set,
//! concurrent requests are merged into one search per batch ([`crate::batching`]), which is
//! what a dense backend needs to encode and score many queries at once.

use crate::batching::{BatchStats, MicroBatcher};
use asearcher_tools::{Document, LocalIndex, Page, PageSource, SearchBackend};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Settings of the retrieval server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// `topk` used when a request leaves it out or sends null.
    pub default_topk: usize,
    /// Upper bound on `topk` and on queries per request.
    pub max_topk: usize,
    pub max_queries: usize,
    /// Merge concurrent requests into batches of at most this many queries (0: every request
    /// searches on its own, best for BM25; dense and hybrid backends gain from batching).
    pub micro_batch: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            default_topk: 3,
            max_topk: 100,
            max_queries: 4096,
            micro_batch: 0,
        }
    }
}

/// What a retrieval server serves: a search backend, where `/access` reads pages (none: it
/// answers 404), and a description for `/health`.
#[derive(Clone)]
pub struct Retriever {
    pub search: Arc<dyn SearchBackend>,
    pub pages: Option<Arc<dyn PageSource>>,
    /// `bm25`, `dense`, `hybrid` (shown by `/health`).
    pub mode: String,
    /// Passages searched, when known.
    pub docs: Option<usize>,
}

impl Retriever {
    /// BM25 search and pages over one local index.
    pub fn bm25(index: Arc<LocalIndex>) -> Self {
        Retriever {
            docs: Some(index.num_docs() as usize),
            search: Arc::new(index.clone()),
            pages: Some(Arc::new(index)),
            mode: "bm25".into(),
        }
    }
}

struct AppState {
    search: Arc<dyn SearchBackend>,
    pages: Option<Arc<dyn PageSource>>,
    mode: String,
    docs: Option<usize>,
    batching: Option<Arc<BatchStats>>,
    cfg: ServerConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrieveRequest {
    queries: Vec<String>,
    #[serde(default)]
    topk: Option<usize>,
    #[serde(default)]
    return_scores: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessRequest {
    urls: Vec<String>,
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

fn internal(msg: impl std::fmt::Display) -> Response {
    tracing::error!(error = %msg, "retrieval server error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": msg.to_string()})),
    )
        .into_response()
}

fn doc_json(d: &Document) -> Value {
    json!({"id": d.id, "contents": d.contents(), "title": d.title, "url": d.url})
}

fn page_json(p: &Page) -> Value {
    json!({"url": p.url, "title": p.title, "contents": p.contents})
}

/// Parses a JSON body ourselves so that malformed requests get a 400 with a readable reason.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))
}

async fn retrieve(State(st): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let req: RetrieveRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    let k = req.topk.unwrap_or(st.cfg.default_topk);
    if k > st.cfg.max_topk {
        return bad_request(format!(
            "topk {k} exceeds the server's limit of {}",
            st.cfg.max_topk
        ));
    }
    if req.queries.len() > st.cfg.max_queries {
        return bad_request(format!(
            "{} queries exceed the server's limit of {}",
            req.queries.len(),
            st.cfg.max_queries
        ));
    }
    let hits = match st.search.search_batch(&req.queries, k).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    let result: Vec<Vec<Value>> = hits
        .iter()
        .map(|docs| {
            docs.iter()
                .map(|d| {
                    if req.return_scores {
                        json!({"document": doc_json(d), "score": d.score})
                    } else {
                        doc_json(d)
                    }
                })
                .collect()
        })
        .collect();
    Json(json!({ "result": result })).into_response()
}

async fn access(State(st): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let req: AccessRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(msg) => return bad_request(msg),
    };
    if req.urls.len() > st.cfg.max_queries {
        return bad_request(format!(
            "{} urls exceed the server's limit of {}",
            req.urls.len(),
            st.cfg.max_queries
        ));
    }
    let Some(source) = st.pages.clone() else {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": format!("this {} server has no page source for /access", st.mode)}),
            ),
        )
            .into_response();
    };
    let pages = futures::future::try_join_all(req.urls.iter().map(|u| source.access(u))).await;
    match pages {
        Ok(pages) => {
            let result: Vec<Value> = pages
                .iter()
                .map(|p| p.as_ref().map(page_json).unwrap_or(Value::Null))
                .collect();
            Json(json!({ "result": result })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let mut v = json!({
        "status": "ok",
        "mode": st.mode,
        "backend": st.search.name(),
        "docs": st.docs,
        "pages": st.pages.is_some(),
    });
    if let Some(stats) = &st.batching {
        let (requests, queries, batches) = stats.snapshot();
        v["micro_batch"] = json!({"max_queries": st.cfg.micro_batch, "requests": requests, "queries": queries, "batches": batches});
    }
    Json(v)
}

/// Builds the router (used by [`serve_retrieval`] and by tests). With `cfg.micro_batch` > 0
/// it must be called inside a tokio runtime (the batching worker is spawned there).
pub fn router(retriever: Retriever, cfg: ServerConfig) -> Router {
    let (search, batching) = if cfg.micro_batch > 0 {
        let batcher = MicroBatcher::spawn(retriever.search, cfg.micro_batch);
        let stats = batcher.stats();
        (Arc::new(batcher) as Arc<dyn SearchBackend>, Some(stats))
    } else {
        (retriever.search, None)
    };
    let state = AppState {
        search,
        pages: retriever.pages,
        mode: retriever.mode,
        docs: retriever.docs,
        batching,
        cfg,
    };
    Router::new()
        .route("/retrieve", post(retrieve))
        .route("/access", post(access))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(16 << 20))
        .with_state(Arc::new(state))
}

/// A bound, not yet serving, retrieval server.
pub struct RetrievalServer {
    listener: TcpListener,
    app: Router,
}

impl RetrievalServer {
    /// Binds the listening socket (so the address is known before serving).
    pub async fn bind(retriever: Retriever, cfg: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
        Ok(Self {
            listener,
            app: router(retriever, cfg),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn serve_retrieval(
    retriever: Retriever,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = RetrievalServer::bind(retriever, cfg).await?;
    tracing::info!(addr = %server.local_addr()?, "retrieval server listening");
    server.serve(shutdown).await
}
