//! A driver wrapper that counts backend requests, failures and time spent,
//! for the `/metrics` endpoint. It wraps the remote backend (below the
//! cache), so the numbers are what the bucket actually sees.

use super::{ByteStream, FileInfo, FileWriter, Result, StorageDriver};
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

pub struct Instrumented(pub Arc<dyn StorageDriver>);

fn record<T>(operation: &'static str, started: Instant, res: &Result<T>) {
    let m = metrics::get();
    let op = metrics::OperationLabels { operation };
    m.storage_requests.get_or_create(&op).inc();
    m.storage_requests_all.inc();
    m.storage_duration.get_or_create(&op).observe(started.elapsed().as_secs_f64());
    if matches!(res, Err(e) if !e.is_not_found()) {
        m.storage_errors.get_or_create(&op).inc();
    }
}

macro_rules! timed {
    ($op:literal, $e:expr) => {{
        let started = Instant::now();
        let res = $e.await;
        record($op, started, &res);
        res
    }};
}

#[async_trait]
impl StorageDriver for Instrumented {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn get_content(&self, path: &str) -> Result<Bytes> {
        timed!("get", self.0.get_content(path))
    }
    async fn put_content(&self, path: &str, content: Bytes) -> Result<()> {
        timed!("put", self.0.put_content(path, content))
    }
    async fn reader(&self, path: &str, offset: u64) -> Result<ByteStream> {
        timed!("read", self.0.reader(path, offset))
    }
    async fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<ByteStream> {
        timed!("read_range", self.0.read_range(path, offset, len))
    }
    async fn writer(&self, path: &str, append: bool) -> Result<Box<dyn FileWriter>> {
        timed!("write", self.0.writer(path, append))
    }
    async fn stat(&self, path: &str) -> Result<FileInfo> {
        timed!("stat", self.0.stat(path))
    }
    async fn stat_authoritative(&self, path: &str) -> Result<FileInfo> {
        timed!("stat", self.0.stat_authoritative(path))
    }
    async fn list(&self, path: &str) -> Result<Vec<String>> {
        timed!("list", self.0.list(path))
    }
    async fn move_object(&self, source: &str, dest: &str) -> Result<()> {
        timed!("move", self.0.move_object(source, dest))
    }
    async fn delete(&self, path: &str) -> Result<()> {
        timed!("delete", self.0.delete(path))
    }
    async fn delete_objects(&self, paths: &[String]) -> Result<()> {
        timed!("delete_many", self.0.delete_objects(paths))
    }
    async fn redirect_url(&self, path: &str) -> Result<Option<String>> {
        self.0.redirect_url(path).await
    }
}
