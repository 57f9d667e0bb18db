//! Reading and writing checkpoints in the Hugging Face layout: `model.safetensors` or shards listed
//! by `model.safetensors.index.json`, the expected tensor names and shapes of a Qwen config, and
//! saving (sharded when large) through a temporary directory renamed into place.

use super::config::QwenConfig;
use crate::{Result, TorchError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";
/// Files copied from the source checkpoint next to saved weights, when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];
/// Largest shard written by default (bytes), as HF's `max_shard_size="5GB"`.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Tensors read from one file, with the file for error messages.
pub struct WeightFile {
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
}

/// Reads every tensor of a checkpoint directory (single file or sharded), on the CPU in the
/// file's dtype.
pub fn read_hf_weights(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(read_weight_files(dir)?
        .into_iter()
        .flat_map(|f| f.tensors)
        .collect())
}

/// Like [`read_hf_weights`], grouped by file; a sharded index is checked against the shards
/// (every listed tensor must be in its shard).
pub fn read_weight_files(dir: &Path) -> Result<Vec<WeightFile>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return read_sharded(dir, &index);
    }
    let single = dir.join(SINGLE_FILE);
    if !single.is_file() {
        return Err(TorchError::bad_file(
            dir,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
        ));
    }
    Ok(vec![read_file(&single)?])
}

fn read_file(path: &Path) -> Result<WeightFile> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| TorchError::bad_file(path, format!("cannot read safetensors: {e}")))?;
    Ok(WeightFile {
        path: path.to_path_buf(),
        tensors,
    })
}

