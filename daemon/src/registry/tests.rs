//! Registry rules on the in-memory backend.

use super::manifest::{OCI_INDEX, OCI_MANIFEST};
use super::*;
use crate::digest::Algorithm;
use crate::names::{Reference, Tag};
use crate::storage::memory::MemoryDriver;
use futures_util::TryStreamExt;

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn body(parts: &[&'static [u8]]) -> BodyStream {
    let items: Vec<std::io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
    Box::pin(futures_util::stream::iter(items))
}

/// The layer index key every test registry shares, as a cluster's nodes do.
const TEST_KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn registry(driver: &MemoryDriver, policy: Policy) -> Arc<Registry> {
    let key = crate::layerindex::signing::IndexKey::new(TEST_KEY).unwrap();
    Registry::build(Arc::new(driver.clone()), policy, mirror::Mirrors::default(), Some(key))
}

async fn read(reg: &Registry, d: &Digest) -> Vec<u8> {
    let st = reg.driver.stat(&paths::blob_data(d)).await.unwrap();
    let info = BlobInfo { digest: d.clone(), size: st.size, stored: Some(st) };
    let chunks: Vec<Bytes> = reg.read_blob(&info, 0, info.size).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

async fn push_blob(reg: &Registry, r: &RepoName, data: &'static [u8]) -> Digest {
    let d = Digest::sha256_of(data);
    reg.upload_whole(r, &d, body(&[data])).await.unwrap();
    d
}

fn image_manifest(config: &Digest, layer: &Digest, subject: Option<&Digest>) -> Bytes {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.config+json", "digest": config.to_string(), "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 1}],
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": s.to_string(), "size": 1});
    }
    Bytes::from(m.to_string())
}

#[tokio::test]
async fn chunked_upload_is_verified_before_it_is_readable() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("app");
    let up = reg.start_upload(&r).await.unwrap();
    let st = reg.append_chunk(&r, &up.id, Some((0, 6)), body(&[b"hello "])).await.unwrap();
    assert_eq!(st.size, 6);
    let err = reg.append_chunk(&r, &up.id, Some((3, 1)), body(&[b"x"])).await.unwrap_err();
    assert!(matches!(err, Error::UploadOutOfOrder { expected: 6, got: 3 }));
    reg.append_chunk(&r, &up.id, Some((6, 3)), body(&[b"wor"])).await.unwrap();
    let d = Digest::sha256_of(b"hello world");
    assert!(matches!(reg.stat_blob(&r, &d).await, Err(Error::BlobUnknown(_))));
    let info = reg.finish_upload(&r, &up.id, &d, Some(body(&[b"ld"]))).await.unwrap();
    assert_eq!(info.size, 11);
    assert_eq!(reg.stat_blob(&r, &d).await.unwrap().size, 11);
    assert_eq!(read(&reg, &d).await, b"hello world");
    assert!(matches!(reg.upload_status(&r, &up.id).await, Err(Error::BlobUploadUnknown(_))));
    // Another repository does not see the blob until it mounts it.
    assert!(matches!(reg.stat_blob(&repo("other"), &d).await, Err(Error::BlobUnknown(_))));
    assert!(reg.mount_blob(&repo("other"), &d, &r).await.unwrap());
    assert!(reg.stat_blob(&repo("other"), &d).await.is_ok());
    assert!(!reg.mount_blob(&repo("third"), &d, &repo("nobody")).await.unwrap());
}

#[tokio::test]
async fn a_wrong_digest_leaves_nothing_behind() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("app");
    let claimed = Digest::sha256_of(b"what the client meant");
    let err = reg.upload_whole(&r, &claimed, body(&[b"what it sent"])).await.unwrap_err();
    assert!(matches!(err, Error::DigestInvalid(_)), "{err}");
    assert!(matches!(reg.stat_blob(&r, &claimed).await, Err(Error::BlobUnknown(_))));
    let actual = Digest::sha256_of(b"what it sent");
    assert!(driver.stat(&paths::blob_data(&actual)).await.is_err());
    assert!(driver.stat(&paths::blob_data(&claimed)).await.is_err());
    assert!(driver.list("/docker/registry/v2/repositories/app/_uploads").await.is_err(), "upload data removed");
}

