//! One registry across nodes: berthd on a real S3 server (SeaweedFS), each
//! node with its own cache directory. Covers the storage contract on S3,
//! push on one node and run on another, single-flight cache fills, the
//! cache bound, an S3 outage, and a bucket written by registry:2.

use crate::common::{sha256, Berthd};
use crate::support_e2e::containerd::{Containerd, MIRROR_HOST};
use crate::support_e2e::pki::Pki;
use crate::support_e2e::*;
use crate::support_s3::{berthd_yaml, node, Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY};
use berthd::storage::s3::S3Config;
use berthd::storage::s3::S3Driver;
use berthd::tls::client::{client_config, Trust};
use std::time::{Duration, Instant};

async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    digest
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let md = e.metadata().unwrap();
        total += if md.is_dir() { dir_size(&e.path()) } else { md.len() };
    }
    total
}

#[tokio::test]
async fn storage_contract_holds_on_seaweedfs() {
    let weed = Seaweed::start();
    let tls = client_config(&Trust::default(), false).unwrap();
    let cfg = S3Config {
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        endpoint: Some(weed.endpoint()),
        root_directory: "/suite".into(),
        access_key: Some(ACCESS_KEY.into()),
        secret_key: Some(SECRET_KEY.into()),
        chunk_size: 5 * 1024 * 1024,
        force_path_style: true,
        skip_verify: false,
    };
    let driver = S3Driver::new(&cfg, tls).await;
    berthd::storage::suite::run_all(&driver).await;
}

#[test]
fn an_image_pushed_on_one_node_runs_on_another() {
    let weed = Seaweed::start();
    let (a, b) = (node(&weed, "1GiB"), node(&weed, "1GiB"));
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "img");
    Skopeo::new().push(&img.layout, &a.addr, "team/app:v1", &[]);

    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir(&b.addr);
    let image = format!("{MIRROR_HOST}/team/app:v1");
    ctd.ctr_ok(&["image", "pull", "--hosts-dir", &hosts.display().to_string(), &image]);
    assert_eq!(ctd.image_digest(&image), img.manifest_digest, "node B served what node A stored");
    let snap = format!("--snapshotter={}", ctd.snapshotter);
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &image,
        &format!("{}-s3", ctd.namespace),
        "/bin/busybox",
        "echo",
        "hello-from-node-b",
    ]);
    assert!(out.contains("hello-from-node-b"), "container output: {out}");
    assert!(b.metric("berth_cache_fills_total") >= 2.0, "node B filled its cache from S3");
    assert_eq!(a.metric("berth_cache_fills_total"), 0.0, "node A never read the image back");
}

#[tokio::test]
async fn sixteen_concurrent_pulls_fetch_a_blob_from_s3_once() {
    let weed = Seaweed::start();
    let (a, b) = (node(&weed, "1GiB"), node(&weed, "1GiB"));
    let data = crate::common::random_bytes(12 * 1024 * 1024 + 4321, 1);
    let digest = push_blob(&a.url(), "big/blob", &data).await;

    let before = weed.bytes_sent();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = format!("{}/v2/big/blob/blobs/{digest}", b.url());
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }));
    }
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(sha256(&body), digest, "every puller gets the whole blob");
    }
    let sent = weed.bytes_sent() - before;
    let size = data.len() as u64;
    assert!(sent >= size && sent < size + size / 10, "S3 sent {sent} bytes for 16 pulls of a {size}-byte blob");
    assert_eq!(b.metric("berth_cache_fill_bytes_total") as u64, size, "one fill of the blob on node B");

    // Warm: served from node B's disk, nothing more from S3; ranges too.
    let r = client
        .get(format!("{}/v2/big/blob/blobs/{digest}", b.url()))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    assert_eq!(weed.bytes_sent() - before, sent, "a warm pull reads nothing from S3");
    assert!(b.metric("berth_cache_hits_total") >= 1.0);
}

