//! Micro-batching of searches: concurrent requests are queued, and one worker takes everything
//! queued at the moment it is free (up to a query budget) and runs it as one `search_batch` per
//! distinct `topk`. A dense backend then encodes and scores many requests in one forward pass and
//! one matrix product instead of one each; no request waits for a timer, only for the batch
//! before it.

use asearcher_tools::{Document, Result, SearchBackend, ToolError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<std::result::Result<Vec<Vec<Document>>, String>>;

struct Job {
    queries: Vec<String>,
    k: usize,
    reply: Reply,
}

/// Counters of a [`MicroBatcher`]: how many requests were merged into how many searches.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub requests: AtomicU64,
    pub queries: AtomicU64,
    pub batches: AtomicU64,
}

impl BatchStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.queries.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
        )
    }
}

/// A search backend that merges concurrent calls into batches for the backend it wraps.
/// Must be created inside a tokio runtime (it spawns its worker there).
pub struct MicroBatcher {
    name: String,
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<BatchStats>,
}

impl MicroBatcher {
    /// Wraps `backend`; a batch holds at most `max_queries` queries (a single larger request
    /// still runs, alone).
    pub fn spawn(backend: Arc<dyn SearchBackend>, max_queries: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        let name = backend.name();
        tokio::spawn(run(backend, rx, max_queries.max(1), stats.clone()));
        MicroBatcher { name, tx, stats }
    }

    pub fn stats(&self) -> Arc<BatchStats> {
        self.stats.clone()
    }
}

async fn run(
    backend: Arc<dyn SearchBackend>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_queries: usize,
    stats: Arc<BatchStats>,
) {
    while let Some(first) = rx.recv().await {
        let mut n = first.queries.len();
        let mut jobs = vec![first];
        while n < max_queries {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.queries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats.queries.fetch_add(n as u64, Ordering::Relaxed);
        for group in group_by_k(jobs) {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            search_group(backend.as_ref(), group).await;
        }
    }
}

/// Jobs with the same `topk` together, in order of first arrival.
fn group_by_k(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|g| g[0].k == job.k) {
            Some(g) => g.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

/// One search for the whole group; each job gets its own slice of the results (or the error).
async fn search_group(backend: &dyn SearchBackend, group: Vec<Job>) {
    let k = group[0].k;
    let all: Vec<String> = group.iter().flat_map(|j| j.queries.clone()).collect();
    match backend.search_batch(&all, k).await {
        Ok(hits) if hits.len() == all.len() => {
            let mut hits = hits.into_iter();
            for job in group {
                let mine = hits.by_ref().take(job.queries.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Ok(hits) => reply_all(
            group,
            format!("{} result lists for {} queries", hits.len(), all.len()),
        ),
        Err(e) => reply_all(group, e.to_string()),
    }
}

fn reply_all(group: Vec<Job>, msg: String) {
    for job in group {
        let _ = job.reply.send(Err(msg.clone()));
    }
}

#[async_trait]
impl SearchBackend for MicroBatcher {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
        let fail = |msg: String| ToolError::Backend {
            backend: self.name.clone(),
            url: String::new(),
            msg,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                queries: queries.to_vec(),
                k,
                reply,
            })
            .map_err(|_| fail("the batching worker has stopped".into()))?;
        rx.await
            .map_err(|_| fail("the batching worker dropped the request".into()))?
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers each query with one document whose id is the query; records batch sizes.
    struct Echo {
        sizes: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl SearchBackend for Echo {
        fn name(&self) -> String {
            "echo".into()
        }
        async fn search_batch(&self, queries: &[String], k: usize) -> Result<Vec<Vec<Document>>> {
            self.sizes.lock().unwrap().push(queries.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if queries.iter().any(|q| q == "fail") {
                return Err(ToolError::config("query", "asked to fail"));
            }
            Ok(queries
                .iter()
                .map(|q| {
                    (0..k)
                        .map(|i| Document {
                            id: format!("{q}#{i}"),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_get_their_own_results() {
        let echo = Arc::new(Echo {
            sizes: Mutex::new(Vec::new()),
        });
        let batcher = Arc::new(MicroBatcher::spawn(echo.clone(), 64));
        let calls = (0..40).map(|i| {
            let b = batcher.clone();
            tokio::spawn(async move {
                let k = 1 + i % 2;
                let q = vec![format!("q{i}a"), format!("q{i}b")];
                (i, k, b.search_batch(&q, k).await.unwrap())
            })
        });
        for call in futures::future::join_all(calls).await {
            let (i, k, hits) = call.unwrap();
            assert_eq!(hits.len(), 2);
            assert_eq!(hits[0].len(), k);
            assert_eq!(hits[0][0].id, format!("q{i}a#0"));
            assert_eq!(hits[1][0].id, format!("q{i}b#0"));
        }
        let (requests, queries, batches) = batcher.stats().snapshot();
        assert_eq!((requests, queries), (40, 80));
        assert!(
            batches < 40,
            "{batches} searches for 40 concurrent requests"
        );
        assert!(echo.sizes.lock().unwrap().iter().all(|&n| n <= 64 + 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_reaches_every_request_of_its_batch_and_no_other() {
        let echo = Arc::new(Echo {
            sizes: Mutex::new(Vec::new()),
        });
        let batcher = MicroBatcher::spawn(echo, 64);
        let err = batcher
            .search_batch(&["fail".to_string()], 1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("asked to fail"), "{err}");
        let ok = batcher.search_batch(&["x".to_string()], 1).await.unwrap();
        assert_eq!(ok[0][0].id, "x#0");
    }
}
