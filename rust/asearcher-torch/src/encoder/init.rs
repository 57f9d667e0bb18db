//! A tiny random BERT encoder directory, for tests and examples that need an encoder without
//! real weights.

use super::spec::{BertConfig, Pooling};
use crate::{Result, TorchError};
use std::path::Path;
use tch::{Device, Kind};

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).map_err(|e| TorchError::io(path, e))
}

/// Writes a tiny random BERT encoder to `dir` (hidden 16, 2 layers, a WordPiece vocabulary of
/// 12 words: the, glass, works, old, city, ##s, a, of) with `pooling`, seeded: for tests and
/// examples that need an encoder but no real weights.
pub fn write_random_bert(dir: &Path, pooling: Pooling, seed: i64) -> Result<()> {
    let pooling_cls = pooling == Pooling::Cls;
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(|e| TorchError::io(dir, e))?;
    let config = serde_json::json!({
        "model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "vocab_size": 12,
        "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    });
    write(&dir.join("config.json"), config.to_string())?;
    let pooling = serde_json::json!({
        "pooling_mode_cls_token": pooling_cls, "pooling_mode_mean_tokens": !pooling_cls,
    });
    write(&dir.join("1_Pooling/config.json"), pooling.to_string())?;
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
    write(&dir.join("tokenizer.json"), tokenizer.to_string())?;
    let c = BertConfig::from_dir(dir)?;
    tch::manual_seed(seed);
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
    tch::Tensor::write_safetensors(&refs, dir.join("model.safetensors"))?;
    Ok(())
}
