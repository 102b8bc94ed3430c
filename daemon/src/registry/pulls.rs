//! When each manifest was last pulled, for retention's `pulledwithin` and
//! `mostrecentlypulledcount`. A pull never writes to the storage: each node
//! keeps the pulls it served in memory and leaves them in the storage as
//! one small batch object now and then (and when it stops); the collector
//! merges every node's batches into one file and deletes the batches it
//! merged. A node killed before its flush loses at most one interval of
//! pull times, which only makes retention keep less than it might.

use super::{paths, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::StorageDriver;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How many distinct manifests a node remembers between flushes; pulls of
/// others are not recorded until the next flush (a bound on memory).
const MAX_PENDING: usize = 100_000;

/// Last pull (seconds since the epoch) by repository and manifest.
pub type PullTimes = HashMap<(String, Digest), u64>;

/// This node's pulls since its last flush.
#[derive(Default)]
pub struct PullLog {
    pending: Mutex<PullTimes>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Seconds since the epoch as a time.
pub fn time_of(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl PullLog {
    pub fn record(&self, repo: &RepoName, digest: &Digest) {
        let mut pending = self.pending.lock().unwrap();
        let key = (repo.as_str().to_string(), digest.clone());
        if pending.len() < MAX_PENDING || pending.contains_key(&key) {
            pending.insert(key, now_secs());
        }
    }

    /// Adds the pulls not yet flushed to `into` (the later time wins).
    pub fn merge_pending(&self, into: &mut PullTimes) {
        for (k, t) in self.pending.lock().unwrap().iter() {
            let at = into.entry(k.clone()).or_insert(*t);
            *at = (*at).max(*t);
        }
    }

    /// Leaves the pulls recorded since the last flush in the storage as one
    /// batch; returns how many. On failure they are kept for the next try.
    pub async fn flush(&self, driver: &dyn StorageDriver) -> Result<usize> {
        let batch: PullTimes = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.is_empty() {
            return Ok(0);
        }
        let name = format!(
            "{}-{}-{}.json",
            super::gc::this_host(),
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis(),
            uuid::Uuid::new_v4().simple()
        );
        match driver.put_content(&paths::pull_batch(&name), encode(&batch)).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut pending = self.pending.lock().unwrap();
                for (k, t) in batch {
                    let at = pending.entry(k).or_insert(t);
                    *at = (*at).max(t);
                }
                Err(e.into())
            }
        }
    }
}

/// The stored form: `[[repository, digest, seconds], …]`.
pub fn encode(times: &PullTimes) -> Bytes {
    let rows: Vec<(&str, String, u64)> = times.iter().map(|((r, d), t)| (r.as_str(), d.to_string(), *t)).collect();
    Bytes::from(serde_json::to_vec(&rows).expect("pull times serialize"))
}

/// Merges a stored batch (or the merged file) into `into`; a damaged one is
/// skipped with a warning (pull times only ever make retention keep more).
pub fn merge(into: &mut PullTimes, body: &[u8], path: &str) {
    let rows: Vec<(String, String, u64)> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path, "skipping unreadable pull times: {e}");
            return;
        }
    };
    for (repo, digest, t) in rows {
        let Ok(d) = digest.parse::<Digest>() else { continue };
        let at = into.entry((repo, d)).or_insert(t);
        *at = (*at).max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryDriver;

    #[tokio::test]
    async fn batches_from_nodes_merge_to_the_latest_pull() {
        let driver = MemoryDriver::default();
        let (a, b) = (PullLog::default(), PullLog::default());
        let repo = RepoName::parse("team/app").unwrap();
        let d = Digest::sha256_of(b"m");
        a.record(&repo, &d);
        assert_eq!(a.flush(&driver).await.unwrap(), 1);
        assert_eq!(a.flush(&driver).await.unwrap(), 0, "nothing new, nothing written");
        b.pending.lock().unwrap().insert(("team/app".into(), d.clone()), 7);
        b.flush(&driver).await.unwrap();
        let mut merged = PullTimes::new();
        for p in driver.list(&paths::pull_batches()).await.unwrap() {
            merge(&mut merged, &driver.get_content(&p).await.unwrap(), &p);
        }
        assert!(merged[&("team/app".to_string(), d)] >= now_secs() - 5, "the later pull wins");
        merge(&mut merged, b"not json", "x");
        assert_eq!(merged.len(), 1);
    }
}
