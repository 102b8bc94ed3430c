//! The node-local cache: a storage driver wrapping a remote one (S3), so a
//! node reads each blob from the bucket at most once while it stays cached.
//!
//! - Only content-addressed objects are cached: paths for which `key_of`
//!   returns a digest (blobs and manifests by digest). They never change, so
//!   a cached copy is never stale. Tags and links are always read from the
//!   backend, so a tag pushed on another node is seen on the next request.
//! - A fill is shared: the first reader of an uncached object starts one
//!   backend read into `tmp/`; every reader, including later ones, streams
//!   the bytes as they arrive. The file moves to `blobs/<alg>/<xx>/<hex>`
//!   only after its digest checked out and it was synced, so a partial or
//!   corrupt file is never served from the cache, even after `kill -9`;
//!   `tmp/` is emptied at start.
//! - Entries are evicted least-recently-used to stay under `max_size`; the
//!   index is rebuilt from the directory at start (mtime order), so the
//!   cache survives restarts. An evicted file being read stays readable
//!   (Unix unlink semantics) until its readers finish.
//! - Metadata reads (links, tags) that fail because the backend is
//!   unreachable are answered from the last value seen, so everything in the
//!   cache stays pullable while S3 is down; what was never seen fails fast.

use super::{ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use crate::digest::{Digest, Hasher};
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// Maps a storage path to the digest of its content, if it is
/// content-addressed.
pub type ContentKey = fn(&str) -> Option<Digest>;

/// Bytes per chunk a cached file is streamed in. With FILL_BATCH this
/// bounds the memory one slow reader holds (a Pi runs berthd in 64 MiB).
const READ_CHUNK: usize = 256 * 1024;
/// Bytes gathered before each write of a fill.
const FILL_BATCH: usize = 256 * 1024;
/// Bound on remembered metadata for serving while the backend is down.
const MAX_META: usize = 20_000;

#[derive(Default)]
struct Index {
    entries: HashMap<Digest, (u64, u64)>,
    order: BTreeMap<u64, Digest>,
    total: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, d: &Digest) -> Option<u64> {
        let (size, old) = *self.entries.get(d)?;
        self.order.remove(&old);
        self.tick += 1;
        self.order.insert(self.tick, d.clone());
        self.entries.insert(d.clone(), (size, self.tick));
        Some(size)
    }

    fn insert(&mut self, d: Digest, size: u64) {
        if self.entries.contains_key(&d) {
            self.touch(&d);
            return;
        }
        self.tick += 1;
        self.order.insert(self.tick, d.clone());
        self.entries.insert(d, (size, self.tick));
        self.total += size;
    }

    fn remove(&mut self, d: &Digest) -> Option<u64> {
        let (size, tick) = self.entries.remove(d)?;
        self.order.remove(&tick);
        self.total -= size;
        Some(size)
    }

    /// Least recently used entries to drop so that `total <= max`.
    fn over(&mut self, max: u64) -> Vec<Digest> {
        let mut out = Vec::new();
        while self.total > max {
            let Some((_, d)) = self.order.pop_first() else { break };
            if let Some((size, _)) = self.entries.remove(&d) {
                self.total -= size;
            }
            out.push(d);
        }
        out
    }
}

/// Where a shared fill stands.
#[derive(Clone, Default)]
struct Progress {
    /// Size of the object, once the backend said.
    total: Option<u64>,
    written: u64,
    /// Too large for the cache: readers go to the backend directly.
    bypass: bool,
    /// Every byte is written and the digest checked out: readers may
    /// finish without waiting for the file to be synced and renamed.
    verified: bool,
    done: Option<std::result::Result<(), FillError>>,
}

/// A fill failure, cloneable so every waiting reader gets it.
#[derive(Clone, Debug)]
enum FillError {
    NotFound(String),
    Unavailable { backend: String, message: String },
    Other(String),
}

impl FillError {
    fn from(e: &StorageError) -> FillError {
        match e {
            StorageError::NotFound(p) => FillError::NotFound(p.clone()),
            StorageError::Unavailable { backend, message } => {
                FillError::Unavailable { backend: backend.clone(), message: message.clone() }
            }
            other => FillError::Other(other.to_string()),
        }
    }

