use super::*;
use crate::TorchError;
use std::path::Path;
use tch::{Device, Kind};

/// A tiny BERT directory: config, random weights, a WordPiece tokenizer over a few words.
fn tiny_bert(dir: &Path, pooling_cls: bool) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "vocab_size": 12,
        "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let pooling = serde_json::json!({
        "pooling_mode_cls_token": pooling_cls, "pooling_mode_mean_tokens": !pooling_cls,
    });
    std::fs::write(dir.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
    let vocab = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "glass", "works", "old", "city", "##s", "a",
        "of",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let c = BertConfig::from_dir(dir).unwrap();
    tch::manual_seed(0);
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut named: Vec<(String, tch::Tensor)> = vec![
        (
            "bert.embeddings.word_embeddings.weight".into(),
            tch::Tensor::randn([12, h], (Kind::Float, Device::Cpu)),
        ),
        (
            "bert.embeddings.position_embeddings.weight".into(),
            tch::Tensor::randn([32, h], (Kind::Float, Device::Cpu)),
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".into(),
            tch::Tensor::randn([2, h], (Kind::Float, Device::Cpu)),
        ),
        (
            "bert.embeddings.LayerNorm.weight".into(),
            tch::Tensor::ones([h], (Kind::Float, Device::Cpu)),
        ),
        (
            "bert.embeddings.LayerNorm.bias".into(),
            tch::Tensor::zeros([h], (Kind::Float, Device::Cpu)),
        ),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for (n, o, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            named.push((
                format!("{p}.{n}.weight"),
                tch::Tensor::randn([o, inp], (Kind::Float, Device::Cpu)) * 0.2,
            ));
            named.push((
                format!("{p}.{n}.bias"),
                tch::Tensor::randn([o], (Kind::Float, Device::Cpu)) * 0.1,
            ));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            named.push((
                format!("{p}.{n}.weight"),
                tch::Tensor::ones([h], (Kind::Float, Device::Cpu)),
            ));
            named.push((
                format!("{p}.{n}.bias"),
                tch::Tensor::zeros([h], (Kind::Float, Device::Cpu)),
            ));
        }
    }
    let refs: Vec<(&str, &tch::Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
}

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn vectors_do_not_depend_on_batching_or_padding() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert(dir.path(), false);
    let enc = BertEncoder::load(
        dir.path(),
        Device::Cpu,
        Kind::Float,
        &EncoderOptions::default(),
    )
    .unwrap();
    assert_eq!(enc.spec().pooling, Pooling::Mean);
    assert!(enc.spec().normalize, "no modules.json: normalised");
    let t = texts(&[
        "the glass works",
        "a city",
        "the old city of glass works glass works",
    ]);
    let all = enc.encode(&t, TextKind::Raw, 8, &mut |_| Ok(())).unwrap();
    let one = enc.encode(&t, TextKind::Raw, 1, &mut |_| Ok(())).unwrap();
    assert_eq!(all.size(), [3, 16]);
    assert!(all.allclose(&one, 1e-5, 1e-6, false));
    let norms = all.norm_scalaropt_dim(2, [1], false);
    assert!(norms.allclose(
        &tch::Tensor::ones([3], (Kind::Float, Device::Cpu)),
        1e-5,
        1e-6,
        false
    ));
    let ids = enc.tokenize(&texts(&["the citys"]), TextKind::Raw).unwrap();
    assert_eq!(ids, vec![vec![2, 4, 8, 9, 3]]);
}

#[test]
fn prefixes_cls_pooling_and_truncation_follow_the_options() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bert(dir.path(), true);
    let options = EncoderOptions {
        query_prefix: Some("a ".into()),
        max_length: Some(4),
        normalize: Some(false),
        ..EncoderOptions::default()
    };
    let enc = BertEncoder::load(dir.path(), Device::Cpu, Kind::Float, &options).unwrap();
    assert_eq!(enc.spec().pooling, Pooling::Cls);
    let q = enc.tokenize(&texts(&["city"]), TextKind::Query).unwrap();
    assert_eq!(q, vec![vec![2, 10, 8, 3]]);
    let long = enc
        .tokenize(&texts(&["the old city of glass"]), TextKind::Passage)
        .unwrap();
    assert_eq!(
        long,
        vec![vec![2, 4, 7, 3]],
        "truncated to max_length with [SEP] kept"
    );
    let v = enc
        .encode(&texts(&["city"]), TextKind::Query, 4, &mut |_| Ok(()))
        .unwrap();
    let ids = tch::Tensor::from_slice(&[2i64, 10, 8, 3]).view([1, 4]);
    let mask = tch::Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let cls = enc.forward(&ids, &mask).unwrap().select(1, 0);
    assert!(
        v.allclose(&cls, 1e-6, 1e-6, false),
        "CLS pooling, not normalised"
    );
}

#[test]
fn a_directory_that_is_not_a_bert_encoder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "qwen2"}"#).unwrap();
    let err = BertEncoder::load(
        dir.path(),
        Device::Cpu,
        Kind::Float,
        &EncoderOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TorchError::BadFile { .. }), "{err}");
    assert!(err.to_string().contains("not a BERT encoder"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = BertEncoder::load(
        empty.path(),
        Device::Cpu,
        Kind::Float,
        &EncoderOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no config.json"), "{err}");
    let bert = tempfile::tempdir().unwrap();
    tiny_bert(bert.path(), false);
    let options = EncoderOptions {
        max_length: Some(64),
        ..EncoderOptions::default()
    };
    let err = BertEncoder::load(bert.path(), Device::Cpu, Kind::Float, &options).unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
}
