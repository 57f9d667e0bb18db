//! Tests of the inference clients against real HTTP servers on loopback ([`super::test_servers`]).

use super::openai::{ChatClient, ChatConfig, OpenAiCompletionsServer};
use super::pool::{PoolConfig, ServerPool};
use super::sglang::{parse_generate, SglangServer};
use super::test_servers::{Behaviour, MockServer};
use super::{ChatModel, FinishReason, GenRequest, LlmBackend, SamplingParams, ServerProtocol};
use crate::RolloutError;
use asearcher_tokenizer::ChatMessage;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECS: Duration = Duration::from_secs(10);

fn request(rid: &str, prompt_len: usize, max_new_tokens: u32, affinity: Option<u64>) -> GenRequest {
    GenRequest {
        rid: rid.to_string(),
        affinity,
        input_ids: Arc::new((0..prompt_len as u32).collect()),
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            max_new_tokens,
            stop: vec!["</answer>".into()],
            stop_token_ids: vec![2],
            seed: None,
        },
    }
}

/// The ids and logprobs the test servers produce for positions `from..to`.
fn expected_ids(from: usize, to: usize) -> Vec<u32> {
    (from..to).map(|p| 1000 + p as u32).collect()
}

fn fast_config() -> PoolConfig {
    PoolConfig {
        request_timeout_secs: 10.0,
        backoff_base_ms: 1,
        backoff_max_ms: 20,
        unhealthy_cooldown_secs: 60.0,
        health_check_interval_secs: 0.0,
        ..PoolConfig::default()
    }
}

async fn servers(n: usize, b: Behaviour) -> Vec<MockServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(MockServer::start(b.clone()).await);
    }
    v
}

fn urls(servers: &[MockServer]) -> Vec<String> {
    servers.iter().map(|s| s.url.clone()).collect()
}

// ---------------------------------------------------------------- SGLang protocol

/// The `sampling_params` keys our model server (`asearcher-server` model_server/native.rs,
/// `NativeSampling`, deny_unknown_fields) accepts, and its top-level `/generate` keys.
const NATIVE_SAMPLING_KEYS: &[&str] = &[
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "seed",
    "sampling_seed",
    "n",
    "min_new_tokens",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
];
const NATIVE_BODY_KEYS: &[&str] = &[
    "text",
    "input_ids",
    "sampling_params",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "rid",
    "stream",
];

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn sglang_sends_token_ids_and_parses_output_ids_with_string_version() {
    let mock = MockServer::start(Behaviour::default()).await;
    mock.state.version.store(3, Ordering::SeqCst);
    let server = SglangServer::new(&mock.url, SECS).unwrap();
    let out = server.generate(&request("r1", 5, 16, None)).await.unwrap();
    assert_eq!(out.output_ids, expected_ids(5, 9));
    assert_eq!(out.logprobs, vec![-0.005, -0.006, -0.007, -0.008]);
    assert_eq!(out.versions, Some(vec![3; 4]));
    assert_eq!(out.weight_version, Some(3));
    assert_eq!(out.finish, FinishReason::Stop);

    let body = &mock.bodies()[0];
    assert_eq!(body["input_ids"], json!([0, 1, 2, 3, 4]));
    assert_eq!(body["rid"], "r1");
    assert_eq!(body["return_logprob"], true);
    let sp = &body["sampling_params"];
    assert_eq!(sp["max_new_tokens"], 16);
    assert_eq!(sp["top_k"], -1);
    assert_eq!(sp["stop"], json!(["</answer>"]));
    assert_eq!(sp["stop_token_ids"], json!([2]));
    assert_eq!(sp["skip_special_tokens"], false);
    assert_eq!(sp["no_stop_trim"], true);
    for k in keys(body) {
        assert!(
            NATIVE_BODY_KEYS.contains(&k.as_str()),
            "our model server refuses /generate key {k}"
        );
    }
    for k in keys(sp) {
        assert!(
            NATIVE_SAMPLING_KEYS.contains(&k.as_str()),
            "our model server refuses sampling_params.{k}"
        );
    }
}

