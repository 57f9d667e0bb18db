//! Loopback HTTP tests of the scripted policy server with the bundled sample tokenizer.

use super::*;
use serde_json::json;
use std::time::Duration;

const TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_tokenizer"
);
const QUESTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_questions.jsonl"
);
const STOPS: [&str; 3] = ["</search>", "</access>", "</answer>"];

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_dir(TOKENIZER).expect("sample tokenizer"))
}

async fn start(cfg: ScriptedPolicyConfig) -> (ScriptedPolicyHandle, Arc<Tokenizer>) {
    let tok = tokenizer();
    let h = ScriptedPolicyServer::start(cfg, tok.clone())
        .await
        .expect("server starts");
    (h, tok)
}

fn prompt(question: &str, rest: &str) -> String {
    format!("<|im_start|>user\nAnswer with tags.\nQuestion: {question}\n<|im_end|>\n<|im_start|>assistant\n{rest}")
}

async fn generate(h: &ScriptedPolicyHandle, tok: &Tokenizer, body: Value) -> Value {
    let mut body = body;
    if let Some(p) = body.get("prompt").and_then(Value::as_str) {
        body["input_ids"] = json!(tok.encode(p, false).unwrap());
        body.as_object_mut().unwrap().remove("prompt");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/generate", h.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status}: {v}");
    v
}

