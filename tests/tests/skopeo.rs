//! skopeo (containers/image) against a real berthd over plain HTTP: push and
//! pull of a single-platform image and of a two-platform index, byte for
//! byte; inspect/list-tags; cross-repository copy; Docker schema 2
//! conversion; delete.

use crate::common::Berthd;
use crate::support_e2e::*;

const DELETE_ENABLED: &str = "  delete:\n    enabled: true\n";

#[test]
fn push_pull_single_image_roundtrip() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let berthd = Berthd::start("");
    let sk = Skopeo::new();

    sk.push(&img.layout, &berthd.addr, "app:v1", &[]);

    // Pull back into a fresh layout: identical manifest digest and blobs.
    let pulled = sk.pull(&berthd.addr, "app:v1", &work.path().join("pulled"), "v1", &[]);
    let digest = assert_same_image(&img.layout, &pulled);
    assert_eq!(digest, img.manifest_digest);

    // inspect reports the manifest digest; --raw serves the exact bytes.
    let info = sk.inspect(&berthd.addr, "app:v1");
    assert_eq!(info["Digest"], digest.as_str(), "skopeo inspect: {info}");
    let config: serde_json::Value = serde_json::from_slice(&img.layout.blob(&img.config_digest)).unwrap();
    assert_eq!(info["Architecture"], config["architecture"], "skopeo inspect: {info}");
    assert_eq!(info["Layers"][0], img.layer_digest.as_str(), "skopeo inspect: {info}");
    let raw = sk.inspect_raw(&berthd.addr, "app:v1");
    assert!(raw == img.layout.blob(&digest), "inspect --raw must return the pushed manifest bytes");
    let raw_by_digest = sk.inspect_raw(&berthd.addr, &format!("app@{digest}"));
    assert!(raw_by_digest == raw, "manifest by digest differs from manifest by tag");

    assert_eq!(sk.list_tags(&berthd.addr, "app"), vec!["v1".to_string()]);
    assert_eq!(tags_list(&berthd.url(), "app"), vec!["v1".to_string()]);

    // Push by digest only (PUT /manifests/<digest>): addressable, untagged.
    sk.push(&img.layout, &berthd.addr, &format!("bydigest@{digest}"), &[]);
    assert!(sk.inspect_raw(&berthd.addr, &format!("bydigest@{digest}")) == raw);
    // No tag appears. (registry:2 2.8 answers 404 NAME_UNKNOWN for a
    // repository without a `_manifests/tags` directory; 200 with an empty
    // list is accepted too.)
    let r = http_get(&format!("{}/v2/bydigest/tags/list", berthd.url()));
    match r.status {
        200 => assert!(
            r.json()["tags"].as_array().is_none_or(|t| t.is_empty()),
            "tags/list: {}",
            String::from_utf8_lossy(&r.body)
        ),
        404 => assert_eq!(r.json()["errors"][0]["code"], "NAME_UNKNOWN"),
        s => panic!("tags/list of an untagged repository: {s} {}", String::from_utf8_lossy(&r.body)),
    }

    // Pushing the same image again (all blobs already present) is a no-op that succeeds.
    sk.push(&img.layout, &berthd.addr, "app:v1", &[]);
    sk.push(&img.layout, &berthd.addr, "app:v1-again", &[]);
    assert_eq!(sk.list_tags(&berthd.addr, "app"), vec!["v1".to_string(), "v1-again".to_string()]);
    assert_eq!(sk.inspect(&berthd.addr, "app:v1-again")["Digest"], digest.as_str());
}

