//! One repository's part of a collection: retention removes tags, then
//! the manifests that stay are found — the roots (tags; every manifest
//! that is not a referrer unless `deleteuntagged`; every referrer unless
//! `deletereferrers`; every revision written within the delay) and what
//! they reach: an index's children, the referrers of a manifest that
//! stays. The others are moved to the repository's revision trash, the
//! trash is swept, and what stays is marked.

use super::sweep::Deletions;
use super::Run;
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::registry::manifest::Manifest;
use crate::registry::pulls::time_of;
use crate::registry::retention::TagFacts;
use crate::registry::{paths, Registry, Result};
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

/// What a revision references.
#[derive(Default)]
struct Refs {
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    subject: Option<Digest>,
}

impl Refs {
    fn of(body: &[u8]) -> Refs {
        match Manifest::parse_stored(body) {
            Ok(m) => Refs {
                blobs: m.blobs.into_iter().map(|b| b.digest).collect(),
                children: m.children.into_iter().map(|c| c.digest).collect(),
                subject: m.subject,
            },
            Err(_) => Refs::default(),
        }
    }
}

impl Registry {
    pub(super) async fn collect_repository(&self, repo: &RepoName, run: &mut Run<'_>) -> Result<()> {
        let (tagged, untagged_now) = self.apply_retention(repo, run).await?;
        let mut revisions = self.revisions(repo, run).await?;
        let trashed: HashSet<Digest> = self.linked_digests(&paths::revision_trash(repo)).await?.into_iter().collect();

        // The roots, then what they reach.
        let delete_referrers = run.opts.retention.delete_referrers(repo.as_str());
        let mut roots: Vec<Digest> = tagged.iter().cloned().collect();
        for (d, refs) in &revisions {
            let candidate = match refs.subject {
                Some(_) => delete_referrers,
                // What retention just untagged is collected as it says.
                None => run.opts.delete_untagged || untagged_now.contains(d),
            };
            if !candidate || self.written_lately(&paths::revision_link(repo, d), run).await? {
                roots.push(d.clone());
            }
        }
        let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for (d, refs) in &revisions {
            if let Some(s) = &refs.subject {
                referrers.entry(s.clone()).or_default().push(d.clone());
            }
        }
        let mut live: HashSet<Digest> = HashSet::new();
        while let Some(d) = roots.pop() {
            if !live.insert(d.clone()) {
                continue;
            }
            if !revisions.contains_key(&d) && trashed.contains(&d) {
                // An index pushed since reaches a trashed child: it stays.
                run.report.manifests_restored += 1;
                if !run.opts.dry_run {
                    self.revision_present(repo, &d).await?;
                }
                let refs = self.refs_of(&d).await?;
                revisions.insert(d.clone(), refs);
            }
            if let Some(refs) = revisions.get(&d) {
                roots.extend(refs.children.iter().cloned());
            }
            roots.extend(referrers.get(&d).into_iter().flatten().cloned());
        }

        // What is not reached leaves the repository (to its trash).
        let (mut kept, mut removed) = (0u64, 0u64);
        for (d, refs) in &revisions {
            let stays = live.contains(d) || (!run.opts.dry_run && !self.trash_revision(repo, d, run).await?);
            if !stays {
                run.report.manifests_removed.push(format!("{repo}@{d}"));
                removed += 1;
                continue;
            }
            kept += 1;
            run.marked.insert(d.clone());
            run.marked.extend(refs.blobs.iter().cloned());
            run.marked.extend(refs.children.iter().cloned());
            let key = (repo.as_str().to_string(), d.clone());
            if let Some(t) = run.pulls.get(&key) {
                run.kept_pulls.insert(key, *t);
            }
        }
        // Children an index names but the repository lacks keep their content.
        run.marked.extend(live.iter().cloned());

        // (Entries the walk reached were moved back above; in a dry run they
        // would have been.)
        let unreached: HashSet<Digest> = trashed.difference(&live).cloned().collect();
        let trash_left = self.sweep_revision_trash(repo, &unreached, &revisions, run).await?;
        // Trashed revisions may come back, and need the layer links.
        if kept == 0 && removed == 0 && tagged.is_empty() && !trash_left {
            run.empty.push(repo.clone());
        }

        // Layer links nothing reaches: removed if their content goes.
        for d in self.digest_dirs(&format!("{}/_layers", paths::repo_dir(repo))).await? {
            if !run.marked.contains(&d) {
                run.unmarked_links.push((repo.clone(), d));
            }
        }
        Ok(())
    }

