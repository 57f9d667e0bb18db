use super::*;
use crate::TorchError;
use tch::{Device, Kind};

fn texts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn vectors_do_not_depend_on_batching_or_padding() {
    let dir = tempfile::tempdir().unwrap();
    write_random_bert(dir.path(), Pooling::Mean, 0).unwrap();
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
    write_random_bert(dir.path(), Pooling::Cls, 0).unwrap();
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
    write_random_bert(bert.path(), Pooling::Mean, 0).unwrap();
    let options = EncoderOptions {
        max_length: Some(64),
        ..EncoderOptions::default()
    };
    let err = BertEncoder::load(bert.path(), Device::Cpu, Kind::Float, &options).unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
}
