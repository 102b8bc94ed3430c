//! Pull-through mirroring. A request whose `?ns=` names a configured
//! upstream (or any request, with registry:2's `proxy.remoteurl`) is served
//! from that upstream's namespace in the shared storage — repository
//! `<upstream name>/<repository>` — and fetched from the upstream on a miss,
//! so a cluster fetches each layer from the upstream once, whichever node
//! asked.
//!
//! - Tags are trusted for the mirror's `tagttl`, then revalidated with a
//!   HEAD; when the upstream is at fault (unreachable, too slow, 5xx, 429,
//!   garbage) the last known digest is served (stale-if-error).
//! - Manifests and blobs are verified against their digests before they are
//!   stored; nothing an upstream sends is trusted.
//! - A blob's first pull is one download per node ([`crate::fill`]), run in
//!   its own task into a spool file on the node's disk at the upstream's
//!   speed: every client (the first too) reads the spool at its own pace,
//!   a client that gives up stops nothing, the last byte reaches no client
//!   before the digest checked out, and once verified the spool is stored
//!   in the shared storage (then indexed for lazy pulls).
//! - The allow-list is enforced, and nothing is ever pushed into an
//!   upstream's namespace.

use super::manifest::Manifest;
use super::uploads::BodyStream;
use super::{paths, BlobInfo, Error, Registry, Result, StoredManifest};
use crate::digest::Digest;
use crate::fill::{Fill, FillError, Producer};
use crate::names::{Reference, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The configured upstreams.
#[derive(Default)]
pub struct Mirrors {
    pub list: Vec<Arc<Upstream>>,
    /// registry:2's `proxy.remoteurl`: the mirror for requests without `ns`.
    pub default: Option<usize>,
    /// `containerd.registries`: the names this registry's own repositories
    /// are pulled as (see [`super::namespace`]).
    pub local_names: Vec<String>,
    /// Where first pulls are spooled on this node's disk.
    pub spool: PathBuf,
    /// Blob downloads in progress on this node.
    fills: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    /// One tag revalidation at a time per tag.
    tag_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(list: Vec<Arc<Upstream>>, default: Option<usize>, local_names: Vec<String>, spool: PathBuf) -> Mirrors {
        Mirrors { list, default, local_names, spool, ..Mirrors::default() }
    }
}

/// A blob to serve: already stored, or streaming from an upstream now.
pub enum BlobSource {
    Stored(BlobInfo),
    Downloading(Download),
}

/// A blob being downloaded from an upstream, readable while it arrives.
pub struct Download {
    /// Its size, when the upstream said.
    pub size: Option<u64>,
    fill: Arc<Fill>,
}

impl Download {
    /// Its bytes from `offset` on, as they arrive; the last one only once
    /// the whole blob verified.
    pub fn stream_from(&self, offset: u64) -> BodyStream {
        Box::pin(self.fill.reader(offset))
    }
}

/// The storage namespace of an upstream: its name with `:` (a port) made
/// legal in a repository name.
pub(super) fn namespace(name: &str) -> String {
    name.to_ascii_lowercase().replace(':', "-")
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        match e {
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => {
                Error::UpstreamUnavailable(e.to_string())
            }
            UpstreamError::Refused { .. } => Error::Denied(e.to_string()),
            UpstreamError::Protocol { .. } | UpstreamError::Invalid { .. } => Error::Upstream(e.to_string()),
            UpstreamError::TooManyRequests { retry_after, .. } => {
                Error::TooManyRequests { message: e.to_string(), retry_after: retry_after.as_secs().max(1) }
            }
        }
    }
}

/// Removes a blob's entry from the running downloads when the download's
/// task ends, however it ends.
struct Running {
    fills: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    digest: Digest,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.fills.lock().unwrap().remove(&self.digest);
    }
}

impl Registry {
    /// The local repository holding what was mirrored for `repo`.
    pub(super) fn mirror_repo(&self, up: &Upstream, repo: &RepoName) -> Result<(RepoName, String)> {
        if !up.allows(repo.as_str()) && !up.allows(&up.upstream_repo(repo.as_str())) {
            return Err(Error::Denied(format!(
                "repository {repo} is not in the allow-list of mirror {} ({}); ask an administrator to add it to the mirror's `allow` patterns",
                up.name(),
                up.cfg.allow.join(", ")
            )));
        }
        let upstream_repo = up.upstream_repo(repo.as_str());
        let local = RepoName::parse(&format!("{}/{upstream_repo}", namespace(up.name())))?;
        Ok((local, upstream_repo))
    }

