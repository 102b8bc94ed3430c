//! Pull-through mirroring against an upstream that misbehaves
//! (`berth_tests::fake_upstream`): clients that give up, wrong bytes,
//! credentials and foreign token realms, slow clients, huge bodies, frozen
//! upstreams, 5xx, 429 and HTML. Whatever the upstream does, a client never
//! gets a complete response whose bytes do not match the digest, and
//! berthd keeps serving everyone else.

use crate::common::{random_bytes, sha256, Berthd};
use berth_tests::fake_upstream::{FakeUpstream, Reply, Seen};
use reqwest::Client;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image the fake upstream serves: a config, one layer, a manifest.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(layer_size: usize, seed: u64) -> Image {
        let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
        let layer = random_bytes(layer_size, seed);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Image { config, layer, manifest }
    }

    fn layer_digest(&self) -> String {
        sha256(&self.layer)
    }

    /// The honest answer to `req` for repository `library/app`, tag `v1`.
    fn serve(&self, req: &Seen) -> Reply {
        let p = req.path();
        if p == "/v2/" {
            return Reply::status(200);
        }
        if p.ends_with("/manifests/v1") || p.ends_with(&format!("/manifests/{}", sha256(&self.manifest))) {
            return Reply::body(200, MANIFEST, self.manifest.clone())
                .with_header("Docker-Content-Digest", &sha256(&self.manifest));
        }
        for blob in [&self.config, &self.layer] {
            if p.ends_with(&format!("/blobs/{}", sha256(blob))) {
                return Reply::body(200, "application/octet-stream", blob.clone());
            }
        }
        Reply::status(404)
    }
}

/// A berthd whose mirror `docker.io`-like name `up.test` points at `url`.
fn mirror(url: &str, extra: &str) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nmirrors:\n  - name: up.test\n    url: {url}\n{extra}",
        root.display()
    );
    Berthd::start_config(dir, root, &yaml, &[])
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// A client that gives up while the upstream is slow does not stop the
/// download, and the next client gets the blob — one upstream fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_does_not_poison_the_digest() {
    let img = Arc::new(Image::new(3 << 20, 1));
    let i = img.clone();
    let up = FakeUpstream::start(move |req| {
        if req.path().contains("/blobs/") && req.path().ends_with(&i.layer_digest()) {
            return Reply::Stream {
                delay: Duration::from_secs(3),
                status: 200,
                headers: vec![],
                length: Some(i.layer.len() as u64),
                pieces: vec![(Duration::ZERO, i.layer.clone())],
            };
        }
        i.serve(req)
    });
    let berthd = mirror(&up.url(), "");
    let url = format!("{}/v2/library/app/blobs/{}?ns=up.test", berthd.url(), img.layer_digest());
    let impatient = Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    assert!(impatient.get(&url).send().await.is_err(), "the first client gives up");
    let started = Instant::now();
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), img.layer_digest());
    assert!(started.elapsed() < Duration::from_secs(20), "answered, not hung");
    assert_eq!(up.count("GET", &img.layer_digest()), 1, "the download went on for the next client: one fetch");
}

/// Wrong bytes of the right length, extra bytes, an HTML page: the client
/// sees a broken transfer, never a clean 200; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_match_never_arrive_whole() {
    let img = Arc::new(Image::new(1 << 20, 2));
    let mode = Arc::new(AtomicUsize::new(0));
    let (i, m) = (img.clone(), mode.clone());
    let up = FakeUpstream::start(move |req| {
        if req.path().ends_with(&i.layer_digest()) {
            let body = match m.load(Ordering::Relaxed) {
                0 => random_bytes(i.layer.len(), 99),
                1 => [&i.layer[..], b"extra"].concat(),
                _ => b"<html><body>Service temporarily unavailable</body></html>".to_vec(),
            };
            let ct = if m.load(Ordering::Relaxed) == 2 { "text/html" } else { "application/octet-stream" };
            return Reply::body(200, ct, body);
        }
        i.serve(req)
    });
    let berthd = mirror(&up.url(), "");
    let url = format!("{}/v2/library/app/blobs/{}?ns=up.test", berthd.url(), img.layer_digest());
    for k in 0..3 {
        mode.store(k, Ordering::Relaxed);
        // A connection closed before or during the body is a broken transfer too.
        let clean = match client().get(&url).send().await {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        assert!(!clean, "case {k}: a response with wrong bytes must not end cleanly");
    }
    assert_eq!(up.count("GET", &img.layer_digest()), 3, "nothing wrong was stored: each try asked again");
}

