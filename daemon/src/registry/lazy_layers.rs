//! Seek indexes of layers ([`crate::layerindex`]) in the shared storage,
//! and uncompressed byte ranges of layers served from them: what the
//! snapshotter reads to mount a layer lazily.
//!
//! An index is built in the background when a manifest is pushed (for its
//! gzip and plain tar layers), or the first time one is asked for and is
//! missing; that request is answered "not yet" so the snapshotter falls
//! back to a normal pull instead of waiting. Builds run one at a time per
//! node: they read the whole layer once and must not starve requests.

use super::namespace::Namespace;
use super::{paths, Error, Registry, Result};
use crate::digest::Digest;
use crate::layerindex::{self, Compression, LayerIndex};
use crate::names::RepoName;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Parsed indexes kept in memory: a range read needs the checkpoints, and
/// a lazily mounted layer is read many times in a row.
const CACHED_INDEXES: usize = 16;

/// Checkpoint windows (32 KiB each) kept in memory: the background fill
/// reads a layer's spans in order, and several starts of a container read
/// the same few spans.
const CACHED_WINDOWS: usize = 32;

/// Inflated spans between checkpoints kept in memory, and the largest kept:
/// the snapshotter reads a layer 512 KiB at a time, mostly in order (a
/// binary as it loads, the background fill), and each read would otherwise
/// inflate its span again from the checkpoint and fetch it again from
/// storage. Three spans: one per layer being read at once, in a 64 MiB
/// daemon.
const CACHED_SPANS: usize = 3;
const MAX_CACHED_SPAN: u64 = 4 << 20;

/// How many blobs known to have no index are remembered, and for how long:
/// a stream error while reading the blob looks like a corrupt layer, so
/// the verdict expires rather than lasting until a restart.
const REMEMBERED_UNINDEXABLE: usize = 256;
const UNINDEXABLE_FOR: Duration = Duration::from_secs(600);

pub(super) struct Indexer {
    building: Mutex<HashSet<Digest>>,
    one_at_a_time: tokio::sync::Semaphore,
    cache: Mutex<Vec<(Digest, Arc<LayerIndex>)>>,
    windows: Lru,
    /// Inflated spans, keyed by the layer and the span's start in its tar.
    spans: Lru,
    /// Blobs a build found cannot have an index (not a layer, single-frame
    /// zstd, a corrupt stream), with why: asking again answers at once
    /// instead of reading the whole blob again. Node-local, and forgotten
    /// after `UNINDEXABLE_FOR` or a restart (a newer berthd may index them).
    unindexable: Mutex<Vec<(Digest, String, Instant)>>,
}

/// A checkpoint window: the layer and its offset in the windows object.
type WindowKey = (Digest, u64);

/// A small most-recently-used list of byte buffers.
type Lru = Mutex<Vec<(WindowKey, Arc<Vec<u8>>)>>;

/// The most recently used entry for (`d`, `at`) of a small LRU list.
fn lru_get(list: &Lru, d: &Digest, at: u64) -> Option<Arc<Vec<u8>>> {
    let mut l = list.lock().unwrap();
    let i = l.iter().position(|((k, a), _)| k == d && *a == at)?;
    let hit = l.remove(i);
    let value = hit.1.clone();
    l.insert(0, hit);
    Some(value)
}

fn lru_put(list: &Lru, d: &Digest, at: u64, value: Arc<Vec<u8>>, keep: usize) {
    let mut l = list.lock().unwrap();
    l.retain(|((k, a), _)| !(k == d && *a == at));
    l.insert(0, ((d.clone(), at), value));
    l.truncate(keep);
}

/// What a background build did.
enum Built {
    Stored,
    AlreadyStored,
    NotALayer,
}

impl Indexer {
    pub(super) fn new() -> Indexer {
        Indexer {
            building: Mutex::default(),
            one_at_a_time: tokio::sync::Semaphore::new(1),
            cache: Mutex::default(),
            windows: Mutex::default(),
            spans: Mutex::default(),
            unindexable: Mutex::default(),
        }
    }

    fn cached_window(&self, d: &Digest, at: u64) -> Option<Arc<Vec<u8>>> {
        lru_get(&self.windows, d, at)
    }

    fn remember_window(&self, d: &Digest, at: u64, window: Arc<Vec<u8>>) {
        lru_put(&self.windows, d, at, window, CACHED_WINDOWS);
    }

