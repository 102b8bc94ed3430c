//! Blob uploads: sessions that stream chunks into `_uploads/<id>/data`, hash
//! them on the way, and on completion verify the digest before the data is
//! moved under its digest. Until that move nothing is readable as a blob, so
//! an interrupted, killed or disk-full upload leaves nothing corrupt behind.
//!
//! The running hash lives in memory per session. When it is missing (the
//! daemon restarted mid-upload) or was computed with another algorithm than
//! the client's final digest, the data is re-hashed from storage instead.

use super::{paths, BlobInfo, Error, Registry, Result};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::RepoName;
use crate::storage::FileWriter;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// A request body, streamed.
pub type BodyStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: String,
    pub size: u64,
}

struct Session {
    /// sha256 of the bytes written so far, when it is known to be in step
    /// with the stored data.
    hasher: Option<Hasher>,
    size: u64,
}

/// In-memory state of uploads on this node; one lock per upload so chunks
/// of one upload are applied in order while uploads proceed in parallel.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
}

impl Sessions {
    fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<Session>> {
        self.map
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Session { hasher: None, size: u64::MAX })))
            .clone()
    }

    fn insert_new(&self, id: &str) {
        let s = Session { hasher: Some(Hasher::new(Algorithm::Sha256)), size: 0 };
        self.map.lock().unwrap().insert(id.to_string(), Arc::new(tokio::sync::Mutex::new(s)));
    }

    pub(super) fn remove(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }
}

/// Upload ids are UUIDs we generated; anything else is unknown (and never
/// reaches a storage path).
fn check_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| Error::BlobUploadUnknown(id.to_string()))
}

/// Streams `body` into `w`, feeding `hasher` if present. Returns bytes written.
async fn copy_body(body: BodyStream, w: &mut Box<dyn FileWriter>, hasher: &mut Option<Hasher>) -> Result<u64> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::BlobUploadInvalid(format!(
                "the request body ended early after {n} bytes ({e}); check the upload status and resume"
            ))
        })?;
        w.write(&chunk).await?;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        n += chunk.len() as u64;
    }
    Ok(n)
}

impl Registry {
    /// Starts an upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        self.ensure_writable()?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = crate::timefmt::rfc3339(std::time::SystemTime::now());
        self.driver.put_content(&paths::upload_started_at(repo, &id), Bytes::from(now)).await?;
        self.driver.writer(&paths::upload_data(repo, &id), false).await?.close().await?;
        self.uploads.insert_new(&id);
        Ok(UploadStatus { id, size: 0 })
    }

    async fn upload_exists(&self, repo: &RepoName, id: &str) -> Result<()> {
        check_id(id)?;
        if !self.exists(&paths::upload_data(repo, id)).await? {
            return Err(Error::BlobUploadUnknown(id.to_string()));
        }
        Ok(())
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        self.upload_exists(repo, id).await?;
        let st = self.driver.stat(&paths::upload_data(repo, id)).await?;
        Ok(UploadStatus { id: id.to_string(), size: st.size })
    }

    /// Appends a chunk. `start` is the first byte's offset from
    /// `Content-Range`, which must equal the current size.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: BodyStream,
    ) -> Result<UploadStatus> {
        self.ensure_writable()?;
        self.upload_exists(repo, id).await?;
        let session = self.uploads.get(id);
        let mut s = session.lock().await;
        let mut w = self.driver.writer(&paths::upload_data(repo, id), true).await?;
        if w.size() != s.size {
            // Restarted daemon, or an upload begun elsewhere: re-hash at the end.
            s.hasher = None;
            s.size = w.size();
        }
        if let Some(start) = start {
            if start != w.size() {
                let expected = w.size();
                w.close().await?;
                return Err(Error::UploadOutOfOrder { expected, got: start });
            }
        }
        let res = copy_body(body, &mut w, &mut s.hasher).await;
        s.size = w.size();
        let size = s.size;
        w.close().await?;
        if res.is_err() {
            // Part of a chunk was written: the running hash no longer
            // matches what the client thinks it sent; re-hash when finishing.
            s.hasher = None;
        }
        res?;
        Ok(UploadStatus { id: id.to_string(), size })
    }

    /// Finishes an upload: appends an optional last chunk, verifies
    /// `expected`, and makes the blob readable in `repo`.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        expected: &Digest,
        body: Option<BodyStream>,
    ) -> Result<BlobInfo> {
        self.ensure_writable()?;
        self.upload_exists(repo, id).await?;
        let session = self.uploads.get(id);
        let mut s = session.lock().await;
        let data_path = paths::upload_data(repo, id);
        let mut w = self.driver.writer(&data_path, true).await?;
        if w.size() != s.size {
            s.hasher = None;
        }
        if let Some(body) = body {
            if let Err(e) = copy_body(body, &mut w, &mut s.hasher).await {
                s.hasher = None;
                s.size = w.size();
                w.close().await?;
                return Err(e);
            }
        }
        let size = w.size();
        w.commit().await?;
        let actual = match s.hasher.take() {
            Some(h) if h.algorithm() == expected.algorithm() => h.finish(),
            _ => self.hash_object(&data_path, expected.algorithm()).await?,
        };
        drop(s);
        self.uploads.remove(id);
        if &actual != expected {
            self.delete_if_exists(&paths::upload_dir(repo, id)).await?;
            return Err(Error::DigestInvalid(format!(
                "uploaded content has digest {actual} but the client said {expected}; the upload was discarded, push the blob again"
            )));
        }
        self.store_verified(repo, &data_path, expected).await?;
        self.delete_if_exists(&paths::upload_dir(repo, id)).await?;
        Ok(BlobInfo { digest: actual, size })
    }

    /// Monolithic upload (`POST ?digest=` with the body).
    pub async fn upload_whole(&self, repo: &RepoName, expected: &Digest, body: BodyStream) -> Result<BlobInfo> {
        let status = self.start_upload(repo).await?;
        let res = self.finish_upload(repo, &status.id, expected, Some(body)).await;
        if res.is_err() {
            self.uploads.remove(&status.id);
            self.delete_if_exists(&paths::upload_dir(repo, &status.id)).await?;
        }
        res
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.ensure_writable()?;
        self.upload_exists(repo, id).await?;
        self.uploads.remove(id);
        self.delete_if_exists(&paths::upload_dir(repo, id)).await
    }

    /// Moves verified data under its digest (unless the blob store already
    /// has it) and links it into the repository.
    pub(super) async fn store_verified(&self, repo: &RepoName, data_path: &str, digest: &Digest) -> Result<()> {
        let blob = paths::blob_data(digest);
        if !self.exists(&blob).await? {
            self.driver.move_object(data_path, &blob).await?;
        }
        self.write_link(&paths::layer_link(repo, digest), digest).await
    }

    async fn hash_object(&self, path: &str, algorithm: Algorithm) -> Result<Digest> {
        let mut h = Hasher::new(algorithm);
        let mut s = self.driver.reader(path, 0).await?;
        while let Some(chunk) = s.try_next().await.map_err(|e| crate::storage::StorageError::io(path, e))? {
            h.update(&chunk);
        }
        Ok(h.finish())
    }
}
