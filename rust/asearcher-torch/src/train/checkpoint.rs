//! Crash-safe training checkpoints: model weights (`model.safetensors`, HF names), optimizer state
//! (`optimizer.safetensors`), `trainer_state.json` (step, schedule, RNG, a user value, and the
//! tensor manifest), extra files (e.g. `config.json`) and copied tokenizer files.
//!
//! Layout under a root directory:
//!
//! ```text
//! root/latest                  # "step-00000042\n", replaced atomically
//! root/step-00000042/...       # complete checkpoints only
//! root/.tmp-step-...           # being written (ignored, removed by the next save)
//! ```
//!
//! A checkpoint is written and fsynced in a temporary directory, renamed into place, then the
//! `latest` pointer is replaced (temp file + fsync + rename + directory fsync), then old
//! checkpoints beyond `keep_last` are removed. A kill at any moment therefore leaves either the old
//! or the new checkpoint complete; [`load_latest`] returns the newest complete one.

use crate::train::optim::AdamW;
use crate::train::rng::RngState;
use crate::train::schedule::LrSchedule;
use crate::{Result, TorchError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Model weights file, HF parameter names.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file ([`AdamW::state_tensors`] names).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file ([`TrainerState`] plus the tensor manifest).
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// Pointer file naming the newest checkpoint directory.
pub const LATEST_FILE: &str = "latest";
/// Tokenizer files copied by [`Checkpoint::tokenizer_dir`] when present.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
];

const FORMAT_VERSION: u32 = 1;
const STEP_PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";

/// What a trainer needs besides tensors to resume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The learning-rate schedule in use.
    #[serde(default)]
    pub schedule: Option<LrSchedule>,
    /// The data RNG's state.
    #[serde(default)]
    pub rng: Option<RngState>,
    /// Anything else (data position, epoch, metrics...).
    #[serde(default)]
    pub user: serde_json::Value,
}

/// `trainer_state.json`: the state plus the manifest used to detect missing tensors.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format_version: u32,
    #[serde(flatten)]
    state: TrainerState,
    model_tensors: Vec<String>,
    optimizer_tensors: Option<Vec<String>>,
}

/// Everything one checkpoint holds (borrowed; tensors may live on any device).
#[derive(Clone, Copy)]
pub struct Checkpoint<'a> {
    /// Trainer state; `state.step` names the checkpoint.
    pub state: &'a TrainerState,
    /// Model weights by HF name.
    pub model: &'a [(String, Tensor)],
    /// Optimizer state tensors, if any.
    pub optimizer: Option<&'a [(String, Tensor)]>,
    /// Extra files `(file name, bytes)`, e.g. `config.json`; plain names only.
    pub extra_files: &'a [(String, Vec<u8>)],
    /// A directory whose [`TOKENIZER_FILES`] are copied in (at least one must exist).
    pub tokenizer_dir: Option<&'a Path>,
}

/// A checkpoint read back by [`load_checkpoint`] / [`load_latest`] (tensors on the CPU).
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The trainer state.
    pub state: TrainerState,
    /// Model weights by name, in manifest order.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state, when one was saved.
    pub optimizer: Option<Vec<(String, Tensor)>>,
}

/// Writes checkpoints under one root directory (a single writer per root) and rotates them.
pub struct CheckpointManager {
    root: PathBuf,
    keep_last: usize,
}

impl CheckpointManager {
    /// A manager keeping the newest `keep_last` (>= 1) checkpoints under `root` (created).
    pub fn new(root: impl Into<PathBuf>, keep_last: usize) -> Result<Self> {
        if keep_last == 0 {
            return Err(TorchError::config("keep_last", "must be >= 1"));
        }
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| TorchError::io(&root, e))?;
        Ok(CheckpointManager { root, keep_last })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `ckpt` as `step-<step>` atomically, updates `latest`, rotates; returns its directory.
    /// An existing checkpoint of the same step is replaced.
    pub fn save(&self, ckpt: &Checkpoint) -> Result<PathBuf> {
        self.save_with(ckpt, &mut |_| Ok(()))
    }

    /// [`CheckpointManager::save`], with `write_more` writing further files into the temporary
    /// directory before it is fsynced and renamed into place (an error there leaves no
    /// checkpoint behind; the previous one stays the newest).
    pub fn save_with(
        &self,
        ckpt: &Checkpoint,
        write_more: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        check_extra_files(ckpt.extra_files)?;
        remove_leftovers(&self.root)?;
        let name = step_dir_name(ckpt.state.step);
        let tmp = self
            .root
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        fs::create_dir(&tmp).map_err(|e| TorchError::io(&tmp, e))?;
        write_contents(&tmp, ckpt)?;
        if let Err(e) = write_more(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        sync_dir(&tmp)?;
        let dir = self.root.join(&name);
        if dir.exists() {
            discard(&self.root, &dir)?;
        }
        fs::rename(&tmp, &dir).map_err(|e| TorchError::io(&dir, e))?;
        sync_dir(&self.root)?;
        write_latest(&self.root, &name)?;
        self.rotate()?;
        tracing::info!(dir = %dir.display(), step = ckpt.state.step, "checkpoint saved");
        Ok(dir)
    }

    /// The newest complete checkpoint under the root, if any (see [`load_latest`]).
    pub fn load_latest(&self) -> Result<Option<LoadedCheckpoint>> {
        load_latest(&self.root)
    }

    /// Complete checkpoints under the root, `(step, dir)` by ascending step.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        list_checkpoints(&self.root)
    }