    #[cfg(test)]
    pub(super) fn has_span(&self, d: &Digest, start: u64) -> bool {
        self.spans.lock().unwrap().iter().any(|((k, s), _)| k == d && *s == start)
    }

    #[cfg(test)]
    pub(super) fn is_building(&self, d: &Digest) -> bool {
        self.building.lock().unwrap().contains(d)
    }

    fn why_unindexable(&self, d: &Digest) -> Option<String> {
        let mut u = self.unindexable.lock().unwrap();
        u.retain(|(_, _, at)| at.elapsed() < UNINDEXABLE_FOR);
        u.iter().find(|(k, _, _)| k == d).map(|(_, why, _)| why.clone())
    }

    fn remember_unindexable(&self, d: &Digest, why: String) {
        let mut u = self.unindexable.lock().unwrap();
        u.retain(|(k, _, _)| k != d);
        u.insert(0, (d.clone(), why, Instant::now()));
        u.truncate(REMEMBERED_UNINDEXABLE);
    }

    pub(super) fn cached(&self, d: &Digest) -> Option<Arc<LayerIndex>> {
        let mut c = self.cache.lock().unwrap();
        let i = c.iter().position(|(k, _)| k == d)?;
        let hit = c.remove(i);
        let idx = hit.1.clone();
        c.insert(0, hit);
        Some(idx)
    }

    fn remember(&self, d: &Digest, idx: Arc<LayerIndex>) {
        let mut c = self.cache.lock().unwrap();
        c.retain(|(k, _)| k != d);
        c.insert(0, (d.clone(), idx));
        c.truncate(CACHED_INDEXES);
    }
}

