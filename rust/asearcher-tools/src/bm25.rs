//! The embedded BM25 index: a tantivy index over a jsonl corpus, built streaming and queried
//! concurrently, with page lookup by URL or id for `<access>` on local corpora.
//!
//! Text analysis (the same at build and query time): split on non-alphanumeric characters,
//! drop tokens over 40 bytes, lowercase, remove English stop words, English Snowball stemming.
//! Scoring is tantivy's BM25 (k1 = 1.2, b = 0.75) over one field holding title and text, as
//! Search-R1 scores `contents`. Queries are analysed into terms and OR-ed, so no user text is ever
//! parsed as query syntax. Passages are kept in our own memory-mapped store ([`crate::docstore`]).

use crate::corpus::{BadLinePolicy, CorpusReader};
use crate::docstore::{DocStore, DocStoreWriter};
use crate::{Document, Page, Result, ToolError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, OwnedValue, Schema, TextFieldIndexing, TextOptions, FAST, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocAddress, Index, ReloadPolicy, Searcher, TantivyDocument, Term};

const ANALYZER: &str = "asearcher_en";
const META_FILE: &str = "asearcher_index.json";
const FORMAT_VERSION: u32 = 2;

/// The most passages one page (one URL) joins: a page is for reading, not a corpus dump.
pub const MAX_PAGE_PASSAGES: usize = 1000;

/// Options for [`LocalIndex::build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Indexing threads (default: available cores, at most 8).
    pub threads: usize,
    /// Total memory budget of the indexing threads in MiB (segments are flushed when it fills,
    /// so the corpus may be far larger than memory).
    pub heap_mb: usize,
    pub on_bad_line: BadLinePolicy,
    /// Replace an existing index at the output path.
    pub overwrite: bool,
    /// Merge all segments into one at the end (faster queries, slower build).
    pub merge: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            threads: cores.min(8),
            heap_mb: 512,
            on_bad_line: BadLinePolicy::Error,
            overwrite: false,
            merge: true,
        }
    }
}

/// Counts from a finished build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildStats {
    pub docs: u64,
    pub skipped_lines: u64,
    /// Passages whose id an earlier passage already had (indexed, but a lookup by id finds one
    /// of them only; reported so a corpus with colliding ids is noticed at build time).
    #[serde(default)]
    pub duplicate_ids: u64,
    pub corpus_bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexMeta {
    format_version: u32,
    analyzer: String,
    corpus: String,
    stats: BuildStats,
    /// SHA-256 of the corpus file and the analyzer, written at build time: the index's identity
    /// wherever it is copied (cache keys, fingerprints). Absent in indexes built before it.
    #[serde(default)]
    build_id: Option<String>,
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    url: Field,
    contents: Field,
    ord: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let analysed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING),
        url: b.add_text_field("url", STRING),
        contents: b.add_text_field("contents", analysed),
        ord: b.add_u64_field("ord", FAST),
    };
    (b.build(), fields)
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("english stop words are built in"))
        .filter(Stemmer::new(Language::English))
        .build()
}