#[test]
fn push_pull_large_layer_roundtrip() {
    // ~24 MiB of incompressible data: the layer upload and download stream
    // through many chunks.
    let mut noise = vec![0u8; 24 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image_with(work.path(), "src", &[("data/noise.bin", &noise)]);
    let layer_len = img.layout.blob(&img.layer_digest).len();
    assert!(layer_len > 24 << 20, "layer is {layer_len} bytes");
    let berthd = Berthd::start("");
    let sk = Skopeo::new();

    sk.push(&img.layout, &berthd.addr, "big/app:v1", &[]);
    let pulled = sk.pull(&berthd.addr, "big/app:v1", &work.path().join("pulled"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);

    // Range request on the big blob (used by resumable pulls).
    let r = http(
        "GET",
        &format!("{}/v2/big/app/blobs/{}", berthd.url(), img.layer_digest),
        &[("Range", "bytes=1000-1999")],
    )
    .unwrap();
    assert_eq!(r.status, 206, "ranged blob GET");
    assert!(r.body == img.layout.blob(&img.layer_digest)[1000..2000], "ranged bytes differ");
}

#[test]
fn push_pull_multiarch_index_roundtrip() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let berthd = Berthd::start("");
    let sk = Skopeo::new();

    sk.push(&multi, &berthd.addr, "app:multi", &["--all"]);

    let pulled = sk.pull(&berthd.addr, "app:multi", &work.path().join("pulled"), "multi", &["--all"]);
    assert_eq!(assert_same_image(&multi, &pulled), index_digest);

    let raw = sk.inspect_raw(&berthd.addr, "app:multi");
    assert!(raw == multi.blob(&index_digest), "inspect --raw must return the pushed index bytes");
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);

    // Each child manifest is addressable by digest in the same repository.
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let child = sk.inspect_raw(&berthd.addr, &format!("app@{d}"));
        assert!(child == multi.blob(d), "child manifest {d} bytes differ");
    }

    // inspect (no --raw) resolves the index and reports the index digest.
    let info = sk.inspect(&berthd.addr, "app:multi");
    assert_eq!(info["Digest"], index_digest.as_str(), "skopeo inspect: {info}");

    // Only the amd64 instance, without --all: skopeo picks it from the index.
    let single = Layout { dir: work.path().join("single"), tag: "amd64".into() };
    sk.ok(&[
        "--override-arch",
        "amd64",
        "--override-os",
        "linux",
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/app:multi", berthd.addr),
        &single.oci_ref(),
    ]);
    let amd64 =
        index["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "amd64").unwrap()
            ["digest"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(single.digest(), amd64, "platform selection picked the wrong manifest");
}

#[test]
fn copy_between_repositories_and_docker_schema2() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    let a = &berthd.addr;

    sk.push(&img.layout, a, "team/app:v1", &[]);
    // registry -> registry copy into another (nested) repository: skopeo
    // tries a cross-repository blob mount first.
    sk.copy(&[], &format!("docker://{a}/team/app:v1"), &format!("docker://{a}/other/nested/app:copy"));
    let pulled = sk.pull(a, "other/nested/app:copy", &work.path().join("pulled"), "copy", &[]);
    assert_same_image(&img.layout, &pulled);
    assert_eq!(tags_list(&berthd.url(), "other/nested/app"), vec!["copy".to_string()]);
    assert_eq!(tags_list(&berthd.url(), "team/app"), vec!["v1".to_string()]);

    // Docker schema 2 manifest (converted by skopeo on push).
    sk.push(&img.layout, a, "team/app:docker", &["--format", "v2s2"]);
    let raw = sk.inspect_raw(a, "team/app:docker");
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "pushed manifest: {m}");
    assert_eq!(m["layers"][0]["digest"], img.layer_digest.as_str());
    let info = sk.inspect(a, "team/app:docker");
    assert_eq!(
        info["Digest"],
        crate::common::sha256(&raw).as_str(),
        "inspect digest must be the sha256 of the served bytes"
    );

    // Pull the Docker manifest back without conversion: bytes preserved.
    let dir = work.path().join("docker-pulled");
    sk.copy(&["--preserve-digests"], &format!("docker://{a}/team/app:docker"), &format!("oci:{}:d", dir.display()));
    let got = Layout { dir, tag: "d".into() };
    assert_eq!(got.digest(), crate::common::sha256(&raw));
    assert!(got.blob(&got.digest()) == raw);
    assert!(got.blob(&img.layer_digest) == img.layout.blob(&img.layer_digest));
}

