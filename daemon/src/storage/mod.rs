//! The storage driver: a narrow, object-store shaped interface that every
//! backend satisfies (the model is distribution's `StorageDriver`).
//!
//! Backends know nothing about OCI: they store byte objects under
//! slash-separated paths. The contract is chosen so that an object store such
//! as S3 can satisfy it without atomic rename or append:
//! - whole objects are replaced atomically by [`StorageDriver::put_content`];
//! - large objects stream in through a [`FileWriter`], which may be closed and
//!   reopened for append (S3: a multipart upload) and is only durable after
//!   [`FileWriter::commit`];
//! - [`StorageDriver::move_object`] makes an object appear at its destination
//!   whole or not at all (S3: server-side copy, then delete);
//! - reads stream from any offset.
//!
//! The shared contract tests in [`suite`] run against every backend.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::time::SystemTime;

pub mod cache;
pub mod fs;
pub mod instrumented;
pub mod memory;
pub mod read_ahead;
pub mod s3;
pub mod suite;

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What went wrong in a backend. The registry layer maps these to OCI errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no object at {0}")]
    NotFound(String),
    #[error("invalid storage path {0:?}")]
    InvalidPath(String),
    #[error("offset {offset} is beyond the end of {path}")]
    InvalidOffset { path: String, offset: u64 },
    #[error("storage is full while writing {path}: free space on the storage backend and retry")]
    Full { path: String },
    #[error("storage backend {backend} is unavailable: {message}")]
    Unavailable { backend: String, message: String },
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Classifies an I/O error on `path`, keeping "not found" and "disk full"
    /// apart from other failures because callers act differently on them.
    pub fn io(path: &str, source: std::io::Error) -> StorageError {
        match source.kind() {
            std::io::ErrorKind::NotFound => StorageError::NotFound(path.to_string()),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StorageError::Full { path: path.to_string() }
            }
            _ => StorageError::Io { path: path.to_string(), source },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Metadata of an object or directory.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
}

/// A backend holding byte objects under paths like `/docker/registry/v2/…`.
#[async_trait]
pub trait StorageDriver: Send + Sync + 'static {
    /// Short backend name for logs and errors (`filesystem`, `s3`, …).
    fn name(&self) -> &'static str;

    /// Reads a small object whole (links, manifests).
    async fn get_content(&self, path: &str) -> Result<Bytes>;

    /// Stores a small object whole, replacing any previous one atomically.
    async fn put_content(&self, path: &str, content: Bytes) -> Result<()>;

    /// Streams an object from `offset` to its end.
    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream>;

    /// Streams `len` bytes at `offset` (fewer at the end of the object).
    /// Unlike [`reader`](Self::reader) it is a point read: a cache in front
    /// of a backend serves it if it holds the object, and otherwise passes
    /// it through without filling, so reading a few MiB of a large object
    /// (a lazily mounted layer) never downloads all of it.
    async fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<ByteStream> {
        Ok(take(self.reader(path, offset).await?, len))
    }

    /// Opens a writer; with `append` it continues an object left by
    /// [`FileWriter::close`], otherwise it starts empty.
    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>>;

    /// Size and kind of the object or directory at `path`.
    async fn stat(&self, path: &str) -> Result<FileInfo>;

    /// Full paths of the direct children of the directory `path`, sorted.
    async fn list(&self, path: &str) -> Result<Vec<String>>;

    /// Moves an object; it appears at `dest` whole or not at all.
    async fn move_object(&self, source: &str, dest: &str) -> Result<()>;

    /// Deletes an object or, recursively, everything under a directory.
    async fn delete(&self, path: &str) -> Result<()>;

    /// Deletes the objects at `paths` (objects, not directories); those
    /// already gone are not an error. Backends that can delete many in one
    /// request do (S3: `DeleteObjects`, 1000 keys each): a garbage
    /// collection deletes thousands.
    async fn delete_objects(&self, paths: &[String]) -> Result<()> {
        for p in paths {
            match self.delete(p).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// A URL a client may fetch the object from directly (S3: presigned),
    /// for `storage.redirect.disable: false`. Backends that cannot
    /// redirect return `None` and the registry proxies the bytes.
    async fn redirect_url(&self, _path: &str) -> Result<Option<String>> {
        Ok(None)
    }

    /// Metadata from the storage itself, never from a cache in front of
    /// it: for decisions every node must agree on (that what a manifest
    /// references is stored, while a garbage collection may be moving it).
    async fn stat_authoritative(&self, path: &str) -> Result<FileInfo> {
        self.stat(path).await
    }
}

/// The first `len` bytes of `s`.
pub fn take(s: ByteStream, len: u64) -> ByteStream {
    use futures_util::StreamExt;
    futures_util::stream::unfold((s, len), |(mut s, left)| async move {
        if left == 0 {
            return None;
        }
        match s.next().await? {
            Ok(mut b) => {
                if b.len() as u64 > left {
                    b.truncate(left as usize);
                }
                let n = b.len() as u64;
                Some((Ok(b), (s, left - n)))
            }
            Err(e) => Some((Err(e), (s, 0))),
        }
    })
    .boxed()
}

/// A streaming writer of one object.
#[async_trait]
pub trait FileWriter: Send {
    async fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Bytes in the object so far, including earlier appends.
    fn size(&self) -> u64;
    /// Stops writing but keeps what was written for a later append.
    async fn close(self: Box<Self>) -> Result<()>;
    /// Discards the object.
    async fn cancel(self: Box<Self>) -> Result<()>;
    /// Makes the written object durable.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Validates a storage path: absolute, `/`-separated, components of
/// `[A-Za-z0-9._-]` that are neither empty, `.` nor `..`. Backends call this
/// on every path so that nothing outside their root is ever reached.
pub fn check_path(path: &str) -> Result<()> {
    let ok = path.len() > 1
        && path.starts_with('/')
        && path[1..].split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok || path == "/" {
        Ok(())
    } else {
        Err(StorageError::InvalidPath(path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn paths_are_validated() {
        assert!(check_path("/docker/registry/v2/blobs/sha256/ab/abcd/data").is_ok());
        assert!(check_path("/").is_ok());
        for bad in ["", "a", "/a/", "//a", "/a/../b", "/a/./b", "/a/b c", "/a\\b", "/a/\0"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
