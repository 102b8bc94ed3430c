//! Which registry a request is for, decided once per request.
//!
//! containerd names the registry an image came from in `?ns=` when it pulls
//! through a mirror (hosts.toml). berthd serves a name only when it owns
//! it: no `ns` (or an empty one), or one of `containerd.registries`, is
//! this cluster's own registry; a configured mirror's name is that
//! upstream's namespace; anything else is refused, so a stale or
//! hand-written hosts.toml for another registry can never make containerd
//! run a local image under a foreign name. The HTTP layer hands the raw
//! values over and then calls the read methods here with the resolved
//! [`Namespace`]; only these methods know that mirrors exist (as
//! distribution's proxy registry wraps its registry).

use super::mirror::BlobSource;
use super::{BlobInfo, Error, Registry, Result, StoredManifest};
use crate::digest::Digest;
use crate::names::{Reference, RepoName};
use crate::upstream::Upstream;
use std::sync::Arc;

/// Where a request's repositories live.
#[derive(Clone)]
pub enum Namespace {
    /// This registry's own repositories.
    Local,
    /// A pull-through mirror's namespace, filled from its upstream.
    Mirror(Arc<Upstream>),
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespace::Local => f.write_str("Local"),
            Namespace::Mirror(up) => write!(f, "Mirror({})", up.name()),
        }
    }
}

impl Registry {
    /// Resolves the `ns` values of a request's query (every parameter
    /// whose name is `ns` in any case). More than one, a name in another
    /// case than `ns`, or a value that is not exactly a name this registry
    /// serves is refused with `NAME_UNKNOWN`.
    pub fn namespace(&self, ns: &[(&str, &str)]) -> Result<Namespace> {
        let value = match ns {
            [] => None,
            [("ns", v)] => Some(*v),
            [(k, _)] => {
                return Err(Error::NamespaceUnknown(format!(
                    "the query parameter {k:?} is not `ns`; containerd sends `ns=<registry host>` in lower case"
                )))
            }
            _ => {
                return Err(Error::NamespaceUnknown(
                    "the request names its registry (`ns`) more than once; send one `ns=<registry host>`".into(),
                ))
            }
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(match self.mirrors.default {
                Some(i) => Namespace::Mirror(self.mirrors.list[i].clone()),
                None => Namespace::Local,
            });
        };
        if let Some(up) = self.mirrors.list.iter().find(|m| m.name().eq_ignore_ascii_case(value)) {
            return Ok(Namespace::Mirror(up.clone()));
        }
        if self.mirrors.local_names.iter().any(|n| n.eq_ignore_ascii_case(value)) {
            return Ok(Namespace::Local);
        }
        let mirrors: Vec<&str> = self.mirrors.list.iter().map(|m| m.name()).collect();
        Err(Error::NamespaceUnknown(format!(
            "this registry does not serve {value:?}: it is neither a configured mirror ({}) nor one of containerd.registries ({}); add it to `mirrors:` to pull through berthd, or remove berthd from that registry's hosts.toml",
            if mirrors.is_empty() { "none".to_string() } else { mirrors.join(", ") },
            if self.mirrors.local_names.is_empty() { "none".to_string() } else { self.mirrors.local_names.join(", ") },
        )))
    }

    /// Refuses writes into an upstream's namespace: through `ns`, or to a
    /// repository under `<upstream name>/`.
    pub fn check_writable_name(&self, ns: &Namespace, repo: &RepoName) -> Result<()> {
        if let Namespace::Mirror(up) = ns {
            return Err(Error::Unsupported(format!(
                "{} is a pull-through mirror of {}; it accepts no pushes. Push to the cluster's own registry name instead",
                up.name(),
                up.cfg.url
            )));
        }
        let first = repo.as_str().split('/').next().unwrap_or_default();
        if self.mirrors.list.iter().any(|m| super::mirror::namespace(m.name()) == first) {
            return Err(Error::Unsupported(format!(
                "repositories under {first}/ hold the pull-through mirror of that registry; push elsewhere"
            )));
        }
        Ok(())
    }

    /// The local repository that holds `repo` of `ns`.
    pub(super) fn stored_repo(&self, ns: &Namespace, repo: &RepoName) -> Result<RepoName> {
        match ns {
            Namespace::Local => Ok(repo.clone()),
            Namespace::Mirror(up) => Ok(self.mirror_repo(up, repo)?.0),
        }
    }

    /// A manifest by tag or digest.
    pub async fn manifest(&self, ns: &Namespace, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        match ns {
            Namespace::Local => self.get_manifest(repo, reference).await,
            Namespace::Mirror(up) => self.mirrored_manifest(up, repo, reference).await,
        }
    }

    /// A blob's size, without reading it (HEAD).
    pub async fn blob_info(&self, ns: &Namespace, repo: &RepoName, digest: &Digest) -> Result<BlobInfo> {
        match ns {
            Namespace::Local => self.stat_blob(repo, digest).await,
            Namespace::Mirror(up) => self.mirrored_blob_info(up, repo, digest).await,
        }
    }

    /// A blob to read (GET): stored, or streaming from an upstream now.
    pub async fn blob(&self, ns: &Namespace, repo: &RepoName, digest: &Digest) -> Result<BlobSource> {
        match ns {
            Namespace::Local => Ok(BlobSource::Stored(self.stat_blob(repo, digest).await?)),
            Namespace::Mirror(up) => self.mirrored_blob(up, repo, digest).await,
        }
    }
}