#[test]
fn delete_manifest_then_inspect_fails() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let berthd = Berthd::start(DELETE_ENABLED);
    let sk = Skopeo::new();
    let a = &berthd.addr;

    sk.push(&img.layout, a, "app:v1", &[]);
    sk.push(&img.layout, a, "app:alias", &[]);
    sk.push(&img.layout, a, "app:keep", &["--format", "v2s2"]);
    let info = sk.inspect(a, "app:v1");
    assert_eq!(info["Digest"], img.manifest_digest.as_str());

    sk.ok(&["delete", "--tls-verify=false", &format!("docker://{a}/app:v1")]);

    for reference in ["app:v1".to_string(), format!("app@{}", img.manifest_digest)] {
        let out = sk.output(&["inspect", "--tls-verify=false", &format!("docker://{a}/{reference}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "inspect {reference} after delete must fail");
        assert!(
            stderr.contains("manifest unknown"),
            "inspect {reference} after delete: expected `manifest unknown`, got:\n{stderr}"
        );
    }
    // Deleting a manifest removes every tag pointing at it (registry:2
    // semantics: `alias` goes too); the other tag (a different manifest) stays.
    assert_eq!(tags_list(&berthd.url(), "app"), vec!["keep".to_string()]);
    let keep = sk.pull(a, "app:keep", &work.path().join("keep"), "keep", &["--preserve-digests"]);
    assert!(keep.blob(&img.layer_digest) == img.layout.blob(&img.layer_digest));

    // The same image can be pushed again after the delete.
    sk.push(&img.layout, a, "app:v1", &[]);
    assert_eq!(sk.inspect(a, "app:v1")["Digest"], img.manifest_digest.as_str());
}

#[test]
fn delete_refused_when_storage_delete_disabled() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    let a = &berthd.addr;

    sk.push(&img.layout, a, "app:v1", &[]);
    let out = sk.output(&["delete", "--tls-verify=false", &format!("docker://{a}/app:v1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "skopeo delete must fail when storage.delete is disabled");
    assert!(
        stderr.to_lowercase().contains("unsupported") || stderr.contains("405"),
        "expected an UNSUPPORTED (405) error, got:\n{stderr}"
    );
    assert_eq!(sk.inspect(a, "app:v1")["Digest"], img.manifest_digest.as_str(), "the image must survive");
}

#[test]
fn docker_manifest_list_roundtrip() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let (multi, _) = build_multiarch_index(work.path(), "multi", &img);
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    let a = &berthd.addr;

    // skopeo converts the OCI index and its manifests to Docker schema 2 types.
    sk.push(&multi, a, "app:list", &["--all", "--format", "v2s2"]);
    let raw = sk.inspect_raw(a, "app:list");
    let list: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(list["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json", "{list}");
    let r = http(
        "GET",
        &format!("{}/v2/app/manifests/list", berthd.url()),
        &[("Accept", "application/vnd.docker.distribution.manifest.list.v2+json")],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("application/vnd.docker.distribution.manifest.list.v2+json"));
    assert_eq!(r.header("docker-content-digest"), Some(crate::common::sha256(&raw)));
    assert!(r.body == raw);

    // Every child manifest and blob is served with bytes matching its digest;
    // the shared layer is the one pushed.
    for m in list["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let r = http("GET", &format!("{}/v2/app/manifests/{d}", berthd.url()), &[("Accept", DOCKER_MANIFEST)]).unwrap();
        assert_eq!(r.status, 200, "child {d}");
        assert_eq!(crate::common::sha256(&r.body), d);
        assert_eq!(r.header("content-type").as_deref(), Some(DOCKER_MANIFEST));
        let child = r.json();
        let config = child["config"]["digest"].as_str().unwrap();
        let c = http_get(&format!("{}/v2/app/blobs/{config}", berthd.url()));
        assert_eq!(c.status, 200);
        assert_eq!(crate::common::sha256(&c.body), config);
        assert_eq!(child["layers"][0]["digest"], img.layer_digest.as_str());
    }

    // A real client pull of the whole list, without conversion (`dir:` keeps
    // the manifest bytes as served).
    let dir = work.path().join("pulled");
    sk.copy(&["--all"], &format!("docker://{a}/app:list"), &format!("dir:{}", dir.display()));
    let stored = std::fs::read(dir.join("manifest.json")).unwrap();
    assert!(stored == raw, "manifest list bytes changed on pull");
    let (_, layer_hex) = img.layer_digest.split_once(':').unwrap();
    assert!(std::fs::read(dir.join(layer_hex)).unwrap() == img.layout.blob(&img.layer_digest));
}

#[test]
fn concurrent_pushes_of_the_same_image() {
    // Several clients push the same blobs at once (into one repository and
    // into different ones): every push succeeds and every copy reads back intact.
    let mut noise = vec![0u8; 8 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image_with(work.path(), "src", &[("data/noise.bin", &noise)]);
    let berthd = Berthd::start("");
    let sk = Skopeo::new();

    let targets: Vec<String> =
        (0..6).map(|i| if i % 2 == 0 { format!("shared:t{i}") } else { format!("repo{i}:v1") }).collect();
    let children: Vec<(String, std::process::Child)> = targets
        .iter()
        .map(|t| {
            let mut c = sk.cmd();
            c.args(["copy", "--dest-tls-verify=false", &img.layout.oci_ref()])
                .arg(format!("docker://{}/{t}", berthd.addr))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (t.clone(), c.spawn().unwrap())
        })
        .collect();
    for (t, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "concurrent push to {t} failed:\n{}\nberthd log (tail):\n{}",
            String::from_utf8_lossy(&out.stderr),
            berthd.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    for (i, t) in targets.iter().enumerate() {
        let pulled = sk.pull(&berthd.addr, t, &work.path().join(format!("p{i}")), "x", &[]);
        assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);
    }
    assert_eq!(tags_list(&berthd.url(), "shared"), vec!["t0".to_string(), "t2".to_string(), "t4".to_string()]);
}

#[test]
fn zstd_layer_roundtrip() {
    // A layer media type other than tar+gzip passes through untouched.
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    let a = &berthd.addr;

    sk.push(&img.layout, a, "app:zstd", &["--dest-compress-format", "zstd", "--dest-compress"]);
    let raw = sk.inspect_raw(a, "app:zstd");
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd", "{m}");
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    assert_ne!(layer, img.layer_digest);

    let pulled = sk.pull(a, "app:zstd", &work.path().join("pulled"), "z", &["--preserve-digests"]);
    assert_eq!(pulled.digest(), crate::common::sha256(&raw));
    let data = pulled.blob(&layer);
    assert_eq!(crate::common::sha256(&data), layer);
    assert_eq!(&data[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    assert_eq!(data.len() as u64, m["layers"][0]["size"].as_u64().unwrap());
}
