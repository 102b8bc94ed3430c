//! berthd tried as an attacker (or bad luck) would: requests racing on one
//! upload and one tag, a full file system under every write path, `kill -9`
//! in the middle of writes, silent, half-open and slow clients, logins in
//! bulk, names berthd does not own, malformed requests. Real berthd
//! processes; after each ordeal what berthd serves still hashes to its name
//! (`berthd fsck` agrees).

use crate::common::{random_bytes, require_tool, run, sha256, Berthd, SmallDisk};
use reqwest::{Client, StatusCode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

async fn push_blob(c: &Client, base: &str, repo: &str, data: &[u8]) -> (StatusCode, String) {
    let digest = sha256(data);
    let r =
        c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}")).body(data.to_vec()).send().await.unwrap();
    (r.status(), digest)
}

/// A manifest with one config blob of `config` bytes and no layers.
fn manifest(config: &str, size: usize) -> String {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": size},
        "layers": [],
    })
    .to_string()
}

async fn put_manifest(c: &Client, base: &str, repo: &str, reference: &str, body: &str) -> StatusCode {
    c.put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", OCI_MANIFEST)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

/// Error code and message of an OCI error response.
async fn oci_error(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let e = &v["errors"][0];
    (status, e["code"].as_str().unwrap_or_default().into(), e["message"].as_str().unwrap_or_default().into())
}

/// berthd on a fresh filesystem root with `REGISTRY_*` overrides (the
/// harness writes `storage` and `http` itself).
fn start_with_env(env: &[(&str, &str)]) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    Berthd::start_with_root(dir, root, "", env)
}

/// The race the integrity issue found: PUT finishing an upload while a
/// PATCH appends to it. Whatever the order, the stored blob is the
/// committed bytes, and the loser gets a 4xx upload error, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_on_one_upload_never_change_a_committed_blob() {
    let berthd = Berthd::start("");
    let base = berthd.url();
    let c = client();
    for round in 0..30u64 {
        let first = random_bytes(1 << 20, round);
        let digest = sha256(&first);
        let r = c.post(format!("{base}/v2/race/app/blobs/uploads/")).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let loc = format!("{base}{}", r.headers()["location"].to_str().unwrap());
        let r = c
            .patch(&loc)
            .header("content-range", format!("0-{}", first.len() - 1))
            .body(first.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let put = c.put(format!("{loc}?digest={digest}")).send();
        let patch = c
            .patch(&loc)
            .header("content-range", format!("{}-{}", first.len(), first.len() + 4999))
            .body(vec![7u8; 5000])
            .send();
        let second_put = c.put(format!("{loc}?digest={digest}")).send();
        let (put, patch, second_put) = tokio::join!(put, patch, second_put);
        for (what, r) in [("PUT", put.unwrap()), ("PATCH", patch.unwrap()), ("second PUT", second_put.unwrap())] {
            let s = r.status().as_u16();
            assert!(
                matches!(s, 201 | 202 | 400 | 404 | 416),
                "round {round}: {what} answered {s}: {:?}",
                r.text().await
            );
        }
        let got = c.get(format!("{base}/v2/race/app/blobs/{digest}")).send().await.unwrap();
        if got.status() == 200 {
            let body = got.bytes().await.expect("a served blob arrives whole");
            assert_eq!(sha256(&body), digest, "round {round}: served bytes hash to the digest");
        }
    }
    let (clean, report) = berthd.fsck(false);
    assert!(clean, "{report}");
}

