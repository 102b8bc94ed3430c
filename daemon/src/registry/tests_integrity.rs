//! Registry rules under adversity: racing requests on one upload, damaged
//! stored content, names the registry does not own. On the filesystem
//! backend, where the upload race once wrote into a committed blob.

use super::*;
use crate::digest::Digest;
use crate::names::{Reference, Tag};
use crate::storage::fs::FsDriver;
use futures_util::TryStreamExt;

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn body(data: Vec<u8>) -> BodyStream {
    Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(data))]))
}

fn fs_registry(dir: &std::path::Path) -> Arc<Registry> {
    Registry::new(Arc::new(FsDriver::new(dir)), Policy { delete_enabled: true, ..Policy::default() })
}

/// Reads a blob whole the way GET does; `Err` when the transfer broke.
async fn get(reg: &Registry, r: &RepoName, d: &Digest) -> std::result::Result<Vec<u8>, String> {
    let info = reg.stat_blob(r, d).await.map_err(|e| e.to_string())?;
    let s = reg.read_blob(&info, 0, info.size).await.map_err(|e| e.to_string())?;
    let chunks: Vec<Bytes> = s.try_collect().await.map_err(|e| e.to_string())?;
    Ok(chunks.concat())
}

/// A PATCH racing the PUT that finishes an upload: whichever wins, the
/// blob stored under the digest is exactly the bytes that hash to it, and
/// the loser gets an upload error, never a storage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_racing_the_finish_never_changes_the_committed_blob() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("race/app");
    for round in 0..40u32 {
        let first: Vec<u8> = (0..64 * 1024).map(|i| (i as u32 ^ round) as u8).collect();
        let d = Digest::sha256_of(&first);
        let up = reg.start_upload(&r).await.unwrap();
        reg.append_chunk(&r, &up.id, Some((0, first.len() as u64)), body(first.clone())).await.unwrap();
        let (a, b) = (reg.clone(), reg.clone());
        let (ra, rb, id_a, id_b, d2) = (r.clone(), r.clone(), up.id.clone(), up.id.clone(), d.clone());
        let finish = tokio::spawn(async move { a.finish_upload(&ra, &id_a, &d2, None).await });
        let more = vec![7u8; 5000];
        let len = first.len() as u64;
        let patch = tokio::spawn(async move { b.append_chunk(&rb, &id_b, Some((len, 5000)), body(more)).await });
        let (finish, patch) = (finish.await.unwrap(), patch.await.unwrap());
        match (&finish, &patch) {
            // The PATCH came second: the upload was gone.
            (Ok(_), Err(Error::BlobUploadUnknown(_))) => {}
            // The PATCH came first: the finish saw other bytes than the digest.
            (Err(Error::DigestInvalid(_)), Ok(_)) => {}
            other => panic!("round {round}: unexpected outcome {other:?}"),
        }
        if finish.is_ok() {
            assert_eq!(get(&reg, &r, &d).await.unwrap(), first, "round {round}: the blob is what was committed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finishes_and_cancels_give_upload_errors() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("race/two");
    // Many rounds: the window in which a late request could find a
    // half-removed upload (data moved, directory not yet gone) is small.
    for round in 0..300u16 {
        let data = round.to_le_bytes().repeat(500);
        let d = Digest::sha256_of(&data);
        let up = reg.start_upload(&r).await.unwrap();
        reg.append_chunk(&r, &up.id, None, body(data.clone())).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (reg, r, id, d) = (reg.clone(), r.clone(), up.id.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                match i {
                    3 => reg.cancel_upload(&r, &id).await.map(|_| ()),
                    _ => reg.finish_upload(&r, &id, &d, None).await.map(|_| ()),
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(Error::BlobUploadUnknown(_)) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(ok, 1, "exactly one request wins");
        if let Ok(got) = get(&reg, &r, &d).await {
            assert_eq!(got, data);
        }
    }
}

/// The filesystem backend, with deletes that take a while: the moment
/// between a finish moving an upload's data and removing its directory.
struct SlowDeletes(FsDriver);

#[async_trait::async_trait]
impl crate::storage::StorageDriver for SlowDeletes {
    fn name(&self) -> &'static str {
        "slow-deletes"
    }
    async fn get_content(&self, path: &str) -> crate::storage::Result<Bytes> {
        self.0.get_content(path).await
    }
    async fn put_content(&self, path: &str, content: Bytes) -> crate::storage::Result<()> {
        self.0.put_content(path, content).await
    }
    async fn reader(&self, path: &str, offset: u64) -> crate::storage::Result<crate::storage::ByteStream> {
        self.0.reader(path, offset).await
    }
    async fn writer(&self, path: &str, append: bool) -> crate::storage::Result<Box<dyn crate::storage::FileWriter>> {
        self.0.writer(path, append).await
    }
    async fn stat(&self, path: &str) -> crate::storage::Result<crate::storage::FileInfo> {
        self.0.stat(path).await
    }
    async fn list(&self, path: &str) -> crate::storage::Result<Vec<String>> {
        self.0.list(path).await
    }
    async fn move_object(&self, source: &str, dest: &str) -> crate::storage::Result<()> {
        self.0.move_object(source, dest).await
    }
    async fn delete(&self, path: &str) -> crate::storage::Result<()> {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        self.0.delete(path).await
    }
}

/// A request that arrives while a cancel (or finish) is removing an upload
/// finds the upload gone: it neither finishes nor appends to an upload
/// whose end already began.
#[tokio::test]
async fn a_request_during_the_end_of_an_upload_finds_it_gone() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::new(Arc::new(SlowDeletes(FsDriver::new(dir.path()))), Policy::default());
    let r = repo("race/late");
    let data = vec![7u8; 4096];
    let d = Digest::sha256_of(&data);
    let up = reg.start_upload(&r).await.unwrap();
    reg.append_chunk(&r, &up.id, None, body(data.clone())).await.unwrap();
    let cancel = {
        let (reg, r, id) = (reg.clone(), r.clone(), up.id.clone());
        tokio::spawn(async move { reg.cancel_upload(&r, &id).await })
    };
    // The cancel is removing the upload's directory.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let late = reg.finish_upload(&r, &up.id, &d, None).await;
    assert!(matches!(late, Err(Error::BlobUploadUnknown(_))), "a finish after the cancel began: {late:?}");
    let late = reg.append_chunk(&r, &up.id, None, body(vec![1; 10])).await;
    assert!(matches!(late, Err(Error::BlobUploadUnknown(_))), "an append after the cancel began: {late:?}");
    cancel.await.unwrap().unwrap();
    assert!(matches!(reg.stat_blob(&r, &d).await, Err(Error::BlobUnknown(_))), "a cancelled upload stores nothing");
}

#[tokio::test]
async fn only_the_upload_ids_we_hand_out_are_known() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("app");
    let up = reg.start_upload(&r).await.unwrap();
    let braces = format!("{{{}}}", up.id);
    let urn = format!("urn:uuid:{}", up.id);
    let upper = up.id.to_uppercase();
    for id in [braces.as_str(), urn.as_str(), upper.as_str(), "00000000-0000-0000-0000-000000000000", "../x"] {
        for res in [
            reg.upload_status(&r, id).await.map(|_| ()),
            reg.append_chunk(&r, id, None, body(vec![1])).await.map(|_| ()),
            reg.finish_upload(&r, id, &Digest::sha256_of(b""), None).await.map(|_| ()),
            reg.cancel_upload(&r, id).await,
        ] {
            assert!(matches!(res, Err(Error::BlobUploadUnknown(_))), "{id}: {res:?}");
        }
    }
    assert!(reg.uploads.len() <= 1, "no state is kept for ids that name nothing");
}

#[tokio::test]
async fn a_chunk_must_be_as_long_as_its_content_range() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("app");
    let up = reg.start_upload(&r).await.unwrap();
    let short = reg.append_chunk(&r, &up.id, Some((0, 100)), body(vec![1; 50])).await;
    assert!(matches!(short, Err(Error::BlobUploadInvalid(_))), "{short:?}");
    assert_eq!(reg.upload_status(&r, &up.id).await.unwrap().size, 50, "what arrived is kept, to resume from");
    let long = reg.append_chunk(&r, &up.id, Some((50, 10)), body(vec![2; 30])).await;
    assert!(matches!(long, Err(Error::BlobUploadInvalid(_))), "{long:?}");
    assert_eq!(reg.upload_status(&r, &up.id).await.unwrap().size, 60, "only the announced bytes are stored");
    let mut want = vec![1u8; 50];
    want.extend_from_slice(&[2; 10]);
    let d = Digest::sha256_of(&want);
    reg.finish_upload(&r, &up.id, &d, None).await.unwrap();
    assert_eq!(get(&reg, &r, &d).await.unwrap(), want);
}