impl Registry {
    /// The index of layer `digest` in `repo` of `ns`. `Error::IndexUnavailable` when it is not built
    /// yet (a build is then started).
    pub async fn layer_index(&self, ns: &Namespace, repo: &RepoName, digest: &Digest) -> Result<Arc<LayerIndex>> {
        let repo = self.stored_repo(ns, repo)?;
        let Some(key) = &self.index_key else {
            return Err(Error::IndexUnavailable(
                "lazy pulls are off on this node: no layer index key (layerindex.keyfile) is configured; pull normally"
                    .into(),
            ));
        };
        if let Some(idx) = self.indexer.cached(digest) {
            self.stat_blob(&repo, digest).await?;
            return Ok(idx);
        }
        // The access check and both stored objects are asked at once: a
        // layer's first lazy mount waits one round trip to storage, not
        // three. What was read is dropped unless the check passes.
        let (index_path, tag_path) = (paths::layer_index(digest), paths::layer_index_auth(digest));
        let (access, stored, tag) = tokio::join!(
            self.stat_blob(&repo, digest),
            self.driver.get_content(&index_path),
            self.driver.get_content(&tag_path),
        );
        access?;
        match stored {
            Ok(bytes) => {
                let tag = match tag {
                    Ok(t) => t,
                    Err(e) if e.is_not_found() => {
                        // Built before indexes were signed: build it again.
                        self.index_soon(digest.clone(), None);
                        return Err(Error::IndexUnavailable(format!(
                            "the index of {digest} is not signed yet; it is being rebuilt, pull normally meanwhile"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                };
                if !key.verify(digest, &bytes, &tag) {
                    crate::metrics::get().index_auth_failures.inc();
                    tracing::error!(%digest, "the stored seek index does not carry this cluster's signature: it was changed in storage, or built by a node with another layerindex key; refusing it (delete it to rebuild)");
                    return Err(Error::IndexUnavailable(format!(
                        "the index of {digest} is not authenticated by this cluster's layer index key; pull normally"
                    )));
                }
                let idx = layerindex::decode(&bytes).map_err(|e| {
                    Error::IndexUnavailable(format!(
                        "stored index of {digest} is unreadable ({e}); delete it to rebuild"
                    ))
                })?;
                let idx = Arc::new(idx);
                self.indexer.remember(digest, idx.clone());
                Ok(idx)
            }
            Err(e) if e.is_not_found() => {
                if let Some(why) = self.indexer.why_unindexable(digest) {
                    return Err(Error::IndexUnavailable(format!(
                        "layer {digest} has no seek index ({why}); pull it normally"
                    )));
                }
                // Unknown media type here: sniff the blob's first bytes.
                self.index_soon(digest.clone(), None);
                Err(Error::IndexUnavailable(format!(
                    "no seek index for {digest} yet; one is being built, retry in a moment"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `len` bytes of the uncompressed tar of layer `digest` at `offset`.
    pub async fn layer_range(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, u64)> {
        let known = self.index_key.as_ref().and_then(|_| self.indexer.cached(digest));
        let Some(idx) = known else {
            let idx = self.layer_index(ns, repo, digest).await?;
            return self.index_range(&idx, digest, offset, len).await;
        };
        // The index is in memory: the repository's access check and the
        // read go to storage at once, so a lazy read waits for one round
        // trip, not two. The bytes are dropped unless the check passes.
        let stored = self.stored_repo(ns, repo)?;
        let (access, read) = tokio::join!(self.stat_blob(&stored, digest), self.index_range(&idx, digest, offset, len));
        access?;
        read
    }

    /// `len` bytes at `offset` of the tar that `idx` indexes.
    async fn index_range(&self, idx: &LayerIndex, digest: &Digest, offset: u64, len: u64) -> Result<(Bytes, u64)> {
        if offset >= idx.size {
            return Err(Error::RangeNotSatisfiable { size: idx.size });
        }
        match layerindex::span_of(idx, offset, len) {
            Some((start, end)) if end - start <= MAX_CACHED_SPAN => {
                let span = match lru_get(&self.indexer.spans, digest, start) {
                    Some(s) => s,
                    None => {
                        let s = Arc::new(self.inflate(idx, digest, start, end - start).await?);
                        lru_put(&self.indexer.spans, digest, start, s.clone(), CACHED_SPANS);
                        s
                    }
                };
                let from = (offset - start) as usize;
                let to = (offset + len).min(end) - start;
                Ok((Bytes::copy_from_slice(&span[from..to as usize]), idx.size))
            }
            _ => Ok((Bytes::from(self.inflate(idx, digest, offset, len).await?), idx.size)),
        }
    }

    /// Inflates `len` bytes of layer `digest`'s tar at `offset` from the
    /// checkpoint before it, reading only that part of the blob.
    async fn inflate(&self, idx: &LayerIndex, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut plan = layerindex::plan(idx, offset, len).map_err(|_| Error::RangeNotSatisfiable { size: idx.size })?;
        // The checkpoint's window and the compressed span are fetched at once
        // (one round trip to storage, not two).
        let window = async {
            match plan.window_needed() {
                Some((at, window_len)) => self.index_window(digest, at, window_len).await.map(Some),
                None => Ok(None),
            }
        };
        let data = paths::blob_data(digest);
        let span = self.driver.read_range(&data, plan.blob_offset, plan.blob_len);
        let (window, blob) = tokio::join!(window, span);
        if let Some(window) = window? {
            plan.set_window(window.to_vec())
                .map_err(|e| Error::IndexUnavailable(format!("index windows of {digest} are damaged: {e}")))?;
        }
        let blob = match blob {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Err(Error::BlobUnknown(digest.clone())),
            Err(e) => return Err(e.into()),
        };
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(blob));
        let out = tokio::task::spawn_blocking(move || plan.read(reader))
            .await
            .map_err(|e| Error::Upstream(format!("layer read task failed: {e}")))?
            .map_err(|e| Error::IndexUnavailable(format!("cannot read layer {digest} at {offset}: {e}")))?;
        Ok(out)
    }

    /// The checkpoint window at `at` in layer `digest`'s windows object.
    async fn index_window(&self, digest: &Digest, at: u64, len: u32) -> Result<Arc<Vec<u8>>> {
        if let Some(w) = self.indexer.cached_window(digest, at) {
            return Ok(w);
        }
        let path = paths::layer_index_windows(digest);
        let damaged = |e: &dyn std::fmt::Display| {
            Error::IndexUnavailable(format!(
                "index windows of {digest} cannot be read ({e}); delete its index to rebuild it"
            ))
        };
        let stream = match self.driver.read_range(&path, at, u64::from(len)).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Err(damaged(&"missing")),
            Err(e) => return Err(e.into()),
        };
        let chunks: Vec<Bytes> = futures_util::TryStreamExt::try_collect(stream).await.map_err(|e| damaged(&e))?;
        let window = Arc::new(chunks.concat());
        if window.len() != len as usize {
            return Err(damaged(&format!("{} bytes where {len} were expected", window.len())));
        }
        self.indexer.remember_window(digest, at, window.clone());
        Ok(window)
    }

    /// Starts building the index of each indexable layer of a manifest.
    pub(super) fn index_layers(&self, layers: &[super::manifest::Descriptor]) {
        for l in layers {
            if let Some(c) = Compression::of_media_type(&l.media_type) {
                self.index_soon(l.digest.clone(), Some(c));
            }
        }
    }

    /// Builds the index of `digest` in the background unless it exists or
    /// is being built. `compression: None` sniffs it from the blob.
    pub(super) fn index_soon(&self, digest: Digest, compression: Option<Compression>) {
        if self.index_key.is_none() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        if !self.indexer.building.lock().unwrap().insert(digest.clone()) {
            return;
        }
        tokio::spawn(async move {
            let result = async {
                let _permit = me.indexer.one_at_a_time.acquire().await.expect("semaphore never closed");
                if me.exists(&paths::layer_index_auth(&digest)).await?
                    && me.exists(&paths::layer_index(&digest)).await?
                {
                    return Ok(Built::AlreadyStored);
                }
                me.build_index(&digest, compression).await
            }
            .await;
            match result {
                Ok(Built::Stored) => {
                    crate::metrics::get().index_builds.inc();
                    tracing::info!(digest = %digest, "built layer seek index")
                }
                Ok(Built::AlreadyStored) => tracing::debug!(digest = %digest, "layer is indexed already"),
                Ok(Built::NotALayer) => {
                    tracing::debug!(digest = %digest, "not a layer: no seek index");
                    me.indexer.remember_unindexable(&digest, "not a gzip, zstd or tar layer".into());
                }
                Err(e) => {
                    crate::metrics::get().index_build_failures.inc();
                    tracing::warn!(digest = %digest, error = %e, "no seek index for layer; lazy pulls of it fall back to full pulls");
                    // Storage trouble is retried on the next request; a
                    // blob that cannot be indexed is not.
                    if let Error::Unsupported(why) = e {
                        me.indexer.remember_unindexable(&digest, why);
                    }
                }
            }
            me.indexer.building.lock().unwrap().remove(&digest);
        });
    }

    /// Builds and stores the index; `Built::NotALayer` when the blob is not
    /// a gzip, zstd or tar layer (a config, an artifact) and needs none.
    async fn build_index(&self, digest: &Digest, compression: Option<Compression>) -> Result<Built> {
        let compression = match compression {
            Some(c) => c,
            None => {
                let mut head = self.driver.read_range(&paths::blob_data(digest), 0, 512).await?;
                let first = futures_util::StreamExt::next(&mut head).await.transpose().map_err(|e| {
                    Error::Storage(crate::storage::StorageError::Io { path: paths::blob_data(digest), source: e })
                })?;
                match first.as_deref() {
                    Some([0x1f, 0x8b, ..]) => Compression::Gzip,
                    Some([0x28, 0xb5, 0x2f, 0xfd, ..]) => Compression::Zstd,
                    Some(b) if b.len() >= 262 && &b[257..262] == b"ustar" => Compression::None,
                    _ => return Ok(Built::NotALayer),
                }
            }
        };
        // A point read: indexing must not pull the layer into this node's
        // cache (the node that pushed it is rarely the one that runs it).
        let path = paths::blob_data(digest);
        let size = self.driver.stat(&path).await?.size;
        let blob = self.driver.read_range(&path, 0, size).await?;
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(blob));
        let d = digest.clone();
        let idx = tokio::task::spawn_blocking(move || layerindex::build(reader, &d, compression))
            .await
            .map_err(|e| Error::Upstream(format!("index task failed: {e}")))?
            .map_err(|e| Error::Unsupported(format!("cannot index {digest}: {e}")))?;
        // Windows first: an index that exists has its windows.
        if !idx.windows.is_empty() {
            self.driver.put_content(&paths::layer_index_windows(digest), Bytes::from(idx.windows)).await?;
        }
        let encoded = layerindex::encode(&idx.index);
        let tag = match &self.index_key {
            Some(key) => key.tag(digest, &encoded),
            None => return Err(Error::Unsupported("no layer index key".into())),
        };
        self.driver.put_content(&paths::layer_index(digest), Bytes::from(encoded)).await?;
        // The tag last: an index with a tag is complete.
        self.driver.put_content(&paths::layer_index_auth(digest), Bytes::from(tag)).await?;
        self.indexer.remember(digest, Arc::new(idx.index));
        Ok(Built::Stored)
    }
}