#[tokio::test]
async fn searches_then_answers_the_gold_it_saw() {
    let cfg = ScriptedPolicyConfig {
        questions_file: Some(QUESTIONS.into()),
        ..ScriptedPolicyConfig::default()
    };
    let (h, tok) = start(cfg).await;
    let q = "In which city was Grado Rith born?";
    let out = generate(
        &h,
        &tok,
        json!({"prompt": prompt(q, ""), "rid": "a", "return_logprob": true,
               "sampling_params": {"stop": STOPS, "no_stop_trim": true, "max_new_tokens": 200}}),
    )
    .await;
    let text = out["text"].as_str().unwrap();
    assert!(text.ends_with(&format!("<search>{q}</search>")), "{text}");
    let ids: Vec<u32> = serde_json::from_value(out["output_ids"].clone()).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let meta = &out["meta_info"];
    assert_eq!(
        meta["finish_reason"],
        json!({"type": "stop", "matched": "</search>"})
    );
    assert_eq!(meta["completion_tokens"], ids.len());
    let lps = meta["output_token_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), ids.len());
    assert!(lps
        .iter()
        .all(|e| e[0].as_f64().unwrap() < 0.0 && e[2].is_null()));

    let seen = prompt(
        q,
        &format!("{text}\n\n<information>[Doc 1](u):\n\"Grado Rith\"\nGrado Rith was born in Simomora.</information>\n\n"),
    );
    let out = generate(
        &h,
        &tok,
        json!({"prompt": seen, "sampling_params": {"stop": STOPS}}),
    )
    .await;
    let text = out["text"].as_str().unwrap();
    assert!(text.ends_with("<answer>Simomora"), "trimmed stop: {text}");
    assert_eq!(h.stats().searches, 1);
    assert_eq!(h.stats().answers, 1);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_new_tokens_and_stop_token_ids_cut_the_reply() {
    let (h, tok) = start(ScriptedPolicyConfig::default()).await;
    let p = prompt("Who founded Ovassa?", "");
    let out = generate(
        &h,
        &tok,
        json!({"prompt": p, "sampling_params": {"max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(out["output_ids"].as_array().unwrap().len(), 3);
    assert_eq!(out["meta_info"]["finish_reason"]["type"], "length");
    let full = generate(&h, &tok, json!({"prompt": p})).await;
    let third = full["output_ids"][2].as_u64().unwrap();
    let out = generate(
        &h,
        &tok,
        json!({"prompt": p, "sampling_params": {"stop_token_ids": [third]}}),
    )
    .await;
    let ids = out["output_ids"].as_array().unwrap();
    assert_eq!(ids.last().unwrap().as_u64(), Some(third));
    assert_eq!(out["meta_info"]["finish_reason"]["matched"], third);
    assert!(ids.len() <= 3);
}

#[tokio::test]
async fn unknown_sampling_keys_are_named() {
    let (h, tok) = start(ScriptedPolicyConfig::default()).await;
    let r = reqwest::Client::new()
        .post(format!("{}/generate", h.url()))
        .json(
            &json!({"input_ids": tok.encode("Question: q", false).unwrap(),
                      "sampling_params": {"temprature": 1.0}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("temprature") && msg.contains("sampling_params"),
        "{msg}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/generate", h.url()))
        .json(&json!({"input_ids": [1, 2, 999_999]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("input_ids") && msg.contains("999999"), "{msg}");
}

#[tokio::test]
async fn abort_returns_partial_output_and_update_bumps_versions() {
    let cfg = ScriptedPolicyConfig {
        latency_ms: 50.0,
        ms_per_token: 20.0,
        think_tokens: Spread::Fixed(40),
        ..ScriptedPolicyConfig::default()
    };
    let (h, tok) = start(cfg).await;
    let url = h.url();
    let body = json!({"input_ids": tok.encode(&prompt("Where is Koford?", ""), false).unwrap(),
                      "rid": "slow", "sampling_params": {"stop": STOPS}});
    let client = reqwest::Client::new();
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(format!("{url}/generate"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r: Value = client
        .post(format!("{url}/update_weights_from_disk"))
        .json(&json!({"model_path": "/nowhere"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["weight_version"], "1");
    let out = pending.await.unwrap();
    let meta = &out["meta_info"];
    assert_eq!(meta["finish_reason"]["type"], "abort", "{out}");
    let n = out["output_ids"].as_array().unwrap().len();
    assert!(n > 5 && n < 40, "partial output of {n} tokens");
    assert_eq!(meta["output_token_versions"], json!(vec![0; n]));
    assert_eq!(h.stats().aborted, 1);

    // The re-send carries the partial output and finishes the same reply on the new version.
    let mut ids = tok.encode(&prompt("Where is Koford?", ""), false).unwrap();
    ids.extend(
        out["output_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32),
    );
    let fast = json!({"input_ids": ids, "rid": "slow", "sampling_params": {"stop": STOPS, "no_stop_trim": true}});
    let rest = client
        .post(format!("{url}/generate"))
        .json(&fast)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let whole = format!(
        "{}{}",
        out["text"].as_str().unwrap(),
        rest["text"].as_str().unwrap()
    );
    assert_eq!(whole.matches("<think>").count(), 1, "{whole}");
    assert!(
        whole.ends_with("<search>Where is Koford?</search>"),
        "{whole}"
    );
    let versions = rest["meta_info"]["output_token_versions"]
        .as_array()
        .unwrap();
    assert!(!versions.is_empty() && versions.iter().all(|v| v == 1));
}

#[tokio::test]
async fn pause_holds_new_requests_until_continue() {
    let cfg = ScriptedPolicyConfig::default();
    let (h, tok) = start(cfg).await;
    let url = h.url();
    let client = reqwest::Client::new();
    client
        .post(format!("{url}/pause_generation"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let body = json!({"input_ids": tok.encode(&prompt("q?", ""), false).unwrap()});
    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(format!("{url}/generate"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    assert_eq!(h.stats().in_flight, 1);
    assert!(h.stats().paused);
    client
        .post(format!("{url}/continue_generation"))
        .send()
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out["meta_info"]["finish_reason"]["type"], "stop");
}

#[tokio::test]
async fn the_judge_speaks_openai_chat() {
    let (h, _tok) = start(ScriptedPolicyConfig::default()).await;
    let client = reqwest::Client::new();
    let ask = |response: &str| {
        json!({"model": "judge", "temperature": 0.0, "messages": [
            {"role": "system", "content": "You are a judge."},
            {"role": "user", "content": format!("Question: q\nGround truth: Simomora\nResponse: {response}\nReply in JSON.")}]})
    };
    for (response, want) in [("It is simomora.", "correct"), ("Tragrad", "incorrect")] {
        let v: Value = client
            .post(format!("{}/v1/chat/completions", h.url()))
            .json(&ask(response))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "chat.completion");
        let content: Value =
            serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(content["judgement"], want);
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn bad_configs_name_the_field_or_line() {
    let e = ScriptedPolicyConfig::from_json(r#"{"serches": 3}"#).unwrap_err();
    assert!(e.to_string().contains("serches"), "{e}");
    let e = ScriptedPolicyConfig::from_json(r#"{"searches": [5, 2]}"#)
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("searches"), "{e}");
    let cfg =
        ScriptedPolicyConfig::from_json(r#"{"searches": [1, 128], "wrong_rate": 0.25}"#).unwrap();
    assert_eq!(cfg.searches, Spread::Range([1, 128]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.jsonl");
    std::fs::write(
        &path,
        "{\"question\": \"a\", \"answer\": \"b\"}\n{\"question\": \"c\"}\n",
    )
    .unwrap();
    let cfg = ScriptedPolicyConfig {
        questions_file: Some(path.clone()),
        ..ScriptedPolicyConfig::default()
    };
    let e = ScriptedPolicyServer::bind(cfg, tokenizer())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("q.jsonl:2"), "{e}");
}
