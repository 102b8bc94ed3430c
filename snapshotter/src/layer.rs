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
//! flight, so the node ends up with the whole layer. The rate is the
//! node's: every layer's fill (each in its own mount process) takes a lock
//! on one file while it fetches and waits out its share.

use crate::berthd::{Berthd, LayerRef};
use crate::index::LayerIndex;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks kept in memory for reads that hit the same chunk in a row.
const HOT_CHUNKS: usize = 8;

/// Chunks the background fill asks berthd for at once, aligned to runs of
/// this many: berthd decompresses a range from the checkpoint before it
/// (every 2 MiB of tar), so one 2 MiB request costs what one 512 KiB
/// request does, and fetching chunk by chunk would read each span of the
/// compressed layer from storage four times. A slow `rate` shortens runs
/// to what it allows in a second, down to one chunk.
const FILL_RUN: usize = 4;

pub struct Layer {
    pub index: LayerIndex,
    dir: PathBuf,
    berthd: Berthd,
    layer: LayerRef,
    fetching: Mutex<HashMap<usize, Arc<tokio::sync::Mutex<()>>>>,
    hot: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// Reads a container is waiting for; the background fill yields to them.
    waiting: AtomicUsize,
}

impl Layer {
    /// `dir` holds `chunks/`; it is created if missing.
    pub fn new(index: LayerIndex, dir: &Path, berthd: Berthd, layer: LayerRef) -> std::io::Result<Layer> {
        std::fs::create_dir_all(dir.join("chunks"))?;
        Ok(Layer {
            index,
            dir: dir.to_owned(),
            berthd,
            layer,
            fetching: Mutex::default(),
            hot: Mutex::default(),
            waiting: AtomicUsize::new(0),
        })
    }

    fn chunk_path(&self, i: usize) -> PathBuf {
        self.dir.join("chunks").join(i.to_string())
    }