#[tokio::test]
async fn request_seeds_reach_sglang_and_openai_bodies_only_when_set() {
    let mock = MockServer::start(Behaviour::default()).await;
    let sglang = SglangServer::new(&mock.url, SECS).unwrap();
    let openai = OpenAiCompletionsServer::new(&mock.url, "policy", None, SECS).unwrap();
    let mut seeded = request("r1", 3, 4, None);
    seeded.sampling.seed = Some(super::request_seed(5, "r1"));
    for req in [&seeded, &request("r2", 3, 4, None)] {
        sglang.generate(req).await.unwrap();
        openai.generate(req).await.unwrap();
    }
    let bodies = mock.bodies();
    let want = json!(super::request_seed(5, "r1"));
    assert_eq!(bodies[0]["sampling_params"]["sampling_seed"], want);
    assert_eq!(bodies[1]["seed"], want);
    assert!(bodies[2]["sampling_params"].get("sampling_seed").is_none());
    assert!(bodies[3].get("seed").is_none());
}

/// `request_seed(0, "q0#0-0")`, computed independently (Python, the same FNV-1a + SplitMix64).
const PINNED_SEED: u64 = 0xa127_19a2_6679_35bb;

#[test]
fn request_seeds_are_stable_and_spread() {
    // Pinned: a change of the hash would silently change every seeded run's samples.
    assert_eq!(super::request_seed(0, "q0#0-0"), PINNED_SEED);
    let seeds: std::collections::HashSet<u64> = (0..1000)
        .flat_map(|i| [0, 1].map(|s| super::request_seed(s, &format!("q{i}#0-0"))))
        .collect();
    assert_eq!(seeds.len(), 2000);
}

#[tokio::test]
async fn sglang_reads_ids_from_logprob_entries_and_int_version() {
    let mock = MockServer::start(Behaviour {
        ids_in_logprobs_only: true,
        version_as_int: true,
        per_token_versions: false,
        tokens: 10,
        ..Behaviour::default()
    })
    .await;
    mock.state.version.store(12, Ordering::SeqCst);
    let server = SglangServer::new(&mock.url, SECS).unwrap();
    let out = server.generate(&request("r", 2, 3, None)).await.unwrap();
    assert_eq!(out.output_ids, expected_ids(2, 5));
    assert_eq!(out.versions, None);
    assert_eq!(out.weight_version, Some(12));
    assert_eq!(out.finish, FinishReason::Length);
}

