use super::lease::{epoch_secs, Lease};
use super::*;
use crate::registry::fsck::Quiet;
use crate::registry::retention::Retention;
use crate::registry::{BodyStream, Namespace, Policy};
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
    let reg = Registry::new(Arc::new(FsDriver::new(dir.path())), Policy { delete_enabled: true, ..Policy::default() });
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
    GcOptions {
        dry_run,
        delay: Duration::ZERO,
        holder: "test (pid 1)".into(),
        delete_untagged: false,
        retention: Arc::default(),
    }
}

fn exists(dir: &std::path::Path, path: &str) -> bool {
    dir.join(path.trim_start_matches('/')).exists()
}

#[tokio::test]
async fn garbage_goes_to_the_trash_then_away_and_wanted_blobs_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new(Arc::new(FsDriver::new(dir.path())), Policy { delete_enabled: true, ..Policy::default() });
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

fn reg_on(dir: &std::path::Path) -> Arc<Registry> {
    Registry::new(Arc::new(FsDriver::new(dir)), Policy { delete_enabled: true, ..Policy::default() })
}

async fn put(reg: &Registry, r: &RepoName, reference: &str, media_type: &str, body: String) -> Digest {
    let reference = crate::names::Reference::parse(reference).unwrap();
    reg.put_manifest(r, &reference, Some(media_type), Bytes::from(body)).await.unwrap().digest
}

/// An index over `children` (each an image manifest of `r`).
async fn push_index(reg: &Registry, r: &RepoName, reference: &str, children: &[&Digest]) -> Digest {
    let entries: Vec<String> = children
        .iter()
        .map(|c| format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{c}","size":1}}"#))
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    put(reg, r, reference, "application/vnd.oci.image.index.v1+json", body).await
}

/// A signature-like artifact whose subject is `subject`, pushed by digest.
async fn push_referrer(reg: &Registry, r: &RepoName, subject: &Digest, text: &str) -> Digest {
    let empty = push_blob(reg, r, b"{}").await;
    let payload = push_blob(reg, r, text.as_bytes()).await;
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{payload}","size":1}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{subject}","size":1}}}}"#
    );
    let d = Digest::sha256_of(body.as_bytes());
    put(reg, r, &d.to_string(), "application/vnd.oci.image.manifest.v1+json", body).await
}

fn by_digest(d: &Digest) -> crate::names::Reference {
    crate::names::Reference::Digest(d.clone())
}