/// Credentials: never before a challenge, never to a token realm on
/// another host, never over plain http to another machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_where_they_were_configured_for() {
    let img = Arc::new(Image::new(1000, 3));
    // The token service: on "localhost" — another host name than the
    // upstream's 127.0.0.1.
    let realm_seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rs = realm_seen.clone();
    let tokens = FakeUpstream::start(move |req| {
        rs.lock().unwrap().push(req.clone());
        Reply::body(200, "application/json", br#"{"token":"t0ken","expires_in":300}"#.to_vec())
    });
    let realm = format!("http://localhost:{}/token", tokens.addr.rsplit(':').next().unwrap());
    let i = img.clone();
    let up = FakeUpstream::start(move |req| {
        if req.authorization.as_deref() != Some("Bearer t0ken") {
            return Reply::status(401)
                .with_header("WWW-Authenticate", &format!("Bearer realm=\"{realm}\",service=\"up\""));
        }
        i.serve(req)
    });
    let berthd = mirror(&up.url(), "    username: mirroruser\n    password: secretpass\n");
    let r = client().get(format!("{}/v2/library/app/manifests/v1?ns=up.test", berthd.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = &up.seen()[0];
    assert_eq!(first.authorization, None, "nothing is sent before a challenge");
    let asked = realm_seen.lock().unwrap().clone();
    assert!(!asked.is_empty(), "the token service was asked");
    assert!(
        asked.iter().all(|s| s.authorization.is_none()),
        "a realm on a foreign host gets no credentials: {asked:?}"
    );
    assert!(!berthd.log_text().contains("secretpass"));

    // An upstream on a non-loopback address over plain http asking for
    // Basic credentials gets none.
    let ip = non_loopback_ip();
    let lan = FakeUpstream::start_on(&ip, |req| {
        if req.authorization.is_none() {
            return Reply::status(401).with_header("WWW-Authenticate", "Basic realm=\"lan\"");
        }
        Reply::status(200)
    });
    let berthd = mirror(&lan.url(), "    username: mirroruser\n    password: secretpass\n");
    let r = client().get(format!("{}/v2/library/app/manifests/v1?ns=up.test", berthd.url())).send().await.unwrap();
    assert_eq!(r.status(), 403, "refused, saying why");
    let body = r.text().await.unwrap();
    assert!(body.contains("plain HTTP") && body.contains("https"), "{body}");
    assert!(lan.seen().iter().all(|s| s.authorization.is_none()), "no credentials over plain http to another machine");
}

/// This machine's first non-loopback IPv4 address.
fn non_loopback_ip() -> String {
    let out = std::process::Command::new("hostname").arg("-I").output().expect("hostname -I");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .unwrap_or_else(|| panic!("this machine has no non-loopback IPv4 address: {text:?}"))
        .to_string()
}

/// One client that reads nothing does not hold up another pulling the
/// same blob: the download runs at the upstream's pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_stall_the_others() {
    let img = Arc::new(Image::new(48 << 20, 4));
    let i = img.clone();
    let up = FakeUpstream::start(move |req| i.serve(req));
    let berthd = mirror(&up.url(), "");
    let path = format!("/v2/library/app/blobs/{}?ns=up.test", img.layer_digest());
    // A client that sends the request and then reads nothing.
    use std::io::Write;
    let mut stalled = std::net::TcpStream::connect(&berthd.addr).unwrap();
    write!(stalled, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = client().get(format!("{}{path}", berthd.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), img.layer_digest());
    assert!(started.elapsed() < Duration::from_secs(30), "not held back by the stalled client");
    drop(stalled);
}

/// Bodies are bounded: a 50 MiB "manifest" and a 300 MiB token response
/// are refused without being held in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_upstream_bodies_are_refused() {
    let up = FakeUpstream::start(|req| {
        if req.path().contains("/manifests/") {
            return Reply::Stream {
                delay: Duration::ZERO,
                status: 200,
                headers: vec![("Content-Type".into(), MANIFEST.into())],
                length: None,
                pieces: (0..50).map(|_| (Duration::ZERO, vec![b' '; 1 << 20])).collect(),
            };
        }
        Reply::status(404)
    });
    let berthd = mirror(&up.url(), "");
    let r = client().get(format!("{}/v2/library/app/manifests/v1?ns=up.test", berthd.url())).send().await.unwrap();
    assert_eq!(r.status(), 502, "an upstream fault");
    assert!(r.text().await.unwrap().contains("limited to"), "says why");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", berthd.child.id())).unwrap();
    let kb: u64 =
        rss.lines().find(|l| l.starts_with("VmHWM")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kb < 200 * 1024, "the body was not read into memory (peak RSS {kb} KiB)");

    let tokens = FakeUpstream::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        length: Some(300 << 20),
        pieces: (0..300).map(|_| (Duration::ZERO, vec![b'a'; 1 << 20])).collect(),
    });
    let realm = format!("{}/token", tokens.url());
    let up = FakeUpstream::start(move |_| {
        Reply::status(401).with_header("WWW-Authenticate", &format!("Bearer realm=\"{realm}\",service=\"x\""))
    });
    let berthd = mirror(&up.url(), "");
    let r = client().get(format!("{}/v2/library/app/manifests/v1?ns=up.test", berthd.url())).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
}

