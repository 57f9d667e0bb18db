//! Search and page-access tools for search agents.
//!
//! - [`LocalIndex`]: an embedded BM25 index (tantivy) over a jsonl corpus, with page lookup.
//! - [`RetrievalClient`]: client for Search-R1/ASearcher retrieval servers (`/retrieve`, `/access`).
//! - [`SerperClient`]: web search over the Serper protocol.
//! - [`PageReader`]: guarded page fetching (SSRF policy, size and time caps) and HTML-to-text.
//! - [`ResultCache`]: an on-disk cache of tool results with an offline replay mode.
//! - [`Toolbox`]: the agent-facing API joining a search backend, a page source and the cache.

pub mod backoff;
pub mod bm25;
pub mod cache;
pub mod corpus;
pub mod doc;
pub mod docstore;
pub mod error;
pub mod page;
pub mod retrieval;
pub mod settings;
pub mod toolbox;
pub mod websearch;

pub use bm25::{BuildOptions, BuildStats, LocalIndex};
pub use cache::{CacheMode, ResultCache};
pub use corpus::{BadLinePolicy, CorpusReader};
pub use doc::{Document, Page};
pub use error::{Result, ToolError};
pub use ipnet::IpNet;
pub use page::{
    chunk_page, html_to_text, AddressPolicy, PageChunking, PageReader, PageReaderConfig, ReaderMode,
};
pub use retrieval::{RetrievalClient, RetrievalClientConfig};
pub use settings::{PageMode, PageReaderSettings, RetrievalSettings, WebSearchSettings};
pub use toolbox::{
    cached_access, cached_search, PageSource, SearchBackend, ToolOutput, Toolbox, ToolboxConfig,
};
pub use websearch::{SerperClient, SerperConfig};
