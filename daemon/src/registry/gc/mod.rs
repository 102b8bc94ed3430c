//! Garbage collection: tags retention removes, manifests nothing reaches
//! any more, and blobs no manifest references are found (the mark; all
//! `berthd gc --dry-run` does), moved to a trash, and deleted by a later
//! collection.
//!
//! Per repository ([`repositories`]): retention removes tags
//! (`storage.retention`); with `deleteuntagged`, a manifest no tag reaches
//! — directly, as a child of an index, or as a referrer of a manifest that
//! stays — is removed; with `deletereferrers` (the default), so is a
//! referrer whose subject is gone. Without those, every manifest revision
//! stays, and the mark is registry:2's `garbage-collect`'s (so the two
//! agree on a registry:2 root): every revision and what it references —
//! config and layers, or an index's child manifests. Every blob not marked
//! is eligible ([`sweep`]). Memory holds the set of marked digests and one
//! repository's manifests at a time; listings stream.
//!
//! A collection must stay true while other nodes push to the same bucket:
//! a blob eligible at the mark can be referenced by a manifest pushed a
//! moment later (a re-push finds it by HEAD and skips the upload), and an
//! untagged manifest can become an index's child or be tagged again. So
//! nothing is deleted at once:
//! 1. an eligible blob or revision whose last write is older than `delay`
//!    is moved to a trash (`/berth/trash/`, `<repo>/_trash/revisions/`),
//!    a blob's layer index removed;
//! 2. every request that needs it — a manifest's references, a mount, a
//!    read, a manifest resolved by tag or digest — moves it back from the
//!    trash first ([`Registry::restore_from_trash`],
//!    [`Registry::revision_present`]), asking the storage itself, never a
//!    node cache;
//! 3. a trash entry is deleted by a later collection only if it was trashed
//!    more than `delay` before that collection's mark began, and that mark
//!    does not reach it (one it reaches is moved back).
//!
//! A manifest accepted before a mark began is reached by it; one accepted
//! after moved what it references out of the trash, or was refused
//! (`MANIFEST_BLOB_UNKNOWN`) if the delete came first. Times are the
//! storage's own (modification times), so nodes' clocks do not matter.
//! One collection at a time: a lease object names the collector.

mod lease;
mod repositories;
mod sweep;

pub use lease::{this_collector, this_host, LEASE_TTL};

use super::fsck::Progress;
use super::pulls::PullTimes;
use super::retention::Retention;
use super::{paths, Registry, Result};
use crate::digest::Digest;
use crate::names::RepoName;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Blobs and revisions written more recently than this, and trash
    /// entries younger than this, are left for a later collection.
    pub delay: Duration,
    /// Who collects (host and process), for the lease.
    pub holder: String,
    /// Remove manifests no tag reaches (`--delete-untagged`).
    pub delete_untagged: bool,
    /// Which tags stay (`storage.retention`).
    pub retention: Arc<Retention>,
}

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

