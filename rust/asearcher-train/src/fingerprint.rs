//! The fingerprint of a training run's output directory: the whole config except the keys that
//! only say how or how long to run ([`OPERATIONAL`]), with the model, the questions and the
//! index replaced by their content identity (so a moved directory is the same run, an edited
//! file is not). A resume goes ahead only when it matches (or `run.allow_changes`); see
//! [`asearcher_config::fingerprint`].

use crate::config::TrainConfig;
use crate::{Result, TrainError};
use asearcher_config::fingerprint;
use asearcher_tools::Toolbox;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Keys that do not change what a step computes, or that a resumed run may extend.
pub const OPERATIONAL: &[&str] = &[
    "run.steps",
    "run.out_dir",
    "run.resume",
    "run.allow_changes",
    "run.keep_last",
    "run.checkpoint_every",
    "run.save_trajectories",
    "model.path",
    "model.tokenizer",
    "model.device",
    "data.train",
    "tools.index",
    "tools.dense_index",
    "tools.dense_model",
    "inference.servers",
    "inference.weights_dir",
    "inference.keep_weights",
    "inference.timeout_s",
    "inference.max_failed_syncs",
    "inference.max_running",
    "inference.sync_master_addr",
    "inference.sync_master_port",
    "rollout.max_concurrent",
    "learner.micro_batch_tokens",
    "learner.chunk_tokens",
    "learner.fsdp.timeout_s",
    "learner.fsdp.idle_timeout_s",
];

/// The fingerprint fields of a run (see the module docs).
pub fn train_fingerprint(
    cfg: &TrainConfig,
    toolbox: Option<&Toolbox>,
) -> Result<Map<String, Value>> {
    let mut value = serde_json::to_value(cfg).expect("the config serialises");
    for key in OPERATIONAL {
        remove_dotted(&mut value, key);
    }
    let Value::Object(mut fields) = value else {
        unreachable!("a config is an object")
    };
    fields.insert(
        "model_identity".into(),
        Value::String(model_identity(&cfg.model.path)?),
    );
    let data = file_sha256(&cfg.data.train).map_err(|e| {
        TrainError::config("data.train", format!("{}: {e}", cfg.data.train.display()))
    })?;
    fields.insert("data_sha256".into(), Value::String(data));
    fields.insert(
        "tools_identity".into(),
        toolbox.map_or(Value::Null, Toolbox::identity),
    );
    Ok(fields)
}

fn remove_dotted(value: &mut Value, key: &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key");
    let mut at = value;
    for p in parts {
        match at.get_mut(p) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Value::Object(map) = at {
        map.remove(last);
    }
}

/// A model directory by content: `config.json` and every weight file's name and size (hashing
/// gigabytes of weights for each start would be slow; a retrained file changes its size or the
/// config rarely stays equal, and the checkpoint holds the trained weights anyway).
fn model_identity(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let config = dir.join("config.json");
    let bytes = std::fs::read(&config).map_err(|e| TrainError::io(&config, e))?;
    h.update(&bytes);
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut weights: Vec<(String, u64)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    weights.sort();
    for (name, size) in weights {
        h.update(format!("\0{name}\0{size}").as_bytes());
    }
    Ok(hex16(&h.finalize()))
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex16(&h.finalize()))
}

fn hex16(digest: &[u8]) -> String {
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The resume decision for `cfg` in its `out_dir` (nothing is written): a fresh start when
/// `run.resume` is off, a refusal naming every differing key when the saved fingerprint differs
/// and `run.allow_changes` is off.
pub fn check(cfg: &TrainConfig, fields: &Map<String, Value>) -> Result<fingerprint::Resume> {
    let mode = match (cfg.run.resume, cfg.run.allow_changes) {
        (false, _) => fingerprint::ResumeMode::Restart,
        (true, false) => fingerprint::ResumeMode::Match,
        (true, true) => fingerprint::ResumeMode::AllowChanges,
    };
    fingerprint::check_resume(&cfg.run.out_dir, "train", fields, mode).map_err(|e| match e {
        fingerprint::FingerprintError::Mismatch(m) => TrainError::ResumeMismatch(m),
        fingerprint::FingerprintError::File { path, message } => {
            TrainError::io(path, std::io::Error::other(message))
        }
    })
}

/// Saves the fingerprint once the run goes ahead.
pub fn record(
    cfg: &TrainConfig,
    fields: &Map<String, Value>,
    resume: &fingerprint::Resume,
) -> Result<()> {
    fingerprint::record(&cfg.run.out_dir, "train", fields, resume).map_err(|e| match e {
        fingerprint::FingerprintError::Mismatch(m) => TrainError::ResumeMismatch(m),
        fingerprint::FingerprintError::File { path, message } => {
            TrainError::io(path, std::io::Error::other(message))
        }
    })
}
