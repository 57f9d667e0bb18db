//! Importing a FAISS flat inner-product index (`IndexFlatIP`, as Search-R1 publishes
//! `e5_Flat.index` for its 21M-passage Wikipedia) with the corpus it was built from, so its
//! vectors serve without re-encoding. The file: `IxFI`, d (i32), ntotal (i64), two i64,
//! is_trained (u8), metric (i32), a u64 float count, then the floats (row-major, from byte 45).

use crate::build::{build_id, write_shard_files, BuildOptions, BuildStats, Progress};
use crate::manifest::{corpus_id, file_sha256, io_err, model_id, Manifest};
use crate::{index_err, Result};
use asearcher_tools::corpus::CorpusReader;
use asearcher_tools::Document;
use asearcher_torch::encoder::BertEncoder;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Instant;

const HEADER_BYTES: usize = 45;

/// The shape of a FAISS flat IP file: `(dim, rows)`.
pub fn read_faiss_header(path: &Path) -> Result<(i64, usize)> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = [0u8; HEADER_BYTES];
    f.read_exact(&mut h)
        .map_err(|_| index_err(path, "shorter than a FAISS index header"))?;
    let fourcc = String::from_utf8_lossy(&h[..4]).into_owned();
    if fourcc != "IxFI" {
        let what = match fourcc.as_str() {
            "IxF2" => "an L2 flat index (IndexFlatL2); only inner-product flat indexes \
                       (IndexFlatIP) can be imported"
                .to_string(),
            other => format!("a FAISS index of type {other:?}; only IndexFlatIP can be imported"),
        };
        return Err(index_err(path, what));
    }
    let d = i32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let ntotal = i64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let floats = u64::from_le_bytes(h[37..45].try_into().expect("8 bytes"));
    if d <= 0 || ntotal < 0 || floats != d as u64 * ntotal as u64 {
        return Err(index_err(
            path,
            format!("inconsistent header: d {d}, ntotal {ntotal}, {floats} floats"),
        ));
    }
    let size = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if size < (HEADER_BYTES as u64 + floats * 4) {
        return Err(index_err(
            path,
            format!("truncated: {size} bytes for {ntotal} vectors of {d} floats"),
        ));
    }
    Ok((i64::from(d), ntotal as usize))
}

/// Writes a dense index in `out` from the vectors of `faiss` and the documents of `corpus`
/// (row `i` of the file is passage `i` of the corpus), recorded as made with `encoder` (the
/// model the vectors were encoded with: queries are encoded with it).
pub fn import_faiss_flat(
    faiss: &Path,
    corpus: &Path,
    out: &Path,
    encoder: &BertEncoder,
    options: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuildStats> {
    let started = Instant::now();
    let (dim, rows) = read_faiss_header(faiss)?;
    if dim != encoder.dim() {
        return Err(index_err(
            faiss,
            format!(
                "vectors of {dim} dimensions, but the encoder {} gives {}",
                encoder.dir().display(),
                encoder.dim()
            ),
        ));
    }
    if Manifest::read(out)?.is_some() && !options.overwrite {
        return Err(index_err(
            out,
            "already holds a dense index; pass overwrite to replace it",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let mut manifest = Manifest::fresh(
        model_id(encoder)?,
        dim,
        corpus_id(corpus)?,
        options.shard_rows.max(1),
    );
    manifest.imported_from = Some(format!(
        "faiss:{} sha256 {}",
        faiss.display(),
        file_sha256(faiss)?
    ));
    let file = std::fs::File::open(faiss).map_err(|e| io_err(faiss, e))?;
    let mut vectors = BufReader::with_capacity(1 << 20, file);
    vectors
        .read_exact(&mut [0u8; HEADER_BYTES])
        .map_err(|e| io_err(faiss, e))?;
    let row_bytes = dim as usize * 4;
    let mut reader = CorpusReader::open(corpus, options.on_bad_line)?;
    let mut docs: Vec<Document> = Vec::with_capacity(manifest.shard_rows);
    let mut seen = 0usize;
    let mut flush = |docs: &mut Vec<Document>, manifest: &mut Manifest| -> Result<()> {
        let mut bytes = vec![0u8; docs.len() * row_bytes];
        vectors
            .read_exact(&mut bytes)
            .map_err(|e| io_err(faiss, e))?;
        write_shard_files(out, manifest, docs, &bytes)?;
        docs.clear();
        progress(manifest.rows())
    };
    for doc in reader.by_ref() {
        seen += 1;
        if seen > rows {
            return Err(index_err(
                corpus,
                format!(
                    "more passages than the {rows} vectors of {}",
                    faiss.display()
                ),
            ));
        }
        docs.push(doc?);
        if docs.len() == manifest.shard_rows {
            flush(&mut docs, &mut manifest)?;
        }
    }
    if seen < rows {
        return Err(index_err(
            corpus,
            format!(
                "{seen} passages, but {} holds {rows} vectors",
                faiss.display()
            ),
        ));
    }
    if !docs.is_empty() {
        flush(&mut docs, &mut manifest)?;
    }
    manifest.complete = true;
    manifest.build_id = Some(build_id(&manifest));
    manifest.write(out)?;
    Ok(BuildStats {
        rows: manifest.rows(),
        shards: manifest.shards.len(),
        resumed_shards: 0,
        encoded_rows: 0,
        skipped_lines: reader.skipped(),
        seconds: started.elapsed().as_secs_f64(),
        build_id: manifest.build_id.clone().unwrap_or_default(),
    })
}
