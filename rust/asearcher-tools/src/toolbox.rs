//! The agent-facing tool API: `search` and `access` calls as an agent makes them, over any search
//! backend and page source, through the result cache, rendered as the observation text of the
//! ASearcher protocol (`[Doc k](url):` blocks; `>>>> Page n >>>>` chunks).

use crate::cache::{CacheMode, ResultCache};
use crate::page::{chunk_page, PageChunking, PageReader};
use crate::retrieval::RetrievalClient;
use crate::websearch::SerperClient;
use crate::{Document, LocalIndex, Page, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub const NO_RESULTS: &str = "No search results are found.";
pub const EMPTY_PAGE: &str = "No More Information is Found for this URL.";

/// Anything that answers search queries.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    /// A stable name, part of cache keys and fingerprints: an identity, never a path
    /// (`local:bm25:<build id>`, `retrieval`, `serper`).
    fn name(&self) -> String;
    async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>>;
}

/// Anything that turns a URL into a page.
#[async_trait]
pub trait PageSource: Send + Sync {
    fn name(&self) -> String;
    async fn access(&self, url: &str) -> Result<Option<Page>>;
}

#[async_trait]
impl SearchBackend for Arc<LocalIndex> {
    fn name(&self) -> String {
        format!("local:{}", self.identity())
    }
    async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        let (idx, qs) = (self.clone(), queries.to_vec());
        tokio::task::spawn_blocking(move || LocalIndex::search_batch(&idx, &qs, k))
            .await
            .map_err(|e| task_failed("search", e))?
    }
}

#[async_trait]
impl PageSource for Arc<LocalIndex> {
    fn name(&self) -> String {
        format!("local:{}", self.identity())
    }
    async fn access(&self, url: &str) -> Result<Option<Page>> {
        let (idx, url) = (self.clone(), url.to_string());
        tokio::task::spawn_blocking(move || LocalIndex::access(&idx, &url))
            .await
            .map_err(|e| task_failed("access", e))?
    }
}

#[async_trait]
impl SearchBackend for RetrievalClient {
    fn name(&self) -> String {
        "retrieval".into()
    }
    async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        RetrievalClient::search_batch(self, queries, k).await
    }
}

#[async_trait]
impl PageSource for RetrievalClient {
    fn name(&self) -> String {
        "retrieval".into()
    }
    async fn access(&self, url: &str) -> Result<Option<Page>> {
        Ok(self.access_batch(&[url.to_string()]).await?.pop().flatten())
    }
}

#[async_trait]
impl SearchBackend for SerperClient {
    fn name(&self) -> String {
        "serper".into()
    }
    async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        futures::future::try_join_all(queries.iter().map(|q| self.search(q, k))).await
    }
}

#[async_trait]
impl PageSource for PageReader {
    fn name(&self) -> String {
        "web".into()
    }
    async fn access(&self, url: &str) -> Result<Option<Page>> {
        self.fetch(url).await.map(Some)
    }
}

/// Rendering and limits of a [`Toolbox`].
#[derive(Debug, Clone)]
pub struct ToolboxConfig {
    /// Documents per search (5 for training in ASearcher).
    pub top_k: usize,
    /// Characters kept of each document in the observation.
    pub doc_chars: usize,
    pub chunking: PageChunking,
}

impl Default for ToolboxConfig {
    fn default() -> Self {
        Self {
            top_k: 5,
            doc_chars: 5000,
            chunking: PageChunking::default(),
        }
    }
}

/// What one tool call produced: the observation text for the model and the structured data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolOutput {
    pub tool: String,
    pub input: String,
    /// The observation, as it goes inside `<information>`.
    pub text: String,
    #[serde(default)]
    pub docs: Vec<Document>,
    /// Page chunks (access only), without headers.
    #[serde(default)]
    pub chunks: Vec<String>,
    pub cached: bool,
    pub elapsed_ms: f64,
}