/// A blob damaged in storage is never served whole: the transfer breaks,
/// the blob is quarantined (HEAD then says unknown) and a push repairs it.
#[tokio::test]
async fn a_damaged_blob_is_quarantined_and_a_push_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("app");
    let data = vec![5u8; 300_000];
    let d = Digest::sha256_of(&data);
    reg.upload_whole(&r, &d, body(data.clone())).await.unwrap();
    assert_eq!(get(&reg, &r, &d).await.unwrap(), data);

    let file = dir.path().join(paths::blob_data(&d).trim_start_matches('/'));
    for damage in [[&data[..], b"tail"].concat(), vec![6u8; 300_000], data[..1000].to_vec()] {
        // Rewritten in place: another time stamp, so verified anew.
        std::thread::sleep(std::time::Duration::from_millis(5));
        std::fs::write(&file, &damage).unwrap();
        let err = get(&reg, &r, &d).await.unwrap_err();
        assert!(err.contains("does not match its digest"), "{err}");
        for _ in 0..100 {
            if !file.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(matches!(reg.stat_blob(&r, &d).await, Err(Error::BlobUnknown(_))), "quarantined");
        let kept = dir.path().join(paths::quarantine_root().trim_start_matches('/'));
        assert!(kept.join("sha256").join(d.hex()).is_dir(), "kept for inspection");
        reg.upload_whole(&r, &d, body(data.clone())).await.unwrap();
        assert_eq!(get(&reg, &r, &d).await.unwrap(), data, "the push repaired it");
    }
}

