//! Manifests: pushed after everything they reference, stored as blobs,
//! linked as revisions of a repository, and optionally tagged. A manifest
//! with a `subject` is also recorded in the referrers index.

use super::manifest::{Manifest, MAX_MANIFEST_SIZE};
use super::{paths, Error, Registry, Result};
use crate::digest::{Algorithm, Digest};
use crate::names::{Reference, RepoName, Tag};
use bytes::Bytes;

/// A manifest as stored: its bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Registry {
    /// Resolves a reference to the digest of a manifest in `repo`.
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.read_link(&paths::tag_current_link(repo, t)).await? {
                Some(d) => d,
                None => return Err(self.unknown_manifest(repo, reference).await),
            },
        };
        if !self.revision_present(repo, &digest).await? {
            return Err(self.unknown_manifest(repo, reference).await);
        }
        Ok(digest)
    }

    /// Whether manifest `digest` is a revision of `repo`. One a garbage
    /// collection moved to the repository's trash is moved back first:
    /// whoever asks is about to use or reference it (see [`super::gc`]).
    pub(super) async fn revision_present(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let link = paths::revision_link(repo, digest);
        if self.exists(&link).await? {
            return Ok(true);
        }
        let trashed = paths::trashed_revision(repo, digest);
        if self.read_link(&trashed).await?.as_ref() != Some(digest) {
            return Ok(false);
        }
        self.write_link(&link, digest).await?;
        self.delete_if_exists(&trashed).await?;
        crate::metrics::get().gc_restored_manifests.inc();
        tracing::info!(repository = %repo, %digest, "manifest moved back from the garbage collector's trash: it is wanted again");
        Ok(true)
    }

    async fn unknown_manifest(&self, repo: &RepoName, reference: &Reference) -> Error {
        match self.repo_exists(repo).await {
            Ok(false) => Error::NameUnknown(repo.clone()),
            _ => Error::ManifestUnknown(format!("{repo}:{reference}")),
        }
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let digest = self.resolve(repo, reference).await?;
        // Still a revision of `repo` (checked just now): its bytes may come
        // from memory, verified when they were read.
        if let Some(c) = self.manifests.get(&digest) {
            return Ok(StoredManifest { digest, media_type: c.media_type, body: c.body });
        }
        let path = paths::blob_data(&digest);
        let body = match self.driver.get_content(&path).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() && self.restore_from_trash(&digest).await? => {
                self.driver.get_content(&path).await?
            }
            Err(e) if e.is_not_found() => return Err(Error::ManifestUnknown(format!("{repo}@{digest}"))),
            Err(e) => return Err(e.into()),
        };
        let actual = Digest::of(digest.algorithm(), &body);
        if actual != digest {
            let why = format!("{} bytes with digest {actual}", body.len());
            self.quarantine(&digest, None, &why).await;
            return Err(Error::ManifestUnknown(format!(
                "{repo}@{digest}: the stored copy was damaged ({why}) and has been quarantined; push the manifest again"
            )));
        }
        let media_type = Manifest::parse_stored(&body)?.media_type;
        let cached = super::manifest_cache::Cached { media_type: media_type.clone(), body: body.clone() };
        self.manifests.insert(digest.clone(), cached);
        Ok(StoredManifest { digest, media_type, body })
    }

    /// Validates and stores a manifest, then tags it when `reference` is a
    /// tag. Everything it references must already be in `repo`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest> {
        self.ensure_writable()?;
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge(format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_SIZE} bytes",
                body.len()
            )));
        }
        let manifest = Manifest::parse(&body, content_type)?;
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, &body);
        if let Reference::Digest(d) = reference {
            if d != &digest {
                return Err(Error::DigestInvalid(format!(
                    "manifest body has digest {digest} but was pushed as {d}; push it by its real digest or by tag"
                )));
            }
        }
        for blob in &manifest.blobs {
            if !self.blob_linked(repo, &blob.digest).await? || !self.blob_stored(&blob.digest).await? {
                return Err(Error::ManifestBlobUnknown(blob.digest.clone()));
            }
        }
        for child in &manifest.children {
            if !self.revision_present(repo, &child.digest).await? {
                return Err(Error::ManifestBlobUnknown(child.digest.clone()));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        self.persist_manifest(repo, tag, &digest, body, manifest.subject.as_ref()).await?;
        self.index_layers(&manifest.blobs);
        Ok(PushedManifest { digest, subject: manifest.subject })
    }

    /// Stores a validated manifest: content, revision link, referrers index
    /// entry and (optionally) the tag.
    pub(super) async fn persist_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        body: Bytes,
        subject: Option<&Digest>,
    ) -> Result<()> {
        // Always written (atomically): a stored copy that was damaged is
        // repaired by the next push of the same manifest.
        self.driver.put_content(&paths::blob_data(digest), body).await?;
        self.write_link(&paths::revision_link(repo, digest), digest).await?;
        if let Some(subject) = subject {
            self.write_link(&paths::referrer_link(repo, subject, digest), digest).await?;
        }
        if let Some(tag) = tag {
            self.tag(repo, tag, digest).await?;
        }
        Ok(())
    }

    pub(super) async fn tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        self.write_link(&paths::tag_index_link(repo, tag, digest), digest).await?;
        self.write_link(&paths::tag_current_link(repo, tag), digest).await
    }

    /// Deletes a tag (the manifest stays reachable by digest), or a manifest
    /// by digest together with every tag that points at it.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.ensure_deletable()?;
        let digest = self.resolve(repo, reference).await?;
        if let Reference::Tag(tag) = reference {
            self.driver.delete(&paths::tag_dir(repo, tag)).await?;
            return Ok(());
        }
        for tag in self.all_tags(repo).await? {
            let link = paths::tag_current_link(repo, &tag);
            if self.read_link(&link).await?.as_ref() == Some(&digest) {
                self.delete_if_exists(&paths::tag_dir(repo, &tag)).await?;
            }
        }
        if let Ok(body) = self.driver.get_content(&paths::blob_data(&digest)).await {
            if let Ok(Manifest { subject: Some(subject), .. }) = Manifest::parse_stored(&body) {
                self.delete_if_exists(&paths::referrer_link(repo, &subject, &digest)).await?;
            }
        }
        self.driver.delete(&paths::revision_link(repo, &digest)).await?;
        Ok(())
    }
}