    fn into_storage(self, path: &str) -> StorageError {
        match self {
            FillError::NotFound(p) => StorageError::NotFound(p),
            FillError::Unavailable { backend, message } => StorageError::Unavailable { backend, message },
            FillError::Other(m) => StorageError::Io { path: path.to_string(), source: std::io::Error::other(m) },
        }
    }
}

/// The last content and metadata seen for a non-cached path.
type Remembered = (Option<Bytes>, Option<FileInfo>);

struct Fill {
    tmp: PathBuf,
    progress: watch::Receiver<Progress>,
}

struct Shared {
    inner: Arc<dyn StorageDriver>,
    dir: PathBuf,
    max_size: u64,
    index: Mutex<Index>,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    meta: Mutex<HashMap<String, Remembered>>,
}

pub struct CachedDriver {
    shared: Arc<Shared>,
    key_of: ContentKey,
}

fn cache_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
}

impl CachedDriver {
    /// Opens (or creates) the cache in `dir`, discarding unfinished fills
    /// and rebuilding the LRU index from what is there.
    pub fn open(inner: Arc<dyn StorageDriver>, key_of: ContentKey, dir: &Path, max_size: u64) -> std::io::Result<Self> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(dir.join("blobs"))?;
        let mut found = Vec::new();
        for alg in std::fs::read_dir(dir.join("blobs"))?.flatten() {
            for prefix in std::fs::read_dir(alg.path())?.flatten() {
                for f in std::fs::read_dir(prefix.path())?.flatten() {
                    let digest = format!("{}:{}", alg.file_name().to_string_lossy(), f.file_name().to_string_lossy());
                    let (Ok(d), Ok(md)) = (digest.parse::<Digest>(), f.metadata()) else {
                        let _ = std::fs::remove_file(f.path());
                        continue;
                    };
                    found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, md.len()));
                }
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, d, size) in found {
            index.insert(d, size);
        }
        let shared = Arc::new(Shared {
            inner,
            dir: dir.to_path_buf(),
            max_size,
            index: Mutex::new(index),
            fills: Mutex::default(),
            meta: Mutex::default(),
        });
        shared.evict();
        metrics::get().cache_size_bytes.store(shared.index.lock().unwrap().total, Relaxed);
        Ok(CachedDriver { shared, key_of })
    }

    /// Waits until no fill is running (fills finish in the background
    /// after their readers are done).
    pub async fn settled(&self) {
        while !self.shared.fills.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Bytes currently cached.
    pub fn size(&self) -> u64 {
        self.shared.index.lock().unwrap().total
    }

    fn lookup(&self, d: &Digest) -> Option<u64> {
        self.shared.index.lock().unwrap().touch(d)
    }

    /// The shared fill for `d`, started if none runs. `None` when the object
    /// is (now) cached.
    fn fill_for(&self, d: &Digest, path: &str) -> Option<Arc<Fill>> {
        let mut fills = self.shared.fills.lock().unwrap();
        if let Some(f) = fills.get(d) {
            return Some(f.clone());
        }
        if self.shared.index.lock().unwrap().entries.contains_key(d) {
            return None;
        }
        let (tx, rx) = watch::channel(Progress::default());
        let tmp = self.shared.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let fill = Arc::new(Fill { tmp: tmp.clone(), progress: rx });
        fills.insert(d.clone(), fill.clone());
        metrics::get().cache_fills.fetch_add(1, Relaxed);
        let shared = self.shared.clone();
        let (d, path) = (d.clone(), path.to_string());
        tokio::spawn(async move {
            let res = shared.run_fill(&d, &path, &tmp, &tx).await;
            if let Err(e) = &res {
                tracing::warn!(digest = %d, "cache fill failed: {e}");
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            tx.send_modify(|p| p.done = Some(res.map_err(|e| FillError::from(&e))));
            shared.fills.lock().unwrap().remove(&d);
        });
        Some(fill)
    }

    fn hit_stream(&self, d: &Digest, offset: u64, size: u64) -> Option<std::io::Result<ByteStream>> {
        let path = cache_path(&self.shared.dir, d);
        let file = std::fs::File::open(&path).ok()?;
        if offset > size {
            return Some(Err(std::io::Error::other("offset beyond end")));
        }
        let m = metrics::get();
        m.cache_hits.fetch_add(1, Relaxed);
        m.cache_hit_bytes.fetch_add(size - offset, Relaxed);
        let mut file = tokio::fs::File::from_std(file);
        Some(Ok(async_stream_from(async move {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            Ok(tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK))
        })))
    }

    fn remember(&self, path: &str, content: Option<Bytes>, info: Option<FileInfo>) {
        let mut meta = self.shared.meta.lock().unwrap();
        if meta.len() >= MAX_META {
            meta.clear();
        }
        let entry = meta.entry(path.to_string()).or_default();
        if content.is_some() {
            entry.0 = content;
        }
        if info.is_some() {
            entry.1 = info;
        }
    }
}

