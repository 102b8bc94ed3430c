//! The registry: the OCI distribution rules, with no HTTP in here. It turns
//! typed requests (repository, digest, tag) into operations on a
//! [`StorageDriver`], in registry:2's layout (see [`paths`]).

pub mod error;
pub mod manifest;
pub mod paths;

mod blobs;
pub mod browse;
mod discovery;
pub mod fsck;
pub mod gc;
mod integrity;
mod lazy_layers;
mod maintenance;
mod manifest_cache;
mod manifests;
pub mod mirror;
mod namespace;
pub mod prefetch;
pub mod pulls;
pub mod retention;
mod uploads;

/// Storage failures are part of the registry's errors ([`Error::Storage`]); the
/// HTTP layer maps them without reaching into storage.
pub use crate::storage::{take, StorageError};
pub use blobs::BlobInfo;
pub use discovery::{Page, Referrer};
pub use error::{Error, Result};
pub use manifests::{PushedManifest, StoredManifest};
pub use mirror::BlobSource;
pub use namespace::Namespace;
pub use uploads::{BodyStream, UploadStatus};

use crate::digest::Digest;
use crate::names::RepoName;
use crate::storage::StorageDriver;
use bytes::Bytes;
use std::sync::Arc;

/// What the registry allows, from `storage.delete` and
/// `storage.maintenance.readonly`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub delete_enabled: bool,
    pub read_only: bool,
    /// Redirect blob reads to the backend (`storage.redirect.disable:
    /// false`); off by default, because clients often cannot reach the
    /// backend's internal address.
    pub redirect: bool,
}

pub struct Registry {
    driver: Arc<dyn StorageDriver>,
    policy: Policy,
    uploads: uploads::Sessions,
    /// Blobs that hashed to their digest, by storage identity.
    verified: integrity::Verified,
    mirrors: mirror::Mirrors,
    indexer: lazy_layers::Indexer,
    /// The cluster's key for layer indexes (`layerindex.keyfile`): without
    /// one, no index is built or served and lazy pulls fall back.
    index_key: Option<crate::layerindex::signing::IndexKey>,
    /// Pulls this node served since it last left them in the storage.
    pulls: pulls::PullLog,
    /// Verified manifests by digest, for the pull hot path.
    manifests: manifest_cache::ManifestCache,
    /// This registry, for background work that outlives a request.
    me: std::sync::Weak<Registry>,
}

impl Registry {
    pub fn new(driver: Arc<dyn StorageDriver>, policy: Policy) -> Arc<Registry> {
        Self::with_mirrors(driver, policy, mirror::Mirrors::default())
    }

    pub fn with_mirrors(driver: Arc<dyn StorageDriver>, policy: Policy, mirrors: mirror::Mirrors) -> Arc<Registry> {
        Self::build(driver, policy, mirrors, None)
    }

    /// Everything configurable: mirrors, and the key that authenticates
    /// layer indexes.
    pub fn build(
        driver: Arc<dyn StorageDriver>,
        policy: Policy,
        mirrors: mirror::Mirrors,
        index_key: Option<crate::layerindex::signing::IndexKey>,
    ) -> Arc<Registry> {
        Arc::new_cyclic(|me| Registry {
            driver,
            policy,
            uploads: uploads::Sessions::default(),
            verified: integrity::Verified::default(),
            mirrors,
            indexer: lazy_layers::Indexer::new(),
            index_key,
            pulls: pulls::PullLog::default(),
            manifests: manifest_cache::ManifestCache::default(),
            me: me.clone(),
        })
    }

    fn self_arc(&self) -> Arc<Registry> {
        self.me.upgrade().expect("the registry outlives its requests")
    }

    pub fn backend_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Checks the storage answers (used at start-up and by health checks).
    pub async fn check_storage(&self) -> Result<()> {
        match self.driver.stat(paths::ROOT).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remembers that manifest `digest` of `repo` (as `ns` names it) was
    /// pulled, for retention; stored in batches by [`Registry::flush_pulls`].
    pub fn record_pull(&self, ns: &Namespace, repo: &RepoName, digest: &Digest) {
        if let Ok(stored) = self.stored_repo(ns, repo) {
            self.pulls.record(&stored, digest);
        }
    }

    /// Leaves the pulls recorded since the last flush in the storage.
    pub async fn flush_pulls(&self) -> Result<usize> {
        self.pulls.flush(&*self.driver).await
    }

    fn ensure_writable(&self) -> Result<()> {
        if self.policy.read_only {
            return Err(Error::Unsupported(
                "the registry is in read-only mode (storage.maintenance.readonly.enabled); writes are refused until it is turned off".into(),
            ));
        }
        Ok(())
    }

    fn ensure_deletable(&self) -> Result<()> {
        self.ensure_writable()?;
        if !self.policy.delete_enabled {
            return Err(Error::Unsupported(
                "deletes are disabled on this registry; set storage.delete.enabled: true to allow them".into(),
            ));
        }
        Ok(())
    }

    /// Reads a link file; `Ok(None)` when it does not exist.
    async fn read_link(&self, path: &str) -> Result<Option<Digest>> {
        match self.driver.get_content(path).await {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                let d = text.trim().parse().map_err(|e| {
                    Error::Storage(StorageError::Io {
                        path: path.to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt link file: {e}")),
                    })
                })?;
                Ok(Some(d))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_link(&self, path: &str, d: &Digest) -> Result<()> {
        self.driver.put_content(path, Bytes::from(d.to_string())).await?;
        Ok(())
    }

    async fn exists(&self, path: &str) -> Result<bool> {
        match self.driver.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `path`, treating "already gone" as success.
    async fn delete_if_exists(&self, path: &str) -> Result<()> {
        match self.driver.delete(path).await {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Lists a directory; a missing one is empty.
    pub(super) async fn list_or_empty(&self, dir: &str) -> Result<Vec<String>> {
        match self.driver.list(dir).await {
            Ok(c) => Ok(c),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Walks the directories under `repositories/` (skipping `_`-prefixed
    /// ones, as registry:2 does) and returns each with its children's paths.
    async fn repository_tree(&self) -> Result<Vec<(String, Vec<String>)>> {
        let mut out = Vec::new();
        let mut stack = vec![paths::repositories()];
        while let Some(dir) = stack.pop() {
            let children = match self.driver.list(&dir).await {
                Ok(c) => c,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            for child in &children {
                let name = child.rsplit('/').next().unwrap_or_default();
                if !name.starts_with('_') && self.driver.stat(child).await.is_ok_and(|s| s.is_dir) {
                    stack.push(child.clone());
                }
            }
            out.push((dir, children));
        }
        Ok(out)
    }

    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        self.exists(&paths::repo_dir(repo)).await
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_integrity;
