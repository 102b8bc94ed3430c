//! What the console shows of the stored repositories, read through the
//! registry's own rules (tags resolve as a pull resolves them, manifests
//! are read and verified as a pull reads them), so a page never claims what
//! a client would not get. Browsing is not pulling: nothing here records a
//! pull time or fetches from an upstream.

use super::manifest::Manifest;
use super::pulls::{self, PullTimes};
use super::{paths, Error, Registry, Result, StoredManifest};
use crate::digest::Digest;
use crate::names::{Reference, RepoName, Tag};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

/// Repositories summarised at once (each costs a few storage reads per tag).
const SUMMARY_CONCURRENCY: usize = 8;

/// A repository in the list: its tags and the bytes they hold.
#[derive(Debug, Clone)]
pub struct RepoSummary {
    pub name: String,
    pub tags: usize,
    /// Distinct manifests, configs and layers of its tagged images.
    pub size: u64,
}

/// One page of the repository list.
#[derive(Debug, Clone)]
pub struct RepoList {
    pub repos: Vec<RepoSummary>,
    /// Repositories that match the search, on every page.
    pub matching: usize,
    /// The last name on this page when more follow.
    pub next: Option<String>,
}

/// A tag and the image it names.
#[derive(Debug, Clone)]
pub struct TagRow {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// The manifest with everything it references (an index: its children too).
    pub size: u64,
    /// `os/arch[/variant]` of an index's images, or of the image's config.
    pub platforms: Vec<String>,
    /// When the tag was last written (pushed, or refreshed from a mirror).
    pub pushed: SystemTime,
    /// The latest pull the cluster recorded, if any.
    pub pulled: Option<SystemTime>,
}

/// One manifest in full, for the image page.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub manifest_size: u64,
    /// Tags of the repository that name this manifest now.
    pub tags: Vec<String>,
    /// The config descriptor of an image manifest (or an artifact's).
    pub config_blob: Option<LayerRow>,
    pub layers: Vec<LayerRow>,
    pub config: Option<ImageConfig>,
    /// An index's entries.
    pub children: Vec<ChildRow>,
    pub subject: Option<Digest>,
    pub referrers: Vec<super::Referrer>,
    pub annotations: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct LayerRow {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct ChildRow {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<String>,
}

/// The parts of an image config (OCI image-spec `config`) a reader wants.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What the last garbage collection of the cluster recorded.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CollectionRecord {
    #[serde(skip)]
    pub finished_at: Option<SystemTime>,
    #[serde(default)]
    pub holder: String,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub deleted_bytes: u64,
    #[serde(default)]
    pub tags_removed: u64,
    #[serde(default)]
    pub manifests_removed: u64,
}

/// Platform fields of index entries and configs.
#[derive(Debug, Default, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn label(&self) -> Option<String> {
        if self.os.is_empty() && self.architecture.is_empty() {
            return None;
        }
        Some(match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        })
    }
}

#[derive(Debug, Deserialize)]
struct IndexEntries {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

/// Platforms of an index's entries by digest (unknown when unparsable).
fn child_platforms(body: &[u8]) -> HashMap<String, String> {
    let entries: IndexEntries = serde_json::from_slice(body).unwrap_or(IndexEntries { manifests: Vec::new() });
    entries.manifests.into_iter().filter_map(|e| Some((e.digest, e.platform?.label()?))).collect()
}

impl Registry {
    /// The repositories whose name contains `search`, a page of `limit`
    /// after `last`, each summarised.
    pub async fn repository_list(&self, search: &str, limit: usize, last: Option<&str>) -> Result<RepoList> {
        // Every name, not a catalog page (those stop at 1000).
        let all = self.repository_names().await?;
        let needle = search.to_ascii_lowercase();
        let matching: Vec<String> = all.into_iter().filter(|n| n.contains(&needle)).collect();
        let start = last.map_or(0, |l| matching.partition_point(|n| n.as_str() <= l));
        let page: Vec<String> = matching[start..].iter().take(limit).cloned().collect();
        let next = (start + page.len() < matching.len()).then(|| page.last().cloned()).flatten();
        let repos = stream::iter(page)
            .map(|name| async move { self.repository_summary(&name).await })
            .buffered(SUMMARY_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(RepoList { repos, matching: matching.len(), next })
    }

    async fn repository_summary(&self, name: &str) -> Result<RepoSummary> {
        let repo = RepoName::parse(name)?;
        let tags = self.all_tags(&repo).await?;
        let mut seen = HashSet::new();
        let mut size = 0;
        for tag in &tags {
            let Ok(m) = self.get_manifest(&repo, &Reference::Tag(tag.clone())).await else { continue };
            size += self.closure_size(&repo, &m, &mut seen).await?;
        }
        Ok(RepoSummary { name: name.to_string(), tags: tags.len(), size })
    }

    /// Bytes of manifest `top` and what it references that `seen` does not
    /// hold yet (each blob counts once per repository).
    async fn closure_size(&self, repo: &RepoName, top: &StoredManifest, seen: &mut HashSet<Digest>) -> Result<u64> {
        let (mut size, mut todo) = count_once(top, seen)?;
        while let Some(d) = todo.pop() {
            if seen.contains(&d) {
                continue;
            }
            let m = match self.get_manifest(repo, &Reference::Digest(d)).await {
                Ok(m) => m,
                // An index may name children that were never pushed here.
                Err(Error::ManifestUnknown(_)) => continue,
                Err(e) => return Err(e),
            };
            let (more, children) = count_once(&m, seen)?;
            size += more;
            todo.extend(children);
        }
        Ok(size)
    }

    /// The tags of `repo` that name manifest `d` now, sorted.
    pub async fn tags_naming(&self, repo: &RepoName, d: &Digest) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        for tag in self.all_tags(repo).await? {
            if self.read_link(&paths::tag_current_link(repo, &tag)).await?.as_ref() == Some(d) {
                tags.push(tag.as_str().to_string());
            }
        }
        Ok(tags)
    }

