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

use crate::berthd::{Berthd, LayerRef};
use crate::index::LayerIndex;
use crate::node_fill::{reads_lock_path, NodeTurn, ReadGate};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chunks kept in memory for reads that hit the same chunk in a row.
const HOT_CHUNKS: usize = 8;

/// Chunks the background fill asks berthd for at once, aligned to runs of
/// this many: berthd decompresses a range from the checkpoint before it
/// (every 1 MiB of tar, 2 MiB in older indexes) straight through to its
/// end, so one 2 MiB request reads the compressed layer once where chunk
/// by chunk requests could read a span from storage twice or more. A slow
/// `rate` shortens runs to what it allows in a second, down to one chunk.
const FILL_RUN: usize = 4;

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
}

impl Layer {
    /// `dir` holds `chunks/`; it is created if missing. `fill_lock` is the
    /// node's fill lock, beside which the node's readers' lock lives.
    pub fn new(
        index: LayerIndex,
        dir: &Path,
        berthd: Berthd,
        layer: LayerRef,
        fill_lock: Option<PathBuf>,
    ) -> std::io::Result<Layer> {
        std::fs::create_dir_all(dir.join("chunks"))?;
        let reads = ReadGate::new(fill_lock.as_deref().map(reads_lock_path).as_deref());
        Ok(Layer {
            index,
            dir: dir.to_owned(),
            berthd,
            layer,
            fetching: Mutex::default(),
            hot: Mutex::default(),
            fill_lock,
            reads,
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
        let _waits = self.reads.enter();
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
                if self.chunk_path(i).exists() {
                    i += 1;
                    break;
                }
                // The missing chunks from `i` to the end of its aligned run.
                let run_end = ((i / run + 1) * run).min(total);
                let n = (i..run_end).take_while(|c| !self.chunk_path(*c).exists()).count();
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