/// Pushes to one tag from many clients while others read it: every read
/// is a manifest whose bytes hash to the digest it is served under.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_to_one_tag_always_resolve_to_a_whole_manifest() {
    let berthd = Berthd::start("");
    let base = berthd.url();
    let c = client();
    let mut manifests = Vec::new();
    for i in 0..8u64 {
        let config = format!("{{\"n\":{i}}}");
        let (s, d) = push_blob(&c, &base, "race/tag", config.as_bytes()).await;
        assert_eq!(s, 201);
        manifests.push(manifest(&d, config.len()));
    }
    assert_eq!(put_manifest(&c, &base, "race/tag", "latest", &manifests[0]).await, 201);
    let mut tasks = Vec::new();
    for (i, m) in manifests.into_iter().enumerate() {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                assert_eq!(put_manifest(&c, &base, "race/tag", "latest", &m).await, 201, "writer {i}");
                let r = c.get(format!("{base}/v2/race/tag/manifests/latest")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
                let body = r.bytes().await.unwrap();
                assert_eq!(sha256(&body), digest, "a read of the tag is one whole manifest");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (clean, report) = berthd.fsck(false);
    assert!(clean, "{report}");
}

/// With the file system full, every write is refused with 507 and what
/// was stored stays readable; once space is freed everything works again.
#[tokio::test]
async fn a_full_file_system_refuses_every_write_and_loses_nothing() {
    let disk = SmallDisk::mount("16m");
    let dir = tempfile::tempdir().unwrap();
    let berthd = Berthd::start_with_root(dir, disk.root(), "", &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let base = berthd.url();
    let c = client();

    // Before: an image tagged v1, a second manifest by digest, and a
    // chunked upload under way.
    let (_, config1) = push_blob(&c, &base, "full/app", b"{\"a\":1}").await;
    let (_, config2) = push_blob(&c, &base, "full/app", b"{\"a\":2}").await;
    let m1 = manifest(&config1, 7);
    let m2 = manifest(&config2, 7);
    assert_eq!(put_manifest(&c, &base, "full/app", "v1", &m1).await, 201);
    assert_eq!(put_manifest(&c, &base, "full/app", &sha256(m2.as_bytes()), &m2).await, 201);
    let r = c.post(format!("{base}/v2/full/app/blobs/uploads/")).send().await.unwrap();
    let upload = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let part = random_bytes(100_000, 1);
    let r = c.patch(&upload).header("content-range", "0-99999").body(part.clone()).send().await.unwrap();
    assert_eq!(r.status(), 202);

    disk.fill();
    let full = |s: StatusCode, what: &str| assert_eq!(s.as_u16(), 507, "{what} while the disk is full");
    let (s, _) = push_blob(&c, &base, "full/app", &random_bytes(50_000, 2)).await;
    full(s, "a blob push");
    full(c.post(format!("{base}/v2/full/app/blobs/uploads/")).send().await.unwrap().status(), "starting an upload");
    let r = c.patch(&upload).header("content-range", "100000-199999").body(random_bytes(100_000, 3)).send().await;
    full(r.unwrap().status(), "a chunk");
    full(put_manifest(&c, &base, "full/app", "v2", &manifest(&config1, 7)).await, "a manifest under a new tag");
    let r = c
        .put(format!("{base}/v2/full/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(m2.clone())
        .send()
        .await
        .unwrap();
    let (status, code, message) = oci_error(r).await;
    assert_eq!(status, 507, "moving a tag while full");
    assert!(message.contains("full") && !message.contains("/docker"), "{code}: {message}");

    // Nothing changed: v1 still names m1, whole.
    let r = c.get(format!("{base}/v2/full/app/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), m1.as_bytes());
    assert_eq!(c.get(format!("{base}/v2/full/app/manifests/v2")).send().await.unwrap().status(), 404);

    disk.free();
    // The tag moves now, DELETE works, and the upload resumes from what it held.
    assert_eq!(put_manifest(&c, &base, "full/app", "v1", &m2).await, 201);
    let r = c.get(format!("{base}/v2/full/app/manifests/v1")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), m2.as_bytes());
    let st = c.get(&upload).send().await.unwrap();
    let have: u64 = st.headers()["range"].to_str().unwrap().trim_start_matches("0-").parse::<u64>().unwrap() + 1;
    assert!(have >= 100_000, "the chunk stored before is kept");
    let mut whole = part.clone();
    let rest = random_bytes(300_000, 4);
    whole.truncate(100_000);
    whole.extend_from_slice(&rest);
    let tail = &whole[have as usize..];
    let r = c
        .put(format!("{upload}?digest={}", sha256(&whole)))
        .header("content-range", format!("{have}-{}", whole.len() - 1))
        .body(tail.to_vec())
        .send()
        .await
        .unwrap();
    // A partly written chunk from the full disk may be in the upload: then
    // the digest does not match and the client pushes again — never a
    // wrong blob stored.
    assert!(matches!(r.status().as_u16(), 201 | 400), "{:?}", r.text().await);
    assert_eq!(c.delete(format!("{base}/v2/full/app/manifests/v1")).send().await.unwrap().status(), 202);
    let (clean, report) = berthd.fsck(false);
    assert!(clean, "{report}");
}

/// kill -9 while clients push blobs (whole and chunked), manifests and
/// tags, five times over: after each restart everything berthd serves
/// verifies and every link resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_writes_leaves_a_consistent_registry() {
    let mut berthd = Berthd::start("");
    for round in 0..5u64 {
        let base = berthd.url();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let (c, base, stop) = (client(), base.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let seed = round * 1_000_000 + w * 10_000 + i;
                    let config = format!("{{\"seed\":{seed}}}");
                    let Ok(r) = c
                        .post(format!("{base}/v2/crash/app/blobs/uploads/?digest={}", sha256(config.as_bytes())))
                        .body(config.clone())
                        .send()
                        .await
                    else {
                        return;
                    };
                    if r.status() != 201 {
                        return;
                    }
                    // A chunked layer in two parts.
                    let layer = random_bytes(300_000, seed);
                    let Ok(r) = c.post(format!("{base}/v2/crash/app/blobs/uploads/")).send().await else { return };
                    let Some(loc) = r.headers().get("location").map(|l| format!("{base}{}", l.to_str().unwrap()))
                    else {
                        return;
                    };
                    let _ = c.patch(&loc).body(layer[..150_000].to_vec()).send().await;
                    let _ =
                        c.put(format!("{loc}?digest={}", sha256(&layer))).body(layer[150_000..].to_vec()).send().await;
                    let m = manifest(&sha256(config.as_bytes()), config.len());
                    let _ = c
                        .put(format!("{base}/v2/crash/app/manifests/t{w}"))
                        .header("content-type", OCI_MANIFEST)
                        .body(m)
                        .send()
                        .await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 97 * round)).await;
        berthd = tokio::task::spawn_blocking(move || berthd.kill9_and_restart()).await.unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let (clean, report) = berthd.fsck(false);
        assert!(clean, "round {round}: after kill -9 the registry is consistent:\n{report}");
        // Every tag that exists resolves to a whole manifest.
        let c = client();
        for w in 0..4 {
            let r = c.get(format!("{}/v2/crash/app/manifests/t{w}", berthd.url())).send().await.unwrap();
            if r.status() == 200 {
                let d = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
                assert_eq!(sha256(&r.bytes().await.unwrap()), d);
            }
        }
    }
}

/// Open connections that send nothing or half a request line, past the
/// connection limit: the server closes them after the header timeout,
/// sheds what is over the limit at once, and a real client gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_and_shed() {
    let berthd = start_with_env(&[("REGISTRY_HTTP_TIMEOUTS_HEADER", "2s"), ("REGISTRY_HTTP_MAXCONNECTIONS", "16")]);
    let addr = berthd.addr.clone();
    let mut idle = Vec::new();
    for i in 0..48 {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x").unwrap();
        }
        idle.push(s);
    }
    // Every one of them is closed by the server: shed at once, or after the
    // header timeout.
    let started = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("a silent connection was still open after 20 s")
            }
            Err(_) => 0, // reset: closed
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "a silent connection gets no answer but a close: {text}");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "closed by the header timeout, not held");
    // A real client is served.
    let r = client().get(format!("{}/v2/", berthd.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let log = berthd.log_text();
    let shed = log.lines().filter(|l| l.contains("too many connections")).count();
    assert!((1..=3).contains(&shed), "shedding is logged, rate-limited ({shed} lines):\n{log}");
}

/// With the open-file limit exhausted, berthd neither spins nor floods its
/// log, and serves again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let berthd = start_with_env(&[("REGISTRY_HTTP_TIMEOUTS_HEADER", "30s")]);
    let pid = berthd.child.id().to_string();
    run(Command::new(require_tool("prlimit")).args(["--pid", &pid, "--nofile=48:48"]));
    let mut idle = Vec::new();
    for _ in 0..80 {
        if let Ok(s) = TcpStream::connect(&berthd.addr) {
            idle.push(s);
        }
    }
    let before = crate::common::cpu_seconds(berthd.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = crate::common::cpu_seconds(berthd.child.id()) - before;
    assert!(used < 1.0, "berthd used {used:.2} CPU s in 3 s while out of descriptors: it must back off, not spin");
    let log = berthd.log_text();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=2).contains(&lines), "the failure is logged, rate-limited ({lines} lines):\n{log}");
    drop(idle);
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = client().get(format!("{}/v2/", berthd.url())).send().await {
            ok = r.status() == 200;
        }
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "served again once descriptors are free");
}