fn read_sharded(dir: &Path, index: &Path) -> Result<Vec<WeightFile>> {
    let text = std::fs::read_to_string(index).map_err(|e| TorchError::io(index, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| TorchError::bad_file(index, format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| TorchError::bad_file(index, "missing object `weight_map`"))?;
    let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            TorchError::bad_file(
                index,
                format!("weight_map entry `{name}` is not a file name"),
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(TorchError::bad_file(
                index,
                format!("weight_map entry `{name}` points outside the directory: `{file}`"),
            ));
        }
        by_file
            .entry(file.to_string())
            .or_default()
            .push(name.clone());
    }
    let mut files = Vec::with_capacity(by_file.len());
    for (file, names) in by_file {
        let wf = read_file(&dir.join(&file))?;
        for name in &names {
            if !wf.tensors.iter().any(|(n, _)| n == name) {
                return Err(TorchError::bad_file(
                    &wf.path,
                    format!("tensor `{name}` listed in {INDEX_FILE} is not in this shard"),
                ));
            }
        }
        files.push(wf);
    }
    Ok(files)
}

/// The HF names and shapes of every parameter of a Qwen model with this config, in HF order.
/// Tied models have no `lm_head.weight`.
pub fn expected_shapes(c: &QwenConfig) -> Vec<(String, Vec<i64>)> {
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut push = |name: &str, shape: Vec<i64>| out.push((format!("{p}.{name}"), shape));
        push("self_attn.q_proj.weight", vec![q, h]);
        if c.attention_bias {
            push("self_attn.q_proj.bias", vec![q]);
        }
        push("self_attn.k_proj.weight", vec![kv, h]);
        if c.attention_bias {
            push("self_attn.k_proj.bias", vec![kv]);
        }
        push("self_attn.v_proj.weight", vec![kv, h]);
        if c.attention_bias {
            push("self_attn.v_proj.bias", vec![kv]);
        }
        push("self_attn.o_proj.weight", vec![h, q]);
        if c.model_type == super::config::ModelType::Qwen3 {
            push("self_attn.q_norm.weight", vec![hd]);
            push("self_attn.k_norm.weight", vec![hd]);
        }
        push("mlp.gate_proj.weight", vec![i, h]);
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
        push("input_layernorm.weight", vec![h]);
        push("post_attention_layernorm.weight", vec![h]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// Whether a tensor in a checkpoint is a buffer we recompute rather than a parameter.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Checks a checkpoint's tensors against the config and returns them keyed by name.
///
/// Missing tensors and wrong shapes are errors naming the file and the tensor. Extra tensors are
/// errors too (they usually mean another architecture), except rotary `inv_freq` buffers and a
/// `lm_head.weight` in a tied checkpoint, which transformers also ignores.
pub fn check_weights(
    config: &QwenConfig,
    dir: &Path,
    files: Vec<WeightFile>,
) -> Result<HashMap<String, Tensor>> {
    let expected: HashMap<String, Vec<i64>> = expected_shapes(config).into_iter().collect();
    let mut found = HashMap::with_capacity(expected.len());
    for file in files {
        for (name, t) in file.tensors {
            if is_ignored_buffer(&name) || (config.tie_word_embeddings && name == "lm_head.weight")
            {
                continue;
            }
            let Some(shape) = expected.get(&name) else {
                return Err(TorchError::bad_file(
                    &file.path,
                    format!(
                        "unexpected tensor `{name}` for a {} model with this config",
                        config.model_type.as_str()
                    ),
                ));
            };
            if t.size() != *shape {
                return Err(TorchError::bad_file(
                    &file.path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.size()
                    ),
                ));
            }
            found.insert(name, t);
        }
    }
    for (name, _) in expected_shapes(config) {
        if !found.contains_key(&name) {
            return Err(TorchError::bad_file(
                dir,
                format!("checkpoint is missing tensor `{name}`"),
            ));
        }
    }
    Ok(found)
}

/// The HF dtype name of a tch kind (`torch_dtype` in config.json).
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// Writes a checkpoint in HF layout at `dir`: `config` (with its dtype field set to the tensors'
/// kind), the tensors (one file, or shards of at most `max_shard_bytes` plus an index), and the
/// tokenizer files found in `tokenizer_from`.
///
/// Everything is written to a fresh directory next to `dir` and renamed into place, so a crash
/// never leaves a half-written checkpoint at `dir`. An existing `dir` is replaced (it is moved
/// aside first and removed after the rename).
pub fn save_hf(
    dir: &Path,
    config: &Value,
    tensors: &[(String, Tensor)],
    tokenizer_from: Option<&Path>,
    max_shard_bytes: u64,
) -> Result<()> {
    let staging = sibling(dir, "partial")?;
    std::fs::create_dir_all(&staging).map_err(|e| TorchError::io(&staging, e))?;
    let written = write_checkpoint(&staging, config, tensors, tokenizer_from, max_shard_bytes);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    replace_dir(&staging, dir)
}

fn write_checkpoint(
    staging: &Path,
    config: &Value,
    tensors: &[(String, Tensor)],
    tokenizer_from: Option<&Path>,
    max_shard_bytes: u64,
) -> Result<()> {
    let kind = tensors
        .first()
        .map(|(_, t)| t.kind())
        .unwrap_or(Kind::Float);
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        let has_dtype = obj.contains_key("dtype");
        if has_dtype || !obj.contains_key("torch_dtype") {
            obj.insert("dtype".into(), dtype_name(kind).into());
        }
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), dtype_name(kind).into());
        }
    }
    write_json(&staging.join("config.json"), &config)?;
    write_tensors(staging, tensors, max_shard_bytes)?;
    if let Some(src) = tokenizer_from {
        for name in TOKENIZER_FILES {
            let from = src.join(name);
            if from.is_file() {
                std::fs::copy(&from, staging.join(name)).map_err(|e| TorchError::io(&from, e))?;
            }
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value always serialises");
    std::fs::write(path, text + "\n").map_err(|e| TorchError::io(path, e))
}

/// Splits tensors into shards of at most `max_shard_bytes` (a larger tensor gets its own shard).
fn write_tensors(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: u64) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_to_device(tch::Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, (_, t)) in cpu.iter().enumerate() {
        let b = bytes(t);
        if size > 0 && size + b > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("at least one shard").push(i);
        size += b;
    }
    let write = |path: &Path, idx: &[usize]| -> Result<()> {
        let part: Vec<(&str, &Tensor)> = idx
            .iter()
            .map(|&i| (cpu[i].0.as_str(), &cpu[i].1))
            .collect();
        Tensor::write_safetensors(&part, path)
            .map_err(|e| TorchError::bad_file(path, format!("cannot write safetensors: {e}")))
    };
    if shards.len() == 1 {
        return write(&dir.join(SINGLE_FILE), &shards[0]);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, idx) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        write(&dir.join(&file), idx)?;
        for &i in idx {
            weight_map.insert(cpu[i].0.clone(), file.clone().into());
        }
    }
    let total: u64 = cpu.iter().map(|(_, t)| bytes(t)).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&dir.join(INDEX_FILE), &index)
}

/// A fresh path next to `dir`: `.{name}.{tag}-{pid}-{nanos}`.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| TorchError::bad_file(dir, "not a directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| TorchError::io(&parent, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(parent.join(format!(".{name}.{tag}-{}-{nanos}", std::process::id())))
}

/// Renames `staging` to `dir`, moving an existing `dir` aside first and deleting it afterwards.
fn replace_dir(staging: &Path, dir: &Path) -> Result<()> {
    let old = if dir.exists() {
        let old = sibling(dir, "old")?;
        std::fs::rename(dir, &old).map_err(|e| TorchError::io(dir, e))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(staging, dir) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dir);
        }
        return Err(TorchError::io(dir, e));
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(|e| TorchError::io(&old, e))?;
    }
    Ok(())
}
