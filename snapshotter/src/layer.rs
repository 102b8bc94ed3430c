//! The bytes of one lazily mounted layer: its uncompressed tar, fetched
//! from berthd in verified chunks and kept on local disk.
//!
//! A chunk is fetched once (concurrent readers of it share the fetch),
//! checked against the index's sha256 for it, written to a temporary file
//! and renamed into `chunks/<n>`: a chunk file that exists is complete and
//! verified, whatever crashed when. A read that cannot be served (berthd
//! unreachable, a digest mismatch) fails with an error the file system
//! turns into EIO; wrong bytes are never returned.
//!
//! After mounting, [`Layer::fill`] fetches the remaining chunks in order at
//! a bounded rate, pausing while reads a container waits for are in
//! flight, so the node ends up with the whole layer. Rate and pauses are
//! the node's: [`crate::node_fill`] shares them between the mount
//! processes of every lazy layer.

use crate::berthd::{Berthd, ClientError, LayerRef};
use crate::node_fill::{reads_lock_path, NodeTurn, ReadGate};
use crate::tarheader::HeaderError;
use berth_wire::layer_index::LayerIndex;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why bytes of a layer cannot be served. The file system answers a read
/// that fails with any of them, timeouts included, with EIO
/// ([`crate::lazyfs`]); wrong bytes are never returned.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The layer was condemned (its content or index did not check out).
    #[error("layer {layer} is refused: {why}")]
    Refused { layer: String, why: String },
    #[error("chunk {0} is past the end of the layer")]
    PastEnd(usize),
    /// The chunk's fetch failed within the read timeout; the kernel's
    /// retries of a failed read fail at once instead of waiting again.
    #[error("chunk {0} could not be fetched a moment ago; failing at once")]
    RecentlyFailed(usize),
    /// berthd unreachable, slow (timeouts) or answering wrongly.
    #[error(transparent)]
    Berthd(#[from] ClientError),
    #[error("chunk {chunk} of {layer} has sha256 {got}, the index says {want}; refusing to serve it")]
    WrongChunk { chunk: usize, layer: String, got: String, want: String },
    /// The tar header before a file's data contradicts the index (the
    /// layer is condemned).
    #[error("the index's entry at tar offset {offset} does not match its tar header ({why})")]
    HeaderMismatch { offset: u64, why: HeaderError },
    /// Verified chunks could not be kept on disk (the background fill
    /// waits for space).
    #[error("the disk cannot take more chunks")]
    DiskFull,
}

/// Chunks kept in memory for reads that hit the same chunk in a row.
const HOT_CHUNKS: usize = 8;

/// How the finished layer is checked: its sha256 (the layer's diff_id,
/// which containerd knows from the image config) must give the snapshot's
/// chain id from its parent's. containerd names layer snapshots by chain
/// id, so this ties the bytes served to the manifest by digest without
/// trusting anything the storage holds.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChainCheck {
    /// The parent snapshot's chain id (`sha256:…`), empty for the first layer.
    pub parent: String,
    /// This layer's chain id.
    pub target: String,
}

impl ChainCheck {
    /// Whether a layer whose tar hashes to `diff_id` has chain id `target`.
    pub fn holds(&self, diff_id: &str) -> bool {
        if self.parent.is_empty() {
            return self.target == diff_id;
        }
        let chained = format!("sha256:{}", hex::encode(Sha256::digest(format!("{} {diff_id}", self.parent))));
        self.target == chained
    }
}

/// What keeps a layer honest and the node healthy, from the mount spec.
#[derive(Clone, Debug)]
pub struct Guards {
    /// The diff_id check of the finished layer, when the chain is known.
    pub chain: Option<ChainCheck>,
    /// Longest a container read waits for berthd before it fails (once).
    pub read_timeout: Duration,
    /// Free space the background fill leaves on the snapshotter's disk.
    pub min_free: u64,
}

impl Default for Guards {
    fn default() -> Self {
        Guards { chain: None, read_timeout: Duration::from_secs(10), min_free: 0 }
    }
}