/// A search backend, an optional page source and an optional shared cache. Cheap to clone.
#[derive(Clone)]
pub struct Toolbox {
    search: Arc<dyn SearchBackend>,
    pages: Option<Arc<dyn PageSource>>,
    cache: Option<Arc<ResultCache>>,
    cfg: ToolboxConfig,
}

impl Toolbox {
    pub fn new(
        search: Arc<dyn SearchBackend>,
        pages: Option<Arc<dyn PageSource>>,
        cache: Option<Arc<ResultCache>>,
        cfg: ToolboxConfig,
    ) -> Self {
        Self {
            search,
            pages,
            cache,
            cfg,
        }
    }

    pub fn config(&self) -> &ToolboxConfig {
        &self.cfg
    }

    /// What the agent's observations depend on, for fingerprints: the search backend's and
    /// page source's identities and the rendering limits (not the cache: it replays the same).
    pub fn identity(&self) -> serde_json::Value {
        let c = &self.cfg;
        json!({
            "search": self.search.name(),
            "pages": self.pages.as_ref().map(|p| p.name()),
            "top_k": c.top_k,
            "doc_chars": c.doc_chars,
            "page_max_chars": c.chunking.max_chars,
            "chunk_chars": c.chunking.chunk_chars,
            "max_chunks": c.chunking.max_chunks,
        })
    }

    /// Runs many searches (batched into one backend call where nothing is cached).
    pub async fn search_batch(&self, queries: &[String]) -> Result<Vec<ToolOutput>> {
        let started = Instant::now();
        let hits =
            cached_search(&self.search, self.cache.as_deref(), queries, self.cfg.top_k).await?;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(queries
            .iter()
            .zip(hits)
            .map(|(q, (docs, cached))| ToolOutput {
                tool: "search".into(),
                input: q.clone(),
                text: render_search(&docs, self.cfg.doc_chars),
                docs,
                chunks: Vec::new(),
                cached,
                elapsed_ms,
            })
            .collect())
    }

    /// One `<search>` call.
    pub async fn search(&self, query: &str) -> Result<ToolOutput> {
        let mut out = self.search_batch(&[query.to_string()]).await?;
        out.pop()
            .ok_or_else(|| short_answer(&self.search.name(), 1, 0))
    }