/// Turns a future producing a stream into a stream (errors become items).
fn async_stream_from<F, S>(fut: F) -> ByteStream
where
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    futures_util::stream::once(fut)
        .flat_map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
}

impl Shared {
    async fn run_fill(&self, d: &Digest, path: &str, tmp: &Path, tx: &watch::Sender<Progress>) -> Result<()> {
        let size = self.inner.stat(path).await?.size;
        if size > self.max_size {
            tx.send_modify(|p| {
                p.total = Some(size);
                p.bypass = true;
            });
            return Ok(());
        }
        let io = |e| StorageError::io(path, e);
        let file = std::fs::File::create(tmp).map_err(io)?;
        tx.send_modify(|p| p.total = Some(size));
        let mut stream = self.inner.reader(path, 0).await?;
        // A blocking writer thread takes batches of about FILL_BATCH bytes
        // while this task keeps reading and hashing: network, hash and disk
        // overlap. Readers are told about bytes once they are in the file.
        let (batches, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let progress = tx.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
            use std::io::Write;
            let mut file = file;
            let mut written = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                file.write_all(&batch)?;
                written += batch.len() as u64;
                progress.send_modify(|p| p.written = written);
            }
            Ok((file, written))
        });
        let mut hasher = Hasher::new(d.algorithm());
        let mut pending = bytes::BytesMut::with_capacity(FILL_BATCH);
        let read: Result<()> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StorageError::Unavailable {
                    backend: self.inner.name().to_string(),
                    message: format!("reading a blob broke off: {e}"),
                })?;
                hasher.update(&chunk);
                pending.extend_from_slice(&chunk);
                if pending.len() >= FILL_BATCH && batches.send(pending.split().freeze()).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            if !pending.is_empty() {
                let _ = batches.send(pending.split().freeze()).await;
            }
            Ok(())
        }
        .await;
        drop(batches);
        let (file, written) = writer.await.map_err(|e| io(std::io::Error::other(e)))?.map_err(io)?;
        read?;
        let actual = hasher.finish();
        if &actual != d || written != size {
            return Err(StorageError::Io {
                path: path.to_string(),
                source: std::io::Error::other(format!(
                    "storage returned {written} bytes with digest {actual} for {d} ({size} bytes expected); not cached"
                )),
            });
        }
        tx.send_modify(|p| p.verified = true);
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?;
        let (src, dest) = (tmp.to_path_buf(), cache_path(&self.dir, d));
        tokio::task::spawn_blocking(move || crate::durable::rename(&src, &dest))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?;
        metrics::get().cache_fill_bytes.fetch_add(written, Relaxed);
        self.index.lock().unwrap().insert(d.clone(), size);
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        let (victims, total) = {
            let mut idx = self.index.lock().unwrap();
            let v = idx.over(self.max_size);
            (v, idx.total)
        };
        for d in &victims {
            let _ = std::fs::remove_file(cache_path(&self.dir, d));
            tracing::debug!(digest = %d, "evicted from cache");
        }
        let m = metrics::get();
        m.cache_evictions.fetch_add(victims.len() as u64, Relaxed);
        m.cache_size_bytes.store(total, Relaxed);
    }

    /// Stores verified content (a manifest read or pushed through this node).
    async fn store(&self, d: &Digest, content: &Bytes) {
        if content.len() as u64 > self.max_size || &Digest::of(d.algorithm(), content) != d {
            return;
        }
        let dest = cache_path(&self.dir, d);
        let data = content.clone();
        let res = tokio::task::spawn_blocking(move || crate::durable::write_file(&dest, &data))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match res {
            Ok(()) => {
                self.index.lock().unwrap().insert(d.clone(), content.len() as u64);
                self.evict();
            }
            Err(e) => {
                tracing::warn!(digest = %d, "cannot cache: {e}");
            }
        }
    }
}

