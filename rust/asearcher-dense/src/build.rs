//! Building a dense index from a corpus jsonl, streaming, in shards of `shard_rows` passages.
//! Each shard (vectors, documents, offsets) is written to temporary files renamed into place,
//! then recorded in the manifest; a build that was killed continues after its last recorded
//! shard (each one's hash verified), from the same corpus with the same encoder.

use crate::manifest::{corpus_id, hex16, io_err, model_id, CorpusId, Manifest, ModelId, Shard};
use crate::{index_err, Result};
use asearcher_tools::corpus::{BadLinePolicy, CorpusReader};
use asearcher_tools::Document;
use asearcher_torch::encoder::{BertEncoder, TextKind};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Passages per shard (the unit a resumed build skips).
    pub shard_rows: usize,
    /// Passages per encoder forward pass.
    pub batch_size: usize,
    /// Start over even when `out` holds a (partial) index.
    pub overwrite: bool,
    pub on_bad_line: BadLinePolicy,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            shard_rows: 16_384,
            batch_size: 64,
            overwrite: false,
            on_bad_line: BadLinePolicy::Error,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BuildStats {
    pub rows: usize,
    pub shards: usize,
    /// Shards a resumed build found finished and kept.
    pub resumed_shards: usize,
    pub encoded_rows: usize,
    pub skipped_lines: u64,
    pub seconds: f64,
    pub build_id: String,
}

/// Progress: passages indexed so far; an error (Ctrl-C) stops the build after the shard in
/// work is abandoned (finished shards stay).
pub type Progress<'a> = dyn FnMut(usize) -> Result<()> + 'a;

/// Builds (or resumes, or finds finished) the dense index of `corpus` in `out`.
pub fn build_index(
    corpus: &Path,
    out: &Path,
    encoder: &BertEncoder,
    options: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuildStats> {
    let started = Instant::now();
    if options.shard_rows == 0 || options.batch_size == 0 {
        return Err(asearcher_tools::ToolError::config(
            "shard_rows",
            "shard_rows and batch_size must be at least 1",
        )
        .into());
    }
    let model = model_id(encoder)?;
    let cid = corpus_id(corpus)?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let mut manifest = start_manifest(out, &model, &cid, encoder, options)?;
    let resumed = manifest.shards.len();
    let mut stats = BuildStats {
        resumed_shards: resumed,
        ..BuildStats::default()
    };
    if !manifest.complete {
        let mut reader = CorpusReader::open(corpus, options.on_bad_line)?;
        let mut skip = manifest.rows();
        let mut pending: Vec<Document> = Vec::with_capacity(options.shard_rows);
        for doc in reader.by_ref() {
            let doc = doc?;
            if skip > 0 {
                skip -= 1;
                continue;
            }
            pending.push(doc);
            if pending.len() == options.shard_rows {
                let done = manifest.rows();
                write_shard(out, &mut manifest, encoder, options, &pending, &mut |n| {
                    progress(done + n)
                })?;
                stats.encoded_rows += pending.len();
                pending.clear();
            }
        }
        if skip > 0 {
            return Err(index_err(
                out,
                format!("the corpus has {skip} fewer passages than the shards already built"),
            ));
        }
        if !pending.is_empty() {
            let done = manifest.rows();
            write_shard(out, &mut manifest, encoder, options, &pending, &mut |n| {
                progress(done + n)
            })?;
            stats.encoded_rows += pending.len();
        }
        stats.skipped_lines = reader.skipped();
        if manifest.rows() == 0 {
            return Err(index_err(out, format!("{}: no passages", corpus.display())));
        }
        manifest.complete = true;
        manifest.build_id = Some(build_id(&manifest));
        manifest.write(out)?;
        progress(manifest.rows())?;
    }
    stats.rows = manifest.rows();
    stats.shards = manifest.shards.len();
    stats.seconds = started.elapsed().as_secs_f64();
    stats.build_id = manifest.build_id.clone().unwrap_or_default();
    Ok(stats)
}

/// The manifest to continue: a fresh one, or the existing one when it was made from this
/// corpus with this encoder (its finished shards verified).
fn start_manifest(
    out: &Path,
    model: &ModelId,
    cid: &CorpusId,
    encoder: &BertEncoder,
    options: &BuildOptions,
) -> Result<Manifest> {
    let fresh = Manifest::fresh(
        model.clone(),
        encoder.dim(),
        cid.clone(),
        options.shard_rows,
    );
    let existing = match Manifest::read(out)? {
        Some(m) if !options.overwrite => m,
        Some(old) => {
            remove_shards(out, &old);
            return Ok(fresh);
        }
        None => return Ok(fresh),
    };
    if existing.corpus.sha256 != cid.sha256 {
        return Err(index_err(
            out,
            format!(
                "built from another corpus ({}: {} bytes, sha256 {}) than {} ({} bytes, sha256 \
                 {}): the corpus changed since the build; pass overwrite to start over",
                existing.corpus.path,
                existing.corpus.bytes,
                existing.corpus.sha256,
                cid.path,
                cid.bytes,
                cid.sha256
            ),
        ));
    }
    existing.check_model(out, model)?;
    if existing.complete {
        return Ok(existing);
    }
    let mut kept = existing.clone();
    kept.shards.clear();
    for shard in existing.shards {
        let path = out.join(&shard.vectors);
        let ok = path.is_file() && crate::manifest::file_sha256(&path)? == shard.sha256;
        if !ok {
            tracing::warn!(
                shard = shard.vectors,
                "a finished shard is damaged; rebuilding from it"
            );
            break;
        }
        kept.shards.push(shard);
    }
    if kept.shard_rows != options.shard_rows {
        tracing::info!(
            was = kept.shard_rows,
            now = options.shard_rows,
            "resuming with the shard size of the first build"
        );
    }
    kept.write(out)?;
    tracing::info!(
        shards = kept.shards.len(),
        rows = kept.rows(),
        "resuming a dense index build"
    );
    Ok(kept)
}

fn remove_shards(out: &Path, m: &Manifest) {
    for s in &m.shards {
        for f in [&s.vectors, &s.docs, &s.offsets] {
            let _ = std::fs::remove_file(out.join(f));
        }
    }
    let _ = std::fs::remove_file(out.join(crate::manifest::MANIFEST_FILE));
}

/// Encodes `docs` and writes shard `manifest.shards.len()`, then records it.
fn write_shard(
    out: &Path,
    manifest: &mut Manifest,
    encoder: &BertEncoder,
    options: &BuildOptions,
    docs: &[Document],
    progress: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    let texts: Vec<String> = docs.iter().map(Document::contents).collect();
    // The progress error (Ctrl-C) is kept as it is and returned instead of the encoder's.
    let mut stopped = None;
    let mut report = |done: usize| match progress(done) {
        Ok(()) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            stopped = Some(e);
            Err(asearcher_torch::TorchError::config("progress", msg))
        }
    };
    let encoded = encoder.encode(&texts, TextKind::Passage, options.batch_size, &mut report);
    if let Some(e) = stopped {
        return Err(e);
    }
    let vectors = encoded?;
    let flat: Vec<f32> = Vec::try_from(vectors.flatten(0, -1))?;
    let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_shard_files(out, manifest, docs, &bytes)
}

