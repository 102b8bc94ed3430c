//! Listing: tags of a repository, the catalog of repositories, and the
//! referrers of a manifest. Lists are sorted and paginated with `n`/`last`
//! as the spec describes.

use super::manifest::Manifest;
use super::namespace::Namespace;
use super::{paths, Error, Registry, Result};
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use serde::Serialize;

/// Catalog responses are capped at this many entries per page when the
/// client asks for more (or for everything).
pub const MAX_CATALOG_PAGE: usize = 1000;

/// One page of a sorted list; `next` is the last item when more follow.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

fn paginate(all: Vec<String>, n: Option<usize>, last: Option<&str>, cap: usize) -> Page {
    let start = match last {
        Some(l) => all.partition_point(|x| x.as_str() <= l),
        None => 0,
    };
    let limit = n.unwrap_or(cap).min(cap);
    let rest = &all[start..];
    let items: Vec<String> = rest.iter().take(limit).cloned().collect();
    let more = rest.len() > items.len() && limit > 0;
    Page { items, more }
}

/// A referrer descriptor, as the referrers API lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Registry {
    /// Every tag of `repo`, sorted (registry:2's tags directory).
    pub(super) async fn all_tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        let entries = match self.driver.list(&paths::tags_dir(repo)).await {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut tags: Vec<Tag> =
            entries.iter().filter_map(|p| p.rsplit('/').next()).filter_map(|name| Tag::parse(name).ok()).collect();
        tags.sort();
        Ok(tags)
    }

    /// Tags of `repo` in `ns` (for a mirror: the tags pulled through it).
    pub async fn list_tags(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page> {
        let stored = self.stored_repo(ns, repo)?;
        if !self.repo_exists(&stored).await? {
            return Err(Error::NameUnknown(repo.clone()));
        }
        let all: Vec<String> = self.all_tags(&stored).await?.into_iter().map(|t| t.as_str().to_string()).collect();
        Ok(paginate(all, n, last, usize::MAX))
    }

    /// Every repository, sorted: directories under `repositories/` that
    /// have a `_manifests` directory, found by walking the tree like
    /// registry:2.
    pub(super) async fn repository_names(&self) -> Result<Vec<String>> {
        let prefix = format!("{}/", paths::repositories());
        let mut found: Vec<String> = self
            .repository_tree()
            .await?
            .into_iter()
            .filter(|(_, children)| children.iter().any(|c| c.ends_with("/_manifests")))
            .filter_map(|(dir, _)| dir.strip_prefix(&prefix).map(str::to_string))
            .collect();
        found.sort();
        Ok(found)
    }

    /// A page of [`Registry::repository_names`].
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page> {
        Ok(paginate(self.repository_names().await?, n, last, MAX_CATALOG_PAGE))
    }

    /// Manifests in `repo` whose `subject` is `subject`, optionally only
    /// those of `artifact_type`.
    pub async fn referrers(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let repo = &self.stored_repo(ns, repo)?;
        let entries = match self.driver.list(&paths::referrers_dir(repo, subject)).await {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for alg_dir in entries {
            for entry in self.driver.list(&alg_dir).await.unwrap_or_default() {
                let Some(digest) = self.read_link(&format!("{entry}/link")).await? else { continue };
                // A referrer deleted since it was indexed is skipped.
                if !self.exists(&paths::revision_link(repo, &digest)).await? {
                    continue;
                }
                let body = match self.driver.get_content(&paths::blob_data(&digest)).await {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                let m = Manifest::parse_stored(&body)?;
                if artifact_type.is_some_and(|want| m.artifact_type.as_deref() != Some(want)) {
                    continue;
                }
                out.push(Referrer {
                    media_type: m.media_type,
                    digest,
                    size: body.len() as u64,
                    artifact_type: m.artifact_type,
                    annotations: m.annotations,
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::paginate;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination_follows_n_and_last() {
        let all = v(&["a", "b", "c", "d"]);
        let p = paginate(all.clone(), Some(2), None, usize::MAX);
        assert_eq!((p.items, p.more), (v(&["a", "b"]), true));
        let p = paginate(all.clone(), Some(2), Some("b"), usize::MAX);
        assert_eq!((p.items, p.more), (v(&["c", "d"]), false));
        let p = paginate(all.clone(), None, Some("bb"), usize::MAX);
        assert_eq!(p.items, v(&["c", "d"]));
        let p = paginate(all.clone(), Some(0), None, usize::MAX);
        assert_eq!((p.items.len(), p.more), (0, false));
        let p = paginate(all, None, None, 3);
        assert_eq!((p.items.len(), p.more), (3, true));
    }
}