/// Streams a fill from `offset` as bytes arrive.
fn fill_stream(fill: Arc<Fill>, final_path: PathBuf, path: String, offset: u64) -> ByteStream {
    struct St {
        fill: Arc<Fill>,
        rx: watch::Receiver<Progress>,
        file: Option<tokio::fs::File>,
        final_path: PathBuf,
        path: String,
        pos: u64,
        failed: bool,
    }
    let rx = fill.progress.clone();
    let st = St { fill, rx, file: None, final_path, path, pos: offset, failed: false };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            let p = st.rx.borrow_and_update().clone();
            if p.written > st.pos {
                if st.file.is_none() {
                    let opened = match tokio::fs::File::open(&st.fill.tmp).await {
                        Ok(f) => Ok(f),
                        Err(_) => tokio::fs::File::open(&st.final_path).await,
                    };
                    let mut f = match opened {
                        Ok(f) => f,
                        Err(e) => {
                            st.failed = true;
                            return Some((Err(e), st));
                        }
                    };
                    if let Err(e) = f.seek(std::io::SeekFrom::Start(st.pos)).await {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                    st.file = Some(f);
                }
                let n = (p.written - st.pos).min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                let file = st.file.as_mut().expect("opened above");
                if let Err(e) = file.read_exact(&mut buf).await {
                    st.failed = true;
                    return Some((Err(e), st));
                }
                st.pos += n as u64;
                return Some((Ok(Bytes::from(buf)), st));
            }
            if p.verified && Some(st.pos) == p.total {
                return None;
            }
            match p.done {
                Some(Ok(())) => return None,
                Some(Err(e)) => {
                    st.failed = true;
                    let e = e.into_storage(&st.path);
                    return Some((Err(std::io::Error::other(e.to_string())), st));
                }
                None => {}
            }
            if st.rx.changed().await.is_err() && st.rx.borrow().done.is_none() {
                st.failed = true;
                return Some((Err(std::io::Error::other("cache fill stopped")), st));
            }
        }
    })
    .boxed()
}