    fn rotate(&self) -> Result<()> {
        let all = list_checkpoints(&self.root)?;
        let excess = all.len().saturating_sub(self.keep_last);
        for (_, dir) in &all[..excess] {
            discard(&self.root, dir)?;
        }
        Ok(())
    }
}

/// Complete checkpoints (`step-<n>` directories) under `root`, by ascending step.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TorchError::io(root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TorchError::io(root, e))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|n| n.strip_prefix(STEP_PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let (Some(step), true) = (step, entry.path().is_dir()) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest complete checkpoint under `root` (`Ok(None)` when there is none).
/// Temporary directories of interrupted saves are ignored; a damaged newest checkpoint is an
/// error naming the file, not silently skipped.
pub fn load_latest(root: &Path) -> Result<Option<LoadedCheckpoint>> {
    let all = list_checkpoints(root)?;
    let Some((_, dir)) = all.last() else {
        let latest = root.join(LATEST_FILE);
        if latest.exists() {
            return Err(TorchError::bad_file(
                latest,
                "points to a checkpoint that does not exist",
            ));
        }
        return Ok(None);
    };
    load_checkpoint(dir).map(Some)
}

/// Loads the checkpoint in `dir`, checking every file and every tensor of the manifest.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let state_path = dir.join(TRAINER_STATE_FILE);
    let text = fs::read_to_string(&state_path).map_err(|e| TorchError::io(&state_path, e))?;
    let file: StateFile = serde_json::from_str(&text)
        .map_err(|e| TorchError::bad_file(&state_path, format!("unparseable: {e}")))?;
    if file.format_version != FORMAT_VERSION {
        let msg = format!(
            "format_version {} (expected {FORMAT_VERSION})",
            file.format_version
        );
        return Err(TorchError::bad_file(&state_path, msg));
    }
    let dir_step = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(STEP_PREFIX))
        .and_then(|n| n.parse::<u64>().ok());
    if dir_step.is_some_and(|s| s != file.state.step) {
        let msg = format!("step {} differs from the directory name", file.state.step);
        return Err(TorchError::bad_file(&state_path, msg));
    }
    let model = read_tensors(&dir.join(MODEL_FILE), &file.model_tensors)?;
    let optimizer = match &file.optimizer_tensors {
        Some(names) => Some(read_tensors(&dir.join(OPTIMIZER_FILE), names)?),
        None => None,
    };
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        state: file.state,
        model,
        optimizer,
    })
}

impl LoadedCheckpoint {
    /// Copies the saved weights into `params` (same names and shapes; dtype/device converted).
    /// Errors name `model.safetensors` and the tensor.
    pub fn copy_model_into(&self, params: &[(String, Tensor)]) -> Result<()> {
        let path = self.dir.join(MODEL_FILE);
        let saved: BTreeMap<&str, &Tensor> =
            self.model.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for (name, param) in params {
                let src = saved.get(name.as_str()).ok_or_else(|| {
                    TorchError::bad_file(&path, format!("tensor `{name}` missing"))
                })?;
                if src.size() != param.size() {
                    let msg = format!(
                        "tensor `{name}` has shape {:?}, the model expects {:?}",
                        src.size(),
                        param.size()
                    );
                    return Err(TorchError::bad_file(&path, msg));
                }
                param.shallow_clone().f_copy_(src)?;
            }
            Ok(())
        })
    }

    /// Restores `optimizer` from the saved state; errors name `optimizer.safetensors`.
    pub fn restore_optimizer(&self, optimizer: &mut AdamW) -> Result<()> {
        let path = self.dir.join(OPTIMIZER_FILE);
        let state = self
            .optimizer
            .as_ref()
            .ok_or_else(|| TorchError::bad_file(&path, "this checkpoint has no optimizer state"))?;
        optimizer
            .load_state_tensors(state)
            .map_err(|e| TorchError::bad_file(&path, e.to_string()))
    }
}

