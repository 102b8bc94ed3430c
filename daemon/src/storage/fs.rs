//! The filesystem backend: the embedded default. Objects are files under a
//! root directory, in exactly the layout registry:2 writes, so a root can be
//! moved between registry:2 and berthd in either direction.
//!
//! Whole-object writes go to a temporary file beside the target and are
//! renamed into place after `fsync`, so a crash or a full disk never leaves a
//! half-written object under its final name.

use super::{check_path, ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use tokio::fs;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Read buffer size for streamed objects.
const CHUNK: usize = 256 * 1024;

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

async fn ensure_parent(path: &str, full: &Path) -> Result<()> {
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent).await.map_err(|e| StorageError::io(path, e))?;
    }
    Ok(())
}

/// A temporary sibling name for atomic replacement; the leading dot keeps
/// it out of the object namespace (`check_path` never names it).
fn temp_sibling(full: &Path) -> PathBuf {
    let name = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    full.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()))
}

#[async_trait]
impl StorageDriver for FsDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        let full = self.full(path)?;
        let data = fs::read(&full).await.map_err(|e| StorageError::io(path, e))?;
        Ok(Bytes::from(data))
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        let full = self.full(path)?;
        ensure_parent(path, &full).await?;
        let tmp = temp_sibling(&full);
        let res = async {
            let mut f = fs::File::create(&tmp).await?;
            f.write_all(&content).await?;
            f.sync_all().await?;
            fs::rename(&tmp, &full).await
        }
        .await;
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp).await;
            return Err(StorageError::io(path, e));
        }
        Ok(())
    }

    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        let full = self.full(path)?;
        let mut f = fs::File::open(&full).await.map_err(|e| StorageError::io(path, e))?;
        let size = f.metadata().await.map_err(|e| StorageError::io(path, e))?.len();
        if offset > size {
            return Err(StorageError::InvalidOffset { path: path.to_string(), offset });
        }
        if offset > 0 {
            f.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| StorageError::io(path, e))?;
        }
        Ok(tokio_util::io::ReaderStream::with_capacity(f, CHUNK).boxed())
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        let full = self.full(path)?;
        ensure_parent(path, &full).await?;
        let mut opts = fs::OpenOptions::new();
        opts.create(true).write(true);
        if append {
            opts.append(true);
        } else {
            opts.truncate(true);
        }
        let file = opts.open(&full).await.map_err(|e| StorageError::io(path, e))?;
        let size = file.metadata().await.map_err(|e| StorageError::io(path, e))?.len();
        Ok(Box::new(FsWriter { path: path.to_string(), full, file, size }))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        let full = self.full(path)?;
        let md = fs::metadata(&full).await.map_err(|e| StorageError::io(path, e))?;
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
        ensure_parent(dest, &dst).await?;
        fs::rename(&src, &dst).await.map_err(|e| StorageError::io(source, e))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let full = self.full(path)?;
        let md = fs::symlink_metadata(&full).await.map_err(|e| StorageError::io(path, e))?;
        let res = if md.is_dir() { fs::remove_dir_all(&full).await } else { fs::remove_file(&full).await };
        res.map_err(|e| StorageError::io(path, e))
    }
}

struct FsWriter {
    path: String,
    full: PathBuf,
    file: fs::File,
    size: u64,
}

#[async_trait]
impl FileWriter for FsWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).await.map_err(|e| StorageError::io(&self.path, e))?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.file.flush().await.map_err(|e| StorageError::io(&self.path, e))
    }

    async fn cancel(self: Box<Self>) -> Result<()> {
        drop(self.file);
        match fs::remove_file(&self.full).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(&self.path, e)),
            _ => Ok(()),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.file.flush().await.map_err(|e| StorageError::io(&self.path, e))?;
        self.file.sync_all().await.map_err(|e| StorageError::io(&self.path, e))
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
