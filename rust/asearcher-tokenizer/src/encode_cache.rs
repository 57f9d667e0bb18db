//! A bounded cache of exact text -> token ids, for texts that recur across trajectories (the
//! same search results seen by every sample of a group, the same page part). Encoding a 1k-char
//! observation with a byte-level BPE costs hundreds of microseconds; a hit costs a hash and a
//! copy. Keys are the full texts, so a hit returns exactly what encoding would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Texts longer than this are never cached (they are rarely repeated and costly to keep).
const MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct EncodeCache {
    map: Mutex<HashMap<Arc<str>, Arc<[u32]>>>,
    capacity: usize,
}

impl EncodeCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub(crate) fn get(&self, text: &str) -> Option<Arc<[u32]>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(text).cloned()
    }

    /// Remembers `ids` for `text`; when full, starts over (cheap, and keeps memory bounded).
    pub(crate) fn put(&self, text: &str, ids: &[u32]) {
        if self.capacity == 0 || text.len() > MAX_TEXT_BYTES {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(Arc::from(text), Arc::from(ids));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_return_what_was_put_and_the_cache_stays_bounded() {
        let cache = EncodeCache::new(2);
        cache.put("a", &[1, 2]);
        assert_eq!(cache.get("a").as_deref(), Some(&[1u32, 2][..]));
        assert!(cache.get("b").is_none());
        cache.put("b", &[3]);
        cache.put("c", &[4]);
        assert!(cache.len() <= 2);
        assert_eq!(cache.get("c").as_deref(), Some(&[4u32][..]));
        cache.put(&"x".repeat(MAX_TEXT_BYTES + 1), &[5]);
        assert!(cache.get(&"x".repeat(MAX_TEXT_BYTES + 1)).is_none());
    }
}