/// Every upstream request has a deadline; with a tag known, a frozen,
/// failing, garbage-serving or rate-limiting upstream is answered with the
/// last known digest; without one the client learns what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_outlive_a_broken_upstream_and_deadlines_hold() {
    let img = Arc::new(Image::new(1000, 5));
    let mode = Arc::new(AtomicUsize::new(0));
    let (i, m) = (img.clone(), mode.clone());
    let up = FakeUpstream::start(move |req| {
        let manifests = req.path().contains("/manifests/");
        match m.load(Ordering::Relaxed) {
            1 if manifests => Reply::status(500),
            2 if manifests => Reply::Hang,
            3 if manifests => Reply::body(200, "text/html", b"<html>maintenance</html>".to_vec()),
            4 if manifests => Reply::status(429).with_header("Retry-After", "30"),
            _ => i.serve(req),
        }
    });
    let berthd = mirror(&up.url(), "    tagttl: 0s\n    timeout: 2s\n");
    let get = |tag: &str| client().get(format!("{}/v2/library/app/manifests/{tag}?ns=up.test", berthd.url())).send();
    let r = get("v1").await.unwrap();
    assert_eq!(r.status(), 200);
    for (k, what) in [(1, "500"), (2, "a frozen upstream"), (3, "an HTML page"), (4, "429")] {
        mode.store(k, Ordering::Relaxed);
        let started = Instant::now();
        let r = get("v1").await.unwrap();
        assert_eq!(r.status(), 200, "{what}: the last known digest is served");
        assert_eq!(sha256(&r.bytes().await.unwrap()), sha256(&img.manifest));
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: within the deadline");
    }
    // The 429 pause holds: the upstream is not asked again meanwhile, and
    // a tag never seen gets 429 with the wait passed on.
    let before = up.seen().len();
    let r = get("v2").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some(), "Retry-After is passed on");
    assert_eq!(up.seen().len(), before, "paused: the upstream was left alone");
    // Without a known tag: the upstream's faults are 5xx, not 4xx.
    let berthd2 = mirror(&up.url(), "    timeout: 2s\n");
    for (k, want) in [(1, 502), (2, 503), (3, 502)] {
        mode.store(k, Ordering::Relaxed);
        let started = Instant::now();
        let r = client().get(format!("{}/v2/library/app/manifests/v1?ns=up.test", berthd2.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "mode {k}");
        assert!(started.elapsed() < Duration::from_secs(10), "mode {k}: answered within the deadline");
    }
}
