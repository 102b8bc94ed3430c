//! The node-local cache: a storage driver wrapping a remote one (S3), so a
//! node reads each blob from the bucket at most once while it stays cached.
//!
//! - Only content-addressed objects are cached: paths for which `key_of`
//!   returns a digest (blobs and manifests by digest). They never change, so
//!   a cached copy is never stale. Tags and links are always read from the
//!   backend, so a tag pushed on another node is seen on the next request.
//! - A fill is shared ([`crate::fill`]): the first reader of an uncached
//!   object starts one backend read into `tmp/`; every reader, including
//!   later ones, streams the bytes as they arrive, at its own pace, and the
//!   last byte only once the digest checked out. The file moves to
//!   `blobs/<alg>/<xx>/<hex>` only after it verified and was synced, so a
//!   partial or corrupt file is never served from the cache, even after
//!   `kill -9`; `tmp/` is emptied at start.
//! - Entries are evicted least-recently-used to stay under `max_size` *and*
//!   to keep the cache's file system from filling up (a reserve of its
//!   size stays free). An object the disk cannot take is served straight
//!   from the backend; a fill that hits a full disk anyway hands its
//!   readers over to the backend where they stand. The index is rebuilt
//!   from the directory at start (mtime order). An evicted file being read
//!   stays readable (Unix unlink semantics) until its readers finish.
//! - Metadata reads (links, tags) that fail because the backend is
//!   unreachable are answered from the last value seen ([`remembered`]).

mod remembered;

use super::{ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use crate::digest::Digest;
use crate::fill::{Fill, FillError, Producer};
use crate::lru::Lru;
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use remembered::Remembered;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Maps a storage path to the digest of its content, if it is
/// content-addressed.
pub type ContentKey = fn(&str) -> Option<Digest>;

/// Free space kept on the cache's file system: a tenth of it, at most
/// 1 GiB (logs and other services share the disk).
fn reserve_of(fs_size: u64) -> u64 {
    (fs_size / 10).min(1 << 30)
}

/// (available, total) bytes of the file system holding `dir`.
#[allow(unsafe_code)]
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right size; statvfs fills it on success.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    let unit = st.f_frsize as u64;
    Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

struct Shared {
    inner: Arc<dyn StorageDriver>,
    dir: PathBuf,
    max_size: u64,
    index: Mutex<Lru>,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Bytes promised to fills that are still running.
    reserved: AtomicU64,
    remembered: Remembered,
}

pub struct CachedDriver {
    shared: Arc<Shared>,
    key_of: ContentKey,
}

fn cache_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
}

fn fill_error(path: &str, e: FillError) -> StorageError {
    match e {
        FillError::NotFound(_) => StorageError::NotFound(path.to_string()),
        FillError::Unavailable(m) => StorageError::Unavailable { backend: "cache fill".into(), message: m },
        FillError::Full(_) => StorageError::Full { path: path.to_string() },
        FillError::Mismatch(m) | FillError::Other(m) => {
            StorageError::Io { path: path.to_string(), source: std::io::Error::other(m) }
        }
    }
}

fn to_fill_error(e: StorageError) -> FillError {
    match e {
        StorageError::NotFound(p) => FillError::NotFound(p),
        StorageError::Unavailable { backend, message } => {
            FillError::Unavailable(format!("storage backend {backend} is unavailable: {message}"))
        }
        other => FillError::Other(other.to_string()),
    }
}

