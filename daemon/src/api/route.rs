//! The request path, parsed once into a typed route. Repository names may
//! contain slashes, so the path is read from its end: the last segments name
//! the endpoint and everything before them is the repository.

use crate::digest::Digest;
use crate::names::{Reference, RepoName};
use crate::registry::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { repo: RepoName },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { repo: RepoName, reference: Reference },
    /// `/v2/<name>/manifests/<reference>` with a reference that is not a
    /// valid tag (nor digest-shaped): no manifest can have it (404 on
    /// reads, as the OCI conformance tests expect), and a push under it is
    /// `TAG_INVALID`.
    BadManifestRef { repo: RepoName, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { repo: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: RepoName, subject: Digest },
    /// `/v2/<name>/_berth/layer/<digest>/index`: a layer's seek index.
    LayerIndex { repo: RepoName, digest: Digest },
    /// `/v2/<name>/_berth/layer/<digest>/tar`: uncompressed ranges of a layer.
    LayerTar { repo: RepoName, digest: Digest },
    /// `/v2/<name>/_berth/layer/<digest>/prefetch`: what lazy starts read first.
    LayerPrefetch { repo: RepoName, digest: Digest },
    /// `/ui/…`: the web console ([`crate::console::Page`] reads the rest).
    Console,
}

impl Route {
    /// A short name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } | Route::BadManifestRef { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "upload",
            Route::Referrers { .. } => "referrers",
            Route::LayerIndex { .. } | Route::LayerTar { .. } | Route::LayerPrefetch { .. } => "layer",
            Route::Console => "console",
        }
    }
}

/// Why a path is not a route.
#[derive(Debug)]
pub enum RouteError {
    /// Not an API path at all.
    NotFound,
    /// An API path whose name or reference is invalid.
    Invalid(Error),
}

impl From<Error> for RouteError {
    fn from(e: Error) -> Self {
        RouteError::Invalid(e)
    }
}

/// Decodes `%XX` escapes (clients may escape the `:` of a digest).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn repo(segs: &[&str]) -> Result<RepoName, RouteError> {
    Ok(RepoName::parse(&segs.join("/")).map_err(Error::from)?)
}

