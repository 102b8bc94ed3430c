//! On-disk compatibility with registry:2: Debian's `docker-registry`
//! (distribution 2.8) and berthd take turns serving the same filesystem root,
//! and skopeo reads back byte-identical images from either.

use crate::common::Berthd;
use crate::support_e2e::*;

/// Starts berthd on `root` (config in its own temp dir; the root is not
/// deleted when berthd stops).
fn berthd_on(root: &std::path::Path) -> Berthd {
    Berthd::start_with_root(tempfile::tempdir().unwrap(), root.to_path_buf(), "  delete:\n    enabled: true\n", &[])
}

#[test]
fn berthd_serves_a_root_written_by_docker_registry() {
    let work = tempfile::tempdir().unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("registry");
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let sk = Skopeo::new();

    // docker-registry writes the root.
    let reg = DockerRegistry::start(&root);
    sk.push(&img.layout, &reg.addr, "library/app:v1", &[]);
    sk.push(&multi, &reg.addr, "library/app:multi", &["--all"]);
    sk.push(&img.layout, &reg.addr, "other:v1", &["--format", "v2s2"]);
    let docker_raw = sk.inspect_raw(&reg.addr, "other:v1");
    let reg_catalog = http_get(&format!("{}/v2/_catalog", reg.url())).json();
    // (docker-registry 2.8 ignores `n` on tags/list, so only the catalog is compared.)
    let paged = ["/v2/_catalog?n=1", "/v2/_catalog?n=2", "/v2/_catalog?n=1&last=library/app"];
    let reg_pages: Vec<_> = paged.iter().map(|p| paginate(&reg.url(), p)).collect();
    reg.stop();
    assert_root_holds(&root, "library/app", "v1", &img.layout);
    assert_root_holds(&root, "library/app", "multi", &multi);

    // berthd serves it.
    let berthd = berthd_on(&root);
    let a = &berthd.addr;
    let pulled = sk.pull(a, "library/app:v1", &work.path().join("p1"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);
    let pulled = sk.pull(a, "library/app:multi", &work.path().join("p2"), "multi", &["--all"]);
    assert_eq!(assert_same_image(&multi, &pulled), index_digest);
    assert!(sk.inspect_raw(a, "other:v1") == docker_raw, "Docker schema 2 manifest bytes differ");

    assert_eq!(tags_list(&berthd.url(), "library/app"), vec!["multi".to_string(), "v1".to_string()]);
    assert_eq!(tags_list(&berthd.url(), "other"), vec!["v1".to_string()]);
    let catalog = http_get(&format!("{}/v2/_catalog", berthd.url())).json();
    assert_eq!(catalog, reg_catalog, "berthd's catalog must match docker-registry's on the same root");
    // Paginated listings (`n`, `last`, `Link`) give the same pages as docker-registry.
    for (p, want) in paged.iter().zip(&reg_pages) {
        assert_eq!(&paginate(&berthd.url(), p), want, "pages of {p}");
    }
    // Tag pages concatenate to the full, sorted list.
    let tags: Vec<serde_json::Value> = paginate(&berthd.url(), "/v2/library/app/tags/list?n=1")
        .iter()
        .flat_map(|p| p["tags"].as_array().unwrap().clone())
        .collect();
    assert_eq!(tags, vec!["multi", "v1"]);

    // Manifest by digest over plain HTTP: exact bytes, digest and media type headers.
    let r = http(
        "GET",
        &format!("{}/v2/library/app/manifests/{}", berthd.url(), img.manifest_digest),
        &[("Accept", OCI_MANIFEST)],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == img.layout.blob(&img.manifest_digest), "manifest bytes differ");
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(img.manifest_digest.as_str()));
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_MANIFEST));

    // Blob GET straight from the registry:2 blob store.
    let r = http_get(&format!("{}/v2/library/app/blobs/{}", berthd.url(), img.layer_digest));
    assert_eq!(r.status, 200);
    assert!(r.body == img.layout.blob(&img.layer_digest), "layer bytes differ");

    // A blob linked only into `library/app` is not served from `other`'s
    // namespace unless `other` links it too (registry:2 repository scoping).
    let multi_index: serde_json::Value = serde_json::from_slice(&multi.blob(&index_digest)).unwrap();
    let arm64_manifest = multi_index["manifests"][1]["digest"].as_str().unwrap();
    let r = http_get(&format!("{}/v2/other/manifests/{}", berthd.url(), arm64_manifest));
    assert_eq!(r.status, 404, "manifest of another repository must be unknown here");
}

