//! What the lazy layers did, for `serve --metrics-address`. Containers read
//! lazy layers in the mount-layer processes, one per layer, not in `serve`:
//! each keeps its counts in memory and writes them to its snapshot's
//! `lazy/stats.json` every few seconds and when it exits; `serve` sums
//! every snapshot's file when scraped, beside its own counts (mounts made,
//! fallbacks to a normal pull). A snapshot about to be removed hands its
//! counts to `retired-stats.json` in the root first ([`retire`]), so the
//! sums only ever grow (no false counter reset when an image goes).

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the fetch latency histogram; one more bucket
/// counts what is above the last.
pub const FETCH_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// How often a mount-layer process writes its counts.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// One mount-layer process's counts (or their sum).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Reads containers made of the layer's files, and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
    /// Range requests to berthd, their bytes and time.
    pub fetches: u64,
    pub fetched_bytes: u64,
    pub fetch_seconds: f64,
    /// Fetches per latency bucket (not cumulative), [`FETCH_BUCKETS`] and one over.
    pub fetch_buckets: Vec<u64>,
    /// Bytes the background fill stored.
    pub filled_bytes: u64,
}

impl LayerStats {
    fn record_fetch(&mut self, bytes: u64, seconds: f64) {
        self.fetches += 1;
        self.fetched_bytes += bytes;
        self.fetch_seconds += seconds;
        self.fetch_buckets.resize(FETCH_BUCKETS.len() + 1, 0);
        let i = FETCH_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(FETCH_BUCKETS.len());
        self.fetch_buckets[i] += 1;
    }

    fn save_to(&self, lazy: &Path) -> std::io::Result<()> {
        let tmp = lazy.join(format!("stats.json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(self).expect("stats serialize"))?;
        std::fs::rename(&tmp, lazy.join("stats.json"))
    }

    pub fn add(&mut self, o: &LayerStats) {
        self.reads += o.reads;
        self.read_bytes += o.read_bytes;
        self.fetches += o.fetches;
        self.fetched_bytes += o.fetched_bytes;
        self.fetch_seconds += o.fetch_seconds;
        self.filled_bytes += o.filled_bytes;
        if self.fetch_buckets.len() < o.fetch_buckets.len() {
            self.fetch_buckets.resize(o.fetch_buckets.len(), 0);
        }
        for (mine, theirs) in self.fetch_buckets.iter_mut().zip(&o.fetch_buckets) {
            *mine += theirs;
        }
    }
}

static THIS_PROCESS: Mutex<Option<LayerStats>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut LayerStats)) {
    f(THIS_PROCESS.lock().unwrap().get_or_insert_with(Default::default));
}

pub fn read(bytes: u64) {
    with(|s| {
        s.reads += 1;
        s.read_bytes += bytes;
    });
}

pub fn fetched(bytes: u64, seconds: f64) {
    with(|s| s.record_fetch(bytes, seconds));
}

pub fn filled(bytes: u64) {
    with(|s| s.filled_bytes += bytes);
}

/// Starts this process's counts from what an earlier mount of the same
/// layer left in `lazy/stats.json` (a mount process killed and started
/// again must not make the sums go down).
pub fn resume(lazy: &Path) {
    if let Some(before) = load(&lazy.join("stats.json")) {
        with(|s| s.add(&before));
    }
}

/// Writes this process's counts to `lazy/stats.json` (whole or not at all).
pub fn save(lazy: &Path) -> std::io::Result<()> {
    let now = THIS_PROCESS.lock().unwrap().clone().unwrap_or_default();
    now.save_to(lazy)
}

/// The counts of removed snapshots, kept in the root.
const RETIRED: &str = "retired-stats.json";

fn load(path: &Path) -> Option<LayerStats> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Adds the counts of `snapshot_dir` (about to be removed) to the root's
/// retired totals (one remove at a time: the totals are read, added to
/// and replaced).
pub fn retire(root: &Path, snapshot_dir: &Path) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let Some(gone) = load(&snapshot_dir.join("lazy").join("stats.json")) else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let mut retired = load(&root.join(RETIRED)).unwrap_or_default();
    retired.add(&gone);
    let tmp = root.join(format!("{RETIRED}.tmp"));
    let written = std::fs::write(&tmp, serde_json::to_vec(&retired).expect("stats serialize"))
        .and_then(|()| std::fs::rename(&tmp, root.join(RETIRED)));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot keep a removed snapshot's lazy-read counts; the metrics will read as a reset");
    }
}

/// The sum of every snapshot's `lazy/stats.json` under `root`, and of the
/// removed ones.
pub fn sum(root: &Path) -> LayerStats {
    let mut total = load(&root.join(RETIRED)).unwrap_or_default();
    let Ok(snapshots) = std::fs::read_dir(root.join("snapshots")) else { return total };
    for s in snapshots.flatten() {
        if let Ok(raw) = std::fs::read(s.path().join("lazy").join("stats.json")) {
            if let Ok(one) = serde_json::from_slice::<LayerStats>(&raw) {
                total.add(&one);
            }
        }
    }
    total
}

/// Lazy mounts `serve` made, and Prepares it handed to a normal pull
/// although they asked for a lazy layer.
pub static MOUNTS: AtomicU64 = AtomicU64::new(0);
pub static FALLBACKS: AtomicU64 = AtomicU64::new(0);

pub fn mounted() {
    MOUNTS.fetch_add(1, Relaxed);
}

pub fn fell_back() {
    FALLBACKS.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_saved_and_summed_across_snapshots() {
        let root = tempfile::tempdir().unwrap();
        let mut one = LayerStats { reads: 1, read_bytes: 100, filled_bytes: 8192, ..Default::default() };
        one.record_fetch(4096, 0.003);
        one.record_fetch(4096, 20.0);
        for id in ["1", "2"] {
            let lazy = root.path().join("snapshots").join(id).join("lazy");
            std::fs::create_dir_all(&lazy).unwrap();
            one.save_to(&lazy).unwrap();
        }
        std::fs::create_dir_all(root.path().join("snapshots/3")).unwrap(); // not lazy
        let total = sum(root.path());
        assert_eq!((total.reads, total.read_bytes, total.fetches, total.filled_bytes), (2, 200, 4, 16384));
        assert_eq!(total.fetch_buckets[2], 2, "3 ms falls in the 5 ms bucket");
        assert_eq!(total.fetch_buckets[FETCH_BUCKETS.len()], 2, "20 s is above the last bucket");
        // Removing a snapshot keeps its counts in the sum.
        let gone = root.path().join("snapshots/1");
        retire(root.path(), &gone);
        std::fs::remove_dir_all(&gone).unwrap();
        retire(root.path(), &root.path().join("snapshots/3"));
        assert_eq!(sum(root.path()), total, "the sum does not go down when a snapshot goes");
    }
}