/// Writes shard `manifest.shards.len()` (`vectors`: little-endian float32, row-major, one row
/// per document) and records it in the manifest.
pub(crate) fn write_shard_files(
    out: &Path,
    manifest: &mut Manifest,
    docs: &[Document],
    bytes: &[u8],
) -> Result<()> {
    let n = manifest.shards.len();
    let shard = Shard {
        vectors: format!("vectors-{n:05}.f32"),
        docs: format!("docs-{n:05}.jsonl"),
        offsets: format!("offsets-{n:05}.u64"),
        rows: docs.len(),
        sha256: hex16(&Sha256::digest(bytes)),
    };
    let mut lines = Vec::new();
    let mut offsets = Vec::with_capacity(docs.len() * 8);
    for d in docs {
        offsets.extend_from_slice(&(lines.len() as u64).to_le_bytes());
        serde_json::to_writer(&mut lines, d).expect("a document serialises");
        lines.push(b'\n');
    }
    write_atomic(&out.join(&shard.docs), &lines)?;
    write_atomic(&out.join(&shard.offsets), &offsets)?;
    write_atomic(&out.join(&shard.vectors), bytes)?;
    manifest.shards.push(shard);
    manifest.write(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

pub(crate) fn build_id(m: &Manifest) -> String {
    let mut h = Sha256::new();
    h.update(m.corpus.sha256.as_bytes());
    h.update(m.model.weights_sha256.as_bytes());
    h.update(serde_json::to_string(&m.model.spec).expect("a spec serialises"));
    for s in &m.shards {
        h.update(s.sha256.as_bytes());
    }
    hex16(&h.finalize())
}