#[tokio::test]
async fn sglang_length_mismatch_and_garbage_are_protocol_errors_naming_the_server() {
    let mock = MockServer::start(Behaviour {
        extra_logprob: true,
        ..Behaviour::default()
    })
    .await;
    let server = SglangServer::new(&mock.url, SECS).unwrap();
    let err = server
        .generate(&request("r", 2, 8, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RolloutError::Protocol { ref server, .. } if *server == mock.url),
        "{err}"
    );
    assert!(err.to_string().contains("4 output ids but 5"), "{err}");

    mock.set(|b| b.garbage = true);
    let err = server
        .generate(&request("r", 2, 8, None))
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::Protocol { .. }), "{err}");
    assert!(
        err.to_string().contains(&mock.url) && err.to_string().contains("invalid JSON"),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[test]
fn sglang_finish_reason_and_version_shapes() {
    let answer = |finish: Value, version: Value, versions: Value| {
        json!({"output_ids": [7, 8], "meta_info": {
            "finish_reason": finish, "weight_version": version,
            "output_token_versions": versions,
            "output_token_logprobs": [[-0.1, 7, "a"], [-0.2, 8, null]],
        }})
    };
    let ok = parse_generate("s", &answer(json!("length"), json!("default"), Value::Null)).unwrap();
    assert_eq!(ok.finish, FinishReason::Length);
    assert_eq!(
        ok.weight_version, None,
        "SGLang's \"default\" version carries no number"
    );
    assert_eq!(ok.versions, None);
    let ok = parse_generate(
        "s",
        &answer(
            json!({"type": "abort", "message": "x"}),
            json!(4),
            json!([3, 4]),
        ),
    )
    .unwrap();
    assert_eq!(ok.finish, FinishReason::Abort);
    assert_eq!(ok.versions, Some(vec![3, 4]));
    assert_eq!(ok.logprobs, vec![-0.1, -0.2]);

    let err =
        parse_generate("http://s:1", &answer(Value::Null, json!(1), Value::Null)).unwrap_err();
    assert!(
        err.to_string().contains("http://s:1") && err.to_string().contains("finish_reason"),
        "{err}"
    );
    let err =
        parse_generate("s", &answer(json!({"type": "stop"}), json!(1), json!([1]))).unwrap_err();
    assert!(
        err.to_string()
            .contains("2 output ids but 1 meta_info.output_token_versions"),
        "{err}"
    );
    let err = parse_generate(
        "s",
        &answer(json!({"type": "weird"}), json!(1), Value::Null),
    )
    .unwrap_err();
    assert!(err.to_string().contains("weird"), "{err}");
    let mut bad = answer(json!("stop"), json!(1), Value::Null);
    bad["output_ids"] = json!([7, 9]);
    let err = parse_generate("s", &bad).unwrap_err();
    assert!(err.to_string().contains("output_ids[1] is 9"), "{err}");
}

#[tokio::test]
async fn sglang_admin_endpoints() {
    let mock = MockServer::start(Behaviour::default()).await;
    let server = SglangServer::new(&mock.url, SECS).unwrap();
    server.health().await.unwrap();
    server.pause_generation().await.unwrap();
    server.abort("rid-9").await.unwrap();
    assert_eq!(
        *mock.state.aborted.lock().unwrap(),
        vec!["rid-9".to_string()]
    );
    let err = server
        .update_weights_from_disk("/no/such/ckpt", Some(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no checkpoint at /no/such/ckpt"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    server
        .update_weights_from_disk(dir.path().to_str().unwrap(), Some(5))
        .await
        .unwrap();
    assert_eq!(mock.state.version.load(Ordering::SeqCst), 5);
    mock.set(|b| b.health_status = 503);
    let err = server.health().await.unwrap_err();
    assert!(
        matches!(err, RolloutError::Status { status: 503, .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------- OpenAI protocol

/// Keys of `/v1/completions` our model server (model_server/openai.rs, `CompletionBody`) accepts.
const OUR_COMPLETION_KEYS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "logprobs",
    "echo",
    "user",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "n",
    "stream",
    "frequency_penalty",
    "presence_penalty",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "return_tokens_as_token_ids",
    "include_stop_str_in_output",
];

#[tokio::test]
async fn openai_completions_recover_ids_from_token_id_strings_and_field() {
    let mock = MockServer::start(Behaviour::default()).await;
    let server = OpenAiCompletionsServer::new(&mock.url, "policy", None, SECS).unwrap();
    let out = server.generate(&request("r", 3, 2, None)).await.unwrap();
    assert_eq!(out.output_ids, expected_ids(3, 5));
    assert_eq!(out.logprobs, vec![-0.003, -0.004]);
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!((out.versions, out.weight_version), (None, None));
    let body = &mock.bodies()[0];
    assert_eq!(body["prompt"], json!([0, 1, 2]));
    assert_eq!(body["model"], "policy");
    assert_eq!(body["logprobs"], 1);
    assert_eq!(body["return_tokens_as_token_ids"], true);
    assert_eq!(body["include_stop_str_in_output"], true);
    assert_eq!(body["skip_special_tokens"], false);
    let extra: Vec<String> = keys(body)
        .into_iter()
        .filter(|k| !OUR_COMPLETION_KEYS.contains(&k.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "keys our model server would refuse: {extra:?}"
    );

    mock.set(|b| {
        b.token_ids_field = true;
        b.text_tokens = true;
    });
    let out = server.generate(&request("r", 1, 8, None)).await.unwrap();
    assert_eq!(out.output_ids, expected_ids(1, 5));
    assert_eq!(out.finish, FinishReason::Stop);

    mock.set(|b| b.token_ids_field = false);
    let err = server
        .generate(&request("r", 1, 8, None))
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::Protocol { .. }));
    assert!(
        err.to_string().contains("return_tokens_as_token_ids"),
        "{err}"
    );
}

#[tokio::test]
async fn api_key_is_sent_as_bearer_and_never_shown() {
    let var = "ASEARCHER_TEST_KEY_COMPLETIONS";
    std::env::set_var(var, "sk-very-secret-123");
    let mock = MockServer::start(Behaviour::default()).await;
    let server = OpenAiCompletionsServer::new(&mock.url, "m", Some(var), SECS).unwrap();
    server.generate(&request("r", 1, 2, None)).await.unwrap();
    assert_eq!(
        *mock.state.auth_headers.lock().unwrap(),
        vec!["Bearer sk-very-secret-123".to_string()]
    );
    assert!(
        !format!("{server:?}").contains("sk-very-secret"),
        "{server:?}"
    );
    let pool = ServerPool::openai(
        std::slice::from_ref(&mock.url),
        "m",
        Some(var),
        fast_config(),
    )
    .unwrap();
    assert!(!format!("{pool:?}").contains("sk-very-secret"));

    let mut cfg = ChatConfig::new(format!("{}/v1", mock.url), "judge");
    cfg.api_key_env = Some(var.into());
    let chat = ChatClient::new(cfg).unwrap();
    assert!(!format!("{chat:?}").contains("sk-very-secret"), "{chat:?}");
    let reply = chat
        .chat(&[ChatMessage::new("user", "is 2 prime?")], 8, 0.0)
        .await
        .unwrap();
    assert_eq!(reply, "reply to: is 2 prime?");
    assert_eq!(mock.state.auth_headers.lock().unwrap().len(), 2);

    let err =
        OpenAiCompletionsServer::new(&mock.url, "m", Some("ASEARCHER_TEST_KEY_UNSET_X"), SECS)
            .unwrap_err();
    assert!(matches!(err, RolloutError::Config { ref field, .. } if field == "api_key_env"));
    assert!(
        err.to_string().contains("ASEARCHER_TEST_KEY_UNSET_X"),
        "{err}"
    );
}

#[tokio::test]
async fn chat_client_retries_transient_errors_a_bounded_number_of_times() {
    let mock = MockServer::start(Behaviour {
        status: 503,
        status_times: usize::MAX,
        ..Behaviour::default()
    })
    .await;
    let mut cfg = ChatConfig::new(mock.url.clone(), "judge");
    cfg.max_attempts = 3;
    cfg.backoff_base_ms = 1;
    cfg.backoff_max_ms = 5;
    let chat = ChatClient::new(cfg).unwrap();
    let msgs = [ChatMessage::new("user", "hi")];
    let err = chat.chat(&msgs, 8, 0.0).await.unwrap_err();
    assert!(
        matches!(err, RolloutError::Status { status: 503, .. }),
        "{err}"
    );
    assert_eq!(mock.requests(), 3);

    mock.set(|b| b.status_times = 2);
    assert_eq!(chat.chat(&msgs, 8, 0.0).await.unwrap(), "reply to: hi");
    assert_eq!(mock.requests(), 6);

    mock.set(|b| {
        b.status = 400;
        b.status_times = 1;
    });
    let err = chat.chat(&msgs, 8, 0.0).await.unwrap_err();
    assert!(
        matches!(err, RolloutError::Status { status: 400, .. }),
        "{err}"
    );
    assert_eq!(mock.requests(), 7, "4xx is not retried");
    let body = &mock.bodies()[6];
    assert_eq!(
        (body["model"].as_str(), body["max_tokens"].as_u64()),
        (Some("judge"), Some(8))
    );
}

#[tokio::test]
async fn chat_client_times_out() {
    let mock = MockServer::start(Behaviour {
        delay: Duration::from_secs(5),
        ..Behaviour::default()
    })
    .await;
    let mut cfg = ChatConfig::new(mock.url.clone(), "judge");
    cfg.timeout_secs = 0.2;
    cfg.max_attempts = 2;
    cfg.backoff_base_ms = 1;
    let chat = ChatClient::new(cfg).unwrap();
    let t = Instant::now();
    let err = chat
        .chat(&[ChatMessage::new("user", "hi")], 8, 0.0)
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(mock.requests(), 2);
}

#[test]
fn configs_refuse_bad_values_and_unknown_keys() {
    let err = ChatClient::new(ChatConfig::new("localhost:80", "m")).unwrap_err();
    assert!(
        matches!(err, RolloutError::Config { ref field, .. } if field == "base_url"),
        "{err}"
    );
    let err = serde_json::from_value::<PoolConfig>(json!({"max_attempt": 3})).unwrap_err();
    assert!(err.to_string().contains("max_attempt"), "{err}");
    let cfg: PoolConfig = serde_json::from_value(json!({"max_attempts": 3})).unwrap();
    assert_eq!(
        (cfg.max_attempts, cfg.max_resends),
        (3, PoolConfig::default().max_resends)
    );
    let err = ServerPool::sglang(
        &["http://127.0.0.1:1"],
        PoolConfig {
            max_attempts: 0,
            ..PoolConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    for bad in ["not a url", "ftp://host:1", "http://", "http://h:1/?q=1"] {
        let err = ServerPool::sglang(&["http://127.0.0.1:1", bad], fast_config()).unwrap_err();
        assert!(
            matches!(err, RolloutError::Config { ref field, .. } if field == "servers[1]"),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let none: [&str; 0] = [];
    assert!(ServerPool::sglang(&none, fast_config()).is_err());
}

// ---------------------------------------------------------------- pool

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_spreads_concurrent_load_over_servers() {
    let mocks = servers(
        3,
        Behaviour {
            delay: Duration::from_millis(150),
            ..Behaviour::default()
        },
    )
    .await;
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    assert_eq!(pool.describe(), "pool of 3 sglang servers");
    let calls = (0..30).map(|i| pool.generate(request(&format!("r{i}"), 4, 8, None)));
    let outs = futures::future::join_all(calls).await;
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for out in outs {
        let out = out.unwrap();
        assert_eq!(out.output_ids, expected_ids(4, 8));
        *per_server.entry(out.server).or_default() += 1;
    }
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    for m in &mocks {
        let n = m.requests();
        assert!((8..=12).contains(&n), "uneven load: {per_server:?}");
        assert!(m.state.max_in_flight.load(Ordering::SeqCst) >= 8);
    }
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 30);
    assert_eq!(stats.iter().map(|s| s.tokens).sum::<u64>(), 120);
    assert!(stats
        .iter()
        .all(|s| s.healthy && s.in_flight == 0 && s.failures == 0));
    let v = serde_json::to_value(&stats).unwrap();
    assert_eq!(v[0]["address"], json!(stats[0].address));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_trajectories_on_their_server() {
    let mocks = servers(3, Behaviour::default()).await;
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    let mut home: HashMap<u64, String> = HashMap::new();
    for turn in 0..5 {
        let calls = (0..24u64)
            .map(|t| pool.generate(request(&format!("t{t}-{turn}"), 4 + turn, 4, Some(t))));
        for (t, out) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            let server = out.unwrap().server;
            let pinned = home.entry(t as u64).or_insert_with(|| server.clone());
            assert_eq!(*pinned, server, "trajectory {t} moved at turn {turn}");
        }
    }
    let homes: HashSet<&String> = home.values().collect();
    assert_eq!(homes.len(), 3, "trajectories spread over all servers");
    assert_eq!(pool.affinity_len(), 24);
    for t in 0..24 {
        pool.release(t);
    }
    assert_eq!(pool.affinity_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_repins_a_trajectory_whose_server_is_overloaded() {
    let mocks = servers(
        2,
        Behaviour {
            delay: Duration::from_millis(200),
            ..Behaviour::default()
        },
    )
    .await;
    let pool = ServerPool::sglang(
        &urls(&mocks),
        PoolConfig {
            affinity_slack: 1,
            ..fast_config()
        },
    )
    .unwrap();
    let first = pool
        .generate(request("a", 4, 4, Some(7)))
        .await
        .unwrap()
        .server;
    // Three at once: the pin takes two (in flight 0 and 1 vs 0 + slack 1), the third moves.
    let outs = futures::future::join_all(
        (0..3).map(|i| pool.generate(request(&format!("b{i}"), 4, 4, Some(7)))),
    )
    .await;
    let servers: Vec<String> = outs.into_iter().map(|o| o.unwrap().server).collect();
    assert_eq!(servers[0], first);
    assert_eq!(servers[1], first);
    assert_ne!(servers[2], first);
    let after = pool
        .generate(request("c", 4, 4, Some(7)))
        .await
        .unwrap()
        .server;
    assert_eq!(after, servers[2], "the trajectory stays on its new server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_map_of_50000_trajectories_is_freed_on_release() {
    let mocks = servers(
        2,
        Behaviour {
            tokens: 1,
            ..Behaviour::default()
        },
    )
    .await;
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    let mut peaks = Vec::new();
    for round in 0..2u64 {
        let keys: Vec<u64> = (0..50_000).map(|i| round * 1_000_000 + i).collect();
        let outs: Vec<_> = futures::stream::iter(
            keys.iter()
                .map(|&t| pool.generate(request("r", 1, 1, Some(t)))),
        )
        .buffer_unordered(200)
        .collect()
        .await;
        assert!(outs.iter().all(Result::is_ok));
        assert_eq!(pool.affinity_len(), 50_000);
        peaks.push(pool.affinity_capacity());
        for k in keys {
            pool.release(k);
        }
        assert_eq!(pool.affinity_len(), 0);
        assert!(
            pool.affinity_capacity() < 8_000,
            "capacity after release {}",
            pool.affinity_capacity()
        );
    }
    assert!(peaks[1] <= peaks[0] * 11 / 10, "{peaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_fails_over_when_a_server_dies_mid_run() {
    let mocks = servers(
        2,
        Behaviour {
            delay: Duration::from_millis(300),
            ..Behaviour::default()
        },
    )
    .await;
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    let calls = futures::future::join_all(
        (0..40u64).map(|i| pool.generate(request(&format!("r{i}"), 3, 8, Some(i)))),
    );
    let killer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(mocks[0].state.in_flight.load(Ordering::SeqCst) > 0);
        mocks[0].kill();
    };
    let (outs, ()) = tokio::join!(calls, killer);
    assert_eq!(outs.len(), 40);
    for out in outs {
        let out = out.expect("no request lost");
        assert_eq!(out.output_ids, expected_ids(3, 7));
        assert_eq!(out.server, mocks[1].url);
    }
    let stats = pool.stats();
    assert!(!stats[0].healthy && stats[1].healthy);
    assert!(stats[0].failures >= 1 && stats[0].last_error.is_some());
    // New work goes to the survivor while the dead server cools down.
    let out = pool
        .generate(request("later", 3, 8, Some(0)))
        .await
        .unwrap();
    assert_eq!(out.server, mocks[1].url);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let mocks = servers(
        2,
        Behaviour {
            status: 400,
            status_times: usize::MAX,
            ..Behaviour::default()
        },
    )
    .await;
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    let err = pool.generate(request("r", 2, 4, None)).await.unwrap_err();
    assert!(
        matches!(err, RolloutError::Status { status: 400, .. }),
        "{err}"
    );
    assert_eq!(mocks[0].requests() + mocks[1].requests(), 1);
    assert!(pool.stats().iter().all(|s| s.healthy));
}

#[tokio::test]
async fn all_servers_failed_names_every_server() {
    let mocks = servers(
        2,
        Behaviour {
            status: 503,
            status_times: usize::MAX,
            ..Behaviour::default()
        },
    )
    .await;
    let dead = MockServer::start(Behaviour::default()).await;
    let dead_url = dead.url.clone();
    dead.kill();
    drop(dead);
    let mut addresses = urls(&mocks);
    addresses.push(dead_url.clone());
    let pool = ServerPool::sglang(
        &addresses,
        PoolConfig {
            max_attempts: 5,
            ..fast_config()
        },
    )
    .unwrap();
    let err = pool
        .generate(request("r", 2, 4, Some(1)))
        .await
        .unwrap_err();
    let RolloutError::AllServersFailed { attempts } = &err else {
        panic!("{err}")
    };
    let named: HashSet<&str> = attempts.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(named, addresses.iter().map(String::as_str).collect());
    let text = err.to_string();
    assert!(text.contains("503") && text.contains(&dead_url), "{text}");
    let calls = mocks[0].requests() + mocks[1].requests();
    assert!(
        (2..=4).contains(&calls),
        "5 attempts: each server once, then 2 retries: {calls}"
    );
    assert!(pool.stats().iter().all(|s| !s.healthy));
}

#[tokio::test]
async fn unhealthy_server_comes_back_after_a_health_probe() {
    let mocks = servers(2, Behaviour::default()).await;
    mocks[0].set(|b| b.status_times = 1);
    let pool = ServerPool::sglang(&urls(&mocks), fast_config()).unwrap();
    // Affinity to mocks[0] is not guaranteed: make both pick it by failing it first.
    let out = loop {
        let out = pool.generate(request("r", 2, 4, None)).await.unwrap();
        if mocks[0].requests() > 0 {
            break out;
        }
    };
    assert_eq!(out.server, mocks[1].url, "failed over");
    assert!(!pool.stats()[0].healthy);
    pool.check_health().await;
    assert!(pool.stats()[0].healthy);
    mocks[1].set(|b| b.health_status = 500);
    pool.check_health().await;
    let stats = pool.stats();
    assert!(stats[0].healthy && !stats[1].healthy);
    assert_eq!(
        pool.generate(request("r", 2, 4, None))
            .await
            .unwrap()
            .server,
        mocks[0].url
    );
}

#[tokio::test]
async fn background_health_checks_run_and_stop_with_the_pool() {
    let mock = MockServer::start(Behaviour::default()).await;
    let pool = ServerPool::sglang(
        std::slice::from_ref(&mock.url),
        PoolConfig {
            health_check_interval_secs: 0.05,
            ..fast_config()
        },
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = mock.state.health_checks.load(Ordering::SeqCst);
    assert!(seen >= 2, "{seen} probes");
    drop(pool);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = mock.state.health_checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.state.health_checks.load(Ordering::SeqCst), after);
}

#[tokio::test]
async fn aborted_generation_is_resent_and_tokens_keep_their_versions() {
    let mock = MockServer::start(Behaviour {
        tokens: 5,
        aborts: 1,
        abort_after: 3,
        ..Behaviour::default()
    })
    .await;
    mock.state.version.store(4, Ordering::SeqCst);
    let pool = ServerPool::sglang(std::slice::from_ref(&mock.url), fast_config()).unwrap();
    let out = pool
        .generate(request("traj", 6, 10, Some(1)))
        .await
        .unwrap();
    assert_eq!(out.output_ids, expected_ids(6, 14));
    assert_eq!(out.logprobs.len(), 8);
    assert!((out.logprobs[3] - -0.009).abs() < 1e-6);
    assert_eq!(out.versions, vec![4, 4, 4, 5, 5, 5, 5, 5]);
    assert_eq!((out.finish, out.resends), (FinishReason::Stop, 1));
    assert_eq!(pool.version(), 5);
    let bodies = mock.bodies();
    assert_eq!(bodies.len(), 2);
    let resent: Vec<u64> = serde_json::from_value(bodies[1]["input_ids"].clone()).unwrap();
    let mut want: Vec<u64> = (0..6).collect();
    want.extend(expected_ids(6, 9).into_iter().map(u64::from));
    assert_eq!(resent, want);
    assert_eq!(bodies[1]["sampling_params"]["max_new_tokens"], 7);
    assert_ne!(bodies[1]["rid"], bodies[0]["rid"]);
}

#[tokio::test]
async fn resends_are_bounded_and_versions_fall_back() {
    // No per-token versions: the server's weight version covers its tokens.
    let mock = MockServer::start(Behaviour {
        aborts: 100,
        abort_after: 2,
        per_token_versions: false,
        ..Behaviour::default()
    })
    .await;
    let pool = ServerPool::sglang(
        std::slice::from_ref(&mock.url),
        PoolConfig {
            max_resends: 2,
            ..fast_config()
        },
    )
    .unwrap();
    let out = pool.generate(request("r", 1, 50, None)).await.unwrap();
    assert_eq!((out.finish, out.resends), (FinishReason::Abort, 2));
    assert_eq!(out.output_ids, expected_ids(1, 7));
    assert_eq!(out.versions, vec![0, 0, 1, 1, 2, 2]);

    // Aborted before any token (a server pausing for a weight update): re-sent after a pause.
    mock.set(|b| {
        b.aborts = 1;
        b.abort_after = 0;
    });
    let out = pool.generate(request("r", 1, 3, None)).await.unwrap();
    assert_eq!((out.finish, out.resends), (FinishReason::Length, 1));
    assert_eq!(out.output_ids, expected_ids(1, 4));
    let v = mock.state.version.load(Ordering::SeqCst);
    assert_eq!(out.versions, vec![v; 3]);

    // An abort that used up the budget is a length finish, not a re-send.
    mock.set(|b| {
        b.aborts = 1;
        b.abort_after = 4;
    });
    let out = pool.generate(request("r", 1, 4, None)).await.unwrap();
    assert_eq!((out.finish, out.resends), (FinishReason::Length, 0));

    // No version reported at all (OpenAI): the pool's version.
    let oa = MockServer::start(Behaviour::default()).await;
    let pool = ServerPool::openai(std::slice::from_ref(&oa.url), "m", None, fast_config()).unwrap();
    pool.set_version(7);
    let out = pool.generate(request("r", 1, 8, None)).await.unwrap();
    assert_eq!(out.versions, vec![7; 4]);
}

#[tokio::test]
async fn a_server_that_missed_an_update_keeps_its_old_version() {
    // Servers that report no version (OpenAI protocol): the pool tags their tokens with the
    // version it knows each one serves, so a failed update on one server never tags its
    // tokens newer than they are.
    let a = MockServer::start(Behaviour::default()).await;
    let b = MockServer::start(Behaviour::default()).await;
    let urls = [a.url.clone(), b.url.clone()];
    let pool = ServerPool::openai(&urls, "m", None, fast_config()).unwrap();
    pool.set_version(3);
    assert!(pool.set_server_version(&b.url, 4));
    assert!(!pool.set_server_version("http://127.0.0.1:1", 4));
    let mut seen = std::collections::HashMap::new();
    for i in 0..8 {
        let out = pool
            .generate(request(&format!("r{i}"), 1, 8, None))
            .await
            .unwrap();
        seen.insert(out.server.clone(), out.versions.clone());
    }
    assert_eq!(seen.get(&a.url), Some(&vec![3; 4]), "{seen:?}");
    assert_eq!(seen.get(&b.url), Some(&vec![4; 4]), "{seen:?}");
    assert_eq!(pool.version(), 3, "the oldest version served");
    assert_eq!(
        pool.server_versions(),
        vec![(a.url.clone(), 3), (b.url.clone(), 4)]
    );
    // A later sync that reaches every server lines them up again, also servers added later.
    pool.set_version(5);
    let c = MockServer::start(Behaviour::default()).await;
    pool.add_server(Arc::new(
        OpenAiCompletionsServer::new(&c.url, "m", None, SECS).unwrap(),
    ));
    assert!(pool.server_versions().iter().all(|(_, v)| *v == 5));
    assert_eq!(pool.version(), 5);
}

#[tokio::test]
async fn request_timeout_fires_and_aborts_the_request_on_the_server() {
    let mock = MockServer::start(Behaviour {
        delay: Duration::from_secs(5),
        ..Behaviour::default()
    })
    .await;
    let pool = ServerPool::sglang(
        std::slice::from_ref(&mock.url),
        PoolConfig {
            request_timeout_secs: 0.3,
            max_attempts: 2,
            ..fast_config()
        },
    )
    .unwrap();
    let t = Instant::now();
    let err = pool
        .generate(request("slow-1", 2, 4, None))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let RolloutError::AllServersFailed { attempts } = &err else {
        panic!("{err}")
    };
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].1.contains("timed out"), "{err}");
    assert_eq!(mock.requests(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(mock
        .state
        .aborted
        .lock()
        .unwrap()
        .contains(&"slow-1".to_string()));
}

#[tokio::test]
async fn abort_all_reaches_every_request_in_flight() {
    let mock = MockServer::start(Behaviour {
        delay: Duration::from_millis(400),
        ..Behaviour::default()
    })
    .await;
    let pool = ServerPool::sglang(std::slice::from_ref(&mock.url), fast_config()).unwrap();
    let calls = futures::future::join_all(
        (0..3).map(|i| pool.generate(request(&format!("q{i}"), 2, 4, None))),
    );
    let aborter = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.abort_all().await
    };
    let (outs, n) = tokio::join!(calls, aborter);
    assert_eq!(n, 3);
    assert!(outs.iter().all(Result::is_ok));
    let mut aborted = mock.state.aborted.lock().unwrap().clone();
    aborted.sort();
    assert_eq!(aborted, vec!["q0", "q1", "q2"]);
}

#[tokio::test]
async fn servers_can_be_added_and_removed_at_runtime() {
    let a = MockServer::start(Behaviour::default()).await;
    let b = MockServer::start(Behaviour::default()).await;
    let pool = ServerPool::sglang(std::slice::from_ref(&a.url), fast_config()).unwrap();
    assert_eq!(
        pool.generate(request("r", 1, 4, Some(1)))
            .await
            .unwrap()
            .server,
        a.url
    );
    pool.add_server(Arc::new(SglangServer::new(&b.url, SECS).unwrap()));
    assert!(pool.remove_server(&a.url));
    assert!(!pool.remove_server(&a.url));
    assert_eq!(pool.addresses(), vec![b.url.clone()]);
    assert_eq!(
        pool.generate(request("r", 1, 4, Some(1)))
            .await
            .unwrap()
            .server,
        b.url
    );
}

#[tokio::test]
async fn a_dropped_call_is_uncounted_and_aborted_on_the_server() {
    let mock = MockServer::start(Behaviour {
        delay: Duration::from_secs(5),
        ..Behaviour::default()
    })
    .await;
    let pool = ServerPool::sglang(std::slice::from_ref(&mock.url), fast_config()).unwrap();
    let call = pool.generate(request("gone", 2, 4, Some(3)));
    assert!(tokio::time::timeout(Duration::from_millis(150), call)
        .await
        .is_err());
    assert_eq!(pool.stats()[0].in_flight, 0);
    assert_eq!(pool.abort_all().await, 0, "no request left registered");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *mock.state.aborted.lock().unwrap(),
        vec!["gone".to_string()]
    );
}
