//! After the mark: the blob trash is swept (entries old enough deleted in
//! batches, wanted ones moved back), unmarked blobs old enough are moved
//! to the trash, layer links to content that is gone are removed, and so
//! are repositories with nothing left in them.

use super::Run;
use crate::digest::Digest;
use crate::registry::{paths, Registry, Result};
use bytes::Bytes;

/// Objects deleted per request (S3's `DeleteObjects` limit).
const DELETE_BATCH: usize = 1000;

/// Paths waiting to be deleted together.
#[derive(Default)]
pub(super) struct Deletions(Vec<String>);

impl Deletions {
    pub(super) async fn add(&mut self, reg: &Registry, paths: impl IntoIterator<Item = String>) -> Result<()> {
        self.0.extend(paths);
        if self.0.len() >= DELETE_BATCH {
            self.flush(reg).await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self, reg: &Registry) -> Result<()> {
        let batch = std::mem::take(&mut self.0);
        Ok(reg.driver.delete_objects(&batch).await?)
    }
}

impl Registry {
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
        let index = [
            paths::layer_index_auth(digest),
            paths::layer_index(digest),
            paths::layer_index_windows(digest),
            paths::layer_prefetch(digest),
        ];
        self.driver.delete_objects(&index).await?;
        tracing::info!(%digest, "garbage collection: moved to the trash");
        Ok(())
    }

    /// Deletes blob trash entries old enough that the mark does not reach;
    /// moves back those it reaches.
    pub(super) async fn sweep_trash(&self, run: &mut Run<'_>) -> Result<()> {
        let dry_run = run.opts.dry_run;
        let mut deletions = Deletions::default();
        for digest in self.digest_dirs(&paths::trash_root()).await? {
            let data = match self.driver.stat(&paths::trash_data(&digest)).await {
                Ok(st) => Some(st),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let Some(data) = data else {
                // A marker whose move never happened (or was moved back).
                if !dry_run {
                    self.delete_if_exists(&paths::trash_dir(&digest)).await?;
                }
                continue;
            };
            if run.marked.contains(&digest) {
                run.report.restored += 1;
                if !dry_run {
                    self.restore_from_trash(&digest).await?;
                }
                continue;
            }
            let trashed = match self.driver.stat(&paths::trashed_at(&digest)).await {
                Ok(st) => st.modified,
                Err(e) if e.is_not_found() => data.modified,
                Err(e) => return Err(e.into()),
            };
            if trashed >= run.old_enough {
                continue;
            }
            run.report.deleted += 1;
            run.report.deleted_bytes += data.size;
            if !dry_run {
                tracing::info!(%digest, "garbage collection: deleted");
                deletions.add(self, [paths::trash_data(&digest), paths::trashed_at(&digest)]).await?;
            }
        }
        deletions.flush(self).await
    }

    /// Every stored blob: counted, and moved to the trash when unmarked and
    /// written before the delay.
    pub(super) async fn sweep_blobs(&self, run: &mut Run<'_>) -> Result<()> {
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
                    run.report.blobs += 1;
                    run.report.bytes += st.size;
                    run.progress.advance(1);
                    if run.marked.contains(&digest) {
                        continue;
                    }
                    run.report.eligible.push((digest.clone(), st.size));
                    if st.modified > run.old_enough {
                        continue; // written lately: its manifest may be on its way
                    }
                    run.report.trashed += 1;
                    run.report.trashed_bytes += st.size;
                    if !run.opts.dry_run {
                        self.trash(&digest).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Layer links to content that is gone (neither stored nor in the
    /// trash, where a HEAD through the link could still bring it back).
    pub(super) async fn sweep_links(&self, run: &mut Run<'_>) -> Result<()> {
        let mut deletions = Deletions::default();
        for (repo, d) in std::mem::take(&mut run.unmarked_links) {
            if self.exists(&paths::blob_data(&d)).await? || self.exists(&paths::trash_data(&d)).await? {
                continue;
            }
            run.report.links += 1;
            if !run.opts.dry_run {
                deletions.add(self, [paths::layer_link(&repo, &d)]).await?;
            }
        }
        deletions.flush(self).await
    }

    /// Repositories whose manifests, tags and trashed revisions are all
    /// gone: their layer links written before the delay go, and then the
    /// repository itself when nothing is left in it (an upload in progress
    /// or a link written lately keeps it).
    pub(super) async fn remove_empty_repositories(&self, run: &mut Run<'_>) -> Result<()> {
        for repo in std::mem::take(&mut run.empty) {
            let mut left = false;
            let mut links = Vec::new();
            let layers = format!("{}/_layers", paths::repo_dir(&repo));
            for alg_dir in self.list_or_empty(&layers).await? {
                for entry in self.list_or_empty(&alg_dir).await? {
                    let link = format!("{entry}/link");
                    match self.driver.stat_authoritative(&link).await {
                        Ok(st) if st.modified <= run.old_enough => links.push(link),
                        Ok(_) => left = true,
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let uploads = self.list_or_empty(&format!("{}/_uploads", paths::repo_dir(&repo))).await?;
            run.report.links += links.len() as u64;
            if left || !uploads.is_empty() {
                if !run.opts.dry_run {
                    self.driver.delete_objects(&links).await?;
                }
                continue;
            }
            run.report.repositories_removed += 1;
            tracing::info!(repository = %repo, "garbage collection: the repository is empty");
            if run.opts.dry_run {
                continue;
            }
            self.driver.delete_objects(&links).await?;
            // On the filesystem, the directories stay behind; anything
            // written meanwhile keeps them.
            if !self.holds_objects(&paths::repo_dir(&repo)).await? {
                self.delete_if_exists(&paths::repo_dir(&repo)).await?;
            }
        }
        Ok(())
    }

    /// Whether any object lies under directory `dir`.
    async fn holds_objects(&self, dir: &str) -> Result<bool> {
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            for child in self.list_or_empty(&d).await? {
                match self.driver.stat_authoritative(&child).await {
                    Ok(st) if st.is_dir => stack.push(child),
                    Ok(_) => return Ok(true),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(false)
    }
}