#[tokio::test]
async fn uploads_survive_a_restart_and_sha512_is_verified() {
    let driver = MemoryDriver::new();
    let r = repo("app");
    let id = {
        let reg = registry(&driver, Policy::default());
        let up = reg.start_upload(&r).await.unwrap();
        reg.append_chunk(&r, &up.id, None, body(&[b"part one, "])).await.unwrap();
        up.id
    };
    // A new registry (daemon restart) has no in-memory hash state.
    let reg = registry(&driver, Policy::default());
    assert_eq!(reg.upload_status(&r, &id).await.unwrap().size, 10);
    reg.append_chunk(&r, &id, Some((10, 8)), body(&[b"part two"])).await.unwrap();
    let d = Digest::of(Algorithm::Sha512, b"part one, part two");
    reg.finish_upload(&r, &id, &d, None).await.unwrap();
    assert_eq!(read(&reg, &d).await, b"part one, part two");
}

#[tokio::test]
async fn manifests_need_their_blobs_and_tags_resolve() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy { delete_enabled: true, ..Policy::default() });
    let r = repo("lib/app");
    let config = Digest::sha256_of(b"{}");
    let layer = Digest::sha256_of(b"layer");
    let m = image_manifest(&config, &layer, None);
    let v1 = Reference::Tag(Tag::parse("v1").unwrap());
    let err = reg.put_manifest(&r, &v1, Some(OCI_MANIFEST), m.clone()).await.unwrap_err();
    assert!(matches!(err, Error::ManifestBlobUnknown(ref d) if d == &config), "{err}");
    push_blob(&reg, &r, b"{}").await;
    push_blob(&reg, &r, b"layer").await;
    let pushed = reg.put_manifest(&r, &v1, Some(OCI_MANIFEST), m.clone()).await.unwrap();
    assert_eq!(pushed.digest, Digest::sha256_of(&m));
    let got = reg.get_manifest(&r, &v1).await.unwrap();
    assert_eq!((got.body, got.media_type.as_str()), (m.clone(), OCI_MANIFEST));
    assert_eq!(reg.list_tags(&Namespace::Local, &r, None, None).await.unwrap().items, vec!["v1"]);
    assert_eq!(reg.catalog(None, None).await.unwrap().items, vec!["lib/app"]);

    // Wrong digest in the URL.
    let wrong = Reference::Digest(Digest::sha256_of(b"other"));
    assert!(matches!(reg.put_manifest(&r, &wrong, None, m.clone()).await, Err(Error::DigestInvalid(_))));

    // An index needs its children in the repository.
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": pushed.digest.to_string(), "size": m.len()},
        {"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(b"nope").to_string(), "size": 4}]});
    let err = reg.put_manifest(&r, &v1, Some(OCI_INDEX), Bytes::from(index.to_string())).await.unwrap_err();
    assert!(matches!(err, Error::ManifestBlobUnknown(_)));

    // Deleting the tag keeps the manifest; deleting the manifest drops tags.
    reg.delete_manifest(&r, &v1).await.unwrap();
    assert!(matches!(reg.get_manifest(&r, &v1).await, Err(Error::ManifestUnknown(_))));
    let by_digest = Reference::Digest(pushed.digest.clone());
    assert!(reg.get_manifest(&r, &by_digest).await.is_ok());
    let v2 = Reference::Tag(Tag::parse("v2").unwrap());
    reg.put_manifest(&r, &v2, None, m.clone()).await.unwrap();
    reg.delete_manifest(&r, &by_digest).await.unwrap();
    assert!(reg.get_manifest(&r, &by_digest).await.is_err());
    assert!(reg.get_manifest(&r, &v2).await.is_err());
    assert!(reg.list_tags(&Namespace::Local, &r, None, None).await.unwrap().items.is_empty());
    assert!(matches!(reg.list_tags(&Namespace::Local, &repo("nobody"), None, None).await, Err(Error::NameUnknown(_))));
}

