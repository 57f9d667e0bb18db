//! Fingerprints of output directories: what determines a run's results (agent, prompts,
//! sampling, reward, model, tools, data), saved as `fingerprint.json` next to the results, so a
//! later run into the same directory continues only what it would itself have produced.
//!
//! [`check_resume`] compares the saved fingerprint with the current one and decides, by the
//! [`ResumeMode`], whether to continue, start over or refuse (a [`ResumeMismatch`] naming every
//! differing field with both values); it writes nothing, so a refused resume leaves the
//! directory as it was. [`record`] saves the fingerprint once the run goes ahead, with each
//! deliberate change appended to its history.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The fingerprint file inside an output directory.
pub const FINGERPRINT_FILE: &str = "fingerprint.json";

/// A saved value that compares equal to anything (the identity could not be read when the
/// directory was first written, e.g. the model server was down); the next run fills it in.
pub const UNKNOWN: &str = "unknown";

/// What a run does with an output directory that already holds results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ResumeMode {
    /// Continue only when the saved fingerprint equals this run's; refuse otherwise (default).
    #[default]
    Match,
    /// Delete the saved results and start over.
    Restart,
    /// Continue despite the differences; they are recorded in the fingerprint's history.
    AllowChanges,
}

/// One field that differs: its dotted key, the saved value and this run's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub key: String,
    pub saved: Value,
    pub now: Value,
}

/// A deliberate resume with changes (`ResumeMode::AllowChanges`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix time (seconds).
    pub at: f64,
    pub changes: Vec<Difference>,
}

/// The saved file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The kind of output (`eval`, `train`, `synthesis`).
    pub kind: String,
    pub fields: Map<String, Value>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// What [`check_resume`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// No fingerprint yet: a new directory (or one from before fingerprints).
    Fresh,
    /// The saved fingerprint equals this run's (saved unknowns filled in are listed).
    Matches(Vec<Difference>),
    /// Differences accepted by `AllowChanges`.
    Changed(Vec<Difference>),
    /// `Restart`: the caller deletes its results, then records.
    Restart,
}

/// The directory holds results of a different setup.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", mismatch_message(.dir, .kind, .differences))]
pub struct ResumeMismatch {
    pub dir: PathBuf,
    pub kind: String,
    pub differences: Vec<Difference>,
}

/// The fingerprint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error(transparent)]
    Mismatch(#[from] ResumeMismatch),
    #[error("{}: {message}", .path.display())]
    File { path: PathBuf, message: String },
}

fn mismatch_message(dir: &Path, kind: &str, differences: &[Difference]) -> String {
    let mut out = format!(
        "{} holds {kind} results of a different setup; {} field(s) differ (saved -> now):",
        dir.display(),
        differences.len()
    );
    for d in differences {
        out.push_str(&format!(
            "\n  {}: {} -> {}",
            d.key,
            short(&d.saved),
            short(&d.now)
        ));
    }
    out.push_str(
        "\nStart over with --restart (Python: resume=\"restart\"), which deletes the saved \
         results, or continue with the changes recorded in fingerprint.json with \
         --allow-changes (resume=\"allow_changes\"); or choose another output directory.",
    );
    out
}

/// A value for a message: compact JSON, cut at 120 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 120 {
        s
    } else {
        format!("{}...", s.chars().take(117).collect::<String>())
    }
}

/// The fields that differ between `saved` and `now`, flattened to dotted keys (objects are
/// walked; lists and scalars compare whole). A saved [`UNKNOWN`] differs from nothing. A key the
/// saved fingerprint lacks (it was written before the field existed) matches a `false` or
/// `null` now: a switch added later and left off does not change what the run computes.
pub fn differences(saved: &Map<String, Value>, now: &Map<String, Value>) -> Vec<Difference> {
    let mut out = Vec::new();
    diff_maps("", saved, now, &mut out);
    out
}

fn diff_maps(
    prefix: &str,
    saved: &Map<String, Value>,
    now: &Map<String, Value>,
    out: &mut Vec<Difference>,
) {
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if !saved.contains_key(key) && matches!(now.get(key), Some(Value::Bool(false))) {
            continue;
        }
        let (a, b) = (
            saved.get(key).unwrap_or(&Value::Null),
            now.get(key).unwrap_or(&Value::Null),
        );
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => diff_maps(&path, x, y, out),
            _ if a == b => {}
            _ => out.push(Difference {
                key: path,
                saved: a.clone(),
                now: b.clone(),
            }),
        }
    }
}

fn is_unknown(d: &Difference) -> bool {
    d.saved.as_str() == Some(UNKNOWN)
}

/// The saved fingerprint of `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<Fingerprint>, FingerprintError> {
    let path = dir.join(FINGERPRINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(&path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| FingerprintError::File {
            message: format!("not a fingerprint file ({e}); delete it to start over"),
            path,
        })
}

