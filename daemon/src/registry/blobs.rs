//! Blobs in a repository: existence through the repository's `_layers` link,
//! content by digest in the shared blob store.

use super::{paths, Error, Registry, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::ByteStream;

/// A blob's size, as served.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

impl Registry {
    /// Whether `digest` is linked into `repo`: pushed there, mounted there,
    /// or (as registry:2 allows) a manifest of that repository.
    pub(super) async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.exists(&paths::layer_link(repo, digest)).await?
            || self.exists(&paths::revision_link(repo, digest)).await?)
    }

    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        if !self.blob_linked(repo, digest).await? {
            return Err(Error::BlobUnknown(digest.clone()));
        }
        match self.driver.stat(&paths::blob_data(digest)).await {
            Ok(st) => Ok(BlobInfo { digest: digest.clone(), size: st.size }),
            Err(e) if e.is_not_found() => Err(Error::BlobUnknown(digest.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams a blob from `offset`; the caller limits the length for ranges.
    pub async fn read_blob(&self, digest: &Digest, offset: u64) -> Result<ByteStream> {
        match self.driver.reader(&paths::blob_data(digest), offset).await {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(Error::BlobUnknown(digest.clone())),
            Err(e) => Err(e.into()),
        }
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
        if !self.exists(&paths::layer_link(from, digest)).await? || !self.exists(&paths::blob_data(digest)).await? {
            return Ok(false);
        }
        self.write_link(&paths::layer_link(repo, digest), digest).await?;
        Ok(true)
    }
}
