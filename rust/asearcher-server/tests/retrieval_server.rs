//! The retrieval server against our own client, over real HTTP on loopback.

use asearcher_server::{RetrievalServer, Retriever, ServerConfig};
use asearcher_tools::backoff::RetryPolicy;
use asearcher_tools::{BuildOptions, LocalIndex, RetrievalClient, RetrievalClientConfig};
use std::sync::Arc;
use std::time::Duration;

fn index(dir: &std::path::Path) -> Arc<LocalIndex> {
    let corpus = dir.join("c.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"id\": \"d{i}\", \"contents\": \"\\\"Topic {i}\\\"\\nPassage number {i} mentions keyword{i} and common words.\", \"url\": \"https://w/T{}\"}}\n",
            i / 2
        ));
    }
    std::fs::write(&corpus, lines).unwrap();
    let out = dir.join("idx");
    LocalIndex::build(
        &corpus,
        &out,
        &BuildOptions {
            threads: 1,
            heap_mb: 32,
            ..Default::default()
        },
        &mut |_, _, _| true,
    )
    .unwrap();
    Arc::new(LocalIndex::open(&out).unwrap())
}

async fn start(index: Arc<LocalIndex>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let server = RetrievalServer::bind(
        Retriever::bm25(index),
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    (format!("http://{addr}"), tx)
}

fn client(endpoints: Vec<String>) -> RetrievalClient {
    RetrievalClient::new(RetrievalClientConfig {
        endpoints,
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            retries: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        },
        max_concurrency: 8,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_the_search_r1_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start(index(dir.path())).await;
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .post(format!("{base}/retrieve"))
        .json(&serde_json::json!({"queries": ["keyword7", "keyword42"], "topk": 2, "return_scores": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &v["result"][0][0];
    assert_eq!(first["document"]["id"], "d7");
    assert!(first["document"]["contents"]
        .as_str()
        .unwrap()
        .starts_with("\"Topic 7\"\n"));
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert_eq!(v["result"][1][0]["document"]["id"], "d42");
    // Without scores, bare documents; null topk uses the default (3).
    let v: serde_json::Value = http
        .post(format!("{base}/retrieve"))
        .json(
            &serde_json::json!({"queries": ["common words"], "topk": null, "return_scores": false}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["result"][0].as_array().unwrap().len(), 3);
    assert!(v["result"][0][0].get("contents").is_some());
    // /access joins the passages of one URL.
    let v: serde_json::Value = http
        .post(format!("{base}/access"))
        .json(&serde_json::json!({"urls": ["https://w/T3", "https://w/none"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = v["result"][0]["contents"].as_str().unwrap();
    assert!(
        page.contains("keyword6") && page.contains("keyword7"),
        "{page}"
    );
    assert!(v["result"][1].is_null());
    let health: serde_json::Value = http
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["docs"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start(index(dir.path())).await;
    let http = reqwest::Client::new();
    for (body, needle) in [
        ("{\"queries\": \"not a list\"}", "malformed request"),
        ("{\"queries\": [\"x\"], \"topk\": 100000}", "exceeds"),
        (
            "{\"queries\": [\"x\"], \"bogus\": 1}",
            "unknown field `bogus`",
        ),
    ] {
        let resp = http
            .post(format!("{base}/retrieve"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{body} -> {text}");
    }
    // A client gets a non-retried rejection naming the status.
    let err = client(vec![base])
        .search_batch(&["x".into()], 100_000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_over_to_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let idx = index(dir.path());
    let (live, _stop) = start(idx.clone()).await;
    let (dead, stop_dead) = start(idx).await;
    drop(stop_dead);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = client(vec![dead.clone(), live]);
    for _ in 0..4 {
        let hits = c.search_batch(&["keyword9".into()], 1).await.unwrap();
        assert_eq!(hits[0][0].id, "d9");
    }
    let all_dead = client(vec![dead]);
    let err = all_dead
        .search_batch(&["keyword9".into()], 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("all retrieval endpoints failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_many_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start(index(dir.path())).await;
    let c = client(vec![base]);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.search_batch(&[format!("keyword{}", i % 200)], 1)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap()[0][0].id, format!("d{}", i % 200));
    }
}
