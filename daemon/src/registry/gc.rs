//! Garbage collection: what the storage holds that no manifest reaches is
//! found (the mark; all `berthd gc --dry-run` does), moved to a trash, and
//! deleted by a later collection.
//!
//! Marked, as registry:2's `garbage-collect` marks (so the two agree on a
//! registry:2 root): every manifest revision of every repository, and what
//! each references — config and layers, or an index's child manifests.
//! Everything else under `blobs/` is eligible: layers only linked into a
//! repository (`_layers`) and never referenced, manifests deleted through
//! the API, uploads finished without a manifest. Memory holds the set of
//! marked digests; listings stream.
//!
//! A collection must stay true while other nodes push to the same bucket:
//! a blob eligible at the mark can be referenced by a manifest pushed a
//! moment later (a re-push finds it by HEAD and skips the upload). So
//! nothing is deleted at once:
//! 1. an eligible blob whose last write is older than `delay` is moved to
//!    the trash (`/berth/trash/`), its layer index removed;
//! 2. every request that needs a blob stored — a manifest's references, a
//!    mount, a read — moves it back from the trash first
//!    ([`Registry::restore_from_trash`]), asking the storage itself, never
//!    a node cache;
//! 3. a trash entry is deleted by a later collection only if it was trashed
//!    more than `delay` before that collection's mark began, and that mark
//!    does not reach it (one it reaches is moved back).
//!
//! A manifest accepted before a mark began is reached by it; one accepted
//! after moved what it references out of the trash, or was refused
//! (`MANIFEST_BLOB_UNKNOWN`) if the delete came first. Times are the
//! storage's own (modification times), so nodes' clocks do not matter.
//! One collection at a time: a lease object names the collector.

use super::fsck::Progress;
use super::manifest::Manifest;
use super::{paths, Registry, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use bytes::Bytes;
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Blobs written more recently than this, and trash entries younger
    /// than this, are left for a later collection.
    pub delay: Duration,
    /// Who collects (host and process), for the lease.
    pub holder: String,
}

/// How long a lease lasts without renewal: a collector that died frees it
/// this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(120);

/// Why a collection did not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("a garbage collection is running: {holder} holds the lease since {since} (it expires {expires_in}s after its holder stops renewing it); try again later")]
    Busy { holder: String, since: String, expires_in: u64 },
    #[error("the storage is read-only (storage.maintenance.readonly): a collection would write; run it when writes are allowed")]
    ReadOnly,
    #[error(transparent)]
    Registry(#[from] super::Error),
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Lease {
    holder: String,
    since: String,
    /// Seconds since the epoch (the holder's clock; renewed every
    /// minute, so skew within a minute is harmless).
    expires: u64,
}

/// Who this collector is, for the lease: host and process.
pub fn this_collector() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "unknown-host".into());
    format!("{} (pid {})", host.trim(), std::process::id())
}

