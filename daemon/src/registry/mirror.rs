//! Pull-through mirroring. A request whose `?ns=` names a configured
//! upstream (or any request, with registry:2's `proxy.remoteurl`) is served
//! from that upstream's namespace in the shared storage — repository
//! `<upstream name>/<repository>` — and fetched from the upstream on a miss,
//! so a cluster fetches each layer from the upstream once, whichever node
//! asked.
//!
//! - Tags are trusted for the mirror's `tagttl`, then revalidated with a
//!   HEAD; when the upstream is unreachable the last known digest is served.
//! - Manifests and blobs are verified against their digests before they are
//!   stored.
//! - Concurrent first pulls of one blob on a node share one upstream
//!   download: the first requester streams it as it arrives while it is
//!   written to storage; the others wait and read the stored blob.
//! - The allow-list is enforced, and nothing is ever pushed into an
//!   upstream's namespace.

use super::manifest::Manifest;
use super::uploads::BodyStream;
use super::{paths, BlobInfo, Error, Registry, Result, StoredManifest};
use crate::digest::{Digest, Hasher};
use crate::names::{Reference, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// How a blob download ended (`None` while it runs).
type FillOutcome = Option<std::result::Result<(), String>>;

/// The configured upstreams.
#[derive(Default)]
pub struct Mirrors {
    pub list: Vec<Arc<Upstream>>,
    /// registry:2's `proxy.remoteurl`: the mirror for requests without `ns`.
    pub default: Option<usize>,
    /// `containerd.registries`: the names this registry's own repositories
    /// are pulled as (see [`super::namespace`]).
    pub local_names: Vec<String>,
    /// Blob downloads in progress on this node.
    fills: Mutex<HashMap<Digest, watch::Receiver<FillOutcome>>>,
    /// One tag revalidation at a time per tag.
    tag_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(list: Vec<Arc<Upstream>>, default: Option<usize>, local_names: Vec<String>) -> Mirrors {
        Mirrors { list, default, local_names, ..Mirrors::default() }
    }
}

/// A blob to serve: already stored, or streaming from an upstream now.
pub enum BlobSource {
    Stored(BlobInfo),
    Streaming { size: Option<u64>, stream: BodyStream },
}

/// The storage namespace of an upstream: its name with `:` (a port) made
/// legal in a repository name.
pub(super) fn namespace(name: &str) -> String {
    name.to_ascii_lowercase().replace(':', "-")
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        match e {
            UpstreamError::Unreachable { .. } => Error::UpstreamUnavailable(e.to_string()),
            UpstreamError::Refused { .. } => Error::Denied(e.to_string()),
            UpstreamError::Protocol { .. } => Error::Upstream(e.to_string()),
        }
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
                    return self.get_manifest(&local, reference).await;
                }
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
                    return self.get_manifest(&local, reference).await;
                }
                match up.head_manifest(&remote, tag.as_str()).await {
                    Ok(Some(digest)) => {
                        if !self.exists(&paths::revision_link(&local, &digest)).await? {
                            self.fetch_manifest(up, &local, &remote, &Reference::Digest(digest.clone()), &digest)
                                .await?;
                        }
                        // (Re)writing the link also records when it was validated.
                        self.tag(&local, tag, &digest).await?;
                        self.get_manifest(&local, reference).await
                    }
                    Ok(None) => Err(Error::ManifestUnknown(format!("{repo}:{tag} (not found at {})", up.name()))),
                    Err(e @ UpstreamError::Unreachable { .. }) => match self.get_manifest(&local, reference).await {
                        Ok(m) => {
                            tracing::warn!("{e}; serving the last known digest of {repo}:{tag}");
                            Ok(m)
                        }
                        Err(_) => Err(e.into()),
                    },
                    Err(e) => Err(e.into()),
                }
            }
        }
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
        let parsed = Manifest::parse(&m.body, m.media_type.as_deref())?;
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

    /// A blob through a mirror: stored already, or fetched now (shared with
    /// concurrent requests for it on this node).
    pub async fn mirrored_blob(&self, up: &Upstream, repo: &RepoName, digest: &Digest) -> Result<BlobSource> {
        let (local, remote) = self.mirror_repo(up, repo)?;
        let tx = loop {
            match self.stat_blob(&local, digest).await {
                Ok(info) => return Ok(BlobSource::Stored(info)),
                Err(Error::BlobUnknown(_)) => {}
                Err(e) => return Err(e),
            }
            let (tx, rx) = watch::channel(None);
            let running = {
                let mut fills = self.mirrors.fills.lock().unwrap();
                match fills.get(digest) {
                    Some(r) => Some(r.clone()),
                    None => {
                        fills.insert(digest.clone(), rx);
                        None
                    }
                }
            };
            let Some(mut rx) = running else { break tx };
            // Someone on this node is fetching it: wait, then read storage.
            while rx.borrow_and_update().is_none() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            let outcome = rx.borrow().clone();
            if let Some(Err(e)) = outcome {
                return Err(Error::Upstream(e));
            }
        };
        let started = up.get_blob(&remote, digest).await;
        let (resp, size) = match started {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.end_fill(digest, &tx, Err("not found upstream".into()));
                return Err(Error::BlobUnknown(digest.clone()));
            }
            Err(e) => {
                self.end_fill(digest, &tx, Err(e.to_string()));
                return Err(e.into());
            }
        };
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
        let registry = self.self_arc();
        let digest = digest.clone();
        tokio::spawn(async move {
            let res = registry.store_stream(&local, &digest, resp, chunks_tx).await;
            if let Err(e) = &res {
                tracing::warn!(%digest, "mirroring blob failed: {e}");
            }
            registry.end_fill(&digest, &tx, res.map_err(|e| e.to_string()));
        });
        let stream = tokio_stream_from(chunks_rx);
        Ok(BlobSource::Streaming { size, stream })
    }

    fn end_fill(&self, digest: &Digest, tx: &watch::Sender<FillOutcome>, res: std::result::Result<(), String>) {
        self.mirrors.fills.lock().unwrap().remove(digest);
        let _ = tx.send(Some(res));
    }

    /// Writes an upstream download to storage while handing each chunk to
    /// the first requester; stores it under its digest once verified.
    async fn store_stream(
        &self,
        local: &RepoName,
        digest: &Digest,
        resp: reqwest::Response,
        chunks: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    ) -> Result<()> {
        let id = uuid::Uuid::new_v4().to_string();
        let data_path = paths::upload_data(local, &id);
        let mut w = self.driver.writer(&data_path, false).await?;
        let mut hasher = Hasher::new(digest.algorithm());
        let mut body = resp.bytes_stream();
        let mut client_gone = false;
        let result: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| Error::UpstreamUnavailable(format!("download of {digest} broke off: {e}")))?;
                w.write(&chunk).await?;
                hasher.update(&chunk);
                if !client_gone && chunks.send(Ok(chunk)).await.is_err() {
                    // The first requester left; keep going for the others.
                    client_gone = true;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = chunks.send(Err(std::io::Error::other(e.to_string()))).await;
            let _ = w.cancel().await;
            self.delete_if_exists(&paths::upload_dir(local, &id)).await?;
            return Err(e);
        }
        let size = w.size();
        w.commit().await?;
        let actual = hasher.finish();
        if &actual != digest {
            self.delete_if_exists(&paths::upload_dir(local, &id)).await?;
            let msg = format!("upstream served content with digest {actual} for {digest}; not stored");
            let _ = chunks.send(Err(std::io::Error::other(msg.clone()))).await;
            return Err(Error::Upstream(msg));
        }
        self.store_verified(local, &data_path, digest, size).await?;
        self.delete_if_exists(&paths::upload_dir(local, &id)).await?;
        // First mirrored: index it for lazy pulls on every node (a config
        // or other non-layer blob is recognised and skipped).
        self.index_soon(digest.clone(), None);
        Ok(())
    }
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> BodyStream {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
