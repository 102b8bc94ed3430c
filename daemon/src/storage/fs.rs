//! The filesystem backend: the embedded default. Objects are files under a
//! root directory, in exactly the layout registry:2 writes, so a root can be
//! moved between registry:2 and berthd in either direction.
//!
//! Whole-object writes go through [`durable`]: a temporary file beside the
//! target, `fsync`, `rename`, `fsync` of the directory — so a crash or a full
//! disk never leaves a half-written object under its final name, and a
//! failed write leaves the previous object as it was.

use super::{check_path, ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use crate::durable;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::io::Write;
use std::path::PathBuf;
use tokio::fs;

/// Objects up to this size are read inline by `get_content`.
const INLINE_READ: u64 = 64 * 1024;
/// Bytes a writer gathers before each write(2), done on the blocking pool.
const WRITE_BATCH: usize = 1024 * 1024;

pub struct FsDriver {
    root: PathBuf,
}

impl FsDriver {
    /// A driver rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FsDriver {
        FsDriver { root: root.into() }
    }

    fn full(&self, path: &str) -> Result<PathBuf> {
        check_path(path)?;
        Ok(self.root.join(path.trim_start_matches('/')))
    }
}

/// Runs blocking file work on the blocking pool, naming `path` in errors.
/// std's calls are used for every write because each returns its own
/// error: tokio's `File` reports a failed background write only at a
/// later call, and a `sync_all` after it can drop that error.
async fn blocking<T: Send + 'static>(path: &str, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| StorageError::io(path, e)),
        Err(e) => Err(StorageError::io(path, std::io::Error::other(e))),
    }
}

#[async_trait]
impl StorageDriver for FsDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let full = self.full(path)?;
        // Small objects (links, manifests, configs) are read where the
        // request runs: from the page cache that costs less than the hop
        // to the blocking pool and back that tokio's file calls make, and
        // it is the pull hot path. Larger ones are read on the pool.
        let io = |e| StorageError::io(path, e);
        let f = std::fs::File::open(&full).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let read_all = move || {
            let mut buf = Vec::with_capacity(len as usize + 1);
            std::io::Read::read_to_end(&mut &f, &mut buf)?;
            Ok(Bytes::from(buf))
        };
        if len <= INLINE_READ {
            return read_all().map_err(io);
        }
        blocking(path, read_all).await
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let full = self.full(path)?;
        blocking(path, move || durable::write_file(&full, &content)).await
    }

    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        let full = self.full(path)?;
        let f = std::fs::File::open(&full).map_err(|e| StorageError::io(path, e))?;
        let size = f.metadata().map_err(|e| StorageError::io(path, e))?.len();
        if offset > size {
            return Err(StorageError::InvalidOffset { path: path.to_string(), offset });
        }
        Ok(super::read_ahead::stream(f, offset, size))
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        let target = full.clone();
        let (file, size) = blocking(path, move || {
            if let Some(parent) = target.parent() {
                durable::create_dirs(parent)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.create(true).write(true);
            if append {
                opts.append(true);
            } else {
                opts.truncate(true);
            }
            let file = opts.open(&target)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await?;
        Ok(Box::new(FsWriter { path: path.to_string(), full, file: Some(file), pending: BytesMut::new(), size }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let full = self.full(path)?;
        // A stat is answered from the inode cache: inline, as small reads.
        let md = std::fs::metadata(&full).map_err(|e| StorageError::io(path, e))?;
        Ok(FileInfo {
            path: path.to_string(),
            size: if md.is_dir() { 0 } else { md.len() },
            modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
            is_dir: md.is_dir(),
        })
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let full = self.full(path)?;
        let mut rd = fs::read_dir(&full).await.map_err(|e| StorageError::io(path, e))?;
        let mut out = Vec::new();
        let base = path.trim_end_matches('/');
        while let Some(entry) = rd.next_entry().await.map_err(|e| StorageError::io(path, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of in-flight writes are not objects.
            if name.starts_with('.') {
                continue;
            }
            out.push(format!("{base}/{name}"));
        }
        out.sort();
        Ok(out)
    }

    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        let src = self.full(source)?;
        let dst = self.full(dest)?;
        blocking(source, move || durable::rename(&src, &dst)).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let full = self.full(path)?;
        blocking(path, move || {
            let md = std::fs::symlink_metadata(&full)?;
            if md.is_dir() {
                std::fs::remove_dir_all(&full)?;
            } else {
                std::fs::remove_file(&full)?;
            }
            match full.parent() {
                Some(parent) => durable::sync_dir(parent),
                None => Ok(()),
            }
        })
        .await
    }
}

struct FsWriter {
    path: String,
    full: PathBuf,
    /// `None` only while a batch is being written on the blocking pool.
    file: Option<std::fs::File>,
    /// Bytes accepted but not yet written.
    pending: BytesMut,
    size: u64,
}

impl FsWriter {
    /// Writes the pending bytes; the error of this very write is returned.
    async fn flush_pending(&mut self, sync: bool) -> Result<()> {
        let mut file = self.file.take().ok_or_else(|| {
            StorageError::io(&self.path, std::io::Error::other("an earlier write of this writer failed"))
        })?;
        let batch = self.pending.split().freeze();
        let (file, res) = tokio::task::spawn_blocking(move || {
            let res = file.write_all(&batch).and_then(|()| if sync { file.sync_all() } else { Ok(()) });
            (file, res)
        })
        .await
        .map_err(|e| StorageError::io(&self.path, std::io::Error::other(e)))?;
        self.file = Some(file);
        res.map_err(|e| StorageError::io(&self.path, e))
    }
}

#[async_trait]
impl FileWriter for FsWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(data);
        self.size += data.len() as u64;
        if self.pending.len() >= WRITE_BATCH {
            self.flush_pending(false).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.flush_pending(false).await
    }

    async fn cancel(mut self: Box<Self>) -> Result<()> {
        drop(self.file.take());
        match fs::remove_file(&self.full).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(&self.path, e)),
            _ => Ok(()),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush_pending(true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filesystem_backend_satisfies_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::new(dir.path());
        crate::storage::suite::run_all(&driver).await;
    }

    #[tokio::test]
    async fn temporary_files_are_not_listed_and_paths_stay_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::new(dir.path().join("root"));
        driver.put_content("/a/b", Bytes::from_static(b"x")).await.unwrap();
        std::fs::write(dir.path().join("root/a/.b.tmp-1"), b"partial").unwrap();
        assert_eq!(driver.list("/a").await.unwrap(), vec!["/a/b".to_string()]);
        assert!(matches!(driver.get_content("/../secret").await, Err(StorageError::InvalidPath(_))));
    }
}
