//! Hybrid retrieval: several search backends (BM25 and dense, typically) fused by weighted
//! reciprocal rank fusion, `score(d) = sum_i w_i / (rrf_k + rank_i(d))` with ranks from 1,
//! over the `depth` best hits of each. Documents are matched by id, so the backends must index
//! the same corpus.

use asearcher_tools::{Document, SearchBackend, ToolError};
use std::collections::HashMap;
use std::sync::Arc;

/// Backends fused by weighted reciprocal rank fusion.
#[derive(Clone)]
pub struct HybridSearch {
    parts: Vec<(Arc<dyn SearchBackend>, f32)>,
    depth: usize,
    rrf_k: f32,
}

impl std::fmt::Debug for HybridSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridSearch")
            .field(
                "parts",
                &self
                    .parts
                    .iter()
                    .map(|(b, w)| (b.name(), *w))
                    .collect::<Vec<_>>(),
            )
            .field("depth", &self.depth)
            .field("rrf_k", &self.rrf_k)
            .finish()
    }
}

impl HybridSearch {
    /// `parts`: backends with their weights (positive); `depth`: hits taken from each (at
    /// least the `k` asked for); `rrf_k`: the rank offset (60 in the RRF paper).
    pub fn new(
        parts: Vec<(Arc<dyn SearchBackend>, f32)>,
        depth: usize,
        rrf_k: f32,
    ) -> asearcher_tools::Result<Self> {
        if parts.len() < 2 {
            return Err(ToolError::config(
                "parts",
                "hybrid search fuses at least two backends",
            ));
        }
        if let Some((b, w)) = parts.iter().find(|(_, w)| !(w.is_finite() && *w > 0.0)) {
            return Err(ToolError::config(
                "weights",
                format!(
                    "the weight of {} must be a positive number, got {w}",
                    b.name()
                ),
            ));
        }
        if !(rrf_k.is_finite() && rrf_k >= 0.0) || depth == 0 {
            return Err(ToolError::config(
                "rrf_k",
                "rrf_k must be a number >= 0 and depth at least 1",
            ));
        }
        Ok(HybridSearch {
            parts,
            depth,
            rrf_k,
        })
    }
}

/// Fuses ranked lists (each best first) with their weights; the `k` best, score = fused score.
pub fn fuse(lists: &[(Vec<Document>, f32)], rrf_k: f32, k: usize) -> Vec<Document> {
    let mut scores: HashMap<&str, f32> = HashMap::new();
    let mut first: Vec<&Document> = Vec::new();
    for (docs, weight) in lists {
        for (rank, d) in docs.iter().enumerate() {
            let s = scores.entry(d.id.as_str()).or_insert_with(|| {
                first.push(d);
                0.0
            });
            *s += weight / (rrf_k + rank as f32 + 1.0);
        }
    }
    // Stable: ties keep the order of first appearance (the first backend's ranking first).
    let mut ranked: Vec<(usize, f32)> = first
        .iter()
        .enumerate()
        .map(|(i, d)| (i, scores[d.id.as_str()]))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(k)
        .map(|(i, s)| Document {
            score: Some(s),
            ..first[i].clone()
        })
        .collect()
}

#[async_trait::async_trait]
impl SearchBackend for HybridSearch {
    fn name(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(b, w)| format!("{}*{w}", b.name()))
            .collect();
        format!(
            "hybrid:rrf{}:d{}:[{}]",
            self.rrf_k,
            self.depth,
            parts.join(",")
        )
    }

    async fn search_batch(
        &self,
        queries: &[String],
        k: usize,
    ) -> asearcher_tools::Result<Vec<Vec<Document>>> {
        let depth = self.depth.max(k);
        let searches = self
            .parts
            .iter()
            .map(|(b, _)| b.search_batch(queries, depth));
        let results = futures::future::join_all(searches)
            .await
            .into_iter()
            .collect::<asearcher_tools::Result<Vec<_>>>()?;
        Ok((0..queries.len())
            .map(|q| {
                let lists: Vec<(Vec<Document>, f32)> = results
                    .iter()
                    .zip(&self.parts)
                    .map(|(r, (_, w))| (r[q].clone(), *w))
                    .collect();
                fuse(&lists, self.rrf_k, k)
            })
            .collect())
    }
}
