//! The storage layout, in one place. It is registry:2's layout exactly, so a
//! root or bucket written by registry:2 is served by berthd, and the reverse:
//!
//! ```text
//! /docker/registry/v2/
//!   blobs/<alg>/<hex[0..2]>/<hex>/data                     content, by digest
//!   repositories/<name>/
//!     _layers/<alg>/<hex>/link                              blob linked into the repo
//!     _manifests/revisions/<alg>/<hex>/link                 manifest in the repo
//!     _manifests/tags/<tag>/current/link                    tag -> manifest digest
//!     _manifests/tags/<tag>/index/<alg>/<hex>/link          every digest the tag had
//!     _uploads/<uuid>/{data,startedat}                      uploads in progress
//!     _referrers/<alg>/<hex>/<alg>/<hex>/link               Berth's referrers index
//!     _trash/revisions/<alg>/<hex>/link                     a revision garbage collection
//!                                                           took away (untagged, or a
//!                                                           referrer whose subject is gone)
//! ```
//!
//! Beside it, Berth's own derived data, which registry:2 never reads:
//!
//! ```text
//! /berth/layer-index/v1/<alg>/<hex[0..2]>/<hex>/index.json.zst  seek index of a layer blob
//!                                                   …/windows  its inflate windows
//!                                                   …/auth     its HMAC tag
//! /berth/quarantine/<alg>/<hex>/<time>-<id>                 stored content that did not
//!                                                           match its digest
//! /berth/trash/<alg>/<hex>/{data,trashed-at}                a blob garbage collection
//!                                                           took away, until the next agrees
//! /berth/gc/{lease,last}                                    who is collecting, until when;
//!                                                           when the last collection ended
//! /berth/gc/pulls.json                                      last pull of each manifest, merged
//! /berth/pulls/<node>-<time>-<id>.json                      pulls a node saw, one batch each
//! ```
//!
//! A link file holds the digest as text (`sha256:…`, no newline). The
//! `_referrers` directory is Berth's own addition (registry:2 2.8 has no
//! referrers API); registry:2 ignores directories starting with `_`.

use crate::digest::Digest;
use crate::names::{RepoName, Tag};

pub const ROOT: &str = "/docker/registry/v2";

/// Berth's derived data, outside registry:2's tree.
pub const BERTH_ROOT: &str = "/berth";