    /// The tags of `repo` with what they name, sorted by tag.
    pub async fn repository_tags(&self, repo: &RepoName) -> Result<Vec<TagRow>> {
        if !self.repo_exists(repo).await? {
            return Err(Error::NameUnknown(repo.clone()));
        }
        let pulled = self.pull_times().await;
        let rows = stream::iter(self.all_tags(repo).await?)
            .map(|tag| {
                let pulled = &pulled;
                async move { self.tag_row(repo, tag, pulled).await }
            })
            .buffered(SUMMARY_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    async fn tag_row(&self, repo: &RepoName, tag: Tag, pulled: &PullTimes) -> Result<Option<TagRow>> {
        let link = paths::tag_current_link(repo, &tag);
        let pushed = match self.driver.stat(&link).await {
            Ok(st) => st.modified,
            Err(e) if e.is_not_found() => return Ok(None), // untagged meanwhile
            Err(e) => return Err(e.into()),
        };
        let m = match self.get_manifest(repo, &Reference::Tag(tag.clone())).await {
            Ok(m) => m,
            Err(Error::ManifestUnknown(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let parsed = Manifest::parse_stored(&m.body)?;
        let platforms = if parsed.children.is_empty() {
            self.config_of(&parsed).await.and_then(|c| config_platform(&c)).into_iter().collect()
        } else {
            let mut p: Vec<String> = child_platforms(&m.body).into_values().collect();
            p.sort();
            p.dedup();
            p
        };
        let size = self.closure_size(repo, &m, &mut HashSet::new()).await?;
        let pulled = pulled.get(&(repo.as_str().to_string(), m.digest.clone())).map(|s| pulls::time_of(*s));
        Ok(Some(TagRow {
            tag: tag.as_str().to_string(),
            media_type: m.media_type,
            digest: m.digest,
            size,
            platforms,
            pushed,
            pulled,
        }))
    }

    /// Pull times as the last collection merged them, with this node's
    /// since its last flush (other nodes' newer batches are merged by the
    /// next collection).
    async fn pull_times(&self) -> PullTimes {
        let mut times = PullTimes::new();
        if let Ok(body) = self.driver.get_content(&paths::gc_pulls()).await {
            pulls::merge(&mut times, &body, &paths::gc_pulls());
        }
        self.pulls.merge_pending(&mut times);
        times
    }

    /// The config of an image manifest, if it is an image config.
    async fn config_of(&self, m: &Manifest) -> Option<ImageConfig> {
        let config = m.blobs.first().filter(|b| is_image_config(&b.media_type))?;
        // Configs are small; a huge "config" is an artifact, not shown.
        if config.size > 4 << 20 {
            return None;
        }
        let body = self.driver.get_content(&paths::blob_data(&config.digest)).await.ok()?;
        if Digest::of(config.digest.algorithm(), &body) != config.digest {
            tracing::warn!(digest = %config.digest, "a config blob does not match its digest; not shown");
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    /// Manifest `reference` of `repo` with its layers, config, children
    /// and referrers.
    pub async fn image_view(&self, repo: &RepoName, reference: &Reference) -> Result<ImageView> {
        let m = self.get_manifest(repo, reference).await?;
        let parsed = Manifest::parse_stored(&m.body)?;
        let config = self.config_of(&parsed).await;
        let row = |b: &super::manifest::Descriptor| LayerRow {
            digest: b.digest.clone(),
            media_type: b.media_type.clone(),
            size: b.size.max(0) as u64,
        };
        // An image manifest's first blob is its config (an index has none).
        let config_blob = parsed.blobs.first().map(row);
        let layers = parsed.blobs.iter().skip(1).map(row).collect();
        let platforms = child_platforms(&m.body);
        let children = parsed
            .children
            .iter()
            .map(|c| ChildRow {
                digest: c.digest.clone(),
                media_type: c.media_type.clone(),
                size: c.size.max(0) as u64,
                platform: platforms.get(&c.digest.to_string()).cloned(),
            })
            .collect();
        let tags = self.tags_naming(repo, &m.digest).await?;
        let referrers = self.referrers(&super::Namespace::Local, repo, &m.digest, None).await?;
        let annotations = parsed
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        Ok(ImageView {
            manifest_size: m.body.len() as u64,
            digest: m.digest,
            media_type: m.media_type,
            artifact_type: parsed.artifact_type.filter(|t| !is_image_config(t)),
            tags,
            config_blob,
            layers,
            config,
            children,
            subject: parsed.subject,
            referrers,
            annotations,
        })
    }

    /// The cluster's last garbage collection, if one finished.
    pub async fn last_collection_record(&self) -> Result<Option<CollectionRecord>> {
        let Some(finished) = self.last_collection().await? else { return Ok(None) };
        let body = self.driver.get_content(&paths::gc_last()).await.unwrap_or_default();
        let mut rec: CollectionRecord = serde_json::from_slice(&body).unwrap_or_default();
        rec.finished_at = Some(finished);
        Ok(Some(rec))
    }

    /// Whether deletes are allowed by the storage policy.
    pub fn deletes_enabled(&self) -> bool {
        self.policy.delete_enabled && !self.policy.read_only
    }

    /// The configured pull-through mirrors.
    pub fn mirror_list(&self) -> &[std::sync::Arc<crate::upstream::Upstream>] {
        &self.mirrors.list
    }

    /// Whether layer indexes are built and served (a key is configured).
    pub fn layer_indexes_enabled(&self) -> bool {
        self.index_key.is_some()
    }
}

/// Bytes of manifest `m` itself and of the blobs it names that `seen`
/// does not hold yet, and its children; nothing if `seen` holds `m`.
fn count_once(m: &StoredManifest, seen: &mut HashSet<Digest>) -> Result<(u64, Vec<Digest>)> {
    if !seen.insert(m.digest.clone()) {
        return Ok((0, Vec::new()));
    }
    let parsed = Manifest::parse_stored(&m.body)?;
    let mut size = m.body.len() as u64;
    for b in parsed.blobs {
        if seen.insert(b.digest) {
            size += b.size.max(0) as u64;
        }
    }
    Ok((size, parsed.children.into_iter().map(|c| c.digest).collect()))
}

fn is_image_config(media_type: &str) -> bool {
    media_type == crate::media_types::OCI_CONFIG || media_type == crate::media_types::DOCKER_CONFIG
}

fn config_platform(c: &ImageConfig) -> Option<String> {
    Platform { os: c.os.clone(), architecture: c.architecture.clone(), variant: c.variant.clone() }.label()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_platforms_are_read_per_child() {
        let body = br#"{"manifests":[
            {"digest":"sha256:aa","platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"digest":"sha256:bb","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:cc"}]}"#;
        let p = child_platforms(body);
        assert_eq!(p["sha256:aa"], "linux/arm64/v8");
        assert_eq!(p["sha256:bb"], "linux/amd64");
        assert!(!p.contains_key("sha256:cc"));
        assert!(child_platforms(b"not json").is_empty());
    }

    #[test]
    fn image_configs_parse_with_missing_fields() {
        let c: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/app"],"Env":["A=1"],"Labels":{"k":"v"}},
                "history":[{"created_by":"RUN x","empty_layer":true}]}"#,
        )
        .unwrap();
        assert_eq!(c.config.entrypoint.as_deref(), Some(&["/bin/app".to_string()][..]));
        assert_eq!(c.config.labels.unwrap()["k"], "v");
        assert!(c.history[0].empty_layer);
        assert_eq!(
            config_platform(&ImageConfig {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into()),
                ..Default::default()
            })
            .as_deref(),
            Some("linux/arm/v7")
        );
    }
}
