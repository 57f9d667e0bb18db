//! An on-disk cache of tool results shared by every backend, keyed by backend + operation +
//! request. It is an append-only jsonl log (one record per line, written with a single `write`),
//! loaded into memory on open, so it survives restarts and tolerates a torn last line after a crash.
//! In replay mode only cached results are served: reproducible evaluation without paid APIs.

use crate::{Result, ToolError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// How the cache is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Serve hits, fetch and store misses.
    #[default]
    ReadWrite,
    /// Serve hits only; a miss is an error ([`ToolError::CacheMiss`]). Nothing is fetched.
    Replay,
    /// Always fetch, and store what was fetched (refreshes the cache).
    WriteOnly,
}

impl std::str::FromStr for CacheMode {
    type Err = ToolError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "readwrite" | "read_write" | "rw" => Ok(Self::ReadWrite),
            "replay" | "offline" => Ok(Self::Replay),
            "writeonly" | "write_only" | "refresh" => Ok(Self::WriteOnly),
            other => Err(ToolError::config(
                "cache mode",
                format!("{other:?} is not one of readwrite, replay, refresh"),
            )),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    backend: String,
    op: String,
    request: Value,
    value: Value,
}

/// Hit and miss counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// The shared result cache.
pub struct ResultCache {
    path: PathBuf,
    mode: CacheMode,
    entries: RwLock<HashMap<String, Value>>,
    log: Mutex<std::fs::File>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn key_of(backend: &str, op: &str, request: &Value) -> String {
    let mut h = Sha256::new();
    h.update(backend.as_bytes());
    h.update([0]);
    h.update(op.as_bytes());
    h.update([0]);
    h.update(request.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl ResultCache {
    /// Opens (or creates) the cache file at `path`.
    pub fn open(path: impl AsRef<Path>, mode: CacheMode) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ToolError::io(dir, e))?;
        }
        let entries = load_log(&path)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ToolError::io(&path, e))?;
        Ok(Self {
            path,
            mode,
            entries: RwLock::new(entries),
            log: Mutex::new(log),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.read().expect("cache lock").len() as u64,
        }
    }

    /// Adds to the hit and miss counters (for callers that look up with [`ResultCache::get`]).
    pub fn count(&self, hits: usize, misses: usize) {
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses.fetch_add(misses as u64, Ordering::Relaxed);
    }

    /// The cached value for this request, if any.
    pub fn get(&self, backend: &str, op: &str, request: &Value) -> Option<Value> {
        self.entries
            .read()
            .expect("cache lock")
            .get(&key_of(backend, op, request))
            .cloned()
    }

    /// Stores a value (appended to the log, then visible to readers).
    pub fn put(&self, backend: &str, op: &str, request: &Value, value: Value) -> Result<()> {
        let key = key_of(backend, op, request);
        let rec = Record {
            key: key.clone(),
            backend: backend.into(),
            op: op.into(),
            request: request.clone(),
            value,
        };
        let mut line = serde_json::to_vec(&rec).expect("record serialises");
        line.push(b'\n');
        self.log
            .lock()
            .expect("cache log lock")
            .write_all(&line)
            .map_err(|e| ToolError::io(&self.path, e))?;
        self.entries
            .write()
            .expect("cache lock")
            .insert(key, rec.value);
        Ok(())
    }

    /// Serves `request` from the cache or runs `fetch` (per the mode) and stores its result.
    /// Returns the value and whether it came from the cache.
    pub async fn get_or_fetch<T, F, Fut>(
        &self,
        backend: &str,
        op: &str,
        request: &Value,
        fetch: F,
    ) -> Result<(T, bool)>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.mode != CacheMode::WriteOnly {
            if let Some(v) = self.get(backend, op, request) {
                if let Ok(t) = serde_json::from_value(v) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((t, true));
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if self.mode == CacheMode::Replay {
            return Err(ToolError::CacheMiss {
                backend: backend.into(),
                op: op.into(),
                key: request.to_string(),
            });
        }
        let value = fetch().await?;
        self.put(
            backend,
            op,
            request,
            serde_json::to_value(&value).expect("tool results serialise"),
        )?;
        Ok((value, false))
    }
}

/// Loads the log. Lines are read as bytes, so a record torn anywhere (even inside a multi-byte
/// character) only loses itself; a file left without a final newline gets one, so the next
/// record starts on a line of its own.
fn load_log(path: &Path) -> Result<HashMap<String, Value>> {
    let mut entries = HashMap::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(ToolError::io(path, e)),
    };
    let mut bad = 0usize;
    for line in bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
    {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => {
                entries.insert(r.key, r.value);
            }
            Err(_) => bad += 1,
        }
    }
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| ToolError::io(path, e))?;
        f.write_all(b"\n").map_err(|e| ToolError::io(path, e))?;
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), bad, "ignored unreadable cache records (torn writes?)");
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn survives_reopen_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.jsonl");
        let req = json!({"q": "capital of France", "k": 5});
        {
            let c = ResultCache::open(&path, CacheMode::ReadWrite).unwrap();
            let (v, cached): (Vec<String>, bool) = c
                .get_or_fetch("local", "search", &req, || async {
                    Ok(vec!["Paris".to_string()])
                })
                .await
                .unwrap();
            assert_eq!((v, cached), (vec!["Paris".to_string()], false));
            let (_, cached): (Vec<String>, bool) = c
                .get_or_fetch("local", "search", &req, || async {
                    panic!("must not fetch")
                })
                .await
                .unwrap();
            assert!(cached);
        }
        // A torn last line (crash mid-write, here inside a multi-byte character) is ignored,
        // and the next record is not glued to it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\": \"t\xc3")
            .unwrap();
        let later = json!({"q": "after the crash", "k": 5});
        {
            let c = ResultCache::open(&path, CacheMode::ReadWrite).unwrap();
            let _: (Vec<String>, bool) = c
                .get_or_fetch("local", "search", &later, || async {
                    Ok(vec!["x".to_string()])
                })
                .await
                .unwrap();
        }
        let c = ResultCache::open(&path, CacheMode::Replay).unwrap();
        let (v, cached): (Vec<String>, bool) = c
            .get_or_fetch("local", "search", &req, || async {
                panic!("replay never fetches")
            })
            .await
            .unwrap();
        assert_eq!((v[0].as_str(), cached), ("Paris", true));
        let other = json!({"q": "unseen", "k": 5});
        let err = c
            .get_or_fetch::<Vec<String>, _, _>("local", "search", &other, || async { Ok(vec![]) })
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::CacheMiss { .. }), "{err}");
        assert!(c.get("local", "search", &later).is_some());
        // Backends do not share keys.
        assert!(c.get("serper", "search", &req).is_none());
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                entries: 2
            }
        );
    }

    #[tokio::test]
    async fn fetch_errors_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let c = ResultCache::open(dir.path().join("c.jsonl"), CacheMode::ReadWrite).unwrap();
        let req = json!("q");
        let err = c
            .get_or_fetch::<String, _, _>("b", "search", &req, || async {
                Err(ToolError::config("x", "boom"))
            })
            .await;
        assert!(err.is_err());
        assert!(c.get("b", "search", &req).is_none());
    }
}