#[tokio::test]
async fn untagged_manifests_go_but_what_a_tag_reaches_stays() {
    let dir = tempfile::tempdir().unwrap();
    let reg = reg_on(dir.path());
    let r = RepoName::parse("team/app").unwrap();
    let (v1, _, _) = push_image(&reg, &r, "v1", b"layer one").await;
    let (old, _, old_layer) = push_image(&reg, &r, "v2", b"layer two").await;
    let (new, _, _) = push_image(&reg, &r, "v2", b"layer two, again").await; // v2 moves on
    let (arm, _, _) = push_image(&reg, &r, "arm", b"arm layer").await;
    let index = push_index(&reg, &r, "multi", &[&arm]).await;
    let sig_v1 = push_referrer(&reg, &r, &v1, "signature of v1").await;
    let sig_old = push_referrer(&reg, &r, &old, "signature of the old v2").await;
    reg.delete_manifest(&r, &crate::names::Reference::parse("arm").unwrap()).await.unwrap(); // the child is untagged

    let keep = GcOptions { delete_untagged: true, ..opts(false) };
    let dry = reg.collect(&GcOptions { dry_run: true, ..keep.clone() }, &Quiet).await.unwrap();
    let mut removed = dry.manifests_removed.clone();
    removed.sort();
    let mut want = vec![format!("{r}@{old}"), format!("{r}@{sig_old}")];
    want.sort();
    assert_eq!(removed, want, "the old v2 and its signature; not the index's child nor v1's signature");
    assert!(exists(dir.path(), &paths::revision_link(&r, &old)), "a dry run changes nothing");

    let first = reg.collect(&keep, &Quiet).await.unwrap();
    assert_eq!(first.manifests_removed.len(), 2);
    assert!(!exists(dir.path(), &paths::revision_link(&r, &old)));
    assert!(exists(dir.path(), &paths::trashed_revision(&r, &old)));
    assert!(exists(dir.path(), &paths::trash_data(&old_layer)), "what only the old v2 used went to the trash");
    for d in [&v1, &new, &arm, &index, &sig_v1] {
        reg.get_manifest(&r, &by_digest(d)).await.unwrap();
    }
    let page = reg.referrers(&Namespace::Local, &r, &v1, None).await.unwrap();
    assert_eq!(page.len(), 1, "v1's signature is listed");
    assert!(reg.referrers(&Namespace::Local, &r, &old, None).await.unwrap().is_empty());

    // Pulled by digest after the first run: moved back, with its blobs.
    reg.get_manifest(&r, &by_digest(&old)).await.unwrap();
    assert!(exists(dir.path(), &paths::revision_link(&r, &old)));
    reg.stat_blob(&r, &old_layer).await.unwrap();
    assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean());

    // Removed again, then deleted for good by the run after.
    reg.collect(&keep, &Quiet).await.unwrap();
    let last = reg.collect(&keep, &Quiet).await.unwrap();
    assert!(last.manifests_deleted >= 1, "{last:?}");
    let gone = reg.get_manifest(&r, &by_digest(&old)).await.unwrap_err();
    assert!(matches!(gone, crate::registry::Error::ManifestUnknown(_)), "{gone:?}");
    assert!(!exists(dir.path(), &paths::trashed_revision(&r, &old)));
    assert!(!exists(dir.path(), &paths::referrer_link(&r, &old, &sig_old)));
    let fsck = reg.fsck(false, &Quiet).await.unwrap();
    assert!(fsck.is_clean(), "what stays is whole: {fsck:?}");
}

#[tokio::test]
async fn referrers_of_a_deleted_subject_go_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let reg = reg_on(dir.path());
    let r = RepoName::parse("team/app").unwrap();
    let (v1, _, _) = push_image(&reg, &r, "v1", b"layer one").await;
    let (v2, _, _) = push_image(&reg, &r, "v2", b"layer two").await;
    let sbom = push_referrer(&reg, &r, &v1, "sbom of v1").await;
    let sig_of_sbom = push_referrer(&reg, &r, &sbom, "signature of the sbom").await;
    let sig_v2 = push_referrer(&reg, &r, &v2, "signature of v2").await;
    reg.delete_manifest(&r, &by_digest(&v1)).await.unwrap();

    let report = reg.collect(&opts(false), &Quiet).await.unwrap();
    let mut removed = report.manifests_removed.clone();
    removed.sort();
    let mut want = vec![format!("{r}@{sbom}"), format!("{r}@{sig_of_sbom}")];
    want.sort();
    assert_eq!(removed, want, "a referrer of a referrer whose subject is gone goes too");
    reg.get_manifest(&r, &by_digest(&sig_v2)).await.unwrap();

    // deletereferrers: false keeps them.
    let dir = tempfile::tempdir().unwrap();
    let reg = reg_on(dir.path());
    let (v1, _, _) = push_image(&reg, &r, "v1", b"layer one").await;
    push_referrer(&reg, &r, &v1, "sbom of v1").await;
    reg.delete_manifest(&r, &by_digest(&v1)).await.unwrap();
    let keep = crate::registry::retention::Policy {
        repositories: vec!["team/*".into()],
        delete_referrers: false,
        keep_tags: None,
    };
    let o = GcOptions { retention: Arc::new(Retention { policies: vec![keep] }), ..opts(false) };
    assert!(reg.collect(&o, &Quiet).await.unwrap().manifests_removed.is_empty());
}