/// A client that stops reading a blob is dropped after the send timeout; a
/// client that stops sending a chunk gets an error after the body timeout
/// and can resume from what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let berthd = start_with_env(&[("REGISTRY_HTTP_TIMEOUTS_SEND", "2s"), ("REGISTRY_HTTP_TIMEOUTS_BODY", "2s")]);
    let base = berthd.url();
    let c = client();
    let big = random_bytes(64 << 20, 9);
    let (s, digest) = push_blob(&c, &base, "slow/app", &big).await;
    assert_eq!(s, 201);

    let mut s = TcpStream::connect(&berthd.addr).unwrap();
    write!(s, "GET /v2/slow/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < big.len(), "the server gave up on a client that read nothing for 5 s (it got {got} bytes)");

    // A chunk that stalls half-way.
    let r = c.post(format!("{base}/v2/slow/app/blobs/uploads/")).send().await.unwrap();
    let loc = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let stream = futures_util::stream::unfold(0, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 1000])), 1)),
            1 => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Some((Ok(bytes::Bytes::from(vec![2u8; 1000])), 2))
            }
            _ => None,
        }
    });
    let started = Instant::now();
    let r = c.patch(&loc).body(reqwest::Body::wrap_stream(stream)).send().await;
    assert!(started.elapsed() < Duration::from_secs(20), "the stalled chunk was cut off by the body timeout");
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let st = c.get(&loc).send().await.unwrap();
    assert_eq!(st.status(), 204, "the upload survives, to resume");
}