fn index_err(path: &Path, e: impl std::fmt::Display) -> ToolError {
    ToolError::Index {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// The first 16 bytes (hex) of the SHA-256 of the analyzer name and the corpus file.
fn build_id(corpus: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(corpus).map_err(|e| ToolError::io(corpus, e))?;
    let mut hasher = Sha256::new();
    hasher.update(ANALYZER.as_bytes());
    hasher.update([0u8]);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ToolError::io(corpus, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// A read-only BM25 index over a corpus, safe to query from many threads at once.
pub struct LocalIndex {
    path: PathBuf,
    searcher: Searcher,
    /// The `ord` column of each segment, by segment ordinal.
    ords: Vec<Column<u64>>,
    store: DocStore,
    analyzer: TextAnalyzer,
    fields: Fields,
    meta: IndexMeta,
}

impl LocalIndex {
    /// Builds an index at `out` from the jsonl corpus at `corpus`. `progress(docs, bytes, total_bytes)`
    /// is called every few thousand documents; returning `false` cancels the build. The index is built in a temporary directory beside
    /// `out` and moved into place only when complete, so a failed build leaves no partial index.
    pub fn build(
        corpus: impl AsRef<Path>,
        out: impl AsRef<Path>,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(u64, u64, u64) -> bool,
    ) -> Result<BuildStats> {
        let (corpus, out) = (corpus.as_ref(), out.as_ref());
        let started = std::time::Instant::now();
        prepare_output(out, opts.overwrite)?;
        let total_bytes = std::fs::metadata(corpus)
            .map_err(|e| ToolError::io(corpus, e))?
            .len();
        let tmp = temp_sibling(out);
        std::fs::create_dir_all(&tmp).map_err(|e| ToolError::io(&tmp, e))?;
        let result = write_index(corpus, &tmp, opts, total_bytes, progress).and_then(
            |(docs, skipped, duplicate_ids)| {
                let stats = BuildStats {
                    docs,
                    skipped_lines: skipped,
                    duplicate_ids,
                    corpus_bytes: total_bytes,
                    seconds: started.elapsed().as_secs_f64(),
                };
                let meta = IndexMeta {
                    format_version: FORMAT_VERSION,
                    analyzer: ANALYZER.into(),
                    corpus: corpus.display().to_string(),
                    stats: stats.clone(),
                    build_id: Some(build_id(corpus)?),
                };
                let json = serde_json::to_vec_pretty(&meta).expect("meta serialises");
                std::fs::write(tmp.join(META_FILE), json)
                    .map_err(|e| ToolError::io(tmp.join(META_FILE), e))?;
                Ok(stats)
            },
        );
        match result {
            Ok(stats) => {
                // Replacing a previous index happens only now that the new one is complete.
                replace_dir(&tmp, out)?;
                tracing::info!(docs = stats.docs, skipped = stats.skipped_lines, secs = stats.seconds, out = %out.display(), "index built");
                Ok(stats)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// Opens an index built by [`LocalIndex::build`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let meta_path = path.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| {
            index_err(
                &path,
                format!("not an asearcher index (cannot read {META_FILE}: {e})"),
            )
        })?;
        let meta: IndexMeta =
            serde_json::from_slice(&meta_bytes).map_err(|e| index_err(&path, e))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(index_err(
                &path,
                format!(
                    "index format {} is not supported (expected {FORMAT_VERSION}); rebuild it",
                    meta.format_version
                ),
            ));
        }
        let index = Index::open_in_dir(&path).map_err(|e| index_err(&path, e))?;
        index.tokenizers().register(ANALYZER, analyzer());
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| index_err(&path, e))?;
        let searcher = reader.searcher();
        let ords = searcher
            .segment_readers()
            .iter()
            .map(|seg| seg.fast_fields().u64("ord"))
            .collect::<tantivy::Result<Vec<_>>>()
            .map_err(|e| index_err(&path, e))?;
        let store = DocStore::open(&path)?;
        Ok(Self {
            path,
            searcher,
            ords,
            store,
            analyzer: analyzer(),
            fields,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index's identity, the same wherever the directory is copied or however its path is
    /// spelled: the build id (a hash of the corpus and analyzer), or for an index built before
    /// build ids, its analyzer and build counts.
    pub fn identity(&self) -> String {
        match &self.meta.build_id {
            Some(id) => format!("bm25:{id}"),
            None => {
                let s = &self.meta.stats;
                format!(
                    "bm25:{}:{}docs:{}bytes",
                    self.meta.analyzer, s.docs, s.corpus_bytes
                )
            }
        }
    }

    /// Whether this index was built from `corpus` as it is now (same bytes, same analyzer).
    pub fn built_from(&self, corpus: &Path) -> Result<bool> {
        Ok(self.meta.build_id.as_deref() == Some(build_id(corpus)?.as_str()))
    }

    /// Number of passages in the index.
    pub fn num_docs(&self) -> u64 {
        self.searcher.num_docs()
    }

    pub fn build_stats(&self) -> &BuildStats {
        &self.meta.stats
    }

    fn query_for(&self, text: &str) -> BooleanQuery {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        while stream.advance() {
            let term = Term::from_field_text(self.fields.contents, &stream.token().text);
            clauses.push((
                Occur::Should,
                Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
            ));
        }
        BooleanQuery::new(clauses)
    }

    /// The top `k` passages for `query`, best first, with BM25 scores.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Document>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let q = self.query_for(query);
        let hits = self
            .searcher
            .search(&q, &TopDocs::with_limit(k).order_by_score())
            .map_err(|e| index_err(&self.path, e))?;
        hits.into_iter()
            .map(|(score, addr)| {
                self.load(addr).map(|d| Document {
                    score: Some(score),
                    ..d
                })
            })
            .collect()
    }

    /// Searches many queries in parallel (rayon); results are in query order.
    pub fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        queries.par_iter().map(|q| self.search(q, k)).collect()
    }

    fn ord_of(&self, addr: DocAddress) -> Result<u64> {
        self.ords
            .get(addr.segment_ord as usize)
            .and_then(|col| col.first(addr.doc_id))
            .ok_or_else(|| index_err(&self.path, format!("no ordinal for {addr:?}")))
    }

    fn load(&self, addr: DocAddress) -> Result<Document> {
        self.store.get(self.ord_of(addr)?)
    }

    fn all_matching(&self, field: Field, value: &str) -> Result<Vec<Document>> {
        let q = TermQuery::new(
            Term::from_field_text(field, value),
            IndexRecordOption::Basic,
        );
        let addrs = self
            .searcher
            .search(&q, &DocSetCollector)
            .map_err(|e| index_err(&self.path, e))?;
        let mut ords = addrs
            .into_iter()
            .map(|a| self.ord_of(a))
            .collect::<Result<Vec<_>>>()?;
        ords.sort_unstable();
        ords.truncate(MAX_PAGE_PASSAGES);
        ords.into_iter().map(|o| self.store.get(o)).collect()
    }

    /// The passage with this id, if any.
    pub fn get(&self, id: &str) -> Result<Option<Document>> {
        Ok(self.all_matching(self.fields.id, id)?.into_iter().next())
    }

    /// The page at `url_or_id`: the passages sharing that URL joined in corpus order (at most
    /// [`MAX_PAGE_PASSAGES`]), or else the passage with that id. `None` when neither exists or
    /// the input is blank.
    pub fn access(&self, url_or_id: &str) -> Result<Option<Page>> {
        let url_or_id = url_or_id.trim();
        if url_or_id.is_empty() {
            return Ok(None);
        }
        let mut docs = self.all_matching(self.fields.url, url_or_id)?;
        if docs.is_empty() {
            docs = self.all_matching(self.fields.id, url_or_id)?;
        }
        let Some(first) = docs.first() else {
            return Ok(None);
        };
        let title = first.title.clone();
        let url = first.url.clone().unwrap_or_else(|| url_or_id.to_string());
        let contents = docs
            .iter()
            .map(|d| d.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        Ok(Some(Page {
            url,
            title,
            contents,
        }))
    }
}

fn prepare_output(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let is_empty_dir = out.is_dir()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if is_empty_dir || (overwrite && out.join(META_FILE).exists()) {
        return Ok(());
    }
    let why = if out.join(META_FILE).exists() {
        "an index already exists there (pass overwrite to replace it)"
    } else {
        "the path exists and is not an empty directory or an asearcher index; refusing to replace it"
    };
    Err(ToolError::config(
        "out",
        format!("{}: {why}", out.display()),
    ))
}

/// Moves the finished index at `tmp` to `out`; an old index there is moved aside first and
/// removed only once the new one is in place (restored if the move fails).
fn replace_dir(tmp: &Path, out: &Path) -> Result<()> {
    let old = out
        .exists()
        .then(|| temp_sibling(out).with_extension("old"));
    if let Some(old) = &old {
        std::fs::rename(out, old).map_err(|e| ToolError::io(out, e))?;
    }
    if let Err(e) = std::fs::rename(tmp, out) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, out);
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(ToolError::io(out, e));
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

fn temp_sibling(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "index".into());
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    out.with_file_name(format!(".{name}.building-{}-{n}", std::process::id()))
}

fn write_index(
    corpus: &Path,
    dir: &Path,
    opts: &BuildOptions,
    total_bytes: u64,
    progress: &mut dyn FnMut(u64, u64, u64) -> bool,
) -> Result<(u64, u64, u64)> {
    let (schema, f) = schema();
    let index = Index::create_in_dir(dir, schema).map_err(|e| index_err(dir, e))?;
    index.tokenizers().register(ANALYZER, analyzer());
    let threads = opts.threads.max(1);
    let heap = (opts.heap_mb << 20).max((threads * 16) << 20);
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(threads, heap)
        .map_err(|e| index_err(dir, e))?;
    let mut reader = CorpusReader::open(corpus, opts.on_bad_line)?;
    let mut store = DocStoreWriter::create(dir)?;
    let mut docs = 0u64;
    let mut ids = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    while let Some(doc) = reader.next() {
        let doc = doc?;
        if !ids.insert(id_hash(&doc.id)) {
            duplicates += 1;
            if duplicates <= 3 {
                tracing::warn!(id = %doc.id, corpus = %corpus.display(), "duplicate passage id (counted in the build stats' duplicate_ids)");
            }
        }
        let ord = store.add(&doc)?;
        let mut td = TantivyDocument::default();
        td.add_text(f.id, &doc.id);
        if let Some(url) = doc.url.as_deref().filter(|u| !u.is_empty()) {
            td.add_text(f.url, url);
        }
        td.add_text(f.contents, format!("{}\n{}", doc.title, doc.text));
        td.add_field_value(f.ord, &OwnedValue::U64(ord));
        writer.add_document(td).map_err(|e| index_err(dir, e))?;
        docs += 1;
        if docs % 8192 == 0 && !progress(docs, reader.bytes_read(), total_bytes) {
            return Err(ToolError::Cancelled {
                what: "index build".into(),
            });
        }
    }
    store.finish()?;
    writer.commit().map_err(|e| index_err(dir, e))?;
    if opts.merge {
        let ids = index
            .searchable_segment_ids()
            .map_err(|e| index_err(dir, e))?;
        if ids.len() > 1 {
            writer.merge(&ids).wait().map_err(|e| index_err(dir, e))?;
        }
    }
    writer
        .wait_merging_threads()
        .map_err(|e| index_err(dir, e))?;
    progress(docs, total_bytes, total_bytes);
    if duplicates > 0 {
        tracing::warn!(duplicates, corpus = %corpus.display(), "passage ids occur more than once");
    }
    Ok((docs, reader.skipped(), duplicates))
}

/// A 64-bit hash of a passage id (8 bytes per passage to find duplicates in a 21M corpus).
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample_corpus(dir: &Path) -> PathBuf {
        let p = dir.join("corpus.jsonl");
        let mut f = std::fs::File::create(&p).unwrap();
        let lines = [
            r#"{"id": "p1", "contents": "\"Paris\"\nParis is the capital of France.", "url": "https://w/Paris"}"#,
            r#"{"id": "p2", "contents": "\"Paris\"\nThe Seine flows through Paris.", "url": "https://w/Paris"}"#,
            r#"{"id": "r1", "title": "Rome", "text": "Rome is the capital of Italy and home of the Colosseum."}"#,
            r#"{"id": "b1", "contents": "\"Berlin\"\nBerlin is the capital of Germany."}"#,
        ];
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        p
    }

    fn built(dir: &Path) -> LocalIndex {
        let corpus = sample_corpus(dir);
        let out = dir.join("idx");
        let opts = BuildOptions {
            threads: 1,
            heap_mb: 32,
            ..Default::default()
        };
        let stats = LocalIndex::build(&corpus, &out, &opts, &mut |_, _, _| true).unwrap();
        assert_eq!(stats.docs, 4);
        LocalIndex::open(&out).unwrap()
    }

    #[test]
    fn ranks_the_relevant_passage_first() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = built(tmp.path());
        let hits = idx.search("Colosseum in Italy?", 3).unwrap();
        assert_eq!(hits[0].id, "r1");
        assert!(hits[0].score.unwrap() > 0.0);
        // Stemming: "flowing" matches "flows".
        assert_eq!(idx.search("river flowing", 1).unwrap()[0].id, "p2");
        // Query syntax characters are plain text, not errors.
        assert!(idx
            .search("capital: \"France\" AND (+-", 2)
            .unwrap()
            .iter()
            .any(|d| d.id == "p1"));
        assert!(
            idx.search("the of and", 5).unwrap().is_empty(),
            "stop words alone match nothing"
        );
    }

    #[test]
    fn batch_matches_single_queries() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = built(tmp.path());
        let qs: Vec<String> = ["capital of Germany", "Seine", "nothing-matches-this"]
            .map(String::from)
            .to_vec();
        let batch = idx.search_batch(&qs, 2).unwrap();
        for (q, b) in qs.iter().zip(&batch) {
            assert_eq!(&idx.search(q, 2).unwrap(), b);
        }
        assert!(batch[2].is_empty());
    }

    #[test]
    fn access_joins_passages_of_a_url_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = built(tmp.path());
        let page = idx.access("https://w/Paris").unwrap().unwrap();
        assert_eq!(page.title, "Paris");
        assert_eq!(
            page.contents,
            "Paris is the capital of France.\n\nThe Seine flows through Paris."
        );
        assert_eq!(
            idx.access("b1").unwrap().unwrap().contents,
            "Berlin is the capital of Germany."
        );
        assert!(idx.access("https://w/Nowhere").unwrap().is_none());
        // Passages without a URL do not form a page; a blank request is no page at all.
        for blank in ["", "   "] {
            assert!(idx.access(blank).unwrap().is_none(), "{blank:?}");
        }
        assert_eq!(idx.get("r1").unwrap().unwrap().title, "Rome");
    }

    #[test]
    fn bad_corpus_leaves_no_partial_index() {
        let tmp = tempfile::tempdir().unwrap();
        let corpus = tmp.path().join("bad.jsonl");
        std::fs::write(&corpus, "{\"id\": \"a\", \"contents\": \"ok\"}\n{broken\n").unwrap();
        let out = tmp.path().join("idx");
        let err = LocalIndex::build(
            &corpus,
            &out,
            &BuildOptions {
                threads: 1,
                ..Default::default()
            },
            &mut |_, _, _| true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad.jsonl:2:"), "{err}");
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "temporary build dir removed"
        );
        let opts = BuildOptions {
            threads: 1,
            on_bad_line: BadLinePolicy::Skip,
            ..Default::default()
        };
        let stats = LocalIndex::build(&corpus, &out, &opts, &mut |_, _, _| true).unwrap();
        assert_eq!((stats.docs, stats.skipped_lines), (1, 1));
    }

    #[test]
    fn refuses_to_clobber_and_reports_non_index() {
        let tmp = tempfile::tempdir().unwrap();
        let _idx = built(tmp.path());
        let corpus = tmp.path().join("corpus.jsonl");
        let err = LocalIndex::build(
            &corpus,
            tmp.path().join("idx"),
            &BuildOptions::default(),
            &mut |_, _, _| true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = LocalIndex::open(tmp.path()).err().unwrap();
        assert!(err.to_string().contains("not an asearcher index"), "{err}");
    }
}