pub fn parse(path: &str) -> Result<Route, RouteError> {
    if crate::console::owns(path) {
        return Ok(Route::Console);
    }
    let path = percent_decode(path).ok_or(RouteError::NotFound)?;
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(r) if r.starts_with('/') => &r[1..],
        _ => return Err(RouteError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Route::Tags { repo: repo(&segs[..n - 2])? });
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let repo = repo(&segs[..n - 3])?;
        return Ok(match segs[n - 1] {
            "" => Route::UploadStart { repo },
            id => Route::Upload { repo, id: id.to_string() },
        });
    }
    // Berth's extension, `_berth` (a name component cannot start with `_`).
    if n >= 5 && segs[n - 4] == "_berth" && segs[n - 3] == "layer" {
        let repo = repo(&segs[..n - 4])?;
        let digest: Digest = segs[n - 2].parse().map_err(Error::from)?;
        match segs[n - 1] {
            "index" => return Ok(Route::LayerIndex { repo, digest }),
            "tar" => return Ok(Route::LayerTar { repo, digest }),
            "prefetch" => return Ok(Route::LayerPrefetch { repo, digest }),
            _ => return Err(RouteError::NotFound),
        }
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Route::UploadStart { repo: repo(&segs[..n - 2])? });
    }
    if n >= 3 {
        let last = segs[n - 1];
        match segs[n - 2] {
            "manifests" => {
                let repo = repo(&segs[..n - 2])?;
                return match Reference::parse(last) {
                    Ok(reference) => Ok(Route::Manifest { repo, reference }),
                    // A malformed digest is a malformed request.
                    Err(e) if last.contains(':') => Err(Error::from(e).into()),
                    Err(_) => Ok(Route::BadManifestRef { repo, reference: last.to_string() }),
                };
            }
            "blobs" => {
                let repo = repo(&segs[..n - 2])?;
                let digest = last.parse().map_err(Error::from)?;
                return Ok(Route::Blob { repo, digest });
            }
            "referrers" => {
                let repo = repo(&segs[..n - 2])?;
                let subject = last.parse().map_err(Error::from)?;
                return Ok(Route::Referrers { repo, subject });
            }
            _ => {}
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert!(matches!(parse("/v2/a/b/tags/list").unwrap(), Route::Tags { repo } if repo.as_str() == "a/b"));
        assert!(matches!(
            parse("/v2/lib/app/manifests/v1").unwrap(),
            Route::Manifest { repo, reference: Reference::Tag(_) } if repo.as_str() == "lib/app"
        ));
        assert!(matches!(
            parse(&format!("/v2/x/manifests/{}", d())).unwrap(),
            Route::Manifest { reference: Reference::Digest(_), .. }
        ));
        assert!(matches!(parse(&format!("/v2/x/blobs/{}", d())).unwrap(), Route::Blob { .. }));
        assert!(matches!(parse(&format!("/v2/x/blobs/sha256%3A{}", "a".repeat(64))).unwrap(), Route::Blob { .. }));
        assert!(
            matches!(parse("/v2/x/y/blobs/uploads/").unwrap(), Route::UploadStart { repo } if repo.as_str() == "x/y")
        );
        assert!(matches!(parse("/v2/x/blobs/uploads").unwrap(), Route::UploadStart { .. }));
        assert!(matches!(parse("/v2/x/blobs/uploads/abc").unwrap(), Route::Upload { id, .. } if id == "abc"));
        assert!(matches!(parse(&format!("/v2/x/referrers/{}", d())).unwrap(), Route::Referrers { .. }));
        assert!(matches!(
            parse(&format!("/v2/a/b/_berth/layer/{}/index", d())).unwrap(),
            Route::LayerIndex { repo, .. } if repo.as_str() == "a/b"
        ));
        assert!(matches!(parse(&format!("/v2/a/_berth/layer/{}/tar", d())).unwrap(), Route::LayerTar { .. }));
        assert!(matches!(parse(&format!("/v2/a/_berth/layer/{}/prefetch", d())).unwrap(), Route::LayerPrefetch { .. }));
        assert!(matches!(parse(&format!("/v2/a/_berth/layer/{}/other", d())), Err(RouteError::NotFound)));
        // A repository may itself contain a segment called `manifests`.
        assert!(
            matches!(parse("/v2/manifests/manifests/v1").unwrap(), Route::Manifest { repo, .. } if repo.as_str() == "manifests")
        );
    }

    #[test]
    fn invalid_names_and_unknown_paths() {
        assert!(matches!(parse("/v2/UPPER/tags/list"), Err(RouteError::Invalid(Error::NameInvalid(_)))));
        assert!(matches!(parse("/v2/a/../b/manifests/v1"), Err(RouteError::Invalid(Error::NameInvalid(_)))));
        assert!(matches!(parse("/v2/a/blobs/sha256:zz"), Err(RouteError::Invalid(Error::DigestInvalid(_)))));
        assert!(
            matches!(parse("/v2/a/manifests/-bad"), Ok(Route::BadManifestRef { reference, .. }) if reference == "-bad")
        );
        assert!(matches!(parse("/v2/a/manifests/sha256:zz"), Err(RouteError::Invalid(Error::DigestInvalid(_)))));
        assert!(matches!(parse("/v3/"), Err(RouteError::NotFound)));
        assert!(matches!(parse("/v2/a/unknown"), Err(RouteError::NotFound)));
        assert!(matches!(parse("/v2/a/b/c"), Err(RouteError::NotFound)));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::registry::paths;
    use crate::storage::check_path;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Any request path parses or is refused; a route's names only ever
        /// lead to paths inside the registry layout.
        #[test]
        fn any_path_routes_safely(
            p in "/v2/([a-z0-9._%/-]{0,40}/)?(manifests|blobs|tags|referrers|_berth/layer|blobs/uploads)/[a-zA-Z0-9:%._{}-]{0,80}(/index|/tar|/list)?|\\PC{0,60}"
        ) {
            match parse(&p) {
                Ok(Route::Manifest { repo, reference: Reference::Tag(t) }) => {
                    prop_assert!(check_path(&paths::tag_current_link(&repo, &t)).is_ok());
                }
                Ok(Route::Blob { repo, digest }) | Ok(Route::LayerIndex { repo, digest }) => {
                    prop_assert!(check_path(&paths::layer_link(&repo, &digest)).is_ok());
                }
                Ok(Route::Upload { repo, .. }) | Ok(Route::UploadStart { repo }) | Ok(Route::Tags { repo }) => {
                    prop_assert!(check_path(&paths::repo_dir(&repo)).is_ok());
                }
                _ => {}
            }
        }
    }
}