/// Writes `tensors` as a safetensors file (metadata `{"format": "pt"}`, readable by HF
/// `safetensors` / `transformers`) and fsyncs it. Tensors are copied to the CPU one at a time.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let header = safetensors_header(tensors)?;
    let io = |e| TorchError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (_, t) in tensors {
        let cpu = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let mut bytes = vec![0u8; cpu.numel() * cpu.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, cpu.numel())?;
        out.write_all(&bytes).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// The JSON header (padded with spaces to a multiple of 8 bytes).
fn safetensors_header(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        if name == "__metadata__" || header.contains_key(name) {
            return Err(TorchError::BadTensor {
                name: name.clone(),
                msg: "duplicate or reserved tensor name".into(),
            });
        }
        let dtype = safetensors_dtype(t.kind()).ok_or_else(|| TorchError::BadTensor {
            name: name.clone(),
            msg: format!("dtype {:?} cannot be saved", t.kind()),
        })?;
        let end = offset + t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&header).expect("a JSON map serialises");
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    Ok(bytes)
}

fn safetensors_dtype(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        _ => return None,
    })
}

/// Reads a safetensors file and checks that every name of the manifest is in it.
fn read_tensors(path: &Path, manifest: &[String]) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(TorchError::bad_file(path, "missing"));
    }
    let mut tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| TorchError::bad_file(path, format!("unreadable: {e}")))?
        .into_iter()
        .collect();
    manifest
        .iter()
        .map(|name| {
            let t = tensors
                .remove(name)
                .ok_or_else(|| TorchError::bad_file(path, format!("tensor `{name}` missing")))?;
            Ok((name.clone(), t))
        })
        .collect()
}

fn write_contents(dir: &Path, ckpt: &Checkpoint) -> Result<()> {
    write_safetensors(&dir.join(MODEL_FILE), ckpt.model)?;
    if let Some(optimizer) = ckpt.optimizer {
        write_safetensors(&dir.join(OPTIMIZER_FILE), optimizer)?;
    }
    if let Some(src) = ckpt.tokenizer_dir {
        copy_tokenizer_files(src, dir)?;
    }
    for (name, bytes) in ckpt.extra_files {
        write_file_synced(&dir.join(name), bytes)?;
    }
    let names = |ts: &[(String, Tensor)]| ts.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let file = StateFile {
        format_version: FORMAT_VERSION,
        state: ckpt.state.clone(),
        model_tensors: names(ckpt.model),
        optimizer_tensors: ckpt.optimizer.map(names),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| TorchError::config("trainer_state", e.to_string()))?;
    write_file_synced(&dir.join(TRAINER_STATE_FILE), &json)
}

fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    let mut copied = 0;
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.is_file() {
            let bytes = fs::read(&from).map_err(|e| TorchError::io(&from, e))?;
            write_file_synced(&dst.join(name), &bytes)?;
            copied += 1;
        }
    }
    if copied == 0 {
        let msg = format!(
            "no tokenizer files (looked for {})",
            TOKENIZER_FILES.join(", ")
        );
        return Err(TorchError::bad_file(src, msg));
    }
    Ok(())
}

fn check_extra_files(files: &[(String, Vec<u8>)]) -> Result<()> {
    let reserved = [MODEL_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE];
    let mut seen = HashSet::new();
    for (name, _) in files {
        let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
        let problem = if !plain {
            Some("must be a plain file name (no path separators, not starting with '.')")
        } else if reserved.contains(&name.as_str()) {
            Some("is written by the checkpoint itself")
        } else if !seen.insert(name) {
            Some("is given twice")
        } else {
            None
        };
        if let Some(msg) = problem {
            return Err(TorchError::config(format!("extra_files[{name:?}]"), msg));
        }
    }
    Ok(())
}

/// Removes temporary and half-deleted directories left by interrupted saves.
fn remove_leftovers(root: &Path) -> Result<()> {
    let entries = fs::read_dir(root).map_err(|e| TorchError::io(root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TorchError::io(root, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
            let path = entry.path();
            tracing::debug!(path = %path.display(), "removing leftover of an interrupted save");
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Renames `dir` out of the checkpoint namespace first, so a kill mid-delete leaves no partial
/// `step-*` directory behind.
fn discard(root: &Path, dir: &Path) -> Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let trash = root.join(format!("{TRASH_PREFIX}{name}-{}", std::process::id()));
    fs::rename(dir, &trash).map_err(|e| TorchError::io(dir, e))?;
    remove_any(&trash)
}

fn remove_any(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|e| TorchError::io(path, e))
}

fn write_latest(root: &Path, name: &str) -> Result<()> {
    let tmp = root.join(format!("{TMP_PREFIX}{LATEST_FILE}-{}", std::process::id()));
    write_file_synced(&tmp, format!("{name}\n").as_bytes())?;
    let latest = root.join(LATEST_FILE);
    fs::rename(&tmp, &latest).map_err(|e| TorchError::io(&latest, e))?;
    sync_dir(root)
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e| TorchError::io(path, e);
    let mut file = File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TorchError::io(dir, e))
}

fn step_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:08}")
}

#[cfg(test)]
mod tests;