#[async_trait]
impl StorageDriver for CachedDriver {
    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let Some(d) = (self.key_of)(path) else {
            return match self.shared.inner.get_content(path).await {
                Ok(b) => {
                    self.remember(path, Some(b.clone()), None);
                    Ok(b)
                }
                Err(e @ StorageError::Unavailable { .. }) => {
                    let stale = self.shared.meta.lock().unwrap().get(path).and_then(|m| m.0.clone());
                    match stale {
                        Some(b) => {
                            metrics::get().cache_stale_served.fetch_add(1, Relaxed);
                            Ok(b)
                        }
                        None => Err(e),
                    }
                }
                Err(e) => {
                    if e.is_not_found() {
                        self.shared.meta.lock().unwrap().remove(path);
                    }
                    Err(e)
                }
            };
        };
        if let Some(size) = self.lookup(&d) {
            if let Ok(b) = tokio::fs::read(cache_path(&self.shared.dir, &d)).await {
                let m = metrics::get();
                m.cache_hits.fetch_add(1, Relaxed);
                m.cache_hit_bytes.fetch_add(size, Relaxed);
                return Ok(Bytes::from(b));
            }
        }
        metrics::get().cache_misses.fetch_add(1, Relaxed);
        let content = self.shared.inner.get_content(path).await?;
        if Digest::of(d.algorithm(), &content) != d {
            return Err(StorageError::Io {
                path: path.to_string(),
                source: std::io::Error::other(format!("storage returned content that does not match {d}")),
            });
        }
        self.shared.store(&d, &content).await;
        Ok(content)
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        self.shared.inner.put_content(path, content.clone()).await?;
        match (self.key_of)(path) {
            Some(d) => self.shared.store(&d, &content).await,
            None => self.remember(path, Some(content), None),
        }
        Ok(())
    }

    async fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<ByteStream> {
        if let Some(d) = (self.key_of)(path) {
            if let Some(size) = self.lookup(&d) {
                match self.hit_stream(&d, offset, size) {
                    Some(Ok(s)) => return Ok(super::take(s, len)),
                    Some(Err(_)) => return Err(StorageError::InvalidOffset { path: path.to_string(), offset }),
                    None => {}
                }
            }
        }
        // Not here: straight from the backend, without a fill.
        self.shared.inner.read_range(path, offset, len).await
    }

    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        let Some(d) = (self.key_of)(path) else { return self.shared.inner.reader(path, offset).await };
        loop {
            if let Some(size) = self.lookup(&d) {
                match self.hit_stream(&d, offset, size) {
                    Some(Ok(s)) => return Ok(s),
                    Some(Err(_)) => return Err(StorageError::InvalidOffset { path: path.to_string(), offset }),
                    None => {
                        // Evicted between lookup and open: fill again.
                        self.shared.index.lock().unwrap().remove(&d);
                    }
                }
            }
            let Some(fill) = self.fill_for(&d, path) else { continue };
            metrics::get().cache_misses.fetch_add(1, Relaxed);
            // Wait until the size is known, to check the offset and learn
            // whether the object bypasses the cache.
            let mut rx = fill.progress.clone();
            let p = loop {
                let p = rx.borrow_and_update().clone();
                if p.total.is_some() || p.done.is_some() {
                    break p;
                }
                if rx.changed().await.is_err() {
                    break rx.borrow().clone();
                }
            };
            if let Some(Err(e)) = p.done {
                return Err(e.into_storage(path));
            }
            if p.bypass {
                return self.shared.inner.reader(path, offset).await;
            }
            if p.total.is_some_and(|t| offset > t) {
                return Err(StorageError::InvalidOffset { path: path.to_string(), offset });
            }
            let final_path = cache_path(&self.shared.dir, &d);
            return Ok(fill_stream(fill, final_path, path.to_string(), offset));
        }
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        self.shared.inner.writer(path, append).await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        if let Some(d) = (self.key_of)(path) {
            if let Some(size) = self.shared.index.lock().unwrap().entries.get(&d).map(|e| e.0) {
                return Ok(FileInfo { path: path.to_string(), size, modified: SystemTime::UNIX_EPOCH, is_dir: false });
            }
        }
        match self.shared.inner.stat(path).await {
            Ok(info) => {
                self.remember(path, None, Some(info.clone()));
                Ok(info)
            }
            Err(e @ StorageError::Unavailable { .. }) => {
                let stale = self.shared.meta.lock().unwrap().get(path).and_then(|m| m.1.clone());
                match stale {
                    Some(info) => {
                        metrics::get().cache_stale_served.fetch_add(1, Relaxed);
                        Ok(info)
                    }
                    None => Err(e),
                }
            }
            Err(e) => {
                if e.is_not_found() {
                    self.shared.meta.lock().unwrap().remove(path);
                }
                Err(e)
            }
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        self.shared.inner.list(path).await
    }

    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        self.shared.inner.redirect_url(path).await
    }

    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        self.shared.inner.move_object(source, dest).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let res = self.shared.inner.delete(path).await;
        {
            let mut meta = self.shared.meta.lock().unwrap();
            let prefix = format!("{path}/");
            meta.retain(|k, _| k != path && !k.starts_with(&prefix));
        }
        if let Some(d) = (self.key_of)(path) {
            if self.shared.index.lock().unwrap().remove(&d).is_some() {
                let _ = std::fs::remove_file(cache_path(&self.shared.dir, &d));
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryDriver;
    use futures_util::TryStreamExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A backend that counts reads, streams slowly, and can be "down".
    #[derive(Default)]
    struct Remote {
        mem: MemoryDriver,
        readers: AtomicUsize,
        gets: AtomicUsize,
        down: AtomicBool,
    }

    impl Remote {
        fn check(&self) -> Result<()> {
            if self.down.load(Relaxed) {
                return Err(StorageError::Unavailable { backend: "test".into(), message: "down".into() });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl StorageDriver for Remote {
        fn name(&self) -> &'static str {
            "remote"
        }
        async fn get_content(&self, path: &str) -> Result<Bytes> {
            self.check()?;
            self.gets.fetch_add(1, Relaxed);
            self.mem.get_content(path).await
        }
        async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
            self.check()?;
            self.mem.put_content(path, content).await
        }
        async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
            self.check()?;
            self.readers.fetch_add(1, Relaxed);
            let data = self.mem.get_content(path).await?.slice(offset as usize..);
            let chunks: Vec<Bytes> = data.chunks(1000).map(Bytes::copy_from_slice).collect();
            Ok(futures_util::stream::iter(chunks)
                .then(|c| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    Ok(c)
                })
                .boxed())
        }
        async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
            self.mem.writer(path, append).await
        }
        async fn stat(&self, path: &str) -> Result<FileInfo> {
            self.check()?;
            self.mem.stat(path).await
        }
        async fn list(&self, path: &str) -> Result<Vec<String>> {
            self.mem.list(path).await
        }
        async fn move_object(&self, s: &str, d: &str) -> Result<()> {
            self.mem.move_object(s, d).await
        }
        async fn delete(&self, path: &str) -> Result<()> {
            self.mem.delete(path).await
        }
    }

    fn key(path: &str) -> Option<Digest> {
        path.strip_prefix("/blobs/")?.replace('/', ":").parse().ok()
    }

    fn blob_path(d: &Digest) -> String {
        format!("/blobs/{}/{}", d.algorithm().as_str(), d.hex())
    }

    async fn put(remote: &Remote, data: &[u8]) -> (Digest, String) {
        let d = Digest::sha256_of(data);
        let p = blob_path(&d);
        remote.mem.put_content(&p, Bytes::copy_from_slice(data)).await.unwrap();
        (d, p)
    }

    async fn read(c: &CachedDriver, path: &str, offset: u64) -> Result<Vec<u8>> {
        let s = c.reader(path, offset).await?;
        let chunks: Vec<Bytes> = s.try_collect().await.map_err(|e| StorageError::io(path, e))?;
        c.settled().await;
        Ok(chunks.concat())
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_backend_read() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Remote::default());
        let body = data(50_000, 1);
        let (_, path) = put(&remote, &body).await;
        let cache = Arc::new(CachedDriver::open(remote.clone(), key, dir.path(), 1 << 20).unwrap());
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let (cache, path) = (cache.clone(), path.clone());
            tasks.push(tokio::spawn(async move { read(&cache, &path, i * 100).await.unwrap() }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), body[i * 100..], "reader {i} got the bytes from its offset");
        }
        assert_eq!(remote.readers.load(Relaxed), 1, "one backend read for 16 concurrent readers");
        // Now cached: served without touching the backend, ranges included.
        assert_eq!(read(&cache, &path, 49_990).await.unwrap(), body[49_990..]);
        assert_eq!(remote.readers.load(Relaxed), 1);
        assert_eq!(cache.size(), 50_000);
    }

    #[tokio::test]
    async fn range_reads_pass_through_without_filling() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Remote::default());
        let body = data(40_000, 3);
        let (_, path) = put(&remote, &body).await;
        let cache = CachedDriver::open(remote.clone(), key, dir.path(), 1 << 20).unwrap();
        let range = |offset, len| {
            let cache = &cache;
            let path = path.clone();
            async move {
                let s = cache.read_range(&path, offset, len).await.unwrap();
                let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
                chunks.concat()
            }
        };
        assert_eq!(range(30_000, 500).await, body[30_000..30_500]);
        cache.settled().await;
        assert_eq!(cache.size(), 0, "a point read does not pull the object into the cache");
        // Once a full read cached it, ranges come from the cache.
        read(&cache, &path, 0).await.unwrap();
        let before = remote.readers.load(Relaxed);
        assert_eq!(range(39_000, 5_000).await, body[39_000..]);
        assert_eq!(remote.readers.load(Relaxed), before);
    }

    #[tokio::test]
    async fn corrupt_backend_content_is_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Remote::default());
        let claimed = Digest::sha256_of(b"the real content");
        let path = blob_path(&claimed);
        remote.mem.put_content(&path, Bytes::from_static(b"something else!!")).await.unwrap();
        let cache = CachedDriver::open(remote.clone(), key, dir.path(), 1 << 20).unwrap();
        assert!(read(&cache, &path, 0).await.is_err(), "the reader learns the fill failed");
        assert_eq!(cache.size(), 0);
        assert!(read(&cache, &path, 0).await.is_err());
        assert_eq!(remote.readers.load(Relaxed), 2, "nothing was cached, so the backend is asked again");
        assert!(cache.get_content(&path).await.is_err(), "get_content verifies too");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no partial files left");
    }

    #[tokio::test]
    async fn least_recently_used_entries_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Remote::default());
        let (a, pa) = put(&remote, &data(100, 1)).await;
        let (b, pb) = put(&remote, &data(100, 2)).await;
        let (c, pc) = put(&remote, &data(100, 3)).await;
        let (_, big) = put(&remote, &data(1000, 4)).await;
        let cache = CachedDriver::open(remote.clone(), key, dir.path(), 250).unwrap();
        read(&cache, &pa, 0).await.unwrap();
        read(&cache, &pb, 0).await.unwrap();
        read(&cache, &pa, 0).await.unwrap(); // a is now more recent than b
        read(&cache, &pc, 0).await.unwrap();
        assert!(cache.size() <= 250);
        assert!(cache_path(dir.path(), &a).exists());
        assert!(!cache_path(dir.path(), &b).exists(), "b was least recently used");
        assert!(cache_path(dir.path(), &c).exists());
        // Larger than the whole cache: served, not cached.
        assert_eq!(read(&cache, &big, 0).await.unwrap(), data(1000, 4));
        assert!(cache.size() <= 250);

        // The cache survives a restart; unfinished fills are discarded.
        std::fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
        let before = remote.readers.load(Relaxed);
        let cache = CachedDriver::open(remote.clone(), key, dir.path(), 250).unwrap();
        assert_eq!(read(&cache, &pa, 0).await.unwrap(), data(100, 1));
        assert_eq!(remote.readers.load(Relaxed), before, "served from the cache after restart");
        assert!(!dir.path().join("tmp/partial").exists());
    }

    #[tokio::test]
    async fn cached_content_and_known_metadata_survive_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Remote::default());
        let (_, path) = put(&remote, &data(3000, 5)).await;
        remote.mem.put_content("/links/tag", Bytes::from_static(b"sha256:abc")).await.unwrap();
        let cache = CachedDriver::open(remote.clone(), key, dir.path(), 1 << 20).unwrap();
        read(&cache, &path, 0).await.unwrap();
        assert_eq!(&cache.get_content("/links/tag").await.unwrap()[..], b"sha256:abc");
        cache.stat("/links/tag").await.unwrap();

        remote.down.store(true, Relaxed);
        assert_eq!(read(&cache, &path, 0).await.unwrap(), data(3000, 5));
        assert_eq!(&cache.get_content("/links/tag").await.unwrap()[..], b"sha256:abc", "last known value");
        assert!(cache.stat("/links/tag").await.is_ok());
        assert!(matches!(cache.get_content("/links/never-seen").await, Err(StorageError::Unavailable { .. })));
        let (_, uncached) = put(&remote, &data(10, 6)).await;
        assert!(matches!(cache.reader(&uncached, 0).await.err(), Some(StorageError::Unavailable { .. })));

        // Metadata is always read from the backend when it answers.
        remote.down.store(false, Relaxed);
        remote.mem.put_content("/links/tag", Bytes::from_static(b"sha256:def")).await.unwrap();
        assert_eq!(&cache.get_content("/links/tag").await.unwrap()[..], b"sha256:def");
    }
}