/// Clients send their credentials with every request: bcrypt runs once per
/// login, not once per request.
#[test]
fn logins_are_checked_once_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    run(Command::new(require_tool("htpasswd")).args(["-Bbc", "-C", "10"]).arg(&htpasswd).args(["alice", "s3cret"]));
    let berthd = Berthd::start(&format!("auth:\n  htpasswd:\n    realm: berth\n    path: {}\n", htpasswd.display()));
    let url = format!("{}/v2/", berthd.url());
    let before = berthd.metric("berth_auth_password_checks_total");
    for _ in 0..20 {
        let r = crate::support_e2e::http("GET", &url, &[("authorization", "Basic YWxpY2U6czNjcmV0")]).unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(berthd.metric("berth_auth_password_checks_total") - before, 1.0, "one bcrypt check for 20 requests");
    let r = crate::support_e2e::http("GET", &url, &[("authorization", "Basic YWxpY2U6d3Jvbmc=")]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(berthd.metric("berth_auth_password_checks_total") - before, 2.0, "a wrong password is always checked");
}

/// containerd's `?ns=` is served only for names berthd owns.
#[tokio::test]
async fn names_berthd_does_not_own_are_refused() {
    let berthd = Berthd::start("");
    let base = berthd.url();
    let c = client();
    let (_, config) = push_blob(&c, &base, "myorg/app", b"{}").await;
    assert_eq!(put_manifest(&c, &base, "myorg/app", "v1", &manifest(&config, 2)).await, 201);
    let own = crate::support_e2e::containerd::MIRROR_HOST;
    for ok in ["", "?ns=", &format!("?ns={own}")] {
        let r = c.get(format!("{base}/v2/myorg/app/manifests/v1{ok}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{ok}");
    }
    for bad in [
        "?ns=quay.io".to_string(),
        format!("?ns={own}&ns={own}"),
        format!("?NS={own}"),
        "?NS=".to_string(),
        format!("?ns={own}%00"),
    ] {
        let r = c.get(format!("{base}/v2/myorg/app/manifests/v1{bad}")).send().await.unwrap();
        let (status, code, message) = oci_error(r).await;
        assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"), "{bad}: {message}");
        let r = c.get(format!("{base}/v2/myorg/app/blobs/{config}{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "blobs too: {bad}");
    }
    let r = c.get(format!("{base}/v2/myorg/app/manifests/v1?ns=quay.io")).send().await.unwrap();
    let (_, _, message) = oci_error(r).await;
    assert!(message.contains("quay.io") && message.contains("mirrors"), "says what to configure: {message}");
}

/// Malformed requests get a 4xx with an OCI code, never a 500 and never an
/// internal path.
#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let berthd = Berthd::start("");
    let base = berthd.url();
    let c = client();
    let r = c.post(format!("{base}/v2/bad/app/blobs/uploads/")).send().await.unwrap();
    let id = r.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    for weird in [
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.to_uppercase(),
        "00000000-0000-0000-0000-000000000000".into(),
    ] {
        let url = format!("{base}/v2/bad/app/blobs/uploads/{weird}");
        for req in
            [c.get(&url), c.patch(&url).body("x"), c.put(format!("{url}?digest={}", sha256(b""))), c.delete(&url)]
        {
            let (status, code, message) = oci_error(req.send().await.unwrap()).await;
            assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"), "{weird}: {message}");
            assert!(!message.contains("/docker") && !message.contains("_uploads"), "{message}");
        }
    }
    // A Content-Range the body does not fill.
    let loc = format!("{base}/v2/bad/app/blobs/uploads/{id}");
    let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 50]))]);
    let r = c.patch(&loc).header("content-range", "0-99").body(reqwest::Body::wrap_stream(body)).send().await.unwrap();
    let (status, code, _) = oci_error(r).await;
    assert!(matches!(status, 400 | 416), "a 50-byte body for a 100-byte range: {status} {code}");
    // References no manifest can have.
    let r = c.get(format!("{base}/v2/bad/app/manifests/.INVALID_MANIFEST_NAME")).send().await.unwrap();
    assert_eq!(oci_error(r).await.1, "MANIFEST_UNKNOWN");
    // Paths that are not the API, and garbage escapes.
    for path in ["/v2/bad/app/blobs/sha256:%zz", "/v2/../../etc/passwd", "/v2/a//b/tags/list", "/v2/%ff%fe/tags/list"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
}

