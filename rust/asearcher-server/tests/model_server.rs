//! The model server over HTTP on loopback, with a tiny random Qwen2 written by the test and the
//! tokenizer crate's fixture tokenizer: batching equals sequential greedy results, errors name the
//! field, weight updates from disk (good and bad), the OpenAI endpoints.

use asearcher_server::{ModelServer, ModelServerConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const VOCAB: i64 = 300;
const HIDDEN: i64 = 32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../asearcher-tokenizer/tests/data")
        .join(name)
}

/// A random one-layer Qwen2 (HF layout) with the fixture tokenizer.
fn write_tiny_model(dir: &Path, seed: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "eos_token_id": 2, "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(f), dir.join(f)).unwrap();
    }
    tch::manual_seed(seed);
    let rand = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.3;
    let l = "model.layers.0";
    let (q, kv, inter) = (HIDDEN, HIDDEN / 2, 64);
    let tensors: Vec<(String, Tensor)> = vec![
        ("model.embed_tokens.weight".into(), rand(&[VOCAB, HIDDEN])),
        (
            format!("{l}.input_layernorm.weight"),
            Tensor::ones([HIDDEN], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            format!("{l}.post_attention_layernorm.weight"),
            Tensor::ones([HIDDEN], (Kind::Float, tch::Device::Cpu)),
        ),
        (format!("{l}.self_attn.q_proj.weight"), rand(&[q, HIDDEN])),
        (format!("{l}.self_attn.q_proj.bias"), rand(&[q])),
        (format!("{l}.self_attn.k_proj.weight"), rand(&[kv, HIDDEN])),
        (format!("{l}.self_attn.k_proj.bias"), rand(&[kv])),
        (format!("{l}.self_attn.v_proj.weight"), rand(&[kv, HIDDEN])),
        (format!("{l}.self_attn.v_proj.bias"), rand(&[kv])),
        (format!("{l}.self_attn.o_proj.weight"), rand(&[HIDDEN, q])),
        (format!("{l}.mlp.gate_proj.weight"), rand(&[inter, HIDDEN])),
        (format!("{l}.mlp.up_proj.weight"), rand(&[inter, HIDDEN])),
        (format!("{l}.mlp.down_proj.weight"), rand(&[HIDDEN, inter])),
        (
            "model.norm.weight".into(),
            Tensor::ones([HIDDEN], (Kind::Float, tch::Device::Cpu)),
        ),
        ("lm_head.weight".into(), rand(&[VOCAB, HIDDEN]) * 3.0),
    ];
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(dir: &Path) -> Running {
    let mut cfg = ModelServerConfig::new(dir);
    cfg.port = 0;
    cfg.max_running = 4;
    cfg.served_model_name = Some("tiny".into());
    let server = ModelServer::bind(cfg).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Running {
        url,
        stop: Some(tx),
        task,
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn greedy(ids: &[u32], n: usize) -> Value {
    json!({"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": true}, "return_logprob": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (m1, m2) = (tmp.path().join("m1"), tmp.path().join("m2"));
    write_tiny_model(&m1, 1);
    write_tiny_model(&m2, 2);
    let mut srv = start(&m1).await;
    let gen = format!("{}/generate", srv.url);

    // Concurrent batch equals one-by-one greedy results; logprobs and versions line up.
    let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![10, 11], vec![40, 41, 42, 43], vec![9]];
    let mut sequential = Vec::new();
    for p in &prompts {
        let (status, out) = post(&gen, greedy(p, 6)).await;
        assert_eq!(status, 200, "{out}");
        sequential.push(out);
    }
    let (status, batch) = post(
        &gen,
        greedy(&[], 6)
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .map(|(k, v)| {
                if k == "input_ids" {
                    (k, json!(prompts))
                } else {
                    (k, v)
                }
            })
            .collect(),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    for (one, many) in sequential.iter().zip(batch.as_array().unwrap()) {
        assert_eq!(one["output_ids"], many["output_ids"]);
        assert_eq!(one["output_ids"].as_array().unwrap().len(), 6);
        let lps = one["meta_info"]["output_token_logprobs"]
            .as_array()
            .unwrap();
        assert_eq!(lps.len(), 6);
        assert_eq!(lps[0][1], one["output_ids"][0]);
        assert!(lps.iter().all(|e| e[0].as_f64().unwrap() <= 0.0));
        assert_eq!(
            one["meta_info"]["finish_reason"],
            json!({"type": "length", "length": 6})
        );
        assert_eq!(
            one["meta_info"]["output_token_versions"],
            json!([0, 0, 0, 0, 0, 0])
        );
    }

    // Errors name the field; the server keeps serving.
    let (status, err) = post(
        &gen,
        json!({"input_ids": [1], "sampling_params": {"temperature": "hot"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sampling_params.temperature"),
        "{err}"
    );
    let (status, err) = post(&gen, json!({"input_ids": [1], "bogus": 1})).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("bogus"),
        "{err}"
    );
    let (status, err) = post(&gen, json!({"input_ids": [100000]})).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "input_ids");

    // A bad path keeps the old weights; a good one changes outputs and the version.
    let upd = format!("{}/update_weights_from_disk", srv.url);
    let (status, r) = post(&upd, json!({"model_path": tmp.path().join("nope")})).await;
    assert_eq!(status, 400);
    assert_eq!(r["success"], false);
    let (_, again) = post(&gen, greedy(&prompts[0], 6)).await;
    assert_eq!(again["output_ids"], sequential[0]["output_ids"]);
    let (status, r) = post(&upd, json!({"model_path": m2, "weight_version": "7"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["success"], true);
    let (_, after) = post(&gen, greedy(&prompts[0], 6)).await;
    assert_ne!(after["output_ids"], sequential[0]["output_ids"]);
    assert_eq!(after["meta_info"]["weight_version"], "7");

    // OpenAI chat: rendered with the template, usage adds up.
    let (status, chat) = post(
        &format!("{}/v1/chat/completions", srv.url),
        json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{chat}");
    let usage = &chat["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    let (status, err) = post(
        &format!("{}/v1/completions", srv.url),
        json!({"model": "other", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{err}");

    srv.stop.take().unwrap().send(()).unwrap();
    srv.task.await.unwrap().unwrap();
}
