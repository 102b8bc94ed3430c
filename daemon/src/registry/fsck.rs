//! `berthd fsck`: checks that the storage says only true things.
//!
//! 1. **Blobs** — every object under `blobs/` hashes to the digest it is
//!    named after (and the good ones are remembered for step 2);
//! 2. **Links** — every link file (layer, revision, tag, tag history,
//!    referrer) holds a digest, and names a blob that exists and is good;
//! 3. **Manifests** — every manifest revision of a repository parses, and
//!    what it references is in that repository (blobs linked and stored,
//!    child manifests present).
//!
//! With `repair`, damaged blobs and unreadable link files are quarantined
//! (moved under `/berth/quarantine/`, as a failed read does), so the
//! registry stops offering them and the next push repairs them. Nothing
//! else is changed: a dangling link or a manifest missing a blob is
//! reported with what to re-push. Memory holds the set of good digests,
//! nothing more; listings and reads stream.

use super::manifest::Manifest;
use super::{paths, Registry, Result};
use crate::digest::{Digest, Hasher};
use crate::names::RepoName;
use futures_util::TryStreamExt;
use std::collections::HashSet;
use std::time::Instant;

/// Where a check stands, for a progress display.
pub trait Progress: Send + Sync {
    /// A new phase; `total` when the amount of work is known.
    fn phase(&self, name: &'static str, total: Option<u64>);
    /// Work done in the current phase (bytes hashed, items checked).
    fn advance(&self, n: u64);
    /// A problem found.
    fn problem(&self, what: &str);
}

/// No display.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &'static str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn problem(&self, _: &str) {}
}

/// What a check found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub blobs: u64,
    pub bytes: u64,
    pub links: u64,
    pub manifests: u64,
    /// Blobs that do not hash to their name.
    pub damaged_blobs: Vec<Digest>,
    /// Link files that hold no digest (path, content).
    pub unreadable_links: Vec<String>,
    /// Links naming a blob that is missing or damaged.
    pub dangling_links: Vec<String>,
    /// Manifests (repo@digest) referencing what their repository lacks.
    pub incomplete_manifests: Vec<String>,
    /// Objects moved to quarantine by `repair`.
    pub quarantined: u64,
    /// Seconds per phase.
    pub timings: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.damaged_blobs.is_empty()
            && self.unreadable_links.is_empty()
            && self.dangling_links.is_empty()
            && self.incomplete_manifests.is_empty()
    }
}

/// The kinds of link files, by where they sit in a repository.
fn is_link(path: &str) -> bool {
    path.ends_with("/link")
}

impl Registry {
    /// Runs the check; see the module documentation.
    pub async fn fsck(&self, repair: bool, progress: &dyn Progress) -> Result<Report> {
        let mut report = Report::default();
        let started = Instant::now();
        let good = self.fsck_blobs(repair, progress, &mut report).await?;
        report.timings.push(("blobs", started.elapsed().as_secs_f64()));
        let started = Instant::now();
        self.fsck_repositories(&good, repair, progress, &mut report).await?;
        report.timings.push(("repositories", started.elapsed().as_secs_f64()));
        Ok(report)
    }