#[tokio::test]
async fn retention_removes_tags_by_push_and_pull_and_collects_what_they_held() {
    use crate::registry::retention::{KeepRule, Policy as Keep};
    let dir = tempfile::tempdir().unwrap();
    let reg = reg_on(dir.path());
    let (r, other) = (RepoName::parse("team/app").unwrap(), RepoName::parse("other/app").unwrap());
    let (v1, _, v1_layer) = push_image(&reg, &r, "v1", b"layer one").await;
    std::thread::sleep(Duration::from_millis(1100)); // storage times have whole seconds on some filesystems
    let (v2, _, _) = push_image(&reg, &r, "v2", b"layer two").await;
    std::thread::sleep(Duration::from_millis(1100));
    let (v3, _, _) = push_image(&reg, &r, "v3", b"layer three").await;
    push_image(&reg, &other, "v1", b"layer one elsewhere").await;
    // v1 was pulled (on some node, flushed): it is the most recently pulled
    // (pull times have whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    reg.record_pull(&Namespace::Local, &r, &v1);
    reg.flush_pulls().await.unwrap();

    let rule =
        |pushed, pulled| KeepRule { most_recently_pushed: pushed, most_recently_pulled: pulled, ..Default::default() };
    let policy = |rules| Keep { repositories: vec!["team/**".into()], delete_referrers: true, keep_tags: Some(rules) };
    let o = |rules| GcOptions { retention: Arc::new(Retention { policies: vec![policy(rules)] }), ..opts(false) };

    // Most recently pushed 1 and most recently pulled 1: v3 and v1 stay.
    let dry = reg.collect(&GcOptions { dry_run: true, ..o(vec![rule(Some(1), Some(1))]) }, &Quiet).await.unwrap();
    assert_eq!(dry.tags_removed, vec![format!("{r}:v2")]);
    let report = reg.collect(&o(vec![rule(Some(1), Some(1))]), &Quiet).await.unwrap();
    assert_eq!(report.tags_removed, vec![format!("{r}:v2")]);
    assert_eq!(report.manifests_removed, vec![format!("{r}@{v2}")], "what the tag held is collected");
    let tags = reg.list_tags(&Namespace::Local, &r, None, None).await.unwrap().items;
    assert_eq!(tags, ["v1", "v3"]);
    assert_eq!(reg.list_tags(&Namespace::Local, &other, None, None).await.unwrap().items, ["v1"], "no policy: kept");
    reg.get_manifest(&r, &by_digest(&v3)).await.unwrap();
    assert!(
        !dir.path().join(paths::pull_batches().trim_start_matches('/')).read_dir().unwrap().any(|_| true),
        "batches merged"
    );

    // Merged pull times still count: pushed count 0, pulled count 1 keeps v1 only.
    let report = reg.collect(&o(vec![rule(Some(0), Some(1))]), &Quiet).await.unwrap();
    assert_eq!(report.tags_removed, vec![format!("{r}:v3")]);
    assert!(exists(dir.path(), &paths::blob_data(&v1_layer)));
    assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean());
}

#[tokio::test]
async fn an_empty_repository_goes_with_its_links() {
    let dir = tempfile::tempdir().unwrap();
    let reg = reg_on(dir.path());
    let (r, kept) = (RepoName::parse("team/gone").unwrap(), RepoName::parse("team/kept").unwrap());
    let (m, _, _) = push_image(&reg, &r, "v1", b"shared layer").await;
    push_image(&reg, &kept, "v1", b"shared layer").await;
    reg.delete_manifest(&r, &by_digest(&m)).await.unwrap();
    let report = reg.collect(&opts(false), &Quiet).await.unwrap();
    assert_eq!(report.repositories_removed, 1, "{report:?}");
    assert!(!exists(dir.path(), &paths::repo_dir(&r)), "the directory is gone too");
    assert_eq!(reg.catalog(None, None).await.unwrap().items, ["team/kept"]);
    assert!(reg.fsck(false, &Quiet).await.unwrap().is_clean());
}
