use super::*;
use serde_json::json;
use std::fs;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A copy of the fixture whose tokenizer_config.json is `config` (or the fixture's when None).
fn model_dir(config: Option<Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let cfg = match config {
        Some(c) => serde_json::to_string(&c).unwrap(),
        None => fs::read_to_string(fixture_dir().join("tokenizer_config.json")).unwrap(),
    };
    fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
    dir
}

#[test]
fn encode_decode_round_trips_unicode_and_special_tokens() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    for text in [
        "The Glass River flows.",
        "naïve café — 東京 🚀",
        "<|im_start|>user\nhi<|im_end|>",
        "",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let ids = tok.encode("a<|im_end|>", false).unwrap();
    assert_eq!(*ids.last().unwrap(), im_end);
    assert_eq!(tok.decode(&ids, true).unwrap(), "a");
    assert_eq!(tok.eos_token_ids(), &[im_end]);
    assert_eq!(tok.vocab_size(), 300);
    let err = tok.decode(&[100_000], false).unwrap_err().to_string();
    assert!(err.contains("100000") && err.contains("ids"), "{err}");
}

#[test]
fn chatml_template_renders_messages_and_generation_prompt() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi?"),
    ];
    let opts = ChatOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let text = tok.apply_chat_template(&msgs, &opts).unwrap();
    let want: String = msgs
        .iter()
        .map(|m| {
            format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m.role,
                m.content.as_deref().unwrap()
            )
        })
        .collect::<String>()
        + "<|im_start|>assistant\n";
    assert_eq!(text, want);
    let ids = tok.encode_chat(&msgs, &opts).unwrap();
    assert_eq!(ids, tok.encode(&want, false).unwrap());
    let err = tok.apply_chat_template(&json!([]), &opts).unwrap_err();
    assert!(err.to_string().contains("messages"), "{err}");
    let err = tok.apply_chat_template(&json!(["hi"]), &opts).unwrap_err();
    assert!(err.to_string().contains("message 0"), "{err}");
}

#[test]
fn named_templates_tools_special_tokens_and_extra_context() {
    let dir = model_dir(Some(json!({
        "eos_token": {"content": "<|im_end|>", "special": true},
        "bos_token": "<|endoftext|>",
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}D{{ messages|length }}{% if enable_thinking is false %}!{% endif %}"},
            {"name": "tool_use", "template": "T{{ tools[0] | tojson }}"}
        ]
    })));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template_names(), ["default", "tool_use"]);
    let msgs = [ChatMessage::new("user", "x")];
    let mut opts = ChatOptions::default();
    assert_eq!(
        tok.apply_chat_template(&msgs, &opts).unwrap(),
        "<|endoftext|>D1"
    );
    opts.extra.insert("enable_thinking".into(), json!(false));
    assert_eq!(
        tok.apply_chat_template(&msgs, &opts).unwrap(),
        "<|endoftext|>D1!"
    );
    opts.tools = Some(vec![json!({"name": "search", "b": 1, "a": [1.5]})]);
    assert_eq!(
        tok.apply_chat_template(&msgs, &opts).unwrap(),
        "T{\"name\": \"search\", \"b\": 1, \"a\": [1.5]}"
    );
    opts.template = Some("nope".into());
    let err = tok
        .apply_chat_template(&msgs, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("tool_use"), "{err}");
}

#[test]
fn null_fields_are_dropped_and_reasoning_is_aliased() {
    let dir = model_dir(Some(json!({
        "chat_template": "{% for m in messages %}{{ m.content is defined }}|{{ m.reasoning_content }}|{{ m.thinking }};{% endfor %}"
    })));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let msgs = json!([{"role": "assistant", "content": null, "reasoning": "r1"}, {"role": "user", "content": "u"}]);
    let out = tok
        .apply_chat_template(&msgs, &ChatOptions::default())
        .unwrap();
    assert_eq!(out, "False|r1|r1;True||;");
}

#[test]
fn errors_name_the_file_and_problem() {
    let empty = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(empty.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("missing"),
        "{err}"
    );

    let dir = model_dir(None);
    fs::write(dir.path().join("tokenizer_config.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("bad JSON"),
        "{err}"
    );

    let dir = model_dir(Some(json!({"chat_template": "ok\nstill ok\n{% for %}"})));
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("line 3"),
        "{err}"
    );

    let dir = model_dir(None);
    fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not a valid"),
        "{err}"
    );

    let dir = model_dir(Some(json!({"eos_token": 5})));
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("eos_token"), "{err}");
}

#[test]
fn generation_config_eos_ids_come_first() {
    let dir = model_dir(None);
    fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [0, 1]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(tok.eos_token_ids(), &[0, 1, im_end]);
    fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": "x"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("generation_config.json"), "{err}");
}

#[test]
fn added_tokens_decoder_adds_missing_tokens_at_their_ids() {
    let next = 300;
    let dir = model_dir(Some(json!({
        "added_tokens_decoder": {
            "2": {"content": "<|im_end|>", "special": true},
            next.to_string(): {"content": "<tool_call>", "special": false}
        }
    })));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.token_to_id("<tool_call>"), Some(next));
    let ids = tok.encode("a<tool_call>b", false).unwrap();
    assert!(ids.contains(&next));
    let dir = model_dir(Some(json!({
        "added_tokens_decoder": {"7": {"content": "<|im_end|>", "special": true}}
    })));
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("<|im_end|>") && err.contains("id 7"), "{err}");
}

#[test]
fn cached_encoding_equals_plain_encoding_on_hits_and_misses() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    let texts = [
        "\n\n<information>[Doc 1](u):\n\"Ada\"\nborn in Zed</information>\n\n",
        "héllo wörld",
        "",
    ];
    for _ in 0..2 {
        for t in texts {
            assert_eq!(
                tok.encode_cached(t).unwrap(),
                tok.encode(t, false).unwrap(),
                "{t:?}"
            );
        }
    }
    assert_eq!(tok.vocab_size(), tok.inner.get_vocab_size(true));
}
