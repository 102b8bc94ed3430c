//! A size-bounded least-recently-used index of digests: which are held,
//! their sizes, and the order they were last used in. The node cache keeps
//! its files' index in one (rebuilt from its directory at start), the
//! registry its in-memory manifests; each holds the data itself.

use crate::digest::Digest;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct Lru {
    /// digest → (size, tick of last use)
    entries: HashMap<Digest, (u64, u64)>,
    order: BTreeMap<u64, Digest>,
    pub total: u64,
    tick: u64,
}

impl Lru {
    /// Marks `d` used; its size when present.
    pub fn touch(&mut self, d: &Digest) -> Option<u64> {
        let (size, old) = *self.entries.get(d)?;
        self.order.remove(&old);
        self.tick += 1;
        self.order.insert(self.tick, d.clone());
        self.entries.insert(d.clone(), (size, self.tick));
        Some(size)
    }

    /// Its size, without marking it used.
    pub fn size_of(&self, d: &Digest) -> Option<u64> {
        self.entries.get(d).map(|e| e.0)
    }

    pub fn insert(&mut self, d: Digest, size: u64) {
        if self.entries.contains_key(&d) {
            self.touch(&d);
            return;
        }
        self.tick += 1;
        self.order.insert(self.tick, d.clone());
        self.entries.insert(d, (size, self.tick));
        self.total += size;
    }

    pub fn remove(&mut self, d: &Digest) -> Option<u64> {
        let (size, tick) = self.entries.remove(d)?;
        self.order.remove(&tick);
        self.total -= size;
        Some(size)
    }

    /// Least recently used entries to drop so that `total <= max`.
    pub fn over(&mut self, max: u64) -> Vec<Digest> {
        let mut out = Vec::new();
        while self.total > max {
            let Some(d) = self.oldest() else { break };
            out.push(d);
        }
        out
    }

    /// Drops the least recently used entry.
    pub fn oldest(&mut self) -> Option<Digest> {
        let (_, d) = self.order.pop_first()?;
        if let Some((size, _)) = self.entries.remove(&d) {
            self.total -= size;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let (a, b, c) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"), Digest::sha256_of(b"c"));
        let mut l = Lru::default();
        l.insert(a.clone(), 10);
        l.insert(b.clone(), 10);
        l.insert(c.clone(), 10);
        l.touch(&a);
        assert_eq!(l.over(20), vec![b.clone()]);
        assert_eq!(l.total, 20);
        assert_eq!(l.oldest(), Some(c));
        assert_eq!(l.size_of(&a), Some(10));
        assert_eq!(l.remove(&a), Some(10));
        assert_eq!(l.total, 0);
    }
}