/// Decides how a run of `kind` with `fields` may use `dir` (nothing is written).
pub fn check_resume(
    dir: &Path,
    kind: &str,
    fields: &Map<String, Value>,
    mode: ResumeMode,
) -> Result<Resume, FingerprintError> {
    if mode == ResumeMode::Restart {
        return Ok(Resume::Restart);
    }
    let Some(saved) = read(dir)? else {
        return Ok(Resume::Fresh);
    };
    let mut diffs = differences(&saved.fields, fields);
    if saved.kind != kind {
        diffs.insert(
            0,
            Difference {
                key: "kind".into(),
                saved: Value::String(saved.kind.clone()),
                now: Value::String(kind.into()),
            },
        );
    }
    let (filled, real): (Vec<Difference>, Vec<Difference>) =
        diffs.into_iter().partition(is_unknown);
    if real.is_empty() {
        return Ok(Resume::Matches(filled));
    }
    if mode == ResumeMode::AllowChanges {
        return Ok(Resume::Changed(real));
    }
    Err(ResumeMismatch {
        dir: dir.to_path_buf(),
        kind: kind.into(),
        differences: real,
    }
    .into())
}

/// Saves the fingerprint of a run that goes ahead (atomically), keeping the saved history and
/// appending the accepted changes of `resume`.
pub fn record(
    dir: &Path,
    kind: &str,
    fields: &Map<String, Value>,
    resume: &Resume,
) -> Result<(), FingerprintError> {
    let mut history = match resume {
        Resume::Restart => Vec::new(),
        _ => read(dir)?.map(|f| f.history).unwrap_or_default(),
    };
    if let Resume::Changed(changes) = resume {
        history.push(HistoryEntry {
            at: unix_now(),
            changes: changes.clone(),
        });
    }
    let file = Fingerprint {
        kind: kind.into(),
        fields: fields.clone(),
        history,
    };
    let path = dir.join(FINGERPRINT_FILE);
    let text = serde_json::to_string_pretty(&file).expect("a fingerprint serialises");
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e))
}

fn file_error(path: &Path, e: std::io::Error) -> FingerprintError {
    FingerprintError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn differences_name_dotted_keys_with_both_values() {
        let a = fields(json!({"agent": {"kind": "asearcher", "max_turns": 32}, "k": [1, 2]}));
        let b = fields(json!({"agent": {"kind": "search_r1", "max_turns": 32}, "k": [1, 3]}));
        let d = differences(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, "agent.kind");
        assert_eq!(d[0].saved, json!("asearcher"));
        assert_eq!(d[0].now, json!("search_r1"));
        assert_eq!(d[1].key, "k");
        assert!(differences(&a, &a).is_empty());
    }

    #[test]
    fn a_field_added_later_and_left_off_matches_an_older_fingerprint() {
        let old = fields(json!({"run": {"seed": 0}}));
        let off = fields(json!({"run": {"seed": 0, "deterministic": false, "tag": null}}));
        assert!(differences(&old, &off).is_empty());
        let on = fields(json!({"run": {"seed": 0, "deterministic": true}}));
        let d = differences(&old, &on);
        assert_eq!((d.len(), d[0].key.as_str()), (1, "run.deterministic"));
        assert_eq!(
            differences(&off, &old).len(),
            1,
            "a saved false now gone is a change"
        );
    }

    #[test]
    fn a_mismatch_is_refused_without_writing_and_allowed_changes_go_to_history() {
        let dir = tempfile::tempdir().unwrap();
        let one = fields(json!({"agent": {"kind": "asearcher"}, "model": "unknown"}));
        assert_eq!(
            check_resume(dir.path(), "eval", &one, ResumeMode::Match).unwrap(),
            Resume::Fresh
        );
        record(dir.path(), "eval", &one, &Resume::Fresh).unwrap();
        let saved = std::fs::read_to_string(dir.path().join(FINGERPRINT_FILE)).unwrap();

        // A saved unknown is filled in, not a mismatch.
        let filled = fields(json!({"agent": {"kind": "asearcher"}, "model": "qwen"}));
        let r = check_resume(dir.path(), "eval", &filled, ResumeMode::Match).unwrap();
        assert!(matches!(r, Resume::Matches(ref d) if d.len() == 1 && d[0].key == "model"));

        let two = fields(json!({"agent": {"kind": "search_r1"}, "model": "qwen"}));
        let err = check_resume(dir.path(), "eval", &two, ResumeMode::Match).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("agent.kind: \"asearcher\" -> \"search_r1\""),
            "{msg}"
        );
        assert!(
            msg.contains("--restart") && msg.contains("--allow-changes"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FINGERPRINT_FILE)).unwrap(),
            saved
        );

        let r = check_resume(dir.path(), "eval", &two, ResumeMode::AllowChanges).unwrap();
        record(dir.path(), "eval", &two, &r).unwrap();
        let f = read(dir.path()).unwrap().unwrap();
        assert_eq!(f.history.len(), 1);
        assert_eq!(f.history[0].changes[0].key, "agent.kind");
        assert_eq!(
            check_resume(dir.path(), "eval", &two, ResumeMode::Match).unwrap(),
            Resume::Matches(vec![])
        );
        // Another kind of output is a difference too.
        assert!(check_resume(dir.path(), "train", &two, ResumeMode::Match).is_err());
        assert_eq!(
            check_resume(dir.path(), "eval", &one, ResumeMode::Restart).unwrap(),
            Resume::Restart
        );
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FINGERPRINT_FILE), "{not json").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(FINGERPRINT_FILE) && err.contains("delete it"),
            "{err}"
        );
    }
}