#[tokio::test]
async fn the_cache_stays_under_its_bound() {
    let weed = Seaweed::start();
    let a = node(&weed, "1GiB");
    let b = node(&weed, "12MiB");
    let client = reqwest::Client::new();
    let mut digests = Vec::new();
    for i in 0..4 {
        digests.push(push_blob(&a.url(), "bound/test", &crate::common::random_bytes(5 * 1024 * 1024, 10 + i)).await);
    }
    for d in &digests {
        let r = client.get(format!("{}/v2/bound/test/blobs/{d}", b.url())).send().await.unwrap();
        assert_eq!(sha256(&r.bytes().await.unwrap()), *d);
    }
    // A reader gets its last byte once the fill is verified; the file is
    // moved into the cache (and older ones evicted) just after.
    let filled = 4.0 * 5.0 * 1024.0 * 1024.0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = |b: &crate::common::Berthd| {
        let used = dir_size(&b.root.join("blobs"));
        b.metric("berth_cache_fill_bytes_total") >= filled && used <= 12 * 1024 * 1024
    };
    while !settled(&b) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.metric("berth_cache_fill_bytes_total"), filled, "every blob was filled once");
    let used = dir_size(&b.root.join("blobs"));
    assert!(used <= 12 * 1024 * 1024, "cache holds {used} bytes, bound is 12 MiB");
    assert!(used >= 10 * 1024 * 1024, "the cache is used up to its bound ({used} bytes)");
    assert!(b.metric("berth_cache_evictions_total") >= 2.0);
    assert!(b.metric("berth_cache_size_bytes") <= 12.0 * 1024.0 * 1024.0);
}