/// Chunks the background fill asks berthd for at once, aligned to runs of
/// this many: berthd decompresses a range from the checkpoint before it
/// (every 512 KiB of tar, 1 or 2 MiB in older indexes) straight through to its
/// end, so one 2 MiB request reads the compressed layer once where chunk
/// by chunk requests could read a span from storage twice or more. A slow
/// `rate` shortens runs to what it allows in a second, down to one chunk.
pub const FILL_RUN: usize = 4;

pub struct Layer {
    pub index: LayerIndex,
    dir: PathBuf,
    berthd: Berthd,
    layer: LayerRef,
    fetching: Mutex<HashMap<usize, Arc<tokio::sync::Mutex<()>>>>,
    hot: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// The node's fill lock (`None`: this layer fills on its own).
    fill_lock: Option<PathBuf>,
    /// Container reads waiting for berthd; the node's fills yield to them.
    reads: ReadGate,
    guards: Guards,
    /// Why the layer may not be served any more (its content or index did
    /// not check out); every read then fails.
    bad: Mutex<Option<String>>,
    /// Chunks whose fetch failed lately: a read of one fails at once
    /// instead of waiting again (the kernel retries a failed read).
    failed: Mutex<HashMap<usize, Instant>>,
    /// Data offsets of files whose tar header was checked.
    headers_checked: Mutex<HashSet<u64>>,
    /// Whether a chunk could not be kept for lack of space (logged once).
    disk_short: std::sync::atomic::AtomicBool,
    /// The chunks container reads fetched, in order, while this mount
    /// records the layer's prefetch list ([`crate::prefetch`]).
    recording: Mutex<Option<Recording>>,
}

/// What a mount records for the layer's prefetch list.
#[derive(Default, Debug)]
pub struct Recording {
    pub chunks: Vec<u32>,
    /// When the last chunk was added.
    pub last: Option<Instant>,
}

/// Beside the chunks: why the layer was refused.
pub const BAD: &str = "bad";

impl Layer {
    /// `dir` holds `chunks/`; it is created if missing. `fill_lock` is the
    /// node's fill lock, beside which the node's readers' lock lives.
    pub fn new(
        index: LayerIndex,
        dir: &Path,
        berthd: Berthd,
        layer: LayerRef,
        fill_lock: Option<PathBuf>,
        guards: Guards,
    ) -> std::io::Result<Layer> {
        std::fs::create_dir_all(dir.join("chunks"))?;
        let reads = ReadGate::new(fill_lock.as_deref().map(reads_lock_path).as_deref());
        let bad = std::fs::read_to_string(dir.join(BAD)).ok();
        Ok(Layer {
            index,
            dir: dir.to_owned(),
            berthd: berthd.with_timeout(guards.read_timeout),
            layer,
            fetching: Mutex::default(),
            hot: Mutex::default(),
            fill_lock,
            reads,
            guards,
            bad: Mutex::new(bad),
            failed: Mutex::default(),
            headers_checked: Mutex::default(),
            disk_short: Default::default(),
            recording: Mutex::default(),
        })
    }

    /// Refuses every read from now on, and records why beside the layer
    /// (`lazy/bad`), so the snapshotter stops using it.
    fn condemn(&self, why: String) {
        tracing::error!(layer = %self.layer.digest, "{why}; the layer is not served any more, its chunks are dropped, new containers need the image pulled again");
        let _ = std::fs::write(self.dir.join(BAD), &why);
        let _ = std::fs::remove_dir_all(self.dir.join("chunks"));
        self.hot.lock().unwrap().clear();
        *self.bad.lock().unwrap() = Some(why);
    }

    fn check_not_bad(&self) -> Result<(), ReadError> {
        match &*self.bad.lock().unwrap() {
            Some(why) => Err(ReadError::Refused { layer: self.layer.digest.clone(), why: why.clone() }),
            None => Ok(()),
        }
    }

    fn chunk_path(&self, i: usize) -> PathBuf {
        self.dir.join("chunks").join(i.to_string())
    }

    fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.index.chunk_size;
        self.index.chunk_size.min(self.index.size - start)
    }

    /// Whether chunk `i` is on disk.
    pub fn has_chunk(&self, i: usize) -> bool {
        self.chunk_path(i).exists()
    }

    /// Chunks already on disk.
    pub fn present(&self) -> usize {
        (0..self.index.chunks.len()).filter(|&i| self.has_chunk(i)).count()
    }

    fn hot_get(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        self.hot.lock().unwrap().iter().find(|(n, _)| *n == i).map(|(_, d)| d.clone())
    }

    fn hot_put(&self, i: usize, d: Arc<Vec<u8>>) {
        let mut h = self.hot.lock().unwrap();
        h.retain(|(n, _)| *n != i);
        h.insert(0, (i, d));
        h.truncate(HOT_CHUNKS);
    }

    /// Chunk `i`, from memory, disk, or berthd.
    pub async fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, ReadError> {
        self.check_not_bad()?;
        if i >= self.index.chunks.len() {
            return Err(ReadError::PastEnd(i));
        }
        if let Some(d) = self.hot_get(i) {
            return Ok(d);
        }
        if self.failed.lock().unwrap().get(&i).is_some_and(|t| t.elapsed() < self.guards.read_timeout) {
            return Err(ReadError::RecentlyFailed(i));
        }
        let lock = self.fetching.lock().unwrap().entry(i).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(d) = self.hot_get(i) {
            return Ok(d);
        }
        let path = self.chunk_path(i);
        let data = match tokio::fs::read(&path).await {
            Ok(d) if d.len() as u64 == self.chunk_len(i) => d,
            _ => match self.fetch(i).await {
                Ok(d) => d,
                Err(e) => {
                    self.failed.lock().unwrap().insert(i, Instant::now());
                    self.fetching.lock().unwrap().remove(&i);
                    return Err(e);
                }
            },
        };
        let data = Arc::new(data);
        self.hot_put(i, data.clone());
        self.fetching.lock().unwrap().remove(&i);
        Ok(data)
    }

    async fn fetch(&self, i: usize) -> Result<Vec<u8>, ReadError> {
        let _waits = self.reads.enter();
        if let Some(r) = self.recording.lock().unwrap().as_mut() {
            if !r.chunks.contains(&(i as u32)) {
                r.chunks.push(i as u32); // a failed fetch may be asked again
            }
            r.last = Some(Instant::now());
        }
        let start = i as u64 * self.index.chunk_size;
        let asked = std::time::Instant::now();
        let body = self.berthd.range(&self.layer, start, self.chunk_len(i)).await?;
        crate::stats::fetched(body.len() as u64, asked.elapsed().as_secs_f64());
        self.keep(i, &body).await?;
        Ok(body.to_vec())
    }

    /// Checks chunk `i` against the index and stores it on disk when the
    /// disk keeps its reserve. `Ok(false)`: verified but not stored (it is
    /// served from memory this time; the disk is only a cache).
    async fn keep(&self, i: usize, body: &[u8]) -> Result<bool, ReadError> {
        let got = hex::encode(Sha256::digest(body));
        if got != self.index.chunks[i] {
            return Err(ReadError::WrongChunk {
                chunk: i,
                layer: self.layer.digest.clone(),
                got,
                want: self.index.chunks[i].clone(),
            });
        }
        if crate::disk::free_bytes(&self.dir).is_some_and(|free| free < self.guards.min_free + body.len() as u64) {
            self.short_of_disk("the disk is at its reserve (min_free)");
            return Ok(false);
        }
        let path = self.chunk_path(i);
        let tmp = path.with_extension("tmp");
        let body = body.to_vec();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = std::fs::remove_file(self.chunk_path(i).with_extension("tmp"));
                self.short_of_disk(&format!("writing a chunk failed: {e}"));
                Ok(false)
            }
        }
    }

    /// Logs, once, that chunks are not being kept.
    fn short_of_disk(&self, why: &str) {
        if !self.disk_short.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(layer = %self.layer.digest, dir = %self.dir.display(), "cannot keep chunks on disk ({why}); reads are served from berthd and the background fill waits for space");
        }
    }

    /// Starts recording the chunks container reads fetch.
    pub fn record(&self) {
        *self.recording.lock().unwrap() = Some(Recording::default());
    }

    /// What was recorded so far (`None`: not recording).
    pub fn recorded(&self) -> Option<(usize, Option<Instant>)> {
        self.recording.lock().unwrap().as_ref().map(|r| (r.chunks.len(), r.last))
    }

    /// Stops recording; returns what was recorded.
    pub fn take_recording(&self) -> Option<Recording> {
        self.recording.lock().unwrap().take()
    }

    /// The layer as berthd names it, and the client to reach it.
    pub fn source(&self) -> (&Berthd, &LayerRef) {
        (&self.berthd, &self.layer)
    }

    /// Fetches the missing chunks among `first..first + n` ahead of the
    /// container's reads (a prefetch list's run): like a read, it makes the
    /// node's background fills wait.
    pub async fn fetch_ahead(&self, first: usize, n: usize) -> Result<(usize, u64), ReadError> {
        let _waits = self.reads.enter();
        self.fetch_run(first, n).await
    }

    /// Fetches the missing chunks among `first..first + n` with one request
    /// (the background fill's unit), holding each chunk's fetch lock so a
    /// container read of one of them waits for this fetch instead of
    /// repeating it. Returns how many chunks and bytes it fetched.
    async fn fetch_run(&self, first: usize, n: usize) -> Result<(usize, u64), ReadError> {
        let locks: Vec<_> =
            (first..first + n).map(|i| self.fetching.lock().unwrap().entry(i).or_default().clone()).collect();
        let mut guards = Vec::with_capacity(n);
        for l in &locks {
            guards.push(l.lock().await);
        }
        // Chunks a reader fetched meanwhile end the run early.
        let n = (first..first + n).take_while(|&i| !self.has_chunk(i)).count();
        if n == 0 {
            return Ok((0, 0));
        }
        let start = first as u64 * self.index.chunk_size;
        let len: u64 = (first..first + n).map(|i| self.chunk_len(i)).sum();
        let asked = std::time::Instant::now();
        let body = self.berthd.range(&self.layer, start, len).await?;
        crate::stats::fetched(len, asked.elapsed().as_secs_f64());
        crate::stats::filled(len);
        let mut at = 0;
        let mut stored = 0;
        for i in first..first + n {
            let l = self.chunk_len(i) as usize;
            if self.keep(i, &body[at..at + l]).await? {
                stored += 1;
            }
            at += l;
        }
        drop(guards);
        let mut fetching = self.fetching.lock().unwrap();
        for i in first..first + n {
            fetching.remove(&i);
        }
        if stored < n {
            return Err(ReadError::DiskFull);
        }
        Ok((n, len))
    }

    /// Checks, once per file, that the tar header before a file's data
    /// (at `start`, `len` bytes) says what the index says: a regular file
    /// of that size with those permission bits. The header arrives in a
    /// verified chunk like any data, so an index that lies about a file is
    /// caught before the file's first byte is served, and the layer is
    /// refused.
    pub async fn check_header(&self, start: u64, len: u64, mode: u32) -> Result<(), ReadError> {
        if start < 512 || self.headers_checked.lock().unwrap().contains(&start) {
            return Ok(());
        }
        let block = self.read_raw(start - 512, 512).await?;
        match crate::tarheader::describes(&block, len, mode) {
            Ok(()) => {
                self.headers_checked.lock().unwrap().insert(start);
                Ok(())
            }
            Err(why) => {
                let e = ReadError::HeaderMismatch { offset: start, why };
                self.condemn(e.to_string());
                Err(e)
            }
        }
    }

    /// `len` bytes of the tar at `offset` (clamped to the end).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let data = self.read_raw(offset, len).await?;
        crate::stats::read(data.len() as u64);
        Ok(data)
    }

    async fn read_raw(&self, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let end = (offset + len).min(self.index.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let cs = self.index.chunk_size;
        let mut pos = offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let chunk = self.chunk(i).await?;
            let from = (pos - i as u64 * cs) as usize;
            let to = ((end - i as u64 * cs) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
            pos = i as u64 * cs + to as u64;
        }
        Ok(out)
    }

    /// Fetches every missing chunk, in order, at most `rate` bytes/s of the
    /// stored (compressed) blob for the node, waiting while container reads
    /// anywhere on the node wait for berthd. Returns when the layer is
    /// complete; errors are retried with a growing pause.
    pub async fn fill(self: Arc<Self>, rate: u64) {
        let mut backoff = Duration::from_millis(500);
        let total = self.index.chunks.len();
        let run = match rate {
            0 => FILL_RUN,
            r => (r / self.index.link_bytes(self.index.chunk_size).max(1)).clamp(1, FILL_RUN as u64) as usize,
        };
        let mut i = 0;
        while i < total {
            loop {
                if self.has_chunk(i) {
                    i += 1;
                    break;
                }
                // The missing chunks from `i` to the end of its aligned run.
                let run_end = ((i / run + 1) * run).min(total);
                let n = (i..run_end).take_while(|&c| !self.has_chunk(c)).count();
                let turn = match &self.fill_lock {
                    Some(path) => NodeTurn::take(path).await,
                    None => None,
                };
                // With the turn held, so no other fill starts meanwhile.
                self.reads.wait_idle().await;
                let started = tokio::time::Instant::now();
                match self.fetch_run(i, n).await {
                    Ok((done, bytes)) => {
                        backoff = Duration::from_millis(500);
                        if rate > 0 {
                            let due = Duration::from_secs_f64(self.index.link_bytes(bytes) as f64 / rate as f64);
                            tokio::time::sleep_until(started + due).await;
                        }
                        drop(turn);
                        i += done;
                        break;
                    }
                    Err(e) => {
                        if self.check_not_bad().is_err() {
                            return;
                        }
                        tracing::warn!(chunk = i, error = %e, "background fetch failed; retrying");
                        drop(turn);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        self.verify_whole().await;
    }

    /// Hashes the complete layer from disk and checks it against the chain
    /// id containerd named the snapshot by; a mismatch condemns the layer.
    async fn verify_whole(&self) {
        let Some(chain) = self.guards.chain.clone() else {
            tracing::info!(layer = %self.layer.digest, "layer complete on local disk");
            return;
        };
        let (dir, chunks) = (self.dir.join("chunks"), self.index.chunks.len());
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut h = Sha256::new();
            for i in 0..chunks {
                h.update(std::fs::read(dir.join(i.to_string()))?);
            }
            Ok(format!("sha256:{}", hex::encode(h.finalize())))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match hashed {
            Ok(diff_id) if chain.holds(&diff_id) => {
                tracing::info!(layer = %self.layer.digest, %diff_id, "layer complete on local disk and verified against its chain id");
            }
            Ok(diff_id) => self.condemn(format!(
                "the layer's content hashes to {diff_id}, which does not give chain id {} from {:?}",
                chain.target, chain.parent
            )),
            Err(e) => tracing::warn!(layer = %self.layer.digest, "cannot hash the finished layer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_tie_a_layer_to_its_diff_id() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let first = ChainCheck { parent: String::new(), target: d1.clone() };
        assert!(first.holds(&d1));
        assert!(!first.holds(&d2));
        // containerd's chain id: sha256(parent + " " + diff_id).
        let chain2 = format!("sha256:{}", hex::encode(Sha256::digest(format!("{d1} {d2}"))));
        let second = ChainCheck { parent: d1.clone(), target: chain2 };
        assert!(second.holds(&d2));
        assert!(!second.holds(&d1));
    }

    #[test]
    fn read_error_texts() {
        let e = ReadError::HeaderMismatch { offset: 1024, why: HeaderError::Size { tar: 5, index: 6 } };
        let why = e.to_string();
        assert_eq!(
            why,
            "the index's entry at tar offset 1024 does not match its tar header (5 bytes in the tar, 6 in the index)"
        );
        // What a condemned layer's reads say afterwards.
        let e = ReadError::Refused { layer: "sha256:ab".into(), why };
        assert_eq!(
            e.to_string(),
            "layer sha256:ab is refused: the index's entry at tar offset 1024 does not match its tar header (5 bytes in the tar, 6 in the index)"
        );
        assert_eq!(
            ReadError::RecentlyFailed(3).to_string(),
            "chunk 3 could not be fetched a moment ago; failing at once"
        );
        // berthd's errors pass through unchanged.
        let e = ReadError::from(ClientError::Timeout(Duration::from_secs(10)));
        assert_eq!(e.to_string(), "berthd did not answer in 10s");
    }
}
