//! The node cache against a slow, countable, fallible backend.

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