/// Whether `held_by` is a collector on this host (`me` names the host the
/// same way) whose process is gone: killed collectors free the lease at
/// once for the next run on the same host, not only when it expires.
fn holder_is_dead(held_by: &str, me: &str) -> bool {
    let host = |h: &str| h.rsplit_once(" (pid ").map(|(host, _)| host.to_string());
    let pid = held_by.rsplit_once(" (pid ").and_then(|(_, p)| p.trim_end_matches(')').parse::<u32>().ok());
    match (host(held_by), host(me), pid) {
        (Some(a), Some(b), Some(pid)) if a == b => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

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
    /// Of those, moved to the trash (or, in a dry run, that would be).
    pub trashed: u64,
    pub trashed_bytes: u64,
    /// Trash entries deleted for good (or that would be).
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Trash entries referenced again, moved back.
    pub restored: u64,
    /// Layer links removed because their content is gone.
    pub links: u64,
    /// Seconds per phase.
    pub timings: Vec<(&'static str, f64)>,
}

impl GarbageReport {
    pub fn eligible_bytes(&self) -> u64 {
        self.eligible.iter().map(|(_, n)| n).sum()
    }
}

impl Registry {
    /// When the last collection of any node finished (the storage's time),
    /// if one did.
    pub async fn last_collection(&self) -> Result<Option<SystemTime>> {
        match self.driver.stat(&paths::gc_last()).await {
            Ok(st) => Ok(Some(st.modified)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One collection (see the module's documentation).
    pub async fn collect(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GarbageReport, GcError> {
        if !opts.dry_run && self.policy.read_only {
            return Err(GcError::ReadOnly);
        }
        let (mark_start, renew) = if opts.dry_run {
            (SystemTime::now(), None)
        } else {
            let start = self.take_lease(&opts.holder).await?;
            let me = self.self_arc();
            let holder = opts.holder.clone();
            let renew = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    if let Err(e) = me.write_lease(&holder).await {
                        tracing::warn!("cannot renew the garbage collection lease: {e}");
                    }
                }
            });
            (start, Some(renew))
        };
        let res = self.collect_leased(opts, mark_start, progress).await;
        if let (Ok(r), false) = (&res, opts.dry_run) {
            use std::sync::atomic::Ordering::Relaxed;
            let m = crate::metrics::get();
            m.gc_trashed_blobs.fetch_add(r.trashed, Relaxed);
            m.gc_deleted_blobs.fetch_add(r.deleted, Relaxed);
            m.gc_deleted_bytes.fetch_add(r.deleted_bytes, Relaxed);
            // When the cluster last collected, for every node's schedule.
            let done = serde_json::json!({ "holder": opts.holder, "finished": berth_wire::time::rfc3339(SystemTime::now()),
                "trashed": r.trashed, "deleted": r.deleted, "deleted_bytes": r.deleted_bytes });
            if let Err(e) = self.driver.put_content(&paths::gc_last(), Bytes::from(done.to_string())).await {
                tracing::warn!("cannot record the garbage collection's end: {e}");
            }
        }
        if let Some(renew) = renew {
            renew.abort();
            if let Err(e) = self.delete_if_exists(&paths::gc_lease()).await {
                tracing::warn!("cannot release the garbage collection lease: {e}");
            }
        }
        Ok(res?)
    }

    async fn write_lease(&self, holder: &str) -> Result<()> {
        let now = SystemTime::now();
        let lease = Lease {
            holder: holder.to_string(),
            since: berth_wire::time::rfc3339(now),
            expires: epoch_secs(now + LEASE_TTL),
        };
        let body = serde_json::to_vec(&lease).expect("lease serializes");
        Ok(self.driver.put_content(&paths::gc_lease(), Bytes::from(body)).await?)
    }

    /// Takes the lease unless another live collector holds it; returns the
    /// storage's time when it was taken (the mark's start).
    async fn take_lease(&self, holder: &str) -> Result<SystemTime, GcError> {
        let path = paths::gc_lease();
        match self.driver.get_content(&path).await {
            Ok(body) => {
                if let Ok(l) = serde_json::from_slice::<Lease>(&body) {
                    let now = epoch_secs(SystemTime::now());
                    if l.expires > now && l.holder != holder && !holder_is_dead(&l.holder, holder) {
                        return Err(GcError::Busy { holder: l.holder, since: l.since, expires_in: l.expires - now });
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(super::Error::from(e).into()),
        }
        self.write_lease(holder).await?;
        Ok(self.driver.stat(&path).await.map_err(super::Error::from)?.modified)
    }

    async fn collect_leased(
        &self,
        opts: &GcOptions,
        mark_start: SystemTime,
        progress: &dyn Progress,
    ) -> Result<GarbageReport> {
        let mut report = GarbageReport::default();
        let old_enough = mark_start.checked_sub(opts.delay).unwrap_or(SystemTime::UNIX_EPOCH);
        let started = Instant::now();
        let (marked, layer_links) = self.mark(progress, &mut report).await?;
        report.timings.push(("mark", started.elapsed().as_secs_f64()));

        let started = Instant::now();
        progress.phase("trash", None);
        self.sweep_trash(opts, &marked, old_enough, &mut report).await?;
        report.timings.push(("trash", started.elapsed().as_secs_f64()));

        let started = Instant::now();
        progress.phase("blobs", None);
        let root = format!("{}/blobs", paths::ROOT);
        for alg_dir in self.list_or_empty(&root).await? {
            for prefix in self.list_or_empty(&alg_dir).await? {
                for blob_dir in self.list_or_empty(&prefix).await? {
                    let data = format!("{blob_dir}/data");
                    let Some(digest) = paths::content_digest(&data) else { continue };
                    let st = match self.driver.stat(&data).await {
                        Ok(st) => st,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    report.blobs += 1;
                    report.bytes += st.size;
                    progress.advance(1);
                    if marked.contains(&digest) {
                        continue;
                    }
                    report.eligible.push((digest.clone(), st.size));
                    if st.modified > old_enough {
                        continue; // written lately: its manifest may be on its way
                    }
                    report.trashed += 1;
                    report.trashed_bytes += st.size;
                    if !opts.dry_run {
                        self.trash(&digest).await?;
                    }
                }
            }
        }
        report.timings.push(("blobs", started.elapsed().as_secs_f64()));

        // Layer links to content that is gone (neither stored nor in the
        // trash, where a HEAD through the link could still bring it back).
        let started = Instant::now();
        for (repo, d) in layer_links {
            if self.exists(&paths::blob_data(&d)).await? || self.exists(&paths::trash_data(&d)).await? {
                continue;
            }
            report.links += 1;
            if !opts.dry_run {
                self.delete_if_exists(&paths::layer_link(&repo, &d)).await?;
            }
        }
        report.timings.push(("links", started.elapsed().as_secs_f64()));
        Ok(report)
    }

    /// Moves blob `digest` to the trash: the marker first (its time is the
    /// storage's), then the content; its layer index goes.
    async fn trash(&self, digest: &Digest) -> Result<()> {
        self.driver.put_content(&paths::trashed_at(digest), Bytes::new()).await?;
        match self.driver.move_object(&paths::blob_data(digest), &paths::trash_data(digest)).await {
            Ok(()) => {}
            // Gone meanwhile (another collector): nothing to trash.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for p in [paths::layer_index_auth(digest), paths::layer_index(digest), paths::layer_index_windows(digest)] {
            self.delete_if_exists(&p).await?;
        }
        tracing::info!(%digest, "garbage collection: moved to the trash");
        Ok(())
    }

    /// Deletes trash entries old enough that this mark does not reach;
    /// moves back those it reaches.
    async fn sweep_trash(
        &self,
        opts: &GcOptions,
        marked: &HashSet<Digest>,
        old_enough: SystemTime,
        report: &mut GarbageReport,
    ) -> Result<()> {
        for alg_dir in self.list_or_empty(&paths::trash_root()).await? {
            let alg = alg_dir.rsplit('/').next().unwrap_or_default().to_string();
            for entry in self.list_or_empty(&alg_dir).await? {
                let hex = entry.rsplit('/').next().unwrap_or_default();
                let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else { continue };
                let data = match self.driver.stat(&paths::trash_data(&digest)).await {
                    Ok(st) => Some(st),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                let Some(data) = data else {
                    // A marker whose move never happened (or was moved back).
                    if !opts.dry_run {
                        self.delete_if_exists(&paths::trash_dir(&digest)).await?;
                    }
                    continue;
                };
                if marked.contains(&digest) {
                    report.restored += 1;
                    if !opts.dry_run {
                        self.restore_from_trash(&digest).await?;
                    }
                    continue;
                }
                let trashed = match self.driver.stat(&paths::trashed_at(&digest)).await {
                    Ok(st) => st.modified,
                    Err(e) if e.is_not_found() => data.modified,
                    Err(e) => return Err(e.into()),
                };
                if trashed >= old_enough {
                    continue;
                }
                report.deleted += 1;
                report.deleted_bytes += data.size;
                if !opts.dry_run {
                    self.delete_if_exists(&paths::trash_dir(&digest)).await?;
                    tracing::info!(%digest, "garbage collection: deleted");
                }
            }
        }
        Ok(())
    }

    /// Every manifest revision and what it references; also every layer
    /// link of every repository (those to garbage go with it).
    async fn mark(
        &self,
        progress: &dyn Progress,
        report: &mut GarbageReport,
    ) -> Result<(HashSet<Digest>, Vec<(RepoName, Digest)>)> {
        progress.phase("mark", None);
        let mut marked = HashSet::new();
        let mut layer_links = Vec::new();
        let prefix = format!("{}/", paths::repositories());
        for (dir, children) in self.repository_tree().await? {
            if !children.iter().any(|c| c.ends_with("/_manifests") || c.ends_with("/_layers")) {
                continue;
            }
            let Some(repo) = dir.strip_prefix(&prefix).and_then(|r| RepoName::parse(r).ok()) else { continue };
            report.repositories += 1;
            let layers = format!("{}/_layers", paths::repo_dir(&repo));
            for alg_dir in self.list_or_empty(&layers).await? {
                let alg = alg_dir.rsplit('/').next().unwrap_or_default().to_string();
                for entry in self.list_or_empty(&alg_dir).await? {
                    let hex = entry.rsplit('/').next().unwrap_or_default();
                    if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                        layer_links.push((repo.clone(), d));
                    }
                }
            }
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
        layer_links.retain(|(_, d)| !marked.contains(d));
        Ok((marked, layer_links))
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

        let report = reg.collect(&opts(true), &Quiet).await.unwrap();
        let eligible: HashSet<Digest> = report.eligible.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(eligible, HashSet::from([gone, gone_config, gone_layer, lone]));
        for live in [&kept, &kept_config, &kept_layer] {
            assert!(!eligible.contains(live), "{live} is reachable");
        }
        assert_eq!((report.repositories, report.manifests, report.blobs), (1, 1, 7));
        assert_eq!(report.eligible_bytes(), report.eligible.iter().map(|(_, n)| n).sum::<u64>());
        // A report changes nothing: the image is whole.
        assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean());
        assert_eq!(reg.collect(&opts(true), &Quiet).await.unwrap().eligible.len(), 4);
    }

    fn opts(dry_run: bool) -> GcOptions {
        GcOptions { dry_run, delay: Duration::ZERO, holder: "test (pid 1)".into() }
    }

    fn exists(dir: &std::path::Path, path: &str) -> bool {
        dir.join(path.trim_start_matches('/')).exists()
    }

    #[tokio::test]
    async fn garbage_goes_to_the_trash_then_away_and_wanted_blobs_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let reg =
            Registry::new(Arc::new(FsDriver::new(dir.path())), Policy { delete_enabled: true, ..Policy::default() });
        let r = RepoName::parse("team/app").unwrap();
        let (kept, kept_config, kept_layer) = push_image(&reg, &r, "v1", b"kept layer").await;
        let (gone, gone_config, gone_layer) = push_image(&reg, &r, "v2", b"deleted layer").await;
        let (again, again_config, again_layer) = push_image(&reg, &r, "v3", b"pushed again").await;
        let lone = push_blob(&reg, &r, b"an upload no manifest names").await;
        for d in [&gone, &again] {
            reg.delete_manifest(&r, &crate::names::Reference::Digest(d.clone())).await.unwrap();
        }

        // A dry run changes nothing.
        let dry = reg.collect(&opts(true), &Quiet).await.unwrap();
        assert_eq!((dry.eligible.len(), dry.trashed), (7, 7));
        assert!(!exists(dir.path(), &paths::trash_root()));

        // First collection: the garbage goes to the trash, nothing is deleted.
        let first = reg.collect(&opts(false), &Quiet).await.unwrap();
        assert_eq!((first.trashed, first.deleted), (7, 0));
        for d in [&gone, &gone_config, &gone_layer, &lone, &again, &again_config, &again_layer] {
            assert!(!exists(dir.path(), &paths::blob_data(d)) && exists(dir.path(), &paths::trash_data(d)), "{d}");
        }
        for d in [&kept, &kept_config, &kept_layer] {
            assert!(exists(dir.path(), &paths::blob_data(d)), "{d} is reachable and stays");
        }
        assert!(!exists(dir.path(), &paths::gc_lease()), "the lease is released");

        // A client pushes v3 again: HEAD finds its blobs (moved back), the manifest is accepted.
        reg.stat_blob(&r, &again_layer).await.unwrap();
        let (pushed, _, _) = push_image(&reg, &r, "v3", b"pushed again").await;
        assert_eq!(pushed, again);
        assert!(exists(dir.path(), &paths::blob_data(&again_config)), "the manifest's check moved its config back");

        // Second collection: what stayed garbage is deleted, what is wanted again is kept.
        let second = reg.collect(&opts(false), &Quiet).await.unwrap();
        assert_eq!(second.deleted, 4, "{second:?}");
        for d in [&gone, &gone_config, &gone_layer, &lone] {
            assert!(!exists(dir.path(), &paths::blob_data(d)) && !exists(dir.path(), &paths::trash_data(d)), "{d}");
        }
        assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean(), "everything reachable is whole");
        let v3 = reg.get_manifest(&r, &crate::names::Reference::parse("v3").unwrap()).await.unwrap();
        assert_eq!(v3.digest, again);
    }

    #[tokio::test]
    async fn one_collection_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(Arc::new(FsDriver::new(dir.path())), Policy::default());
        let held = Lease {
            holder: "node-2 (pid 7)".into(),
            since: "2026-12-07T10:00:00Z".into(),
            expires: epoch_secs(SystemTime::now()) + 60,
        };
        reg.driver.put_content(&paths::gc_lease(), Bytes::from(serde_json::to_vec(&held).unwrap())).await.unwrap();
        let busy = reg.collect(&opts(false), &Quiet).await.unwrap_err();
        assert!(busy.to_string().contains("node-2 (pid 7)"), "{busy}");
        assert!(reg.collect(&opts(true), &Quiet).await.is_ok(), "a dry run needs no lease");
        // A collector on this host that is gone (killed) frees it at once.
        let dead = Lease { holder: "test (pid 4194304)".into(), ..held.clone() };
        reg.driver.put_content(&paths::gc_lease(), Bytes::from(serde_json::to_vec(&dead).unwrap())).await.unwrap();
        reg.collect(&opts(false), &Quiet).await.unwrap();
        let expired = Lease { expires: epoch_secs(SystemTime::now()) - 1, ..held };
        reg.driver.put_content(&paths::gc_lease(), Bytes::from(serde_json::to_vec(&expired).unwrap())).await.unwrap();
        reg.collect(&opts(false), &Quiet).await.unwrap();
    }
}
