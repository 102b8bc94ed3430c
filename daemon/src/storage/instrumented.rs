//! A driver wrapper that counts backend requests, failures and time spent,
//! for the `/metrics` endpoint. It wraps the remote backend (below the
//! cache), so the numbers are what the bucket actually sees.

use super::{ByteStream, FileInfo, FileWriter, Result, StorageDriver};
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct Instrumented(pub Arc<dyn StorageDriver>);

fn record<T>(started: Instant, res: &Result<T>) {
    let m = metrics::get();
    m.storage_requests.fetch_add(1, Relaxed);
    m.storage_latency_micros.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    if matches!(res, Err(e) if !e.is_not_found()) {
        m.storage_errors.fetch_add(1, Relaxed);
    }
}

macro_rules! timed {
    ($e:expr) => {{
        let started = Instant::now();
        let res = $e.await;
        record(started, &res);
        res
    }};
}

#[async_trait]
impl StorageDriver for Instrumented {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn get_content(&self, path: &str) -> Result<Bytes> {
        timed!(self.0.get_content(path))
    }
    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        timed!(self.0.put_content(path, content))
    }
    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        timed!(self.0.reader(path, offset))
    }
    async fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<ByteStream> {
        timed!(self.0.read_range(path, offset, len))
    }
    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        timed!(self.0.writer(path, append))
    }
    async fn stat(&self, path: &str) -> Result<FileInfo> {
        timed!(self.0.stat(path))
    }
    async fn stat_authoritative(&self, path: &str) -> Result<FileInfo> {
        timed!(self.0.stat_authoritative(path))
    }
    async fn list(&self, path: &str) -> Result<Vec<String>> {
        timed!(self.0.list(path))
    }
    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        timed!(self.0.move_object(source, dest))
    }
    async fn delete(&self, path: &str) -> Result<()> {
        timed!(self.0.delete(path))
    }
    async fn delete_objects(&self, paths: &[String]) -> Result<()> {
        timed!(self.0.delete_objects(paths))
    }
    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        self.0.redirect_url(path).await
    }
}
