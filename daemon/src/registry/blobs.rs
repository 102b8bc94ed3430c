//! Blobs in a repository: existence through the repository's `_layers` link,
//! content by digest in the shared blob store.

use super::integrity::{verifying, Verdict};
use super::{paths, Error, Registry, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::{ByteStream, FileInfo};

/// A blob's size, as served.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// What storage said of the object, when it is stored: whether it was
    /// verified is remembered by this.
    pub(super) stored: Option<FileInfo>,
}

impl Registry {
    /// Whether `digest` is linked into `repo`: pushed there, mounted there,
    /// or (as registry:2 allows) a manifest of that repository.
    pub(super) async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.exists(&paths::layer_link(repo, digest)).await?
            || self.exists(&paths::revision_link(repo, digest)).await?)
    }

    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        let path = paths::blob_data(digest);
        // The link and the content are asked at once: against S3 that is one
        // round trip instead of two, for every blob GET and HEAD. The stat
        // counts only once the link is there.
        let (linked, stat) = tokio::join!(self.blob_linked(repo, digest), self.driver.stat(&path));
        if !linked? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        let st = match stat {
            Ok(st) => st,
            Err(e) if e.is_not_found() && self.restore_from_trash(digest).await? => self.driver.stat(&path).await?,
            Err(e) if e.is_not_found() => return Err(Error::BlobUnknown(digest.clone())),
            Err(e) => return Err(e.into()),
        };
        Ok(BlobInfo { digest: digest.clone(), size: st.size, stored: Some(st) })
    }

    /// Whether blob `digest`'s content is stored, asked of the storage
    /// itself (never a node cache: other nodes must agree). Content a
    /// garbage collection moved to its trash is moved back first: whoever
    /// asks is about to reference it (see [`super::gc`]).
    pub(super) async fn blob_stored(&self, digest: &Digest) -> Result<bool> {
        match self.driver.stat_authoritative(&paths::blob_data(digest)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => self.restore_from_trash(digest).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a blob a garbage collection trashed back into the blob store
    /// (read-repair). `Ok(true)` when the blob is stored afterwards.
    pub(super) async fn restore_from_trash(&self, digest: &Digest) -> Result<bool> {
        let (trash, data) = (paths::trash_data(digest), paths::blob_data(digest));
        match self.driver.move_object(&trash, &data).await {
            Ok(()) => {
                self.delete_if_exists(&paths::trashed_at(digest)).await?;
                crate::metrics::get().gc_restored_blobs.inc();
                tracing::info!(%digest, "moved back from the garbage collector's trash: it is wanted again");
                Ok(true)
            }
            // Not in the trash, or another request moved it back first.
            Err(e) if e.is_not_found() => match self.driver.stat_authoritative(&data).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `len` bytes of a stored blob from `start`. A whole read is
    /// verified on its way out unless this object verified before (see
    /// [`super::integrity`]); a part cannot be, and is served as stored.
    pub async fn read_blob(&self, info: &BlobInfo, start: u64, len: u64) -> Result<ByteStream> {
        let digest = &info.digest;
        let path = paths::blob_data(digest);
        let stream = match self.driver.reader(&path, start).await {
            Ok(s) => s,
            // Trashed since it was looked up: moved back, then read.
            Err(e) if e.is_not_found() && self.restore_from_trash(digest).await? => {
                self.driver.reader(&path, start).await?
            }
            Err(e) if e.is_not_found() => return Err(Error::BlobUnknown(digest.clone())),
            Err(e) => return Err(e.into()),
        };
        let whole = start == 0 && len == info.size;
        let known_good = info.stored.as_ref().is_some_and(|st| self.verified.contains(digest, st));
        if !whole || known_good {
            return Ok(crate::storage::take(stream, len));
        }
        let me = self.self_arc();
        let (d, seen) = (digest.clone(), info.stored.clone());
        Ok(verifying(stream, digest.clone(), info.size, move |verdict| match verdict {
            Verdict::Good => {
                if let Some(st) = &seen {
                    me.verified.record(&d, st);
                }
            }
            Verdict::Bad(n, actual) => {
                tokio::spawn(async move {
                    let why = format!("{n} bytes with digest {actual}");
                    me.quarantine(&d, seen.as_ref(), &why).await;
                });
            }
        }))
    }

    /// Where to redirect a client for a blob, when redirects are enabled and
    /// the backend can produce a URL.
    pub async fn blob_redirect(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.policy.redirect {
            return Ok(None);
        }
        Ok(self.driver.redirect_url(&paths::blob_data(digest)).await?)
    }

    /// Unlinks a blob from a repository. The content stays in the blob store
    /// for other repositories (garbage collection removes unreferenced data).
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.ensure_deletable()?;
        let link = paths::layer_link(repo, digest);
        if !self.exists(&link).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        self.driver.delete(&link).await?;
        Ok(())
    }

    /// Cross-repository mount: links a blob of `from` into `repo` without
    /// moving data. `Ok(false)` when `from` does not have it.
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: &RepoName) -> Result<bool> {
        self.ensure_writable()?;
        if !self.exists(&paths::layer_link(from, digest)).await? || !self.blob_stored(digest).await? {
            return Ok(false);
        }
        self.write_link(&paths::layer_link(repo, digest), digest).await?;
        Ok(true)
    }
}