/// Where layer blob `d`'s seek index lives (see [`crate::layerindex`]).
fn layer_index_dir(d: &Digest) -> String {
    format!(
        "{BERTH_ROOT}/layer-index/v{}/{}/{}/{}",
        crate::layerindex::FORMAT,
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

/// The seek index of layer blob `d` (zstd-compressed JSON).
pub fn layer_index(d: &Digest) -> String {
    format!("{}/index.json.zst", layer_index_dir(d))
}

/// The HMAC tag authenticating layer blob `d`'s seek index (see
/// `layerindex::signing`); written last, so an index with a tag is complete.
pub fn layer_index_auth(d: &Digest) -> String {
    format!("{}/auth", layer_index_dir(d))
}

/// The checkpoint windows of layer blob `d`'s seek index, end to end;
/// stored before the index, so an index that exists has them.
pub fn layer_index_windows(d: &Digest) -> String {
    format!("{}/windows", layer_index_dir(d))
}

/// What lazy starts of layer blob `d` read first: a prefetch hint (see
/// `registry::prefetch`), beside its seek index and deleted with it.
pub fn layer_prefetch(d: &Digest) -> String {
    format!("{}/prefetch.json", layer_index_dir(d))
}

/// Where a stored object that did not hash to its digest is moved (see
/// `registry::integrity`), one name per quarantine so none overwrites
/// another.
pub fn quarantine(d: &Digest) -> String {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("{BERTH_ROOT}/quarantine/{}/{}/{stamp}-{}", d.algorithm().as_str(), d.hex(), uuid::Uuid::new_v4().simple())
}

/// Where garbage collection keeps a blob it took away until a later
/// collection agrees it is garbage (see `registry::gc`); reads that miss
/// the blob move it back from here.
pub fn trash_dir(d: &Digest) -> String {
    format!("{BERTH_ROOT}/trash/{}/{}", d.algorithm().as_str(), d.hex())
}

/// The trashed blob's content.
pub fn trash_data(d: &Digest) -> String {
    format!("{}/data", trash_dir(d))
}

/// Written when the blob was trashed; its modification time (the
/// storage's clock) is when.
pub fn trashed_at(d: &Digest) -> String {
    format!("{}/trashed-at", trash_dir(d))
}

/// Every trashed blob, by algorithm.
pub fn trash_root() -> String {
    format!("{BERTH_ROOT}/trash")
}

/// Written when a collection ends: when (its modification time) and what
/// it freed; every node's schedule reads it.
pub fn gc_last() -> String {
    format!("{BERTH_ROOT}/gc/last")
}

/// The collection lease: who collects, and until when.
pub fn gc_lease() -> String {
    format!("{BERTH_ROOT}/gc/lease")
}

/// When each manifest was last pulled, merged from every node's batches
/// by the last collection.
pub fn gc_pulls() -> String {
    format!("{BERTH_ROOT}/gc/pulls.json")
}

/// Where nodes leave their batches of pull times.
pub fn pull_batches() -> String {
    format!("{BERTH_ROOT}/pulls")
}

/// One batch of pull times; `name` is the node's own unique file name.
pub fn pull_batch(name: &str) -> String {
    format!("{}/{name}", pull_batches())
}

/// Where quarantined objects are kept.
pub fn quarantine_root() -> String {
    format!("{BERTH_ROOT}/quarantine")
}

pub fn repositories() -> String {
    format!("{ROOT}/repositories")
}

pub fn blob_data(d: &Digest) -> String {
    format!("{ROOT}/blobs/{}/{}/{}/data", d.algorithm().as_str(), &d.hex()[..2], d.hex())
}

/// The digest a blob-store path is named after, if `path` is one
/// (`…/blobs/<alg>/<xx>/<hex>/data`). Content under such a path never
/// changes, which is what lets the node cache keep it.
pub fn content_digest(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix(ROOT)?.strip_prefix("/blobs/")?.strip_suffix("/data")?;
    let mut parts = rest.split('/');
    let (alg, prefix, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !hex.starts_with(prefix) || prefix.len() != 2 {
        return None;
    }
    format!("{alg}:{hex}").parse().ok()
}

fn repo(name: &RepoName) -> String {
    format!("{ROOT}/repositories/{name}")
}

pub fn repo_dir(name: &RepoName) -> String {
    repo(name)
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!("{}/_layers/{}/{}/link", repo(name), d.algorithm().as_str(), d.hex())
}

pub fn revision_link(name: &RepoName, d: &Digest) -> String {
    format!("{}/_manifests/revisions/{}/{}/link", repo(name), d.algorithm().as_str(), d.hex())
}

/// Where garbage collection keeps a revision link it took away, until a
/// later collection agrees; a request for the manifest moves it back.
pub fn trashed_revision(name: &RepoName, d: &Digest) -> String {
    format!("{}/_trash/revisions/{}/{}/link", repo(name), d.algorithm().as_str(), d.hex())
}

/// Every trashed revision of a repository, by algorithm.
pub fn revision_trash(name: &RepoName) -> String {
    format!("{}/_trash/revisions", repo(name))
}

pub fn tags_dir(name: &RepoName) -> String {
    format!("{}/_manifests/tags", repo(name))
}

pub fn tag_dir(name: &RepoName, tag: &Tag) -> String {
    format!("{}/{tag}", tags_dir(name))
}

pub fn tag_current_link(name: &RepoName, tag: &Tag) -> String {
    format!("{}/current/link", tag_dir(name, tag))
}

pub fn tag_index_link(name: &RepoName, tag: &Tag, d: &Digest) -> String {
    format!("{}/index/{}/{}/link", tag_dir(name, tag), d.algorithm().as_str(), d.hex())
}

pub fn upload_dir(name: &RepoName, id: &str) -> String {
    format!("{}/_uploads/{id}", repo(name))
}

pub fn upload_data(name: &RepoName, id: &str) -> String {
    format!("{}/data", upload_dir(name, id))
}

pub fn upload_started_at(name: &RepoName, id: &str) -> String {
    format!("{}/startedat", upload_dir(name, id))
}

pub fn referrers_dir(name: &RepoName, subject: &Digest) -> String {
    format!("{}/_referrers/{}/{}", repo(name), subject.algorithm().as_str(), subject.hex())
}

pub fn referrer_link(name: &RepoName, subject: &Digest, d: &Digest) -> String {
    format!("{}/{}/{}/link", referrers_dir(name, subject), d.algorithm().as_str(), d.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_registry2() {
        let d = Digest::sha256_of(b"");
        let r = RepoName::parse("library/busybox").unwrap();
        let t = Tag::parse("latest").unwrap();
        assert_eq!(
            blob_data(&d),
            "/docker/registry/v2/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/data"
        );
        assert_eq!(
            layer_link(&r, &d),
            format!("/docker/registry/v2/repositories/library/busybox/_layers/sha256/{}/link", d.hex())
        );
        assert_eq!(
            tag_current_link(&r, &t),
            "/docker/registry/v2/repositories/library/busybox/_manifests/tags/latest/current/link"
        );
        assert_eq!(
            tag_index_link(&r, &t, &d),
            format!(
                "/docker/registry/v2/repositories/library/busybox/_manifests/tags/latest/index/sha256/{}/link",
                d.hex()
            )
        );
        assert_eq!(content_digest(&blob_data(&d)), Some(d.clone()));
        assert_eq!(content_digest(&layer_link(&r, &d)), None);
        assert_eq!(content_digest(&format!("{ROOT}/blobs/sha256/ff/{}/data", d.hex())), None);
        for p in [blob_data(&d), layer_link(&r, &d), revision_link(&r, &d), upload_data(&r, "x")] {
            crate::storage::check_path(&p).unwrap();
        }
    }
}