#[test]
fn docker_registry_serves_a_root_written_by_berthd() {
    let work = tempfile::tempdir().unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("registry");
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let sk = Skopeo::new();

    // berthd writes the root, in registry:2's layout.
    let berthd = berthd_on(&root);
    sk.push(&img.layout, &berthd.addr, "library/app:v1", &[]);
    drop(berthd);
    assert_root_holds(&root, "library/app", "v1", &img.layout);

    // docker-registry serves it.
    let reg = DockerRegistry::start(&root);
    let pulled = sk.pull(&reg.addr, "library/app:v1", &work.path().join("p1"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);
    assert_eq!(tags_list(&reg.url(), "library/app"), vec!["v1".to_string()]);
    // docker-registry's catalog walks the repositories directory.
    let catalog = http_get(&format!("{}/v2/_catalog", reg.url())).json();
    assert_eq!(catalog["repositories"], serde_json::json!(["library/app"]), "catalog: {catalog}");

    // docker-registry adds a second tag (new manifests/configs, shared layer)
    // into the berthd-written root ...
    sk.push(&multi, &reg.addr, "library/app:v2", &["--all"]);
    let multi_v2 = Layout { dir: multi.dir.clone(), tag: "multi".into() };
    reg.stop();
    assert_root_holds(&root, "library/app", "v2", &multi_v2);

    // ... and berthd reads both back.
    let berthd = berthd_on(&root);
    let a = &berthd.addr;
    assert_eq!(tags_list(&berthd.url(), "library/app"), vec!["v1".to_string(), "v2".to_string()]);
    let pulled = sk.pull(a, "library/app:v2", &work.path().join("p2"), "multi", &["--all"]);
    assert_eq!(assert_same_image(&multi, &pulled), index_digest);
    let pulled = sk.pull(a, "library/app:v1", &work.path().join("p3"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);

    // berthd deletes v1's manifest; docker-registry then agrees it is gone.
    sk.ok(&["delete", "--tls-verify=false", &format!("docker://{a}/library/app:v1")]);
    drop(berthd);
    let reg = DockerRegistry::start(&root);
    let out = sk.output(&["inspect", "--tls-verify=false", &format!("docker://{}/library/app:v1", reg.addr)]);
    assert!(!out.status.success(), "v1 must be gone for docker-registry after berthd deleted it");
    let out = sk.output(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/library/app@{}", reg.addr, img.manifest_digest),
    ]);
    assert!(
        !out.status.success(),
        "manifest {} must be unknown to docker-registry after berthd deleted it",
        img.manifest_digest
    );
    assert_eq!(tags_list(&reg.url(), "library/app"), vec!["v2".to_string()]);
    let pulled = sk.pull(&reg.addr, "library/app:v2", &work.path().join("p4"), "multi", &["--all"]);
    assert_eq!(assert_same_image(&multi, &pulled), index_digest);
}

/// What one request returned, reduced to what must match between registries.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    digest_header: Option<String>,
    content_type: Option<String>,
    content_length: Option<String>,
    /// Body for 200 GETs (as sha256), else the first error code.
    body: Option<String>,
}

