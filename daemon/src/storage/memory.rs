//! An in-memory backend for unit tests of the registry layer. It follows the
//! same contract as the real backends (checked by the shared suite).

use super::{check_path, ByteStream, FileInfo, FileWriter, Result, StorageDriver, StorageError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Default, Clone)]
pub struct MemoryDriver {
    objects: Arc<Mutex<BTreeMap<String, (Bytes, SystemTime)>>>,
}

impl MemoryDriver {
    pub fn new() -> MemoryDriver {
        MemoryDriver::default()
    }

    fn is_dir(map: &BTreeMap<String, (Bytes, SystemTime)>, path: &str) -> bool {
        let prefix = dir_prefix(path);
        map.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

fn dir_prefix(path: &str) -> String {
    format!("{}/", path.trim_end_matches('/'))
}

#[async_trait]
impl StorageDriver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get_content(&self, path: &str) -> Result<Bytes> {
        check_path(path)?;
        let map = self.objects.lock().unwrap();
        map.get(path).map(|(b, _)| b.clone()).ok_or_else(|| StorageError::NotFound(path.to_string()))
    }

    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        check_path(path)?;
        self.objects.lock().unwrap().insert(path.to_string(), (content, SystemTime::now()));
        Ok(())
    }

    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        let data = self.get_content(path).await?;
        if offset > data.len() as u64 {
            return Err(StorageError::InvalidOffset { path: path.to_string(), offset });
        }
        let rest = data.slice(offset as usize..);
        Ok(futures_util::stream::iter([Ok(rest)]).boxed())
    }

    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        check_path(path)?;
        let existing = if append {
            self.objects.lock().unwrap().get(path).map(|(b, _)| b.to_vec()).unwrap_or_default()
        } else {
            Vec::new()
        };
        let w = MemoryWriter { driver: self.clone(), path: path.to_string(), buf: existing };
        w.flush();
        Ok(Box::new(w))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        check_path(path)?;
        let map = self.objects.lock().unwrap();
        if let Some((b, t)) = map.get(path) {
            return Ok(FileInfo { path: path.to_string(), size: b.len() as u64, modified: *t, is_dir: false });
        }
        if path == "/" || Self::is_dir(&map, path) {
            return Ok(FileInfo { path: path.to_string(), size: 0, modified: SystemTime::now(), is_dir: true });
        }
        Err(StorageError::NotFound(path.to_string()))
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        check_path(path)?;
        let map = self.objects.lock().unwrap();
        let prefix = if path == "/" { "/".to_string() } else { dir_prefix(path) };
        let mut out: Vec<String> = map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| {
                let rest = &k[prefix.len()..];
                format!("{prefix}{}", rest.split('/').next().unwrap_or(rest))
            })
            .collect();
        out.dedup();
        if out.is_empty() && path != "/" {
            return Err(StorageError::NotFound(path.to_string()));
        }
        Ok(out)
    }

    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        check_path(source)?;
        check_path(dest)?;
        let mut map = self.objects.lock().unwrap();
        let obj = map.remove(source).ok_or_else(|| StorageError::NotFound(source.to_string()))?;
        map.insert(dest.to_string(), obj);
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        check_path(path)?;
        let mut map = self.objects.lock().unwrap();
        let prefix = dir_prefix(path);
        let keys: Vec<String> = map.keys().filter(|k| k.as_str() == path || k.starts_with(&prefix)).cloned().collect();
        if keys.is_empty() {
            return Err(StorageError::NotFound(path.to_string()));
        }
        for k in keys {
            map.remove(&k);
        }
        Ok(())
    }
}

struct MemoryWriter {
    driver: MemoryDriver,
    path: String,
    buf: Vec<u8>,
}

impl MemoryWriter {
    fn flush(&self) {
        let mut map = self.driver.objects.lock().unwrap();
        map.insert(self.path.clone(), (Bytes::from(self.buf.clone()), SystemTime::now()));
    }
}

#[async_trait]
impl FileWriter for MemoryWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    async fn close(self: Box<Self>) -> Result<()> {
        self.flush();
        Ok(())
    }

    async fn cancel(self: Box<Self>) -> Result<()> {
        self.driver.objects.lock().unwrap().remove(&self.path);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_backend_satisfies_the_contract() {
        crate::storage::suite::run_all(&super::MemoryDriver::new()).await;
    }
}