#[test]
fn cached_images_pull_while_s3_is_down_and_service_recovers() {
    let mut weed = Seaweed::start();
    let (a, b) = (node(&weed, "1GiB"), node(&weed, "1GiB"));
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "img");
    let other = build_busybox_image_with(work.path(), "other", &[("etc/other", b"not pulled on b")]);
    let sk = Skopeo::new();
    sk.push(&img.layout, &a.addr, "ops/app:v1", &[]);
    sk.push(&other.layout, &a.addr, "ops/other:v1", &[]);
    sk.pull(&b.addr, "ops/app:v1", &work.path().join("warm"), "v1", &[]);

    weed.stop();
    let pulled = sk.pull(&b.addr, "ops/app:v1", &work.path().join("during"), "v1", &[]);
    assert_same_image(&img.layout, &pulled);

    let started = Instant::now();
    let r = http_get(&format!("{}/v2/ops/other/manifests/v1", b.url()));
    assert!(started.elapsed() < Duration::from_secs(10), "uncached content fails fast");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("127.0.0.1:{}", weed.s3_port)), "the message names the endpoint: {msg}");
    let health = http_get(&format!("http://{}/healthz", b.debug_addr));
    assert_eq!(health.status, 503);

    weed.restart();
    let mut recovered = false;
    for _ in 0..30 {
        if http_get(&format!("{}/v2/ops/other/manifests/v1", b.url())).status == 200 {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(recovered, "berthd recovers by itself when S3 is back");
    let pulled = sk.pull(&b.addr, "ops/other:v1", &work.path().join("after"), "v1", &[]);
    assert_same_image(&other.layout, &pulled);
}

#[test]
fn a_bucket_written_by_registry2_is_served_in_place() {
    let weed = Seaweed::start();
    let storage = format!(
        "storage:\n  s3:\n    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    region: us-east-1\n    regionendpoint: {}\n    bucket: {BUCKET}\n    secure: false\n    v4auth: true\n    rootdirectory: /\n  redirect:\n    disable: true\n  delete:\n    enabled: true\n",
        weed.endpoint()
    );
    let work = tempfile::tempdir().unwrap();
    let reg = DockerRegistry::start_with_storage(work.path(), &storage);
    let img = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    sk.push(&img.layout, &reg.addr, "legacy/app:v1", &[]);
    reg.stop();

    let b = node(&weed, "1GiB");
    let pulled = sk.pull(&b.addr, "legacy/app:v1", &work.path().join("back"), "v1", &[]);
    assert_same_image(&img.layout, &pulled);
    assert_eq!(tags_list(&b.url(), "legacy/app"), vec!["v1".to_string()]);

    // And the other way: berthd writes, registry:2 serves.
    let img2 = build_busybox_image_with(work.path(), "img2", &[("etc/two", b"2")]);
    sk.push(&img2.layout, &b.addr, "legacy/app:v2", &[]);
    let reg = DockerRegistry::start_with_storage(work.path(), &storage);
    let pulled = sk.pull(&reg.addr, "legacy/app:v2", &work.path().join("back2"), "v2", &[]);
    assert_same_image(&img2.layout, &pulled);
}

#[test]
fn a_tag_moved_on_one_node_resolves_on_the_other_at_once() {
    let weed = Seaweed::start();
    let (a, b) = (node(&weed, "1GiB"), node(&weed, "1GiB"));
    let work = tempfile::tempdir().unwrap();
    let one = build_busybox_image(work.path(), "one");
    let two = build_busybox_image_with(work.path(), "two", &[("etc/release", b"2")]);
    let sk = Skopeo::new();
    sk.push(&one.layout, &a.addr, "moving/app:latest", &[]);
    assert_eq!(crate::common::sha256(&sk.inspect_raw(&b.addr, "moving/app:latest")), one.manifest_digest);
    sk.push(&two.layout, &a.addr, "moving/app:latest", &[]);
    assert_eq!(
        crate::common::sha256(&sk.inspect_raw(&b.addr, "moving/app:latest")),
        two.manifest_digest,
        "node B sees the tag node A just moved"
    );
}

#[tokio::test]
async fn blob_reads_redirect_to_s3_only_when_enabled() {
    let weed = Seaweed::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = berthd_yaml(&weed.endpoint(), &cache, "1GiB", "  redirect:\n    disable: false\n", "");
    let redirecting = Berthd::start_config(dir, cache, &yaml, &Seaweed::env());
    let proxying = node(&weed, "1GiB");
    let data = crate::common::random_bytes(100_000, 7);
    let digest = push_blob(&redirecting.url(), "redir/app", &data).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let r = client.get(format!("{}/v2/redir/app/blobs/{digest}", redirecting.url())).send().await.unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&weed.endpoint()), "redirected to S3: {location}");
    let fetched = reqwest::get(&location).await.unwrap();
    assert_eq!(fetched.status(), 200, "the presigned URL works");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), data.as_slice());

    let r = client.get(format!("{}/v2/redir/app/blobs/{digest}", proxying.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "the default proxies blob reads");
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn s3_over_tls_trusts_the_configured_ca_only() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path());
    let weed = Seaweed::start_tls(pki.dir.join("server.crt"), pki.dir.join("server.key"));
    let endpoint = weed.https_endpoint();

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let trusting_yaml =
        berthd_yaml(&endpoint, &cache, "1GiB", "", &format!("tls:\n  cacerts:\n    - {}\n", pki.path("ca.crt")));
    let trusting = Berthd::start_config(dir, cache, &trusting_yaml, &Seaweed::env());
    let data = crate::common::random_bytes(300_000, 8);
    let digest = push_blob(&trusting.url(), "tls/app", &data).await;
    let got = reqwest::get(format!("{}/v2/tls/app/blobs/{digest}", trusting.url())).await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), data.as_slice());

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let untrusting =
        Berthd::start_config(dir, cache.clone(), &berthd_yaml(&endpoint, &cache, "1GiB", "", ""), &Seaweed::env());
    let r = reqwest::get(format!("{}/v2/tls/app/blobs/{digest}", untrusting.url())).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("certificate") || msg.contains("UnknownIssuer"), "the error says why: {msg}");
}
