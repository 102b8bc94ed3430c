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
    /// Finished or cancelled: whoever waited for the lock meanwhile finds
    /// the upload gone, never a half-moved file.
    ended: bool,
}

type SessionLock = Arc<tokio::sync::Mutex<Session>>;

/// In-memory state of uploads on this node; one lock per upload, held for
/// the whole of each request on it, so requests on one upload run one
/// after the other whatever order they arrive in, and none of them writes
/// after the upload was finished (the data file was moved under its
/// digest: an append then would change a committed blob).
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, SessionLock>>,
}

impl Sessions {
    fn get(&self, id: &str) -> SessionLock {
        self.map
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Session { hasher: None, size: u64::MAX, ended: false }))
            })
            .clone()
    }

    fn insert_new(&self, id: &str) {
        let s = Session { hasher: Some(Hasher::new(Algorithm::Sha256)), size: 0, ended: false };
        self.map.lock().unwrap().insert(id.to_string(), Arc::new(tokio::sync::Mutex::new(s)));
    }

    pub(super) fn remove(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }

    /// Uploads with in-memory state.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// Upload ids are UUIDs we generated, in the one form we generate
/// (lowercase, hyphenated); anything else — braces, `urn:uuid:`, upper
/// case — is unknown and never reaches a storage path.
fn check_id(id: &str) -> Result<()> {
    let ours = uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id);
    if ours {
        Ok(())
    } else {
        Err(Error::BlobUploadUnknown(id.to_string()))
    }
}

/// Streams `body` into `w`, feeding `hasher` if present. With `limit`
/// (from `Content-Range`) the body must be exactly that long: bytes past it
/// are not written, and a shorter or longer body is an error after what
/// fits was stored. Returns bytes written.
async fn copy_body(
    body: BodyStream,
    w: &mut Box<dyn FileWriter>,
    hasher: &mut Option<Hasher>,
    limit: Option<u64>,
) -> Result<u64> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            Error::BlobUploadInvalid(format!(
                "the request body ended early after {n} bytes ({e}); check the upload status and resume"
            ))
        })?;
        let over = limit.is_some_and(|l| n + chunk.len() as u64 > l);
        if let Some(l) = limit.filter(|_| over) {
            chunk.truncate((l - n) as usize);
        }
        w.write(&chunk).await?;
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        n += chunk.len() as u64;
        if over {
            return Err(Error::BlobUploadInvalid(format!(
                "the body is longer than the {} bytes its Content-Range announced; the announced bytes were stored, send the rest as the next chunk",
                limit.unwrap_or_default()
            )));
        }
    }
    match limit {
        Some(l) if n != l => Err(Error::BlobUploadInvalid(format!(
            "Content-Range announced {l} bytes but the body had {n}; those {n} bytes were stored, check the upload status and resume"
        ))),
        _ => Ok(n),
    }
}

impl Registry {
    /// Starts an upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        self.ensure_writable()?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = berth_wire::time::rfc3339(std::time::SystemTime::now());
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

    /// Takes the upload's lock and checks, under it, that the upload still
    /// exists: a request that waited behind a finish or cancel gets
    /// `BLOB_UPLOAD_UNKNOWN`.
    async fn lock_upload(&self, repo: &RepoName, id: &str) -> Result<tokio::sync::OwnedMutexGuard<Session>> {
        check_id(id)?;
        let s = self.uploads.get(id).lock_owned().await;
        if s.ended {
            return Err(Error::BlobUploadUnknown(id.to_string()));
        }
        if let Err(e) = self.upload_exists(repo, id).await {
            if matches!(e, Error::BlobUploadUnknown(_)) {
                // Do not keep state for ids that name nothing.
                self.uploads.remove(id);
            }
            return Err(e);
        }
        Ok(s)
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        self.upload_exists(repo, id).await?;
        let st = self.driver.stat(&paths::upload_data(repo, id)).await?;
        Ok(UploadStatus { id: id.to_string(), size: st.size })
    }