fn answer(base: &str, method: &str, path: &str, kind: &str) -> Answer {
    let accept =
        [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json"]
            .join(", ");
    let r = http(method, &format!("{base}{path}"), &[("Accept", &accept)]).unwrap();
    let ok = (200..300).contains(&r.status);
    let body = if method == "HEAD" {
        None
    } else if ok && kind == "list" {
        // JSON documents: compare the values, not the formatting; registry:2
        // writes an empty tag list as `null`, berthd as `[]`: same meaning.
        let mut v = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
        if v.get("tags").is_some_and(|t| t.is_null()) {
            v["tags"] = serde_json::json!([]);
        }
        Some(v.to_string())
    } else if ok {
        Some(crate::common::sha256(&r.body))
    } else {
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
    };
    Answer {
        status: r.status,
        digest_header: if ok && kind != "list" { r.header("docker-content-digest") } else { None },
        content_type: if ok && kind == "manifest" { r.header("content-type") } else { None },
        content_length: if ok && kind != "list" { r.header("content-length") } else { None },
        body,
    }
}

#[test]
fn same_answers_as_docker_registry_on_one_root() {
    let work = tempfile::tempdir().unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("registry");
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let sk = Skopeo::new();

    let reg = DockerRegistry::start(&root);
    let ra = reg.addr.clone();
    sk.push(&img.layout, &ra, "app:v1", &[]);
    sk.push(&img.layout, &ra, "app:alias", &[]);
    sk.push(&multi, &ra, "app:multi", &["--all"]);
    sk.push(&img.layout, &ra, "app:docker", &["--format", "v2s2"]);
    sk.push(&img.layout, &ra, "other:v1", &[]);
    // A manifest deleted through docker-registry: its blob data stays on disk
    // (no GC), but the repository no longer links it.
    sk.push(&img.layout, &ra, "gone:v1", &["--format", "v2s2"]);
    let gone = crate::common::sha256(&sk.inspect_raw(&ra, "gone:v1"));
    sk.ok(&["delete", "--tls-verify=false", &format!("docker://{ra}/gone@{gone}")]);
    assert!(registry_blob_data(&root, &gone).is_file(), "deleted manifest data stays until GC");

    let docker = crate::common::sha256(&sk.inspect_raw(&ra, "app:docker"));
    let multi_index: serde_json::Value = serde_json::from_slice(&multi.blob(&index_digest)).unwrap();
    let child = multi_index["manifests"][1]["digest"].as_str().unwrap().to_string();
    let missing = format!("sha256:{}", "0".repeat(64));
    let (m, l, c) = (&img.manifest_digest, &img.layer_digest, &img.config_digest);
    let mut requests: Vec<(&str, String, &str)> = Vec::new();
    for method in ["GET", "HEAD"] {
        for reference in ["v1", "alias", "multi", "docker", m, &index_digest, &child, &docker, "nope", &missing] {
            requests.push((method, format!("/v2/app/manifests/{reference}"), "manifest"));
        }
        for d in [m.as_str(), &gone, &child] {
            requests.push((method, format!("/v2/other/manifests/{d}"), "manifest"));
            requests.push((method, format!("/v2/gone/manifests/{d}"), "manifest"));
        }
        requests.push((method, "/v2/gone/manifests/v1".to_string(), "manifest"));
        requests.push((method, "/v2/nosuchrepo/manifests/v1".to_string(), "manifest"));
        for d in [l.as_str(), c, &missing] {
            requests.push((method, format!("/v2/app/blobs/{d}"), "blob"));
            requests.push((method, format!("/v2/other/blobs/{d}"), "blob"));
            requests.push((method, format!("/v2/nosuchrepo/blobs/{d}"), "blob"));
        }
    }
    requests.push(("GET", "/v2/".to_string(), "list"));
    requests.push(("GET", "/v2/_catalog".to_string(), "list"));
    requests.push(("GET", "/v2/other/tags/list".to_string(), "list"));
    requests.push(("GET", "/v2/gone/tags/list".to_string(), "list"));
    requests.push(("GET", "/v2/nosuchrepo/tags/list".to_string(), "list"));

    let want: Vec<Answer> = requests.iter().map(|(me, p, k)| answer(&reg.url(), me, p, k)).collect();
    reg.stop();

    let berthd = berthd_on(&root);
    let mut diffs = Vec::new();
    for ((method, path, kind), want) in requests.iter().zip(&want) {
        let mut got = answer(&berthd.url(), method, path, kind);
        // Deliberate divergence: for a manifest in a repository that does not
        // exist, registry:2 says MANIFEST_UNKNOWN and berthd NAME_UNKNOWN
        // (both 404; the OCI spec allows either).
        if path.starts_with("/v2/nosuchrepo/manifests/") && got.body.as_deref() == Some("NAME_UNKNOWN") {
            got.body = want.body.clone();
        }
        if &got != want {
            diffs.push(format!("{method} {path}\n  docker-registry: {want:?}\n  berthd:          {got:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "berthd answers differently from docker-registry 2.8 on the same root ({} of {} requests):\n{}",
        diffs.len(),
        requests.len(),
        diffs.join("\n")
    );
}

/// Starts a blob upload in `repo` and streams up to `total` bytes into it
/// slowly (1 MiB every 50 ms) with a raw HTTP/1.1 PATCH on its own thread;
/// the thread ends when the bytes are sent or the connection breaks.
fn slow_patch(base_url: &str, repo: &str, total: usize) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let r = http("POST", &format!("{base_url}/v2/{repo}/blobs/uploads/"), &[]).unwrap();
    assert_eq!(r.status, 202, "POST upload: {}", String::from_utf8_lossy(&r.body));
    let location = r.header("location").expect("upload Location");
    let path = match location.find("/v2/") {
        Some(i) => location[i..].to_string(),
        None => panic!("odd upload Location {location}"),
    };
    let host = base_url.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(&host) else { return };
        let head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
        );
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![0x5au8; 1 << 20];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if s.write_all(&chunk[..n]).is_err() {
                return;
            }
            sent += n;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
}

/// Size of the biggest `data` file under `dir` (recursively).
fn biggest_data_file(dir: &std::path::Path) -> u64 {
    let mut best = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            best = best.max(biggest_data_file(&p));
        } else if p.file_name().is_some_and(|n| n == "data") {
            best = best.max(e.metadata().map(|m| m.len()).unwrap_or(0));
        }
    }
    best
}