    /// Serves a manifest through a mirror.
    pub async fn mirrored_manifest(
        &self,
        up: &Upstream,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let (local, remote) = self.mirror_repo(up, repo)?;
        match reference {
            Reference::Digest(d) => {
                if self.exists(&paths::revision_link(&local, d)).await? {
                    up.activity.hit();
                    return self.get_manifest(&local, reference).await;
                }
                up.activity.miss();
                self.fetch_manifest(up, &local, &remote, reference, d).await?;
                self.get_manifest(&local, reference).await
            }
            Reference::Tag(tag) => {
                let key = format!("{local}:{tag}");
                let lock = self.mirrors.tag_locks.lock().unwrap().entry(key.clone()).or_default().clone();
                let _guard = lock.lock().await;
                let link = paths::tag_current_link(&local, tag);
                let fresh = match self.driver.stat(&link).await {
                    Ok(st) => {
                        SystemTime::now().duration_since(st.modified).map(|age| age < up.cfg.tag_ttl).unwrap_or(true)
                    }
                    Err(e) if e.is_not_found() => false,
                    Err(e) => return Err(e.into()),
                };
                if fresh {
                    up.activity.hit();
                    return self.get_manifest(&local, reference).await;
                }
                up.activity.miss();
                match self.refresh_tag(up, &local, &remote, tag).await {
                    Ok(true) => self.get_manifest(&local, reference).await,
                    Ok(false) => Err(Error::ManifestUnknown(format!("{repo}:{tag} (not found at {})", up.name()))),
                    Err(e) if e.is_upstream_fault() => match self.get_manifest(&local, reference).await {
                        Ok(m) => {
                            tracing::warn!("{e}; serving the last known digest of {repo}:{tag}");
                            Ok(m)
                        }
                        Err(_) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Asks the upstream what `tag` names now and stores that manifest;
    /// `false` when the upstream does not have the tag.
    async fn refresh_tag(
        &self,
        up: &Upstream,
        local: &RepoName,
        remote: &str,
        tag: &crate::names::Tag,
    ) -> Result<bool> {
        let Some(digest) = up.head_manifest(remote, tag.as_str()).await? else { return Ok(false) };
        if !self.exists(&paths::revision_link(local, &digest)).await? {
            self.fetch_manifest(up, local, remote, &Reference::Digest(digest.clone()), &digest).await?;
        }
        // (Re)writing the link also records when it was validated.
        self.tag(local, tag, &digest).await?;
        Ok(true)
    }

    async fn fetch_manifest(
        &self,
        up: &Upstream,
        local: &RepoName,
        remote: &str,
        reference: &Reference,
        want: &Digest,
    ) -> Result<()> {
        let m = up
            .get_manifest(remote, &reference.to_string())
            .await?
            .ok_or_else(|| Error::ManifestUnknown(format!("{remote}@{want} (not found at {})", up.name())))?;
        let actual = Digest::of(want.algorithm(), &m.body);
        if &actual != want {
            return Err(Error::Upstream(format!(
                "{} served a manifest for {remote}@{want} whose digest is {actual}; not stored",
                up.name()
            )));
        }
        // What the upstream calls a manifest and is not one is its fault.
        let parsed = Manifest::parse(&m.body, m.media_type.as_deref()).map_err(|e| {
            Error::Upstream(format!("{} served something that is not a manifest for {remote}@{want}: {e}", up.name()))
        })?;
        self.persist_manifest(local, None, want, m.body, parsed.subject.as_ref()).await
    }

    /// Size of a blob through a mirror, without downloading it.
    pub async fn mirrored_blob_info(&self, up: &Upstream, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        let (local, remote) = self.mirror_repo(up, repo)?;
        match self.stat_blob(&local, digest).await {
            Err(Error::BlobUnknown(_)) => {}
            other => return other,
        }
        match up.head_blob(&remote, digest).await? {
            Some(size) => Ok(BlobInfo { digest: digest.clone(), size, stored: None }),
            None => Err(Error::BlobUnknown(digest.clone())),
        }
    }

    /// A blob through a mirror: stored already, or fetched now (one
    /// download per node, shared by every request for it).
    pub async fn mirrored_blob(&self, up: &Arc<Upstream>, repo: &RepoName, digest: &Digest) -> Result<BlobSource> {
        let (local, remote) = self.mirror_repo(up, repo)?;
        match self.stat_blob(&local, digest).await {
            Ok(info) => {
                up.activity.hit();
                return Ok(BlobSource::Stored(info));
            }
            Err(Error::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        up.activity.miss();
        let fill = self.mirror_fill(up, local, remote, digest);
        let p = fill.started().await;
        if let Some(Err(e)) = p.done {
            return Err(match e {
                FillError::NotFound(_) => Error::BlobUnknown(digest.clone()),
                FillError::Unavailable(m) => Error::UpstreamUnavailable(m),
                FillError::Full(_) => {
                    Error::Storage(crate::storage::StorageError::Full { path: "mirror spool".into() })
                }
                FillError::Mismatch(m) | FillError::Other(m) => Error::Upstream(m),
            });
        }
        Ok(BlobSource::Downloading(Download { size: p.total, fill }))
    }

    /// The running download of `digest`, started if there is none.
    fn mirror_fill(&self, up: &Arc<Upstream>, local: RepoName, remote: String, digest: &Digest) -> Arc<Fill> {
        let mut fills = self.mirrors.fills.lock().unwrap();
        if let Some(f) = fills.get(digest) {
            return f.clone();
        }
        let tmp = self.mirrors.spool.join(uuid::Uuid::new_v4().simple().to_string());
        let (fill, producer) = Fill::new(tmp.clone(), None);
        fills.insert(digest.clone(), fill.clone());
        let running = Running { fills: self.mirrors.fills.clone(), digest: digest.clone() };
        let (me, up, digest) = (self.self_arc(), up.clone(), digest.clone());
        tokio::spawn(async move {
            let _running = running;
            let res = me.download_blob(&up, &local, &remote, &digest, &tmp, &producer).await;
            if let Err(e) = &res {
                tracing::warn!(%digest, mirror = %up.name(), "mirroring blob failed: {e}");
            }
            producer.finish(res);
        });
        fill
    }

    /// Downloads a blob into the spool and, at the same time, into the
    /// shared storage; once it verified, stores it under its digest and
    /// only then lets readers finish (so when a client has the blob, every
    /// node has it).
    async fn download_blob(
        &self,
        up: &Upstream,
        local: &RepoName,
        remote: &str,
        digest: &Digest,
        tmp: &Path,
        producer: &Producer,
    ) -> std::result::Result<(), FillError> {
        let (resp, size) = match up.get_blob(remote, digest).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(FillError::NotFound(format!("{digest} is not at {}", up.name()))),
            Err(e) => return Err(FillError::Unavailable(e.to_string())),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let data_path = paths::upload_data(local, &id);
        // A storage write that fails only costs the storing: readers are
        // served from the spool either way.
        let tee = Arc::new(tokio::sync::Mutex::new(self.driver.writer(&data_path, false).await.ok()));
        let t = tee.clone();
        let body = resp.bytes_stream().then(move |chunk| {
            let tee = t.clone();
            async move {
                if let Ok(c) = &chunk {
                    let mut w = tee.lock().await;
                    if let Some(writer) = w.as_mut() {
                        if let Err(e) = writer.write(c).await {
                            tracing::warn!("storing a mirrored blob failed ({e}); serving it from the spool only");
                            *w = None;
                        }
                    }
                }
                chunk.map_err(std::io::Error::other)
            }
        });
        let downloaded = producer.download(Box::pin(body), digest, size, tmp).await;
        let writer = tee.lock().await.take();
        let stored = match (&downloaded, writer) {
            (Ok(_), Some(w)) => self.store_downloaded(local, &data_path, digest, w).await,
            (Ok(file), None) => self.store_spooled(local, digest, file).await,
            (Err(_), Some(w)) => {
                let _ = w.cancel().await;
                Ok(())
            }
            (Err(_), None) => Ok(()),
        };
        if downloaded.is_err() || stored.is_err() {
            let _ = self.delete_if_exists(&paths::upload_dir(local, &id)).await;
        }
        if let Err(e) = stored {
            tracing::warn!(%digest, "a mirrored blob verified but could not be stored: {e}; it is fetched again next time");
        }
        downloaded?;
        producer.release();
        Ok(())
    }

    /// Commits what was written to storage alongside the spool and moves
    /// it under its digest.
    async fn store_downloaded(
        &self,
        local: &RepoName,
        data_path: &str,
        digest: &Digest,
        w: Box<dyn crate::storage::FileWriter>,
    ) -> Result<()> {
        let size = w.size();
        w.commit().await?;
        self.store_verified(local, data_path, digest, size).await?;
        if let Some(dir) = data_path.strip_suffix("/data") {
            self.delete_if_exists(dir).await?;
        }
        self.index_soon(digest.clone(), None);
        Ok(())
    }

    /// Copies a verified spool file into the shared storage under its
    /// digest (when writing alongside the download failed), and has it
    /// indexed for lazy pulls.
    async fn store_spooled(&self, local: &RepoName, digest: &Digest, file: &std::fs::File) -> Result<()> {
        use tokio::io::AsyncSeekExt;
        let id = uuid::Uuid::new_v4().to_string();
        let data_path = paths::upload_data(local, &id);
        let file = file.try_clone().map_err(|e| crate::storage::StorageError::io(&data_path, e))?;
        let mut w = self.driver.writer(&data_path, false).await?;
        let mut file = tokio::fs::File::from_std(file);
        let copied: Result<()> = async {
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| crate::storage::StorageError::io(&data_path, e))?;
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, crate::fill::READ_CHUNK);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| crate::storage::StorageError::io(&data_path, e))?;
                w.write(&chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            let _ = w.cancel().await;
            self.delete_if_exists(&paths::upload_dir(local, &id)).await?;
            return Err(e);
        }
        let size = w.size();
        w.commit().await?;
        self.store_verified(local, &data_path, digest, size).await?;
        self.delete_if_exists(&paths::upload_dir(local, &id)).await?;
        // First mirrored: index it for lazy pulls on every node (a config
        // or other non-layer blob is recognised and skipped).
        self.index_soon(digest.clone(), None);
        Ok(())
    }
}