    async fn fsck_blobs(&self, repair: bool, progress: &dyn Progress, report: &mut Report) -> Result<HashSet<Digest>> {
        progress.phase("blobs", None);
        let mut good = HashSet::new();
        let root = format!("{}/blobs", paths::ROOT);
        for alg_dir in self.list_or_empty(&root).await? {
            for prefix in self.list_or_empty(&alg_dir).await? {
                for blob_dir in self.list_or_empty(&prefix).await? {
                    let data = format!("{blob_dir}/data");
                    let Some(digest) = paths::content_digest(&data) else {
                        progress.problem(&format!("{blob_dir} is not named after a digest; ignored"));
                        continue;
                    };
                    let st = match self.driver.stat(&data).await {
                        Ok(st) => st,
                        Err(e) if e.is_not_found() => continue, // an empty directory left behind
                        Err(e) => return Err(e.into()),
                    };
                    report.blobs += 1;
                    let mut hasher = Hasher::new(digest.algorithm());
                    let mut stream = self.driver.reader(&data, 0).await?;
                    let mut n = 0u64;
                    while let Some(chunk) =
                        stream.try_next().await.map_err(|e| crate::storage::StorageError::io(&data, e))?
                    {
                        hasher.update(&chunk);
                        n += chunk.len() as u64;
                        progress.advance(chunk.len() as u64);
                    }
                    report.bytes += n;
                    let actual = hasher.finish();
                    if actual == digest && n == st.size {
                        self.verified.record(&digest, &st);
                        good.insert(digest);
                        continue;
                    }
                    progress.problem(&format!("blob {digest} is damaged: {n} bytes with digest {actual}"));
                    if repair {
                        self.quarantine(&digest, Some(&st), &format!("{n} bytes with digest {actual} (fsck)")).await;
                        report.quarantined += 1;
                    }
                    report.damaged_blobs.push(digest);
                }
            }
        }
        Ok(good)
    }

    async fn fsck_repositories(
        &self,
        good: &HashSet<Digest>,
        repair: bool,
        progress: &dyn Progress,
        report: &mut Report,
    ) -> Result<()> {
        progress.phase("repositories", None);
        let prefix = format!("{}/", paths::repositories());
        for (dir, children) in self.repository_tree().await? {
            if !children.iter().any(|c| c.ends_with("/_manifests") || c.ends_with("/_layers")) {
                continue;
            }
            let Some(repo) = dir.strip_prefix(&prefix).and_then(|r| RepoName::parse(r).ok()) else { continue };
            // Every link file of the repository, whatever kind.
            let mut stack: Vec<String> =
                children.iter().filter(|c| c.rsplit('/').next().is_some_and(|n| n.starts_with('_'))).cloned().collect();
            while let Some(path) = stack.pop() {
                if path.ends_with("/_uploads") || path.ends_with("/_trash") {
                    continue;
                }
                if !is_link(&path) {
                    stack.extend(self.list_or_empty(&path).await?);
                    continue;
                }
                report.links += 1;
                progress.advance(1);
                match self.read_link(&path).await {
                    Ok(Some(d)) if good.contains(&d) => {}
                    // Garbage collection's trash: a request moves it back.
                    Ok(Some(d)) if self.exists(&paths::trash_data(&d)).await? => {}
                    Ok(Some(d)) => {
                        progress.problem(&format!("{path} names {d}, which is missing or damaged; push it again"));
                        report.dangling_links.push(path);
                    }
                    Ok(None) => {}
                    Err(_) => {
                        progress.problem(&format!("{path} holds no digest"));
                        if repair {
                            let dest = format!("{}/links{}", paths::quarantine_root(), path);
                            match self.driver.move_object(&path, &dest).await {
                                Ok(()) => report.quarantined += 1,
                                Err(e) => progress.problem(&format!("cannot quarantine {path}: {e}")),
                            }
                        }
                        report.unreadable_links.push(path);
                    }
                }
            }
            self.fsck_manifests(&repo, good, repair, progress, report).await?;
        }
        Ok(())
    }

    /// Whether `path` (a blob in the trash, or with `repo` a trashed
    /// revision) exists; with `repair`, it is moved back.
    async fn exists_or_restore(&self, path: &str, repair: bool, d: &Digest, repo: Option<&RepoName>) -> Result<bool> {
        if !self.exists(path).await? {
            return Ok(false);
        }
        if repair {
            match repo {
                Some(repo) => self.revision_present(repo, d).await?,
                None => self.restore_from_trash(d).await?,
            };
        }
        Ok(true)
    }

    async fn in_trash(&self, d: &Digest, repair: bool) -> Result<bool> {
        self.exists_or_restore(&paths::trash_data(d), repair, d, None).await
    }