    /// Appends a chunk. `range` is `Content-Range`'s first byte and length:
    /// the first byte must equal the current size and the body must be
    /// exactly that long.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<(u64, u64)>,
        body: BodyStream,
    ) -> Result<UploadStatus> {
        self.ensure_writable()?;
        let mut s = self.lock_upload(repo, id).await?;
        let mut w = self.driver.writer(&paths::upload_data(repo, id), true).await?;
        if w.size() != s.size {
            // Restarted daemon, or an upload begun elsewhere: re-hash at the end.
            s.hasher = None;
            s.size = w.size();
        }
        if let Some((start, _)) = range {
            if start != w.size() {
                let expected = w.size();
                w.close().await?;
                return Err(Error::UploadOutOfOrder { expected, got: start });
            }
        }
        let res = copy_body(body, &mut w, &mut s.hasher, range.map(|(_, len)| len)).await;
        if res.is_err() {
            // Part of a chunk may be written: the running hash no longer
            // matches what the client thinks it sent; re-hash when finishing.
            s.hasher = None;
        }
        let closed = w.close().await;
        // What is really stored is the size from now on (a failed write
        // may have stored part of a batch).
        s.size = match closed {
            Ok(()) => self.driver.stat(&paths::upload_data(repo, id)).await.map(|st| st.size).unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        };
        if closed.is_err() {
            s.hasher = None;
        }
        let size = s.size;
        res?;
        closed?;
        Ok(UploadStatus { id: id.to_string(), size })
    }

    /// Finishes an upload: appends an optional last chunk, verifies
    /// `expected`, and makes the blob readable in `repo`. The upload's lock
    /// is held until its data was moved and its directory removed.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        expected: &Digest,
        body: Option<BodyStream>,
    ) -> Result<BlobInfo> {
        self.ensure_writable()?;
        let mut s = self.lock_upload(repo, id).await?;
        let data_path = paths::upload_data(repo, id);
        let mut w = self.driver.writer(&data_path, true).await?;
        if w.size() != s.size {
            s.hasher = None;
        }
        if let Some(body) = body {
            if let Err(e) = copy_body(body, &mut w, &mut s.hasher, None).await {
                s.hasher = None;
                s.size = u64::MAX;
                w.close().await?;
                return Err(e);
            }
        }
        let size = w.size();
        if let Err(e) = w.commit().await {
            s.hasher = None;
            s.size = u64::MAX;
            return Err(e.into());
        }
        let actual = match s.hasher.take() {
            Some(h) if h.algorithm() == expected.algorithm() => h.finish(),
            _ => self.hash_object(&data_path, expected.algorithm()).await?,
        };
        if &actual != expected {
            self.end_upload(&mut s, repo, id).await?;
            return Err(Error::DigestInvalid(format!(
                "uploaded content has digest {actual} but the client said {expected}; the upload was discarded, push the blob again"
            )));
        }
        self.store_verified(repo, &data_path, expected, size).await?;
        self.end_upload(&mut s, repo, id).await?;
        Ok(BlobInfo { digest: actual, size, stored: None })
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
        let mut s = self.lock_upload(repo, id).await?;
        self.end_upload(&mut s, repo, id).await
    }

    /// Ends an upload whose lock `s` is held: marks it ended, removes its
    /// directory, and only then forgets its lock. A request that arrives
    /// meanwhile finds the same lock and, once it gets it, the upload ended
    /// (`BLOB_UPLOAD_UNKNOWN`); forgetting the lock first would give it a
    /// fresh one and a half-removed upload (its data already moved under
    /// the digest) to append to or hash as empty. If the directory cannot
    /// be removed, the ended lock stays, so the upload stays unknown.
    async fn end_upload(&self, s: &mut Session, repo: &RepoName, id: &str) -> Result<()> {
        s.ended = true;
        self.delete_if_exists(&paths::upload_dir(repo, id)).await?;
        self.uploads.remove(id);
        Ok(())
    }

    /// Moves verified data under its digest and links it into the
    /// repository. Data already stored under the digest is replaced (an
    /// atomic rename on the filesystem, a copy on S3): the new data was
    /// just verified, the old may not be, so a push always repairs a
    /// damaged blob.
    pub(super) async fn store_verified(
        &self,
        repo: &RepoName,
        data_path: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let blob = paths::blob_data(digest);
        self.driver.move_object(data_path, &blob).await?;
        match self.driver.stat(&blob).await {
            Ok(st) if st.size == size => self.verified.record(digest, &st),
            _ => self.verified.forget(digest),
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