    fn chunk_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.index.chunk_size;
        self.index.chunk_size.min(self.index.size - start)
    }

    /// Chunks already on disk.
    pub fn present(&self) -> usize {
        (0..self.index.chunks.len()).filter(|i| self.chunk_path(*i).exists()).count()
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
    pub async fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, String> {
        if i >= self.index.chunks.len() {
            return Err(format!("chunk {i} is past the end of the layer"));
        }
        if let Some(d) = self.hot_get(i) {
            return Ok(d);
        }
        let lock = self.fetching.lock().unwrap().entry(i).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(d) = self.hot_get(i) {
            return Ok(d);
        }
        let path = self.chunk_path(i);
        let data = match tokio::fs::read(&path).await {
            Ok(d) if d.len() as u64 == self.chunk_len(i) => d,
            _ => self.fetch(i).await?,
        };
        let data = Arc::new(data);
        self.hot_put(i, data.clone());
        self.fetching.lock().unwrap().remove(&i);
        Ok(data)
    }

    async fn fetch(&self, i: usize) -> Result<Vec<u8>, String> {
        let start = i as u64 * self.index.chunk_size;
        let body = self.berthd.range(&self.layer, start, self.chunk_len(i)).await?;
        self.keep(i, &body).await?;
        Ok(body.to_vec())
    }

    /// Checks chunk `i` against the index and stores it on disk.
    async fn keep(&self, i: usize, body: &[u8]) -> Result<(), String> {
        let got = hex::encode(Sha256::digest(body));
        if got != self.index.chunks[i] {
            return Err(format!(
                "chunk {i} of {} has sha256 {got}, the index says {}; refusing to serve it",
                self.layer.digest, self.index.chunks[i]
            ));
        }
        let path = self.chunk_path(i);
        let tmp = path.with_extension("tmp");
        let write = async {
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            // Served from memory this time; the disk is only a cache.
            tracing::warn!(chunk = i, error = %e, "cannot keep a fetched chunk on disk");
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(())
    }

    /// Fetches the missing chunks among `first..first + n` with one request
    /// (the background fill's unit), holding each chunk's fetch lock so a
    /// container read of one of them waits for this fetch instead of
    /// repeating it. Returns how many chunks and bytes it fetched.
    async fn fetch_run(&self, first: usize, n: usize) -> Result<(usize, u64), String> {
        let locks: Vec<_> =
            (first..first + n).map(|i| self.fetching.lock().unwrap().entry(i).or_default().clone()).collect();
        let mut guards = Vec::with_capacity(n);
        for l in &locks {
            guards.push(l.lock().await);
        }
        // Chunks a reader fetched meanwhile end the run early.
        let n = (first..first + n).take_while(|i| !self.chunk_path(*i).exists()).count();
        if n == 0 {
            return Ok((0, 0));
        }
        let start = first as u64 * self.index.chunk_size;
        let len: u64 = (first..first + n).map(|i| self.chunk_len(i)).sum();
        let body = self.berthd.range(&self.layer, start, len).await?;
        let mut at = 0;
        for i in first..first + n {
            let l = self.chunk_len(i) as usize;
            self.keep(i, &body[at..at + l]).await?;
            at += l;
        }
        drop(guards);
        let mut fetching = self.fetching.lock().unwrap();
        for i in first..first + n {
            fetching.remove(&i);
        }
        Ok((n, len))
    }

    /// `len` bytes of the tar at `offset` (clamped to the end).
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let out = self.read_inner(offset, len).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        out
    }

    async fn read_inner(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
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

    /// Fetches every missing chunk, in order, at most `rate` bytes/s,
    /// waiting while container reads are in flight. Returns when the layer
    /// is complete; errors are retried with a growing pause.
    pub async fn fill(self: Arc<Self>, rate: u64, node_lock: Option<PathBuf>) {
        let mut backoff = Duration::from_millis(500);
        let total = self.index.chunks.len();
        let run = match rate {
            0 => FILL_RUN,
            r => (r / self.index.chunk_size).clamp(1, FILL_RUN as u64) as usize,
        };
        let mut i = 0;
        while i < total {
            loop {
                while self.waiting.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if self.chunk_path(i).exists() {
                    i += 1;
                    break;
                }
                // The missing chunks from `i` to the end of its aligned run.
                let run_end = ((i / run + 1) * run).min(total);
                let n = (i..run_end).take_while(|c| !self.chunk_path(*c).exists()).count();
                let turn = match &node_lock {
                    Some(path) => NodeTurn::take(path).await,
                    None => None,
                };
                let started = tokio::time::Instant::now();
                match self.fetch_run(i, n).await {
                    Ok((done, bytes)) => {
                        backoff = Duration::from_millis(500);
                        if rate > 0 {
                            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                            tokio::time::sleep_until(started + due).await;
                        }
                        drop(turn);
                        i += done;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(chunk = i, error = %e, "background fetch failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        tracing::info!(layer = %self.layer.digest, "layer complete on local disk");
    }
}

/// A turn of the node's background fill: an exclusive `flock` on one file,
/// released when dropped (or when the process dies).
struct NodeTurn {
    _locked: std::fs::File,
}

impl NodeTurn {
    /// Waits for the turn; `None` (fill without one) if the lock file
    /// cannot be used, which only loses the node-wide bound.
    async fn take(path: &Path) -> Option<NodeTurn> {
        use std::os::fd::AsRawFd;
        let file = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no fill lock; this layer fills on its own");
                return None;
            }
        };
        let locked = tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a descriptor this closure owns through `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            (rc == 0).then_some(file)
        })
        .await
        .ok()
        .flatten();
        locked.map(|f| NodeTurn { _locked: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_turns_are_exclusive_across_holders() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("fill.lock");
        let first = NodeTurn::take(&lock).await.expect("a turn");
        let second = tokio::spawn({
            let lock = lock.clone();
            async move { NodeTurn::take(&lock).await.map(|_| tokio::time::Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "a second fill got a turn while the first held it");
        let released = tokio::time::Instant::now();
        drop(first);
        let got = second.await.unwrap().expect("a turn after the first");
        assert!(got >= released);
    }
}