    /// Checks what each manifest revision of `repo` references.
    async fn fsck_manifests(
        &self,
        repo: &RepoName,
        good: &HashSet<Digest>,
        repair: bool,
        progress: &dyn Progress,
        report: &mut Report,
    ) -> Result<()> {
        let revisions = format!("{}/_manifests/revisions", paths::repo_dir(repo));
        for alg_dir in self.list_or_empty(&revisions).await? {
            for entry in self.list_or_empty(&alg_dir).await? {
                let Ok(Some(digest)) = self.read_link(&format!("{entry}/link")).await else { continue };
                if !good.contains(&digest) {
                    continue; // reported as a dangling link
                }
                report.manifests += 1;
                let body = self.driver.get_content(&paths::blob_data(&digest)).await?;
                let Ok(m) = Manifest::parse_stored(&body) else {
                    // A revision link may name any blob registry:2 accepted;
                    // what Berth cannot parse it does not judge.
                    continue;
                };
                let mut missing = Vec::new();
                // What a collection trashed but a manifest still names is
                // there to be moved back (by the next request, or here).
                for b in &m.blobs {
                    let linked = self.blob_linked(repo, &b.digest).await?;
                    if !linked || !(good.contains(&b.digest) || self.in_trash(&b.digest, repair).await?) {
                        missing.push(b.digest.to_string());
                    }
                }
                for c in &m.children {
                    let revision = self.exists(&paths::revision_link(repo, &c.digest)).await?
                        || self
                            .exists_or_restore(&paths::trashed_revision(repo, &c.digest), repair, &c.digest, Some(repo))
                            .await?;
                    if !revision || !(good.contains(&c.digest) || self.in_trash(&c.digest, repair).await?) {
                        missing.push(c.digest.to_string());
                    }
                }
                if !missing.is_empty() {
                    let what = format!("{repo}@{digest}");
                    progress.problem(&format!("manifest {what} references what is missing: {}", missing.join(", ")));
                    report.incomplete_manifests.push(what);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BodyStream, Policy};
    use crate::storage::fs::FsDriver;
    use bytes::Bytes;
    use std::sync::Arc;

    fn body(data: &[u8]) -> BodyStream {
        Box::pin(futures_util::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]))
    }

    #[tokio::test]
    async fn finds_damage_and_repair_quarantines_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(Arc::new(FsDriver::new(dir.path())), Policy::default());
        let r = RepoName::parse("app").unwrap();
        let config = Digest::sha256_of(b"{}");
        let layer = Digest::sha256_of(b"layer bytes");
        reg.upload_whole(&r, &config, body(b"{}")).await.unwrap();
        reg.upload_whole(&r, &layer, body(b"layer bytes")).await.unwrap();
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": super::super::manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 11}],
        });
        let tag = crate::names::Reference::Tag(crate::names::Tag::parse("v1").unwrap());
        let pushed = reg.put_manifest(&r, &tag, None, Bytes::from(m.to_string())).await.unwrap();
        let clean = reg.fsck(false, &Quiet).await.unwrap();
        assert!(clean.is_clean(), "{clean:?}");
        assert_eq!((clean.blobs, clean.manifests), (3, 1));

        let file = |p: String| dir.path().join(p.trim_start_matches('/'));
        std::fs::write(file(paths::blob_data(&layer)), b"other bytes").unwrap();
        let v1 = crate::names::Tag::parse("v1").unwrap();
        std::fs::write(file(paths::tag_index_link(&r, &v1, &pushed.digest)), b"junk").unwrap();
        let found = reg.fsck(false, &Quiet).await.unwrap();
        assert_eq!(found.damaged_blobs, vec![layer.clone()]);
        assert_eq!(found.dangling_links.len(), 1, "the layer link: {found:?}");
        assert_eq!(found.unreadable_links.len(), 1);
        assert_eq!(found.incomplete_manifests.len(), 1);
        assert!(file(paths::blob_data(&layer)).exists(), "a check alone changes nothing");

        let repaired = reg.fsck(true, &Quiet).await.unwrap();
        assert_eq!(repaired.quarantined, 2);
        assert!(!file(paths::blob_data(&layer)).exists());
        reg.upload_whole(&r, &layer, body(b"layer bytes")).await.unwrap();
        let after = reg.fsck(false, &Quiet).await.unwrap();
        assert!(after.is_clean(), "a re-push repaired it: {after:?}");
    }
}