#[tokio::test]
async fn a_damaged_manifest_is_quarantined_and_a_push_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let reg = fs_registry(dir.path());
    let r = repo("app");
    let config = Digest::sha256_of(b"{}");
    reg.upload_whole(&r, &config, body(b"{}".to_vec())).await.unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [],
    })
    .to_string();
    let tag = Reference::Tag(Tag::parse("v1").unwrap());
    let pushed = reg.put_manifest(&r, &tag, Some(manifest::OCI_MANIFEST), Bytes::from(m.clone())).await.unwrap();
    let file = dir.path().join(paths::blob_data(&pushed.digest).trim_start_matches('/'));
    std::fs::write(&file, b"").unwrap();
    let err = reg.get_manifest(&r, &tag).await.unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown(ref m) if m.contains("quarantined")), "{err}");
    reg.put_manifest(&r, &tag, Some(manifest::OCI_MANIFEST), Bytes::from(m.clone())).await.unwrap();
    assert_eq!(reg.get_manifest(&r, &tag).await.unwrap().body, m.as_bytes());
}

#[tokio::test]
async fn only_names_the_registry_serves_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let mirrors = mirror::Mirrors::new(Vec::new(), None, vec!["registry.example.com".into()], dir.path().join("spool"));
    let reg = Registry::with_mirrors(Arc::new(FsDriver::new(dir.path())), Policy::default(), mirrors);
    assert!(matches!(reg.namespace(&[]), Ok(Namespace::Local)));
    assert!(matches!(reg.namespace(&[("ns", "")]), Ok(Namespace::Local)));
    assert!(matches!(reg.namespace(&[("ns", "registry.example.com")]), Ok(Namespace::Local)));
    assert!(matches!(reg.namespace(&[("ns", "Registry.Example.com")]), Ok(Namespace::Local)));
    for bad in [
        vec![("ns", "quay.io")],
        vec![("ns", "registry.example.com\0")],
        vec![("ns", "registry.example.com"), ("ns", "registry.example.com")],
        vec![("NS", "")],
        vec![("Ns", "registry.example.com")],
    ] {
        let res = reg.namespace(&bad);
        assert!(matches!(res, Err(Error::NamespaceUnknown(_))), "{bad:?}: {res:?}");
    }
    let msg = reg.namespace(&[("ns", "quay.io")]).unwrap_err().to_string();
    assert!(msg.contains("quay.io") && msg.contains("mirrors:"), "{msg}");
}