/// The S3 node cache on a file system much smaller than `cache.maxsize`:
/// it evicts by the space really free, serves what it cannot take straight
/// from S3, and every read — whole or a range — is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cache_on_a_small_disk_serves_everything_right() {
    let weed = crate::support_s3::Seaweed::start();
    let a = crate::support_s3::node(&weed, "1GiB");
    let disk = SmallDisk::mount("48m");
    let dir = tempfile::tempdir().unwrap();
    let cache = disk.root().join("cache");
    let yaml = weed.berthd_yaml(&cache, "1GiB");
    let b = Berthd::start_config(dir, cache.clone(), &yaml, &crate::support_s3::Seaweed::env());
    let c = client();
    let get = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }
    };
    let mut digests = Vec::new();
    for i in 0..4u64 {
        let (s, d) = push_blob(&c, &a.url(), "small/cache", &random_bytes(20 << 20, 40 + i)).await;
        assert_eq!(s, 201);
        digests.push(d);
    }
    for d in digests.iter().chain(digests.iter()) {
        let body = get(format!("{}/v2/small/cache/blobs/{d}", b.url())).await;
        assert_eq!(&sha256(&body), d, "whole and right through a cache that cannot hold them all");
    }
    assert!(b.metric("berth_cache_size_bytes") < 44.0 * 1048576.0, "the cache left its disk some room");

    // Larger than the whole disk: served from S3, ranges too.
    let big = random_bytes(100 << 20, 50);
    let (_, big_digest) = push_blob(&c, &a.url(), "small/cache", &big).await;
    let body = get(format!("{}/v2/small/cache/blobs/{big_digest}", b.url())).await;
    assert_eq!(sha256(&body), big_digest);
    let r = c
        .get(format!("{}/v2/small/cache/blobs/{big_digest}", b.url()))
        .header("range", "bytes=52428800-52429823")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &big[52428800..52429824]);

    // The disk filled by someone else: new blobs still come, from S3.
    disk.fill();
    let (_, late) = push_blob(&c, &a.url(), "small/cache", &random_bytes(8 << 20, 51)).await;
    let body = get(format!("{}/v2/small/cache/blobs/{late}", b.url())).await;
    assert_eq!(sha256(&body), late);
    disk.free();
}