    /// One `<access>` call: the page split into chunks, rendered with `>>>> Page n >>>>` headers.
    pub async fn access(&self, url: &str) -> Result<ToolOutput> {
        let started = Instant::now();
        let url = url.trim();
        let Some(source) = self.pages.clone() else {
            return Err(crate::ToolError::config(
                "pages",
                "this toolbox has no page source; <access> is unavailable",
            ));
        };
        let (page, cached) = cached_access(&source, self.cache.as_deref(), url).await?;
        let chunks = page
            .as_ref()
            .map(|p| chunk_page(&p.contents, &self.cfg.chunking))
            .unwrap_or_default();
        Ok(ToolOutput {
            tool: "access".into(),
            input: url.into(),
            text: render_chunks(&chunks),
            docs: Vec::new(),
            chunks,
            cached,
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Searches through the cache: cached queries are served from it, the rest go to the backend in
/// one batch and are stored. Returns each query's documents and whether they came from the cache.
pub async fn cached_search(
    backend: &Arc<dyn SearchBackend>,
    cache: Option<&ResultCache>,
    queries: &[String],
    k: usize,
) -> Result<Vec<(Vec<Document>, bool)>> {
    let Some(cache) = cache else {
        return Ok(checked_search(backend, queries, k)
            .await?
            .into_iter()
            .map(|d| (d, false))
            .collect());
    };
    let name = backend.name();
    let request = |q: &str| json!({"q": q, "k": k});
    let mut out: Vec<Option<(Vec<Document>, bool)>> = queries
        .iter()
        .map(|q| {
            let hit = (cache.mode() != CacheMode::WriteOnly)
                .then(|| cache.get(&name, "search", &request(q)))
                .flatten();
            hit.and_then(|v| serde_json::from_value(v).ok())
                .map(|docs| (docs, true))
        })
        .collect();
    let missing: Vec<usize> = (0..queries.len()).filter(|&i| out[i].is_none()).collect();
    cache.count(queries.len() - missing.len(), missing.len());
    if !missing.is_empty() {
        if cache.mode() == CacheMode::Replay {
            let q = &queries[missing[0]];
            return Err(crate::ToolError::CacheMiss {
                backend: name,
                op: "search".into(),
                key: request(q).to_string(),
            });
        }
        let qs: Vec<String> = missing.iter().map(|&i| queries[i].clone()).collect();
        let fetched = checked_search(backend, &qs, k).await?;
        for (i, docs) in missing.into_iter().zip(fetched) {
            let value = serde_json::to_value(&docs).expect("documents serialise");
            cache.put(&name, "search", &request(&queries[i]), value)?;
            out[i] = Some((docs, false));
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every query answered"))
        .collect())
}

/// A backend's answer, checked to hold one result list per query.
async fn checked_search(
    backend: &Arc<dyn SearchBackend>,
    queries: &[String],
    k: usize,
) -> Result<Vec<Vec<Document>>> {
    let hits = backend.search_batch(queries, k).await?;
    if hits.len() != queries.len() {
        return Err(short_answer(&backend.name(), queries.len(), hits.len()));
    }
    Ok(hits)
}

fn short_answer(backend: &str, asked: usize, got: usize) -> crate::ToolError {
    crate::ToolError::Backend {
        backend: backend.into(),
        url: String::new(),
        msg: format!("asked {asked} queries, got {got} result lists"),
    }
}

fn task_failed(what: &str, e: tokio::task::JoinError) -> crate::ToolError {
    crate::ToolError::Backend {
        backend: "local".into(),
        url: String::new(),
        msg: format!("{what} task failed: {e}"),
    }
}

/// Reads a page through the cache (a missing page, `None`, is cached too).
pub async fn cached_access(
    source: &Arc<dyn PageSource>,
    cache: Option<&ResultCache>,
    url: &str,
) -> Result<(Option<Page>, bool)> {
    match cache {
        Some(c) => {
            let s = source.clone();
            c.get_or_fetch(
                &source.name(),
                "access",
                &json!({"url": url}),
                || async move { s.access(url).await },
            )
            .await
        }
        None => Ok((source.access(url).await?, false)),
    }
}

/// Renders search hits as `[Doc k](url):\n<contents>` blocks, each cut to `doc_chars` characters.
pub fn render_search(docs: &[Document], doc_chars: usize) -> String {
    if docs.is_empty() {
        return NO_RESULTS.into();
    }
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            let link = d.url.clone().unwrap_or_else(|| d.id.clone());
            let body: String = d.contents().chars().take(doc_chars).collect();
            format!("[Doc {}]({link}):\n{body}", i + 1)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Renders page chunks with `>>>> Page n >>>>` headers.
pub fn render_chunks(chunks: &[String]) -> String {
    if chunks.is_empty() {
        return EMPTY_PAGE.into();
    }
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| format!(">>>> Page {} >>>>\n\n{c}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_protocol_text() {
        let d = Document {
            id: "1".into(),
            title: "T".into(),
            text: "x".repeat(10),
            url: Some("https://u".into()),
            score: None,
        };
        assert_eq!(
            render_search(std::slice::from_ref(&d), 6),
            "[Doc 1](https://u):\n\"T\"\nxx"
        );
        assert_eq!(render_search(&[], 6), NO_RESULTS);
        assert_eq!(
            render_chunks(&["a".into(), "b".into()]),
            ">>>> Page 1 >>>>\n\na\n\n>>>> Page 2 >>>>\n\nb"
        );
        assert_eq!(render_chunks(&[]), EMPTY_PAGE);
    }
}