    /// The repository's tags after retention: the digests they point at,
    /// and those of the tags it removed.
    async fn apply_retention(&self, repo: &RepoName, run: &mut Run<'_>) -> Result<(HashSet<Digest>, HashSet<Digest>)> {
        let mut tags: Vec<(Tag, Digest, SystemTime)> = Vec::new();
        for tag in self.all_tags(repo).await? {
            let link = paths::tag_current_link(repo, &tag);
            let Some(d) = self.read_link(&link).await? else { continue };
            let st = match self.driver.stat_authoritative(&link).await {
                Ok(st) => st,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            tags.push((tag, d, st.modified));
        }
        let mut untagged = HashSet::new();
        let policy = run.opts.retention.policy_for(repo.as_str()).filter(|p| p.keep_tags.is_some());
        if let Some(policy) = policy {
            let facts: Vec<TagFacts> = tags
                .iter()
                .map(|(t, d, pushed)| TagFacts {
                    name: t.as_str().to_string(),
                    pushed: *pushed,
                    pulled: run.pulls.get(&(repo.as_str().to_string(), d.clone())).map(|s| time_of(*s)),
                })
                .collect();
            let removed: HashSet<String> =
                policy.tags_to_remove(&facts, SystemTime::now()).into_iter().map(|f| f.name.clone()).collect();
            let mut kept = Vec::new();
            for (tag, d, pushed) in tags {
                if !removed.contains(tag.as_str()) {
                    kept.push((tag, d, pushed));
                    continue;
                }
                if !run.opts.dry_run && !self.untag_if_unchanged(repo, &tag, &d, pushed).await? {
                    kept.push((tag, d, pushed)); // pushed again meanwhile
                    continue;
                }
                run.report.tags_removed.push(format!("{repo}:{tag}"));
                untagged.insert(d);
            }
            tags = kept;
        }
        Ok((tags.into_iter().map(|(_, d, _)| d).collect(), untagged))
    }

    /// Removes `tag` unless it was pushed again since it was read.
    async fn untag_if_unchanged(&self, repo: &RepoName, tag: &Tag, d: &Digest, pushed: SystemTime) -> Result<bool> {
        let link = paths::tag_current_link(repo, tag);
        let now = self.read_link(&link).await?;
        let st = self.driver.stat_authoritative(&link).await;
        if now.as_ref() != Some(d) || !st.is_ok_and(|st| st.modified == pushed) {
            return Ok(false);
        }
        self.delete_if_exists(&paths::tag_dir(repo, tag)).await?;
        tracing::info!(repository = %repo, %tag, "garbage collection: tag removed by retention");
        Ok(true)
    }

    /// Every revision of the repository with what it references.
    async fn revisions(&self, repo: &RepoName, run: &mut Run<'_>) -> Result<HashMap<Digest, Refs>> {
        let mut out = HashMap::new();
        for d in self.linked_digests(&format!("{}/_manifests/revisions", paths::repo_dir(repo))).await? {
            run.report.manifests += 1;
            run.progress.advance(1);
            let refs = self.refs_of(&d).await?;
            out.insert(d, refs);
        }
        Ok(out)
    }

    /// What manifest `d` references; nothing if its content is missing
    /// (fsck reports that) or unreadable.
    async fn refs_of(&self, d: &Digest) -> Result<Refs> {
        match self.driver.get_content(&paths::blob_data(d)).await {
            Ok(body) => Ok(Refs::of(&body)),
            Err(e) if e.is_not_found() => match self.driver.get_content(&paths::trash_data(d)).await {
                Ok(body) => Ok(Refs::of(&body)),
                Err(e) if e.is_not_found() => Ok(Refs::default()),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The digests of the links in registry:2's link directories
    /// (`<dir>/<alg>/<hex>/link`); directories a deleted link left behind
    /// (on the filesystem) are skipped.
    async fn linked_digests(&self, dir: &str) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg_dir in self.list_or_empty(dir).await? {
            for entry in self.list_or_empty(&alg_dir).await? {
                if let Some(d) = self.read_link(&format!("{entry}/link")).await? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// The digests named by `<dir>/<alg>/<hex>` entries, without reading
    /// their links (only to find candidates).
    pub(super) async fn digest_dirs(&self, dir: &str) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg_dir in self.list_or_empty(dir).await? {
            let alg = alg_dir.rsplit('/').next().unwrap_or_default().to_string();
            for entry in self.list_or_empty(&alg_dir).await? {
                let hex = entry.rsplit('/').next().unwrap_or_default();
                if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Whether the object at `path` was written within the delay.
    async fn written_lately(&self, path: &str, run: &Run<'_>) -> Result<bool> {
        match self.driver.stat_authoritative(path).await {
            Ok(st) => Ok(st.modified > run.old_enough),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves revision `d` of `repo` to the repository's trash, unless it
    /// was written again within the delay; `Ok(true)` when moved.
    async fn trash_revision(&self, repo: &RepoName, d: &Digest, run: &Run<'_>) -> Result<bool> {
        let link = paths::revision_link(repo, d);
        if self.written_lately(&link, run).await? {
            return Ok(false);
        }
        // The trash entry first: a crash in between leaves both, and the
        // next sweep drops the entry of a revision that is still there.
        self.write_link(&paths::trashed_revision(repo, d), d).await?;
        self.delete_if_exists(&link).await?;
        tracing::info!(repository = %repo, digest = %d, "garbage collection: manifest moved to the trash");
        Ok(true)
    }

    /// Deletes the repository's trashed revisions that were trashed before
    /// the delay and are not revisions again; returns whether entries are
    /// left.
    async fn sweep_revision_trash(
        &self,
        repo: &RepoName,
        trashed: &HashSet<Digest>,
        revisions: &HashMap<Digest, Refs>,
        run: &mut Run<'_>,
    ) -> Result<bool> {
        let mut left = false;
        let mut deletions = Deletions::default();
        let mut deleted = HashSet::new();
        for d in trashed {
            let entry = paths::trashed_revision(repo, d);
            if revisions.contains_key(d) && self.exists(&paths::revision_link(repo, d)).await? {
                if !run.opts.dry_run {
                    deletions.add(self, [entry]).await?; // moved back, or never removed
                }
                continue;
            }
            if self.written_lately(&entry, run).await? {
                left = true;
                continue;
            }
            run.report.manifests_deleted += 1;
            if run.opts.dry_run {
                continue;
            }
            let mut gone = vec![entry];
            if let Some(subject) = self.refs_of(d).await?.subject {
                gone.push(paths::referrer_link(repo, &subject, d));
            }
            deletions.add(self, gone).await?;
            deleted.insert(d.clone());
        }
        // Tags' histories (`index/`) forget them too, as registry:2's
        // `garbage-collect --delete-untagged` does.
        if !deleted.is_empty() {
            for tag in self.all_tags(repo).await? {
                let history = format!("{}/index", paths::tag_dir(repo, &tag));
                for d in self.digest_dirs(&history).await? {
                    if deleted.contains(&d) {
                        deletions.add(self, [paths::tag_index_link(repo, &tag, &d)]).await?;
                    }
                }
            }
        }
        deletions.flush(self).await?;
        Ok(left)
    }
}