#[tokio::test]
async fn referrers_are_indexed_by_subject() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy { delete_enabled: true, ..Policy::default() });
    let r = repo("app");
    let config = push_blob(&reg, &r, b"{}").await;
    let layer = push_blob(&reg, &r, b"layer").await;
    let tag = Reference::Tag(Tag::parse("v1").unwrap());
    let subject = reg.put_manifest(&r, &tag, None, image_manifest(&config, &layer, None)).await.unwrap().digest;
    let sig = image_manifest(&config, &layer, Some(&subject));
    let sig_digest = Digest::sha256_of(&sig);
    let pushed = reg.put_manifest(&r, &Reference::Digest(sig_digest.clone()), None, sig).await.unwrap();
    assert_eq!(pushed.subject.as_ref(), Some(&subject));
    let all = reg.referrers(&Namespace::Local, &r, &subject, None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].digest, sig_digest);
    assert_eq!(all[0].artifact_type.as_deref(), Some("application/vnd.example.config+json"));
    assert_eq!(
        reg.referrers(&Namespace::Local, &r, &subject, Some("application/vnd.example.config+json"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(reg.referrers(&Namespace::Local, &r, &subject, Some("other/type")).await.unwrap().is_empty());
    reg.delete_manifest(&r, &Reference::Digest(sig_digest)).await.unwrap();
    assert!(reg.referrers(&Namespace::Local, &r, &subject, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn policies_refuse_writes_and_deletes() {
    let driver = MemoryDriver::new();
    let r = repo("app");
    let reg = registry(&driver, Policy::default());
    let d = push_blob(&reg, &r, b"data").await;
    assert!(
        matches!(reg.delete_blob(&r, &d).await, Err(Error::Unsupported(m)) if m.contains("storage.delete.enabled"))
    );
    let ro = registry(&driver, Policy { delete_enabled: true, read_only: true, redirect: false });
    assert!(matches!(ro.start_upload(&r).await, Err(Error::Unsupported(m)) if m.contains("read-only")));
    assert!(matches!(ro.delete_blob(&r, &d).await, Err(Error::Unsupported(_))));
    assert!(ro.stat_blob(&r, &d).await.is_ok(), "reads still work");
    let rw = registry(&driver, Policy { delete_enabled: true, ..Policy::default() });
    rw.delete_blob(&r, &d).await.unwrap();
    assert!(matches!(rw.stat_blob(&r, &d).await, Err(Error::BlobUnknown(_))));
}

#[tokio::test]
async fn abandoned_uploads_are_purged_by_age() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("team/app");
    let up = reg.start_upload(&r).await.unwrap();
    reg.append_chunk(&r, &up.id, None, body(&[b"abc"])).await.unwrap();
    assert_eq!(reg.purge_uploads(std::time::Duration::from_secs(3600), false).await.unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(reg.purge_uploads(std::time::Duration::from_millis(1), true).await.unwrap(), 1);
    assert!(reg.upload_status(&r, &up.id).await.is_ok(), "a dry run deletes nothing");
    assert_eq!(reg.purge_uploads(std::time::Duration::from_millis(1), false).await.unwrap(), 1);
    assert!(matches!(reg.upload_status(&r, &up.id).await, Err(Error::BlobUploadUnknown(_))));
}

/// A plain tar layer holding `etc/motd` ("hello\n").
fn motd_layer() -> &'static [u8] {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "etc/motd", &b"hello\n"[..]).unwrap();
    Vec::leak(tar.into_inner().unwrap())
}

/// Asks for the index of `d` until the background build has settled.
async fn settled_index(reg: &Registry, r: &RepoName, d: &Digest) -> Result<Arc<crate::layerindex::LayerIndex>> {
    for _ in 0..200 {
        let res = reg.layer_index(&Namespace::Local, r, d).await;
        let building = reg.indexer.is_building(d);
        if !building && !matches!(&res, Err(Error::IndexUnavailable(m)) if m.contains("being built")) {
            return res;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("index build of {d} never settled")
}

#[tokio::test]
async fn index_requests_build_once_and_remember_blobs_that_cannot_have_one() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("app");

    // A plain tar layer: the first request starts a build, a later one gets it.
    let tar = motd_layer();
    let layer = push_blob(&reg, &r, tar).await;
    let first = reg.layer_index(&Namespace::Local, &r, &layer).await.unwrap_err();
    assert!(matches!(&first, Error::IndexUnavailable(m) if m.contains("being built")), "{first:?}");
    let idx = settled_index(&reg, &r, &layer).await.unwrap();
    assert_eq!(idx.size, tar.len() as u64);

    // Another node with the cluster's key reads the stored, signed index
    // (a fresh registry: nothing cached in memory).
    let fresh = registry(&driver, Policy::default());
    assert_eq!(fresh.layer_index(&Namespace::Local, &r, &layer).await.unwrap().size, tar.len() as u64);
    // Asked from a repository the layer is not in, a node that has not read
    // the index yet reads it beside the access check, and drops it.
    let stranger = registry(&driver, Policy::default());
    let err = stranger.layer_index(&Namespace::Local, &repo("other"), &layer).await.unwrap_err();
    assert!(matches!(&err, Error::BlobUnknown(_)), "{err:?}");
    assert!(stranger.indexer.cached(&layer).is_none(), "a refused request keeps nothing");

    // An index edited in storage, or signed with another key, is refused.
    let stored = driver.get_content(&paths::layer_index(&layer)).await.unwrap();
    let mut idx = crate::layerindex::decode(&stored).unwrap();
    idx.entries[0].mode = 0o4755;
    driver.put_content(&paths::layer_index(&layer), Bytes::from(crate::layerindex::encode(&idx))).await.unwrap();
    let err = registry(&driver, Policy::default()).layer_index(&Namespace::Local, &r, &layer).await.unwrap_err();
    assert!(matches!(&err, Error::IndexUnavailable(m) if m.contains("not authenticated")), "{err:?}");
    let other = crate::layerindex::signing::IndexKey::new(b"another cluster's key, 32 bytes or more").unwrap();
    let foreign = Registry::build(Arc::new(driver.clone()), Policy::default(), mirror::Mirrors::default(), Some(other));
    driver.put_content(&paths::layer_index(&layer), stored.clone()).await.unwrap();
    assert!(foreign.layer_index(&Namespace::Local, &r, &layer).await.is_err(), "another cluster's key");
    // Without a key nothing is served; without a tag the index is rebuilt.
    let keyless = Registry::new(Arc::new(driver.clone()), Policy::default());
    assert!(
        matches!(keyless.layer_index(&Namespace::Local, &r, &layer).await, Err(Error::IndexUnavailable(m)) if m.contains("no layer index key"))
    );
    driver.delete(&paths::layer_index_auth(&layer)).await.unwrap();
    let again = registry(&driver, Policy::default());
    let err = again.layer_index(&Namespace::Local, &r, &layer).await.unwrap_err();
    assert!(matches!(&err, Error::IndexUnavailable(m) if m.contains("not signed yet")), "{err:?}");
    assert_eq!(settled_index(&again, &r, &layer).await.unwrap().size, tar.len() as u64);

    // Not a layer: the verdict is remembered, so asking again starts no build.
    let config = push_blob(&reg, &r, b"{\"architecture\":\"amd64\"}").await;
    let err = settled_index(&reg, &r, &config).await.unwrap_err();
    assert!(matches!(&err, Error::IndexUnavailable(m) if m.contains("not a gzip, zstd or tar layer")), "{err:?}");
    let again = reg.layer_index(&Namespace::Local, &r, &config).await.unwrap_err();
    assert!(matches!(&again, Error::IndexUnavailable(m) if m.contains("pull it normally")), "{again:?}");
    assert!(!reg.indexer.is_building(&config), "a second build was started");

    // A gzip stream that is corrupt: the build's error is the answer.
    let broken = push_blob(&reg, &r, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not deflate at all").await;
    let err = settled_index(&reg, &r, &broken).await.unwrap_err();
    assert!(matches!(&err, Error::IndexUnavailable(m) if m.contains("cannot index")), "{err:?}");
}

#[tokio::test]
async fn layer_ranges_inflate_a_span_once_and_serve_it_from_memory() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("app");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..5 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(noise.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "big.bin", &noise[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let gz: &'static [u8] = Vec::leak(crate::layerindex::zran::tests::gzip(&tar, "-6"));
    let layer = push_blob(&reg, &r, gz).await;
    let idx = settled_index(&reg, &r, &layer).await.unwrap();
    let (c1, c2) = (idx.checkpoints[1].out, idx.checkpoints[2].out);

    // Two reads in one span: the first inflates and keeps it, both are right.
    let (a, size) = reg.layer_range(&Namespace::Local, &r, &layer, c1 + 1000, 256 << 10).await.unwrap();
    assert_eq!(size, tar.len() as u64);
    assert_eq!(&a[..], &tar[(c1 + 1000) as usize..(c1 + 1000 + (256 << 10)) as usize]);
    assert!(reg.indexer.has_span(&layer, c1));
    let (b, _) = reg.layer_range(&Namespace::Local, &r, &layer, c2 - 100, 100).await.unwrap();
    assert_eq!(&b[..], &tar[(c2 - 100) as usize..c2 as usize]);
    // Across two spans, and to the end of the tar: read directly, still right.
    let (c, _) = reg.layer_range(&Namespace::Local, &r, &layer, c2 - 100, 200).await.unwrap();
    assert_eq!(&c[..], &tar[(c2 - 100) as usize..(c2 + 100) as usize]);
    let (d, _) = reg.layer_range(&Namespace::Local, &r, &layer, size - 10, 1 << 20).await.unwrap();
    assert_eq!(&d[..], &tar[tar.len() - 10..]);
    assert!(matches!(
        reg.layer_range(&Namespace::Local, &r, &layer, size, 1).await,
        Err(Error::RangeNotSatisfiable { size: s }) if s == size
    ));
    // The index is in memory now, and a read no longer waits for the
    // access check before it starts; a repository that does not hold the
    // layer still gets no byte of it.
    assert!(reg.indexer.cached(&layer).is_some());
    let refused = reg.layer_range(&Namespace::Local, &repo("other"), &layer, c1, 100).await;
    assert!(matches!(&refused, Err(Error::BlobUnknown(d)) if *d == layer), "{refused:?}");
}

#[tokio::test]
async fn the_console_views_summarise_what_a_pull_would_get() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("team/app");
    let config: &'static [u8] = br#"{"architecture":"arm64","os":"linux","config":{"Cmd":["/bin/app"]}}"#;
    let cd = push_blob(&reg, &r, config).await;
    let ld = push_blob(&reg, &r, b"layer").await;
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": crate::media_types::OCI_CONFIG, "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": 5}],
    })
    .to_string();
    let m = Bytes::from(m);
    for t in ["v1", "v2"] {
        reg.put_manifest(&r, &Reference::Tag(Tag::parse(t).unwrap()), Some(OCI_MANIFEST), m.clone()).await.unwrap();
    }
    let other = repo("other/tool");
    push_blob(&reg, &other, b"{}").await;
    push_blob(&reg, &other, b"layer").await;
    let om = image_manifest(&Digest::sha256_of(b"{}"), &ld, None);
    reg.put_manifest(&other, &Reference::Tag(Tag::parse("latest").unwrap()), Some(OCI_MANIFEST), om).await.unwrap();
    let md = Digest::sha256_of(&m);
    reg.record_pull(&Namespace::Local, &r, &md);

    // The list: search, pages, and each blob counted once per repository.
    let all = reg.repository_list("", 10, None).await.unwrap();
    assert_eq!(all.repos.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["other/tool", "team/app"]);
    let app = &all.repos[1];
    assert_eq!((app.tags, app.size), (2, (m.len() + config.len() + 5) as u64));
    let page = reg.repository_list("", 1, None).await.unwrap();
    assert_eq!((page.repos.len(), page.next.as_deref(), page.matching), (1, Some("other/tool"), 2));
    let rest = reg.repository_list("", 1, page.next.as_deref()).await.unwrap();
    assert_eq!((rest.repos[0].name.as_str(), rest.next), ("team/app", None));
    assert_eq!(reg.repository_list("TOOL", 10, None).await.unwrap().matching, 1, "search ignores case");

    // Tags: digest, platform from the config, the pull this node served.
    let tags = reg.repository_tags(&r).await.unwrap();
    assert_eq!(tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(), ["v1", "v2"]);
    assert_eq!((&tags[0].digest, tags[0].platforms.as_slice()), (&md, &["linux/arm64".to_string()][..]));
    assert!(tags[0].pulled.is_some(), "the recorded pull shows before any flush");
    assert!(matches!(reg.repository_tags(&repo("no/such")).await, Err(Error::NameUnknown(_))));

    // The image: tags naming it, its layer, its config.
    let img = reg.image_view(&r, &Reference::Tag(Tag::parse("v1").unwrap())).await.unwrap();
    assert_eq!(img.tags, ["v1", "v2"]);
    assert_eq!(img.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(), [&ld]);
    assert_eq!(img.config.as_ref().unwrap().config.cmd.as_deref(), Some(&["/bin/app".to_string()][..]));

    // A config altered in the storage is not shown as the image's.
    driver
        .put_content(&paths::blob_data(&cd), Bytes::from_static(br#"{"os":"evil","architecture":"x"}"#))
        .await
        .unwrap();
    let img = reg.image_view(&r, &Reference::Digest(md)).await.unwrap();
    assert!(img.config.is_none(), "a config that does not match its digest is not trusted");
}

#[tokio::test]
async fn prefetch_lists_fit_the_index_and_a_tampered_one_is_ignored() {
    let driver = MemoryDriver::new();
    let reg = registry(&driver, Policy::default());
    let r = repo("app");
    let tar = motd_layer();
    let layer = push_blob(&reg, &r, tar).await;
    let chunks = settled_index(&reg, &r, &layer).await.unwrap().chunks.len();
    assert_eq!(reg.layer_prefetch(&Namespace::Local, &r, &layer).await.unwrap(), None, "none recorded yet");

    // Lists that do not fit the index are refused and store nothing.
    for bad in
        [&b"[0]"[..], br#"{"chunks":[]}"#, br#"{"chunks":[0,0]}"#, br#"{"chunks":[99]}"#, br#"{"chunks":[0],"x":1}"#]
    {
        let err = reg.put_layer_prefetch(&Namespace::Local, &r, &layer, bad).await.unwrap_err();
        assert!(matches!(err, Error::PrefetchInvalid(_)), "{err:?}");
    }
    assert!(driver.get_content(&paths::layer_prefetch(&layer)).await.is_err());

    // A good one is read back by another node.
    let last = (chunks - 1) as u32;
    reg.put_layer_prefetch(&Namespace::Local, &r, &layer, format!("{{\"chunks\":[{last}]}}").as_bytes()).await.unwrap();
    let other_node = registry(&driver, Policy::default());
    let list = other_node.layer_prefetch(&Namespace::Local, &r, &layer).await.unwrap().unwrap();
    assert_eq!(list.chunks, vec![last]);
    // A repository without the layer gets neither.
    assert!(matches!(reg.layer_prefetch(&Namespace::Local, &repo("other"), &layer).await, Err(Error::BlobUnknown(_))));
    // Changed in storage to name chunks the layer lacks: ignored, not served.
    driver.put_content(&paths::layer_prefetch(&layer), Bytes::from_static(br#"{"chunks":[7,7]}"#)).await.unwrap();
    assert_eq!(reg.layer_prefetch(&Namespace::Local, &r, &layer).await.unwrap(), None);
}
