use super::*;
use asearcher_tools::ToolError;
use asearcher_torch::encoder::{write_random_bert, BertEncoder, EncoderOptions, Pooling};
use std::path::Path;
use tch::{Device, Kind};

const WORDS: [&str; 8] = ["the", "glass", "works", "old", "city", "a", "of", "citys"];

fn corpus(path: &Path, n: usize) {
    let mut lines = String::new();
    for i in 0..n {
        let words: Vec<&str> = (0..4).map(|j| WORDS[(i * 7 + j * 3 + i / 5) % 8]).collect();
        let line = serde_json::json!({
            "id": format!("d{i}"), "contents": format!("\"T{i}\"\n{}", words.join(" ")),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

fn encoder(dir: &Path) -> BertEncoder {
    BertEncoder::load(dir, Device::Cpu, Kind::Float, &EncoderOptions::default()).unwrap()
}

/// Builds the index of `corpus` in `out` with `model`, `shard_rows` per shard, no progress.
fn build(corpus: &Path, out: &Path, model: &Path, shard_rows: usize) -> Result<BuildStats> {
    build_index(
        corpus,
        out,
        &encoder(model),
        &options(shard_rows),
        &mut |_| Ok(()),
    )
}

fn options(shard_rows: usize) -> BuildOptions {
    BuildOptions {
        shard_rows,
        batch_size: 4,
        ..BuildOptions::default()
    }
}

#[test]
fn exact_search_equals_brute_force_and_returns_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert");
    write_random_bert(&model, Pooling::Mean, 3).unwrap();
    let corpus_path = tmp.path().join("corpus.jsonl");
    corpus(&corpus_path, 23);
    let out = tmp.path().join("index");
    let stats = build(&corpus_path, &out, &model, 5).unwrap();
    assert_eq!((stats.rows, stats.shards, stats.encoded_rows), (23, 5, 23));
    let index = DenseIndex::open(&out, encoder(&model)).unwrap();
    let queries = vec!["old glass works".to_string(), "city".to_string()];
    let q = index.encode_queries(&queries).unwrap();
    let hits = index.search_vectors(&q, 6).unwrap();
    // Brute force over the passages encoded afresh.
    let texts: Vec<String> = (0..23)
        .map(|i| index.document(i).unwrap().contents())
        .collect();
    let all = encoder(&model)
        .encode(
            &texts,
            asearcher_torch::encoder::TextKind::Passage,
            8,
            &mut |_| Ok(()),
        )
        .unwrap();
    let scores = q.matmul(&all.tr());
    for (r, row_hits) in hits.iter().enumerate() {
        assert_eq!(row_hits.len(), 6);
        for (row, score) in row_hits {
            let want = scores.double_value(&[r as i64, *row as i64]) as f32;
            assert!((want - score).abs() < 1e-5, "{want} vs {score}");
        }
        let (best, _) = scores.get(r as i64).max_dim(0, false);
        assert!((row_hits[0].1 - best.double_value(&[]) as f32).abs() < 1e-5);
        assert!(row_hits.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
    }
    let docs = index.search_batch_blocking(&queries, 3).unwrap();
    assert_eq!(docs[0][0].id, format!("d{}", hits[0][0].0));
    assert!(docs[0][0].title.starts_with('T') && docs[0][0].score.is_some());
    assert!(asearcher_tools::SearchBackend::name(&index).starts_with("local:dense:"));
}

#[test]
fn a_killed_build_resumes_after_its_finished_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert");
    write_random_bert(&model, Pooling::Mean, 3).unwrap();
    let corpus_path = tmp.path().join("corpus.jsonl");
    corpus(&corpus_path, 20);
    let out = tmp.path().join("index");
    // Stop after the second shard (as a kill would, between shards).
    let err = build_index(
        &corpus_path,
        &out,
        &encoder(&model),
        &options(4),
        &mut |n| {
            if n > 8 {
                Err(ToolError::Cancelled {
                    what: "build".into(),
                }
                .into())
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, DenseError::Tool(ToolError::Cancelled { .. })),
        "{err}"
    );
    let partial = Manifest::read(&out).unwrap().unwrap();
    assert_eq!((partial.shards.len(), partial.complete), (2, false));
    let refused = DenseIndex::open(&out, encoder(&model)).unwrap_err();
    assert!(
        refused.to_string().contains("has not finished"),
        "{refused}"
    );
    let stats = build(&corpus_path, &out, &model, 4).unwrap();
    assert_eq!(
        (stats.resumed_shards, stats.encoded_rows, stats.rows),
        (2, 12, 20)
    );
    // The same vectors as a build in one go.
    let fresh = tmp.path().join("fresh");
    build(&corpus_path, &fresh, &model, 4).unwrap();
    let a = Manifest::read(&out).unwrap().unwrap();
    let b = Manifest::read(&fresh).unwrap().unwrap();
    assert_eq!(a.build_id, b.build_id);
    let again = build(&corpus_path, &out, &model, 4).unwrap();
    assert_eq!(again.encoded_rows, 0, "a finished index is not rebuilt");
}

#[test]
fn another_encoder_or_a_changed_corpus_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (m1, m2) = (tmp.path().join("a"), tmp.path().join("b"));
    write_random_bert(&m1, Pooling::Mean, 1).unwrap();
    write_random_bert(&m2, Pooling::Mean, 2).unwrap();
    let corpus_path = tmp.path().join("corpus.jsonl");
    corpus(&corpus_path, 6);
    let out = tmp.path().join("index");
    build(&corpus_path, &out, &m1, 4).unwrap();
    let err = DenseIndex::open(&out, encoder(&m2)).unwrap_err();
    assert!(
        err.to_string().contains("query vectors would not match"),
        "{err}"
    );
    corpus(&corpus_path, 7);
    let err = build(&corpus_path, &out, &m1, 4).unwrap_err();
    assert!(err.to_string().contains("the corpus changed"), "{err}");
    let over = BuildOptions {
        overwrite: true,
        ..options(4)
    };
    let stats = build_index(&corpus_path, &out, &encoder(&m1), &over, &mut |_| Ok(())).unwrap();
    assert_eq!(stats.rows, 7);
    let missing = DenseIndex::open(tmp.path(), encoder(&m1)).unwrap_err();
    assert!(
        missing.to_string().contains("not a dense index"),
        "{missing}"
    );
}

/// A FAISS `IndexFlatIP` file as faiss writes it.
fn faiss_file(path: &Path, fourcc: &[u8; 4], dim: i32, rows: &[Vec<f32>]) {
    let mut b = fourcc.to_vec();
    b.extend(dim.to_le_bytes());
    b.extend((rows.len() as i64).to_le_bytes());
    b.extend(1_048_576i64.to_le_bytes());
    b.extend(1_048_576i64.to_le_bytes());
    b.push(1);
    b.extend(0i32.to_le_bytes());
    b.extend((rows.len() as u64 * dim as u64).to_le_bytes());
    for v in rows.iter().flatten() {
        b.extend(v.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_faiss_flat_index_imports_with_its_corpus_and_searches_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert");
    write_random_bert(&model, Pooling::Mean, 5).unwrap();
    let corpus_path = tmp.path().join("corpus.jsonl");
    corpus(&corpus_path, 11);
    let built = tmp.path().join("built");
    build(&corpus_path, &built, &model, 4).unwrap();
    let index = DenseIndex::open(&built, encoder(&model)).unwrap();
    let texts: Vec<String> = (0..11)
        .map(|i| index.document(i).unwrap().contents())
        .collect();
    let vectors = encoder(&model)
        .encode(
            &texts,
            asearcher_torch::encoder::TextKind::Passage,
            8,
            &mut |_| Ok(()),
        )
        .unwrap();
    let rows: Vec<Vec<f32>> = (0..11)
        .map(|i| Vec::try_from(vectors.get(i)).unwrap())
        .collect();
    let faiss = tmp.path().join("e5_Flat.index");
    faiss_file(&faiss, b"IxFI", 16, &rows);
    let out = tmp.path().join("imported");
    let stats = import_faiss_flat(
        &faiss,
        &corpus_path,
        &out,
        &encoder(&model),
        &options(3),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!((stats.rows, stats.shards, stats.encoded_rows), (11, 4, 0));
    let imported = DenseIndex::open(&out, encoder(&model)).unwrap();
    let queries = vec!["glass city".to_string()];
    let a = index.search_batch_blocking(&queries, 5).unwrap();
    let b = imported.search_batch_blocking(&queries, 5).unwrap();
    assert_eq!(
        a[0].iter().map(|d| &d.id).collect::<Vec<_>>(),
        b[0].iter().map(|d| &d.id).collect::<Vec<_>>()
    );
    assert!(imported
        .manifest()
        .imported_from
        .as_deref()
        .unwrap()
        .starts_with("faiss:"));
    // Mismatches are named.
    let short = tmp.path().join("short.jsonl");
    corpus(&short, 10);
    let err = import_faiss_flat(
        &faiss,
        &short,
        &tmp.path().join("x"),
        &encoder(&model),
        &options(3),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("10 passages, but"), "{err}");
    let l2 = tmp.path().join("l2.index");
    faiss_file(&l2, b"IxF2", 16, &rows);
    let err = read_faiss_header(&l2).unwrap_err();
    assert!(err.to_string().contains("IndexFlatL2"), "{err}");
    let wide = tmp.path().join("wide.index");
    faiss_file(&wide, b"IxFI", 8, &vec![vec![0.0f32; 8]; 11]);
    let err = import_faiss_flat(
        &wide,
        &corpus_path,
        &tmp.path().join("y"),
        &encoder(&model),
        &options(3),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("8 dimensions"), "{err}");
    let again = import_faiss_flat(
        &faiss,
        &corpus_path,
        &out,
        &encoder(&model),
        &options(3),
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        again.to_string().contains("already holds a dense index"),
        "{again}"
    );
}

fn doc(id: &str) -> asearcher_tools::Document {
    asearcher_tools::Document {
        id: id.into(),
        ..Default::default()
    }
}

#[test]
fn reciprocal_rank_fusion_weights_ranks_and_keeps_order_on_ties() {
    let a = vec![doc("x"), doc("y"), doc("z")];
    let b = vec![doc("y"), doc("w")];
    let fused = hybrid::fuse(&[(a.clone(), 1.0), (b.clone(), 1.0)], 60.0, 4);
    let ids: Vec<&str> = fused.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["y", "x", "w", "z"]);
    let want = 1.0 / 62.0 + 1.0 / 61.0;
    assert!((fused[0].score.unwrap() - want).abs() < 1e-7);
    // A heavy second backend wins; equal scores keep the first backend's order.
    let heavy = hybrid::fuse(&[(a.clone(), 1.0), (b, 3.0)], 60.0, 2);
    assert_eq!(heavy[0].id, "y");
    let tie = hybrid::fuse(&[(vec![doc("p")], 1.0), (vec![doc("q")], 1.0)], 60.0, 2);
    assert_eq!([tie[0].id.as_str(), tie[1].id.as_str()], ["p", "q"]);
    let one = HybridSearch::new(Vec::new(), 10, 60.0).unwrap_err();
    assert!(one.to_string().contains("at least two"), "{one}");
}

/// A dense index of `n` random unit vectors (dim 16, the random BERT's width) imported from a
/// FAISS file, over a corpus whose passages share URLs in pairs.
fn random_index(tmp: &Path, model: &Path, n: usize) -> (std::path::PathBuf, Vec<Vec<f32>>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            let v: Vec<f32> = (0..16).map(|_| rng.random::<f32>() - 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    let corpus_path = tmp.join("random.jsonl");
    let lines: String = (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("r{i}"), "contents": format!("\"P{}\"\npart {i}", i / 2),
                               "url": format!("https://x/{}", i / 2)})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&corpus_path, lines).unwrap();
    let faiss = tmp.join("random.index");
    faiss_file(&faiss, b"IxFI", 16, &rows);
    let out = tmp.join("random-index");
    import_faiss_flat(
        &faiss,
        &corpus_path,
        &out,
        &encoder(model),
        &options(700),
        &mut |_| Ok(()),
    )
    .unwrap();
    (out, rows)
}

#[test]
fn hnsw_finds_what_exact_search_finds_and_refuses_a_missing_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert");
    write_random_bert(&model, Pooling::Mean, 5).unwrap();
    let (dir, rows) = random_index(tmp.path(), &model, 2000);
    let err = DenseIndex::open_with(
        &dir,
        encoder(&model),
        SearchMode::Hnsw {
            expansion_search: None,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no HNSW graph"), "{err}");
    let mut seen = 0;
    let info = build_hnsw(&dir, &HnswOptions::default(), &mut |n| {
        seen = n;
        Ok(())
    })
    .unwrap();
    assert_eq!((info.rows, seen), (2000, 2000));
    let exact = DenseIndex::open(&dir, encoder(&model)).unwrap();
    let hnsw = DenseIndex::open_with(
        &dir,
        encoder(&model),
        SearchMode::Hnsw {
            expansion_search: Some(64),
        },
    )
    .unwrap();
    assert_eq!(hnsw.mode(), "hnsw");
    // Queries: 50 stored vectors, slightly perturbed.
    let q: Vec<f32> = rows[..50]
        .iter()
        .flat_map(|v| v.iter().map(|x| x + 0.01))
        .collect();
    let q = tch::Tensor::from_slice(&q).view([50, 16]);
    let a = exact.search_vectors(&q, 10).unwrap();
    let b = hnsw.search_vectors(&q, 10).unwrap();
    let found: usize = a
        .iter()
        .zip(&b)
        .map(|(a, b)| {
            a.iter()
                .filter(|(r, _)| b.iter().any(|(s, _)| s == r))
                .count()
        })
        .sum();
    let recall = found as f64 / 500.0;
    assert!(recall >= 0.95, "recall@10 {recall}");
    // Scores are inner products, as exact search gives them.
    for (ea, hb) in a.iter().zip(&b) {
        for (row, score) in hb {
            if let Some((_, s)) = ea.iter().find(|(r, _)| r == row) {
                assert!((s - score).abs() < 1e-4, "{s} vs {score}");
            }
        }
    }
    // A rebuilt index (fresh manifest) forgets its graph.
    let mut m = Manifest::read(&dir).unwrap().unwrap();
    assert!(m.hnsw.is_some());
    m.hnsw = None;
    m.write(&dir).unwrap();
    assert!(DenseIndex::open_with(
        &dir,
        encoder(&model),
        SearchMode::Hnsw {
            expansion_search: None
        }
    )
    .is_err());
}

#[test]
fn pages_join_the_passages_of_a_url_or_give_one_passage_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bert");
    write_random_bert(&model, Pooling::Mean, 5).unwrap();
    let (dir, _) = random_index(tmp.path(), &model, 10);
    let index = DenseIndex::open(&dir, encoder(&model)).unwrap();
    let page = index.access_blocking("https://x/3").unwrap().unwrap();
    assert_eq!(
        (page.title.as_str(), page.contents.as_str()),
        ("P3", "part 6\n\npart 7")
    );
    let one = index.access_blocking(" r7 ").unwrap().unwrap();
    assert_eq!(one.contents, "part 7");
    assert!(index.access_blocking("https://x/99").unwrap().is_none());
    assert!(index.access_blocking("  ").unwrap().is_none());
}