/// What a collection found and did (in a dry run: would do).
#[derive(Debug, Default, Clone)]
pub struct GarbageReport {
    pub repositories: u64,
    pub manifests: u64,
    /// Blobs stored, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    /// Tags retention removed (`repo:tag`).
    pub tags_removed: Vec<String>,
    /// Manifests removed from their repository (`repo@digest`): untagged,
    /// or referrers whose subject is gone. Moved to the trash.
    pub manifests_removed: Vec<String>,
    /// Trashed manifests deleted for good, and moved back.
    pub manifests_deleted: u64,
    pub manifests_restored: u64,
    /// Blobs no manifest reaches (digest, size), in listing order.
    pub eligible: Vec<(Digest, u64)>,
    /// Of those, moved to the trash.
    pub trashed: u64,
    pub trashed_bytes: u64,
    /// Trash entries deleted for good.
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Trash entries referenced again, moved back.
    pub restored: u64,
    /// Layer links removed because their content is gone or their
    /// repository is empty.
    pub links: u64,
    /// Repositories with nothing left in them, removed.
    pub repositories_removed: u64,
    /// Seconds per phase.
    pub timings: Vec<(&'static str, f64)>,
}

impl GarbageReport {
    pub fn eligible_bytes(&self) -> u64 {
        self.eligible.iter().map(|(_, n)| n).sum()
    }
}

/// One collection's state, passed through its phases.
struct Run<'a> {
    opts: &'a GcOptions,
    /// Written before this (the storage's clock): old enough to collect.
    old_enough: SystemTime,
    progress: &'a dyn Progress,
    report: GarbageReport,
    /// Every digest a manifest that stays reaches.
    marked: HashSet<Digest>,
    /// Pull times from every node, and those of manifests that stay.
    pulls: PullTimes,
    kept_pulls: PullTimes,
    /// Layer links that no manifest reaches, to check once blobs are swept.
    unmarked_links: Vec<(RepoName, Digest)>,
    /// Repositories left with no manifest, tag or trash entry.
    empty: Vec<RepoName>,
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
            crate::metrics::get()
                .gc_lease_held
                .get_or_create(&crate::metrics::HolderLabels { holder: opts.holder.clone() })
                .set(1);
            let me = self.self_arc();
            let holder = opts.holder.clone();
            let renew = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease::RENEW_EVERY).await;
                    if let Err(e) = me.write_lease(&holder).await {
                        tracing::warn!("cannot renew the garbage collection lease: {e}");
                    }
                }
            });
            (start, Some(renew))
        };
        let res = self.collect_leased(opts, mark_start, progress).await;
        if let (Ok(r), false) = (&res, opts.dry_run) {
            let m = crate::metrics::get();
            m.gc_trashed_blobs.inc_by(r.trashed);
            m.gc_deleted_blobs.inc_by(r.deleted);
            m.gc_deleted_bytes.inc_by(r.deleted_bytes);
            m.gc_removed_tags.inc_by(r.tags_removed.len() as u64);
            m.gc_removed_manifests.inc_by(r.manifests_removed.len() as u64);
            // When the cluster last collected, for every node's schedule.
            let done = serde_json::json!({ "holder": opts.holder, "finished": berth_wire::time::rfc3339(SystemTime::now()),
                "trashed": r.trashed, "deleted": r.deleted, "deleted_bytes": r.deleted_bytes,
                "tags_removed": r.tags_removed.len(), "manifests_removed": r.manifests_removed.len() });
            if let Err(e) = self.driver.put_content(&paths::gc_last(), Bytes::from(done.to_string())).await {
                tracing::warn!("cannot record the garbage collection's end: {e}");
            }
        }
        if let Some(renew) = renew {
            renew.abort();
            crate::metrics::get().gc_lease_held.remove(&crate::metrics::HolderLabels { holder: opts.holder.clone() });
            if let Err(e) = self.delete_if_exists(&paths::gc_lease()).await {
                tracing::warn!("cannot release the garbage collection lease: {e}");
            }
        }
        Ok(res?)
    }

    async fn collect_leased(
        &self,
        opts: &GcOptions,
        mark_start: SystemTime,
        progress: &dyn Progress,
    ) -> Result<GarbageReport> {
        let mut run = Run {
            opts,
            old_enough: mark_start.checked_sub(opts.delay).unwrap_or(SystemTime::UNIX_EPOCH),
            progress,
            report: GarbageReport::default(),
            marked: HashSet::new(),
            pulls: PullTimes::new(),
            kept_pulls: PullTimes::new(),
            unmarked_links: Vec::new(),
            empty: Vec::new(),
        };
        let phase = |run: &mut Run, name: &'static str, started: Instant| {
            run.report.timings.push((name, started.elapsed().as_secs_f64()));
        };

        let started = Instant::now();
        let batches = self.load_pull_times(&mut run.pulls).await?;
        phase(&mut run, "pulls", started);

        let started = Instant::now();
        progress.phase("mark", None);
        let prefix = format!("{}/", paths::repositories());
        for (dir, children) in self.repository_tree().await? {
            let holds = |name: &str| children.iter().any(|c| c.ends_with(name));
            if !["/_manifests", "/_layers", "/_trash", "/_uploads"].iter().any(|n| holds(n)) {
                continue;
            }
            let Some(repo) = dir.strip_prefix(&prefix).and_then(|r| RepoName::parse(r).ok()) else { continue };
            run.report.repositories += 1;
            self.collect_repository(&repo, &mut run).await?;
        }
        phase(&mut run, "mark", started);

        let started = Instant::now();
        progress.phase("trash", None);
        self.sweep_trash(&mut run).await?;
        phase(&mut run, "trash", started);

        let started = Instant::now();
        progress.phase("blobs", None);
        self.sweep_blobs(&mut run).await?;
        phase(&mut run, "blobs", started);

        let started = Instant::now();
        self.sweep_links(&mut run).await?;
        self.remove_empty_repositories(&mut run).await?;
        phase(&mut run, "links", started);

        if !opts.dry_run {
            self.save_pull_times(&run.kept_pulls, &batches).await?;
        }
        Ok(run.report)
    }

    /// Every node's batches of pull times and the merged file, merged into
    /// `into`; returns the batches read (deleted once merged).
    async fn load_pull_times(&self, into: &mut PullTimes) -> Result<Vec<String>> {
        match self.driver.get_content(&paths::gc_pulls()).await {
            Ok(body) => super::pulls::merge(into, &body, &paths::gc_pulls()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let batches = self.list_or_empty(&paths::pull_batches()).await?;
        for b in &batches {
            match self.driver.get_content(b).await {
                Ok(body) => super::pulls::merge(into, &body, b),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(batches)
    }

    /// Writes the merged pull times of the manifests that stay, then
    /// deletes the batches merged into them (a crash in between merges
    /// them again next time, which changes nothing).
    async fn save_pull_times(&self, kept: &PullTimes, batches: &[String]) -> Result<()> {
        self.driver.put_content(&paths::gc_pulls(), super::pulls::encode(kept)).await?;
        Ok(self.driver.delete_objects(batches).await?)
    }
}

#[cfg(test)]
mod tests;
