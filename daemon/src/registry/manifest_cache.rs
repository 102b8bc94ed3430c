//! Manifests already read and verified, by digest, so a pull that resolves
//! to one is answered from memory. A digest names its bytes for ever, so an
//! entry never goes stale; whether the manifest is still a revision of the
//! repository (not deleted, its tag not moved) is checked on every request
//! before the cache is asked, exactly as without it. Bounded in bytes.

use crate::digest::Digest;
use crate::lru::Lru;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// Bytes of manifests kept (a typical image manifest is 0.5–2 KiB).
pub const DEFAULT_BYTES: u64 = 4 << 20;

/// A verified manifest: its media type and bytes.
#[derive(Clone)]
pub struct Cached {
    pub media_type: String,
    pub body: Bytes,
}

pub struct ManifestCache {
    max: u64,
    inner: Mutex<(Lru, HashMap<Digest, Cached>)>,
}

impl Default for ManifestCache {
    fn default() -> Self {
        ManifestCache::new(DEFAULT_BYTES)
    }
}

impl ManifestCache {
    pub fn new(max: u64) -> ManifestCache {
        ManifestCache { max, inner: Mutex::default() }
    }

    pub fn get(&self, d: &Digest) -> Option<Cached> {
        let mut inner = self.inner.lock().unwrap();
        inner.0.touch(d)?;
        inner.1.get(d).cloned()
    }

    /// Keeps a manifest that hashed to `d` (larger than the whole budget:
    /// not kept).
    pub fn insert(&self, d: Digest, entry: Cached) {
        let size = entry.body.len() as u64 + entry.media_type.len() as u64;
        if size > self.max {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        let (lru, map) = &mut *inner;
        lru.insert(d.clone(), size);
        map.insert(d, entry);
        for gone in lru.over(self.max) {
            map.remove(&gone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_budget_and_drops_the_least_used() {
        let c = ManifestCache::new(100);
        let entry = |n: usize| Cached { media_type: "t".into(), body: Bytes::from(vec![0u8; n]) };
        let (a, b, x) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"), Digest::sha256_of(b"x"));
        c.insert(a.clone(), entry(39));
        c.insert(b.clone(), entry(39));
        assert!(c.get(&a).is_some(), "a is now the most recently used");
        c.insert(x.clone(), entry(39));
        assert!(c.get(&b).is_none(), "b was the least recently used");
        assert!(c.get(&a).is_some() && c.get(&x).is_some());
        c.insert(Digest::sha256_of(b"huge"), entry(200));
        assert!(c.get(&Digest::sha256_of(b"huge")).is_none(), "larger than the budget: not kept");
    }
}
