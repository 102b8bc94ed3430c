//! Garbage: what the storage holds that no manifest reaches. This is the
//! mark phase of a collection, and what `berthd gc --dry-run` reports; it
//! changes nothing.
//!
//! Marked, as registry:2's `garbage-collect` marks (so the two agree on a
//! registry:2 root): every manifest revision of every repository, and what
//! each references — config and layers, or an index's child manifests.
//! Everything else under `blobs/` is eligible: layers only linked into a
//! repository (`_layers`) and never referenced, manifests deleted through
//! the API, uploads finished without a manifest. Memory holds the set of
//! marked digests; listings stream.
//!
//! Deleting is not built yet. It must stay true while other nodes push to
//! the same bucket: a blob eligible at the mark can be referenced by a
//! manifest pushed a moment later (a re-push finds it by HEAD and skips
//! the upload). See docs/architecture.md for the design that closes it.

use super::fsck::Progress;
use super::manifest::Manifest;
use super::{paths, Registry, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use std::collections::HashSet;
use std::time::Instant;

/// What the mark found.
#[derive(Debug, Default, Clone)]
pub struct GarbageReport {
    pub repositories: u64,
    pub manifests: u64,
    /// Blobs stored, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    /// Blobs no manifest reaches (digest, size), in listing order.
    pub eligible: Vec<(Digest, u64)>,
    /// Seconds per phase.
    pub timings: Vec<(&'static str, f64)>,
}

impl GarbageReport {
    pub fn eligible_bytes(&self) -> u64 {
        self.eligible.iter().map(|(_, n)| n).sum()
    }
}

impl Registry {
    /// Marks what the manifests reach and lists the blobs they do not.
    pub async fn garbage(&self, progress: &dyn Progress) -> Result<GarbageReport> {
        let mut report = GarbageReport::default();
        let started = Instant::now();
        let marked = self.mark(progress, &mut report).await?;
        report.timings.push(("mark", started.elapsed().as_secs_f64()));
        let started = Instant::now();
        progress.phase("blobs", None);
        let root = format!("{}/blobs", paths::ROOT);
        for alg_dir in self.list_or_empty(&root).await? {
            for prefix in self.list_or_empty(&alg_dir).await? {
                for blob_dir in self.list_or_empty(&prefix).await? {
                    let data = format!("{blob_dir}/data");
                    let Some(digest) = paths::content_digest(&data) else { continue };
                    let size = match self.driver.stat(&data).await {
                        Ok(st) => st.size,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    report.blobs += 1;
                    report.bytes += size;
                    progress.advance(1);
                    if !marked.contains(&digest) {
                        report.eligible.push((digest, size));
                    }
                }
            }
        }
        report.timings.push(("blobs", started.elapsed().as_secs_f64()));
        Ok(report)
    }

    async fn list_or_empty(&self, dir: &str) -> Result<Vec<String>> {
        match self.driver.list(dir).await {
            Ok(c) => Ok(c),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every manifest revision and what it references.
    async fn mark(&self, progress: &dyn Progress, report: &mut GarbageReport) -> Result<HashSet<Digest>> {
        progress.phase("mark", None);
        let mut marked = HashSet::new();
        let prefix = format!("{}/", paths::repositories());
        for (dir, children) in self.repository_tree().await? {
            if !children.iter().any(|c| c.ends_with("/_manifests")) {
                continue;
            }
            let Some(repo) = dir.strip_prefix(&prefix).and_then(|r| RepoName::parse(r).ok()) else { continue };
            report.repositories += 1;
            let revisions = format!("{}/_manifests/revisions", paths::repo_dir(&repo));
            for alg_dir in self.list_or_empty(&revisions).await? {
                for entry in self.list_or_empty(&alg_dir).await? {
                    let Ok(Some(digest)) = self.read_link(&format!("{entry}/link")).await else { continue };
                    report.manifests += 1;
                    progress.advance(1);
                    let body = match self.driver.get_content(&paths::blob_data(&digest)).await {
                        Ok(b) => b,
                        // A revision naming missing content marks nothing more (fsck reports it).
                        Err(e) if e.is_not_found() => {
                            marked.insert(digest);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if let Ok(m) = Manifest::parse_stored(&body) {
                        marked.extend(m.blobs.into_iter().map(|b| b.digest));
                        marked.extend(m.children.into_iter().map(|c| c.digest));
                    }
                    marked.insert(digest);
                }
            }
        }
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::fsck::Quiet;
    use crate::registry::{BodyStream, Policy};
    use crate::storage::fs::FsDriver;
    use bytes::Bytes;
    use std::sync::Arc;

    fn body(data: &[u8]) -> BodyStream {
        let b = Bytes::copy_from_slice(data);
        Box::pin(futures_util::stream::iter(vec![Ok(b)]))
    }

    async fn push_blob(reg: &Registry, r: &RepoName, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        reg.upload_whole(r, &d, body(data)).await.unwrap();
        d
    }

    async fn push_image(reg: &Registry, r: &RepoName, tag: &str, layer: &[u8]) -> (Digest, Digest, Digest) {
        let config = push_blob(reg, r, format!("{{\"layer\":{}}}", layer.len()).as_bytes()).await;
        let layer = push_blob(reg, r, layer).await;
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
        );
        let reference = crate::names::Reference::parse(tag).unwrap();
        let pushed = reg
            .put_manifest(r, &reference, Some("application/vnd.oci.image.manifest.v1+json"), Bytes::from(m))
            .await
            .unwrap();
        (pushed.digest, config, layer)
    }

    #[tokio::test]
    async fn what_no_manifest_reaches_is_eligible_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let reg =
            Registry::new(Arc::new(FsDriver::new(dir.path())), Policy { delete_enabled: true, ..Policy::default() });
        let r = RepoName::parse("team/app").unwrap();
        let (kept, kept_config, kept_layer) = push_image(&reg, &r, "v1", b"kept layer").await;
        let (gone, gone_config, gone_layer) = push_image(&reg, &r, "v2", b"deleted layer").await;
        let lone = push_blob(&reg, &r, b"an upload no manifest names").await;
        reg.delete_manifest(&r, &crate::names::Reference::Digest(gone.clone())).await.unwrap();

        let report = reg.garbage(&Quiet).await.unwrap();
        let eligible: HashSet<Digest> = report.eligible.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(eligible, HashSet::from([gone, gone_config, gone_layer, lone]));
        for live in [&kept, &kept_config, &kept_layer] {
            assert!(!eligible.contains(live), "{live} is reachable");
        }
        assert_eq!((report.repositories, report.manifests, report.blobs), (1, 1, 7));
        assert_eq!(report.eligible_bytes(), report.eligible.iter().map(|(_, n)| n).sum::<u64>());
        // A report changes nothing: the image is whole.
        assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean());
        assert_eq!(reg.garbage(&Quiet).await.unwrap().eligible.len(), 4);
    }
}