#[test]
fn root_stays_usable_after_berthd_is_killed_mid_upload() {
    let work = tempfile::tempdir().unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("registry");
    let img = build_busybox_image(work.path(), "src");
    let sk = Skopeo::new();

    let mut berthd = berthd_on(&root);
    sk.push(&img.layout, &berthd.addr, "app:v1", &[]);
    let blobs_before = root_blob_digests(&root);

    // A 32 MiB upload in flight when berthd is SIGKILLed.
    let writer = slow_patch(&berthd.url(), "app", 32 << 20);
    let uploads = v2_dir(&root).join("repositories/app/_uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while biggest_data_file(&uploads) < 3 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload data growing under {}; berthd log:\n{}",
            uploads.display(),
            berthd.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    berthd.child.kill().unwrap();
    berthd.child.wait().unwrap();
    writer.join().unwrap();
    drop(berthd);

    // Nothing half-written became a blob.
    assert_eq!(root_blob_digests(&root), blobs_before, "a partial upload must not appear in the blob store");

    // docker-registry serves and garbage-collects the root as berthd left it.
    let reg = DockerRegistry::start(&root);
    let pulled = sk.pull(&reg.addr, "app:v1", &work.path().join("p1"), "v1", &[]);
    assert_same_image(&img.layout, &pulled);
    reg.stop();
    docker_registry_gc(&root);

    // berthd restarts on it and accepts a new push of a different image.
    let berthd = berthd_on(&root);
    let pulled = sk.pull(&berthd.addr, "app:v1", &work.path().join("p2"), "v1", &[]);
    assert_same_image(&img.layout, &pulled);
    sk.push(&img.layout, &berthd.addr, "app:v2", &["--format", "v2s2"]);
    assert_eq!(tags_list(&berthd.url(), "app"), vec!["v1".to_string(), "v2".to_string()]);
}

/// `berthd gc --dry-run` finds the same garbage as Debian's
/// `docker-registry garbage-collect --dry-run` on one root: a deleted
/// image's manifest, config and layer, an uploaded blob no manifest names;
/// nothing reachable (a multi-arch index and its children included).
#[test]
fn garbage_is_what_docker_registry_garbage_collect_finds() {
    let work = tempfile::tempdir().unwrap();
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().join("registry");
    let img = build_busybox_image(work.path(), "src");
    let other = crate::support_e2e::build_busybox_image_with(work.path(), "other", &[("etc/other", b"other\n")]);
    let (multi, _) = build_multiarch_index(work.path(), "multi", &img);
    let sk = Skopeo::new();
    let berthd = berthd_on(&root);
    sk.push(&img.layout, &berthd.addr, "library/app:v1", &[]);
    sk.push(&multi, &berthd.addr, "library/app:multi", &["--all"]);
    sk.push(&other.layout, &berthd.addr, "team/other:v1", &[]);
    // An upload that no manifest names.
    let lone = b"a blob pushed on its own".to_vec();
    let lone_digest = crate::common::sha256(&lone);
    let put = http_with_body(
        "POST",
        &format!("{}/v2/team/other/blobs/uploads/?digest={lone_digest}", berthd.url()),
        &[("Content-Type", "application/octet-stream")],
        lone.clone(),
    )
    .unwrap();
    assert_eq!(put.status, 201, "monolithic upload");
    // The other image deleted by digest.
    let del =
        http("DELETE", &format!("{}/v2/team/other/manifests/{}", berthd.url(), other.manifest_digest), &[]).unwrap();
    assert_eq!(del.status, 202, "delete");
    let config = berthd.config_path();

    let ours = std::process::Command::new(crate::common::berthd_bin())
        .args(["gc", "--dry-run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let ours_text = String::from_utf8_lossy(&ours.stdout).to_string();
    assert!(ours.status.success(), "berthd gc --dry-run: {ours_text}{}", String::from_utf8_lossy(&ours.stderr));
    drop(berthd);
    let registry2_config = work.path().join("registry2.yml");
    std::fs::write(
        &registry2_config,
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n", root.display()),
    )
    .unwrap();
    let theirs = std::process::Command::new(crate::common::require_tool("docker-registry"))
        .args(["garbage-collect", "--dry-run"])
        .arg(&registry2_config)
        .output()
        .unwrap();
    let theirs_text = format!("{}{}", String::from_utf8_lossy(&theirs.stdout), String::from_utf8_lossy(&theirs.stderr));
    assert!(theirs.status.success(), "docker-registry garbage-collect --dry-run: {theirs_text}");
    let eligible = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.split("blob eligible for deletion: ").nth(1))
            .map(|d| d.trim().trim_matches('"').to_string())
            .collect()
    };
    let (ours_set, theirs_set) = (eligible(&ours_text), eligible(&theirs_text));
    assert_eq!(ours_set, theirs_set, "berthd:\n{ours_text}\ndocker-registry:\n{theirs_text}");
    let other_manifest: serde_json::Value = serde_json::from_slice(&other.layout.blob(&other.manifest_digest)).unwrap();
    let mut want = std::collections::BTreeSet::from([other.manifest_digest.clone(), lone_digest.clone()]);
    want.insert(other_manifest["config"]["digest"].as_str().unwrap().to_string());
    for l in other_manifest["layers"].as_array().unwrap() {
        want.insert(l["digest"].as_str().unwrap().to_string());
    }
    assert_eq!(ours_set, want, "exactly the deleted image and the lone blob:\n{ours_text}");
    assert!(ours_text.contains("dry run: nothing was changed"), "{ours_text}");
    // Nothing was deleted: docker-registry's dry run still lists the same after ours.
    assert!(root
        .join(format!("docker/registry/v2/blobs/sha256/{}/{}/data", &lone_digest[7..9], &lone_digest[7..]))
        .is_file());
}