impl CachedDriver {
    /// Opens (or creates) the cache in `dir`, discarding unfinished fills
    /// and rebuilding the LRU index from what is there.
    pub fn open(inner: Arc<dyn StorageDriver>, key_of: ContentKey, dir: &Path, max_size: u64) -> std::io::Result<Self> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        crate::durable::create_dirs(&tmp)?;
        crate::durable::create_dirs(&dir.join("blobs"))?;
        let mut found = Vec::new();
        for alg in std::fs::read_dir(dir.join("blobs"))?.flatten() {
            for prefix in std::fs::read_dir(alg.path())?.flatten() {
                for f in std::fs::read_dir(prefix.path())?.flatten() {
                    let digest = format!("{}:{}", alg.file_name().to_string_lossy(), f.file_name().to_string_lossy());
                    let (Ok(d), Ok(md)) = (digest.parse::<Digest>(), f.metadata()) else {
                        // Temporary files of interrupted writes, strays.
                        let _ = std::fs::remove_file(f.path());
                        continue;
                    };
                    found.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), d, md.len()));
                }
            }
        }
        found.sort();
        let mut index = Lru::default();
        for (_, d, size) in found {
            index.insert(d, size);
        }
        let shared = Arc::new(Shared {
            inner,
            dir: dir.to_path_buf(),
            max_size,
            index: Mutex::new(index),
            fills: Mutex::default(),
            reserved: AtomicU64::new(0),
            remembered: Remembered::default(),
        });
        shared.evict();
        metrics::get().cache_size_bytes.set(shared.index.lock().unwrap().total as i64);
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
        if self.shared.index.lock().unwrap().size_of(d).is_some() {
            return None;
        }
        let tmp = self.shared.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
        let (fill, producer) = Fill::new(tmp.clone(), Some(cache_path(&self.shared.dir, d)));
        fills.insert(d.clone(), fill.clone());
        metrics::get().cache_fills.inc();
        let shared = self.shared.clone();
        let (d, path) = (d.clone(), path.to_string());
        tokio::spawn(async move {
            let res = shared.run_fill(&d, &path, &tmp, &producer).await;
            if let Err(e) = &res {
                tracing::warn!(digest = %d, "cache fill failed: {e}");
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            producer.finish(res);
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
        m.cache_hits.inc();
        m.cache_hit_bytes.inc_by(size - offset);
        Some(Ok(super::read_ahead::stream(file, offset, size)))
    }

    /// Reads a fill from `offset`; when the fill fails for a local reason
    /// (the cache's disk filled up), the rest comes from the backend.
    fn read_fill(&self, fill: Arc<Fill>, path: &str, offset: u64) -> ByteStream {
        struct St {
            fill: Arc<Fill>,
            from_fill: Option<ByteStream>,
            from_backend: Option<ByteStream>,
            inner: Arc<dyn StorageDriver>,
            path: String,
            pos: u64,
        }
        let from_fill = Some(fill.reader(offset).boxed());
        let st = St {
            fill,
            from_fill,
            from_backend: None,
            inner: self.shared.inner.clone(),
            path: path.into(),
            pos: offset,
        };
        futures_util::stream::unfold(st, |mut st| async move {
            if let Some(s) = st.from_backend.as_mut() {
                return s.next().await.map(|item| (item, st));
            }
            let s = st.from_fill.as_mut()?;
            match s.next().await {
                Some(Ok(chunk)) => {
                    st.pos += chunk.len() as u64;
                    Some((Ok(chunk), st))
                }
                None => None,
                Some(Err(e)) => match st.fill.finished().await {
                    Err(FillError::Full(_)) | Err(FillError::Other(_)) => {
                        tracing::info!(path = %st.path, at = st.pos, "cache fill failed locally; reading the rest from the backend");
                        st.from_fill = None;
                        match st.inner.reader(&st.path, st.pos).await {
                            Ok(mut s) => {
                                let item = s.next().await;
                                st.from_backend = Some(s);
                                item.map(|i| (i, st))
                            }
                            Err(e) => {
                                st.from_fill = None;
                                Some((Err(std::io::Error::other(e.to_string())), st))
                            }
                        }
                    }
                    _ => {
                        st.from_fill = None;
                        Some((Err(e), st))
                    }
                },
            }
        })
        .boxed()
    }
}

impl Shared {
    /// Makes room for `size` more bytes: evicts least recently used entries
    /// until the cache stays under `max_size` and its file system keeps its
    /// reserve free. `false` when even an empty cache could not take it.
    fn make_room(&self, size: u64) -> bool {
        if size > self.max_size {
            return false;
        }
        loop {
            let (total, promised) = (self.index.lock().unwrap().total, self.reserved.load(Relaxed));
            let over_max = total + promised + size > self.max_size;
            let short = match disk_space(&self.dir) {
                Some((free, fs_size)) => free < size + promised + reserve_of(fs_size),
                None => false,
            };
            if !over_max && !short {
                return true;
            }
            let Some(victim) = self.index.lock().unwrap().oldest() else { return false };
            let _ = std::fs::remove_file(cache_path(&self.dir, &victim));
            tracing::debug!(digest = %victim, "evicted from cache to make room");
            let m = metrics::get();
            m.cache_evictions.inc();
            m.cache_size_bytes.set(self.index.lock().unwrap().total as i64);
        }
    }

    async fn run_fill(&self, d: &Digest, path: &str, tmp: &Path, producer: &Producer) -> Result<(), FillError> {
        let size = self.inner.stat(path).await.map_err(to_fill_error)?.size;
        if !self.make_room(size) {
            tracing::info!(digest = %d, size, "the cache cannot take this blob now; serving it from the backend");
            producer.bypass(size);
            return Ok(());
        }
        self.reserved.fetch_add(size, Relaxed);
        let res = async {
            let stream = self.inner.reader(path, 0).await.map_err(to_fill_error)?;
            let file = producer.download(stream, d, Some(size), tmp).await?;
            // Verified: readers may finish before the file is on disk and
            // in place (the sync of a large layer takes a while).
            producer.release();
            let (src, dest) = (tmp.to_path_buf(), cache_path(&self.dir, d));
            tokio::task::spawn_blocking(move || file.sync_all().and_then(|()| crate::durable::rename(&src, &dest)))
                .await
                .map_err(|e| FillError::Other(e.to_string()))?
                .map_err(|e| FillError::Other(format!("cannot move a verified fill into the cache: {e}")))
        }
        .await;
        self.reserved.fetch_sub(size, Relaxed);
        res?;
        metrics::get().cache_fill_bytes.inc_by(size);
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
        m.cache_evictions.inc_by(victims.len() as u64);
        m.cache_size_bytes.set(total as i64);
    }

    /// Stores verified content (a manifest read or pushed through this
    /// node), when there is room.
    async fn store(&self, d: &Digest, content: &Bytes) {
        let size = content.len() as u64;
        if &Digest::of(d.algorithm(), content) != d || !self.make_room(size) {
            return;
        }
        let dest = cache_path(&self.dir, d);
        let data = content.clone();
        let res = tokio::task::spawn_blocking(move || crate::durable::write_file(&dest, &data))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match res {
            Ok(()) => {
                self.index.lock().unwrap().insert(d.clone(), size);
                self.evict();
            }
            Err(e) => tracing::warn!(digest = %d, "cannot cache: {e}"),
        }
    }
}

#[async_trait]
impl StorageDriver for CachedDriver {
    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let Some(d) = (self.key_of)(path) else {
            let answer = self.shared.inner.get_content(path).await;
            return self.shared.remembered.through(
                path,
                answer,
                |r, b| r.content(path, b.clone()),
                |(content, _)| content.clone(),
            );
        };
        if let Some(size) = self.lookup(&d) {
            if let Ok(b) = tokio::fs::read(cache_path(&self.shared.dir, &d)).await {
                let m = metrics::get();
                m.cache_hits.inc();
                m.cache_hit_bytes.inc_by(size);
                return Ok(Bytes::from(b));
            }
        }
        metrics::get().cache_misses.inc();
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
            None => self.shared.remembered.content(path, content),
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
            metrics::get().cache_misses.inc();
            // Wait until the size is known, to check the offset and learn
            // whether the object bypasses the cache.
            let p = fill.started().await;
            if let Some(Err(e)) = p.done {
                return Err(fill_error(path, e));
            }
            if p.bypass {
                return self.shared.inner.reader(path, offset).await;
            }
            if p.total.is_some_and(|t| offset > t) {
                return Err(StorageError::InvalidOffset { path: path.to_string(), offset });
            }
            return Ok(self.read_fill(fill, path, offset));
        }
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        self.shared.inner.writer(path, append).await
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        if let Some(d) = (self.key_of)(path) {
            if let Some(size) = self.shared.index.lock().unwrap().size_of(&d) {
                return Ok(FileInfo { path: path.to_string(), size, modified: SystemTime::UNIX_EPOCH, is_dir: false });
            }
        }
        let answer = self.shared.inner.stat(path).await;
        self.shared.remembered.through(path, answer, |r, info| r.info(path, info.clone()), |(_, info)| info.clone())
    }

    async fn stat_authoritative(&self, path: &str) -> Result<FileInfo> {
        self.shared.inner.stat_authoritative(path).await
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        self.shared.inner.list(path).await
    }

    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        self.shared.inner.redirect_url(path).await
    }

    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        self.shared.inner.move_object(source, dest).await?;
        // What was cached under the source's digest is not at that path
        // any more (a quarantine moves a damaged blob away).
        self.drop_cached(source);
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let res = self.shared.inner.delete(path).await;
        self.shared.remembered.forget(path);
        self.drop_cached(path);
        res
    }

    async fn delete_objects(&self, paths: &[String]) -> Result<()> {
        let res = self.shared.inner.delete_objects(paths).await;
        for p in paths {
            self.shared.remembered.forget(p);
            self.drop_cached(p);
        }
        res
    }
}

impl CachedDriver {
    fn drop_cached(&self, path: &str) {
        if let Some(d) = (self.key_of)(path) {
            if self.shared.index.lock().unwrap().remove(&d).is_some() {
                let _ = std::fs::remove_file(cache_path(&self.shared.dir, &d));
            }
        }
    }
}

#[cfg(test)]
mod tests;
