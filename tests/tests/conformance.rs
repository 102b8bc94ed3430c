//! OCI Distribution Spec v1.1 conformance suite for `berthd`, written from the
//! spec text (and registry:2 behaviour where the spec leaves room).
//!
//! Every test starts its own `berthd` and talks to it over HTTP with reqwest.
//! Shared helpers live at the top; tests follow, grouped by workflow:
//! base/routing, blob pull, blob push (monolithic, chunked, mount), manifests,
//! referrers, tags/catalog, deletes/read-only, validation, concurrency.

use crate::common::Berthd;
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::{json, Value};
use sha2::Digest as _;
use std::collections::BTreeSet;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

const DELETE_ENABLED: &str = "  delete:\n    enabled: true\n";
const READ_ONLY: &str = "  maintenance:\n    readonly:\n      enabled: true\n";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64), so failures reproduce.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> String {
    crate::common::sha256(b)
}

fn sha512(b: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(b)))
}

/// An OCI descriptor.
fn desc(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn hdr(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.to_str().expect("ascii header").to_string())
}

fn must_hdr(h: &HeaderMap, name: &str) -> String {
    hdr(h, name).unwrap_or_else(|| panic!("response lacks the {name} header; headers: {h:?}"))
}

/// Asserts `resp` is an OCI error: `status`, `Content-Type: application/json`,
/// a body `{"errors":[{code,message,..}]}` whose first code is one of `codes`
/// (any code when `codes` is empty) and whose messages are non-empty.
/// Returns the first error's code.
async fn expect_error(resp: Response, status: u16, codes: &[&str]) -> String {
    let got = resp.status();
    let url = resp.url().clone();
    let ct = hdr(resp.headers(), "content-type").unwrap_or_default();
    let body = resp.text().await.expect("read error body");
    assert_eq!(got.as_u16(), status, "{url}: expected status {status}, got {got}; body: {body}");
    assert!(
        ct.starts_with("application/json"),
        "{url}: error Content-Type should be application/json, got {ct:?}; body: {body}"
    );
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: error body is not JSON ({e}): {body:?}"));
    let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{url}: error body lacks an `errors` array: {body}"));
    assert!(!errors.is_empty(), "{url}: `errors` is empty: {body}");
    for e in errors {
        let code = e["code"].as_str().unwrap_or_else(|| panic!("{url}: error without code: {body}"));
        assert!(!code.is_empty(), "{url}: empty code: {body}");
        let msg = e["message"].as_str().unwrap_or("");
        assert!(!msg.trim().is_empty(), "{url}: error {code} has an empty message: {body}");
    }
    let code = errors[0]["code"].as_str().unwrap().to_string();
    if !codes.is_empty() {
        assert!(codes.contains(&code.as_str()), "{url}: expected code in {codes:?}, got {code}; body: {body}");
    }
    code
}

/// Asserts a HEAD (or bodiless) response has `status`.
fn expect_status(resp: &Response, status: u16) {
    assert_eq!(
        resp.status().as_u16(),
        status,
        "{} {}: expected {status}; headers {:?}",
        resp.url(),
        resp.status(),
        resp.headers()
    );
}

async fn expect_status_body(resp: Response, status: u16) -> (HeaderMap, Vec<u8>) {
    let got = resp.status();
    let url = resp.url().clone();
    let h = resp.headers().clone();
    let body = resp.bytes().await.expect("read body").to_vec();
    assert_eq!(got.as_u16(), status, "{url}: expected {status}, got {got}; body: {}", String::from_utf8_lossy(&body));
    (h, body)
}

/// A running berthd plus an HTTP client pointed at it.
struct Reg {
    d: Berthd,
    c: Client,
    base: String,
}

impl Reg {
    fn start() -> Reg {
        Reg::with("")
    }

    fn with(extra_yaml: &str) -> Reg {
        Reg::wrap(Berthd::start(extra_yaml))
    }

    fn wrap(d: Berthd) -> Reg {
        let c = Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        let base = d.url();
        Reg { d, c, base }
    }

    /// Absolute URL for a path, or for a `Location` header (absolute or relative).
    fn url(&self, path_or_location: &str) -> Url {
        let base = Url::parse(&self.base).unwrap();
        base.join(path_or_location).unwrap_or_else(|e| panic!("cannot resolve {path_or_location:?}: {e}"))
    }

    fn req(&self, m: Method, path: &str) -> RequestBuilder {
        self.c.request(m, self.url(path))
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.unwrap()
    }

    async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.unwrap()
    }

    /// `POST /v2/<repo>/blobs/uploads/` → (absolute upload URL, response headers).
    async fn start_upload(&self, repo: &str) -> Url {
        let resp = self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
        let (h, _) = expect_status_body(resp, 202).await;
        self.url(&must_hdr(&h, "location"))
    }

    /// `PUT <upload>?digest=<d>` with `body` as the final chunk.
    async fn finish_upload(&self, upload: &Url, digest: &str, body: Vec<u8>) -> Response {
        self.c
            .put(with_digest(upload, digest))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Pushes a blob with POST + monolithic PUT; returns its sha256 digest.
    async fn push_blob(&self, repo: &str, body: &[u8]) -> String {
        let d = sha256(body);
        let upload = self.start_upload(repo).await;
        let resp = self.finish_upload(&upload, &d, body.to_vec()).await;
        let (h, _) = expect_status_body(resp, 201).await;
        assert_eq!(must_hdr(&h, "docker-content-digest"), d);
        d
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`.
    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a manifest expecting 201; returns its digest (checked against
    /// `Docker-Content-Digest`).
    async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        let (h, _) = expect_status_body(resp, 201).await;
        let d = sha256(body);
        assert_eq!(must_hdr(&h, "docker-content-digest"), d, "PUT manifest digest header");
        assert!(hdr(&h, "location").is_some(), "PUT manifest 201 lacks Location");
        d
    }

    /// Pushes a small OCI image (config + one layer) and its manifest under
    /// `reference`; returns (manifest bytes, manifest digest).
    async fn push_image(&self, repo: &str, reference: &str, seed: u64) -> (Vec<u8>, String) {
        let m = self.image_manifest(repo, seed).await;
        let d = self.push_manifest(repo, reference, OCI_MANIFEST, &m).await;
        (m, d)
    }

    /// Pushes the blobs of a small OCI image and returns its manifest bytes.
    async fn image_manifest(&self, repo: &str, seed: u64) -> Vec<u8> {
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "seed": seed,
        }))
        .unwrap();
        let layer = data(seed, 1000 + seed as usize % 500);
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &cd, config.len()),
            "layers": [desc(OCI_LAYER, &ld, layer.len())],
        }))
        .unwrap()
    }

    async fn get_json(&self, path: &str) -> (HeaderMap, Value) {
        let resp = self.get(path).await;
        let (h, body) = expect_status_body(resp, 200).await;
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (h, v)
    }
}

/// `url` with `digest=<d>` appended to its query (Location may carry state).
fn with_digest(url: &Url, digest: &str) -> Url {
    let mut u = url.clone();
    u.query_pairs_mut().append_pair("digest", digest);
    u
}

/// Parses a `Link: <url>; rel="next"` header into the target URL (resolved).
fn next_link(reg: &Reg, h: &HeaderMap) -> Option<Url> {
    let link = hdr(h, "link")?;
    assert!(link.contains("rel=\"next\""), "Link header without rel=\"next\": {link}");
    let start = link.find('<').expect("Link has <") + 1;
    let end = link.find('>').expect("Link has >");
    Some(reg.url(&link[start..end]))
}

fn query(u: &Url, key: &str) -> Option<String> {
    u.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Base endpoint and routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_reports_api_version() {
    let r = Reg::start();
    let resp = r.get("/v2/").await;
    let (h, body) = expect_status_body(resp, 200).await;
    assert_eq!(must_hdr(&h, "docker-distribution-api-version"), "registry/2.0");
    let v: Value = serde_json::from_slice(&body).expect("/v2/ body is JSON");
    assert_eq!(v, json!({}));

    let resp = r.head("/v2/").await;
    expect_status(&resp, 200);
    assert_eq!(must_hdr(resp.headers(), "docker-distribution-api-version"), "registry/2.0");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let r = Reg::start();
    for p in ["/v3/", "/v2/foo/notanendpoint", "/v2/foo/blobz/sha256:abc", "/nothing/here"] {
        let resp = r.get(p).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "GET {p}");
    }
}

// ---------------------------------------------------------------------------
// Blob pull
// ---------------------------------------------------------------------------

#[tokio::test]
async fn blob_get_and_head_headers() {
    let r = Reg::start();
    let body = data(1, 4321);
    let d = r.push_blob("pull/blob", &body).await;

    let resp = r.get(&format!("/v2/pull/blob/blobs/{d}")).await;
    let (h, got) = expect_status_body(resp, 200).await;
    assert_eq!(got, body);
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(must_hdr(&h, "content-length"), body.len().to_string());
    assert_eq!(must_hdr(&h, "etag"), format!("\"{d}\""));
    assert_eq!(must_hdr(&h, "accept-ranges"), "bytes");

    let resp = r.head(&format!("/v2/pull/blob/blobs/{d}")).await;
    expect_status(&resp, 200);
    let h = resp.headers().clone();
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(must_hdr(&h, "content-length"), body.len().to_string());
    assert_eq!(must_hdr(&h, "etag"), format!("\"{d}\""));
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD must not have a body");
}

#[tokio::test]
async fn blob_unknown_and_invalid_digests() {
    let r = Reg::start();
    r.push_blob("repo", b"something").await;
    let unknown = sha256(b"never pushed");
    expect_error(r.get(&format!("/v2/repo/blobs/{unknown}")).await, 404, &["BLOB_UNKNOWN"]).await;
    expect_status(&r.head(&format!("/v2/repo/blobs/{unknown}")).await, 404);
    let unknown512 = sha512(b"never pushed");
    expect_error(r.get(&format!("/v2/repo/blobs/{unknown512}")).await, 404, &["BLOB_UNKNOWN"]).await;

    let hex64 = "a".repeat(64);
    for bad in [
        "sha256:abc".to_string(),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha512:{hex64}"),
        format!("sha256{hex64}"),
        "sha256:".to_string(),
        hex64.clone(),
    ] {
        expect_error(r.get(&format!("/v2/repo/blobs/{bad}")).await, 400, &["DIGEST_INVALID"]).await;
    }
    let md5 = format!("md5:{}", "a".repeat(32));
    expect_error(r.get(&format!("/v2/repo/blobs/{md5}")).await, 400, &["DIGEST_INVALID", "UNSUPPORTED"]).await;
}

#[tokio::test]
async fn blobs_are_repository_scoped() {
    let r = Reg::start();
    let body = data(2, 777);
    let d = r.push_blob("scope/a", &body).await;
    expect_status_body(r.get(&format!("/v2/scope/a/blobs/{d}")).await, 200).await;
    expect_error(r.get(&format!("/v2/scope/b/blobs/{d}")).await, 404, &["BLOB_UNKNOWN"]).await;
    expect_status(&r.head(&format!("/v2/scope/b/blobs/{d}")).await, 404);
    // A prefix of the repo name is another repository too.
    expect_error(r.get(&format!("/v2/scope/blobs/{d}")).await, 404, &["BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn blob_range_requests() {
    let r = Reg::start();
    let body = data(3, 100);
    let d = r.push_blob("range", &body).await;
    let path = format!("/v2/range/blobs/{d}");
    let ranged = |range: &'static str| r.req(Method::GET, &path).header("range", range).send();

    for (range, from, to) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=0-0", 0, 0),
        ("bytes=90-", 90, 99),
        ("bytes=95-200", 95, 99),
        ("bytes=-10", 90, 99),
    ] {
        let (h, got) = expect_status_body(ranged(range).await.unwrap(), 206).await;
        assert_eq!(got, &body[from..=to], "{range}");
        assert_eq!(must_hdr(&h, "content-range"), format!("bytes {from}-{to}/100"), "{range}");
        assert_eq!(must_hdr(&h, "content-length"), (to - from + 1).to_string(), "{range}");
    }
    for range in ["bytes=100-150", "bytes=200-"] {
        let resp = ranged(range).await.unwrap();
        assert_eq!(resp.status().as_u16(), 416, "{range}");
        // RFC 9110 §15.5.17: a 416 to a byte-range request carries the current length.
        assert_eq!(must_hdr(resp.headers(), "content-range"), "bytes */100", "{range}");
    }
    // RFC 9110 §14.2: a Range with a unit the server does not understand MUST be ignored.
    let (h, got) = expect_status_body(ranged("items=0-1").await.unwrap(), 200).await;
    assert_eq!(got, body);
    assert!(hdr(&h, "content-range").is_none());
}

// ---------------------------------------------------------------------------
// Blob push
// ---------------------------------------------------------------------------

#[tokio::test]
async fn monolithic_post_with_digest() {
    let r = Reg::start();
    let body = data(4, 5000);
    let d = sha256(&body);
    let resp = r
        .req(Method::POST, &format!("/v2/mono/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    let loc = r.url(&must_hdr(&h, "location"));
    assert_eq!(loc.path(), format!("/v2/mono/blobs/{d}"));
    let (_, got) = expect_status_body(r.c.get(loc).send().await.unwrap(), 200).await;
    assert_eq!(got, body);

    // Wrong digest: refused, and nothing stored under the claimed digest.
    let other = sha256(b"other");
    let resp = r
        .req(Method::POST, &format!("/v2/mono/blobs/uploads/?digest={other}"))
        .header("content-type", "application/octet-stream")
        .body(data(5, 100))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, &["DIGEST_INVALID"]).await;
    expect_status(&r.head(&format!("/v2/mono/blobs/{other}")).await, 404);
}

#[tokio::test]
async fn post_then_put_monolithic() {
    let r = Reg::start();
    let resp = r.req(Method::POST, "/v2/push/mono/blobs/uploads/").send().await.unwrap();
    let (h, body) = expect_status_body(resp, 202).await;
    assert!(body.is_empty());
    let loc = r.url(&must_hdr(&h, "location"));
    assert!(loc.path().starts_with("/v2/push/mono/blobs/uploads/"), "Location {loc}");
    let uuid = must_hdr(&h, "docker-upload-uuid");
    assert!(!uuid.is_empty());
    assert!(loc.path().contains(&uuid), "Location {loc} should name upload {uuid}");
    assert_eq!(must_hdr(&h, "range"), "0-0");
    assert_eq!(must_hdr(&h, "content-length"), "0");

    let blob = data(6, 70_000);
    let d = sha256(&blob);
    let resp = r.finish_upload(&loc, &d, blob.clone()).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    let bloc = r.url(&must_hdr(&h, "location"));
    assert_eq!(bloc.path(), format!("/v2/push/mono/blobs/{d}"));
    let (_, got) = expect_status_body(r.c.get(bloc).send().await.unwrap(), 200).await;
    assert_eq!(got, blob);

    // The finished session is gone.
    expect_error(r.c.get(loc).send().await.unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
}

#[tokio::test]
async fn chunked_upload_with_multiple_chunks() {
    let r = Reg::start();
    let blob = data(7, 300_000);
    let d = sha256(&blob);
    let (c1, rest) = blob.split_at(100_000);
    let (c2, rest) = rest.split_at(120_000);
    let (c3, c4) = rest.split_at(50_000);

    let mut loc = r.start_upload("chunked").await;
    let mut size = 0usize;
    for (i, chunk) in [c1, c2].into_iter().enumerate() {
        let resp =
            r.c.patch(loc.clone())
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", size, size + chunk.len() - 1))
                .header("content-length", chunk.len().to_string())
                .body(chunk.to_vec())
                .send()
                .await
                .unwrap();
        let (h, _) = expect_status_body(resp, 202).await;
        size += chunk.len();
        assert_eq!(must_hdr(&h, "range"), format!("0-{}", size - 1), "chunk {i}");
        loc = r.url(&must_hdr(&h, "location"));

        // Status reflects the bytes received so far.
        let resp = r.c.get(loc.clone()).send().await.unwrap();
        let (h, _) = expect_status_body(resp, 204).await;
        assert_eq!(must_hdr(&h, "range"), format!("0-{}", size - 1), "status after chunk {i}");
        assert!(!must_hdr(&h, "docker-upload-uuid").is_empty());
    }
    // A streamed chunk without Content-Range appends too.
    let resp =
        r.c.patch(loc.clone())
            .header("content-type", "application/octet-stream")
            .body(c3.to_vec())
            .send()
            .await
            .unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    size += c3.len();
    assert_eq!(must_hdr(&h, "range"), format!("0-{}", size - 1));
    loc = r.url(&must_hdr(&h, "location"));

    // Final chunk in the closing PUT.
    let (h, _) = expect_status_body(r.finish_upload(&loc, &d, c4.to_vec()).await, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(r.url(&must_hdr(&h, "location")).path(), format!("/v2/chunked/blobs/{d}"));
    let (h, got) = expect_status_body(r.get(&format!("/v2/chunked/blobs/{d}")).await, 200).await;
    assert_eq!(got.len(), blob.len());
    assert!(got == blob, "chunked blob content differs");
    assert_eq!(must_hdr(&h, "content-length"), blob.len().to_string());
}

#[tokio::test]
async fn out_of_order_chunk_is_416() {
    let r = Reg::start();
    let blob = data(8, 2000);
    let loc = r.start_upload("ooo").await;
    let resp =
        r.c.patch(loc.clone())
            .header("content-type", "application/octet-stream")
            .header("content-range", "0-999")
            .body(blob[..1000].to_vec())
            .send()
            .await
            .unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    let loc = r.url(&must_hdr(&h, "location"));

    for range in ["1010-1999", "0-999", "500-1499"] {
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let resp =
            r.c.patch(loc.clone())
                .header("content-type", "application/octet-stream")
                .header("content-range", range)
                .body(blob[a..=b].to_vec())
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status().as_u16(), 416, "chunk {range} after 1000 bytes");
    }
    // The session survives with the bytes it had.
    let (h, _) = expect_status_body(r.c.get(loc.clone()).send().await.unwrap(), 204).await;
    assert_eq!(must_hdr(&h, "range"), "0-999");
    // ...and can be finished correctly.
    let d = sha256(&blob);
    expect_status_body(r.finish_upload(&loc, &d, blob[1000..].to_vec()).await, 201).await;
    let (_, got) = expect_status_body(r.get(&format!("/v2/ooo/blobs/{d}")).await, 200).await;
    assert!(got == blob);
}

#[tokio::test]
async fn upload_put_digest_mismatch_and_missing() {
    let r = Reg::start();
    let blob = data(9, 3000);

    // Missing digest parameter.
    let loc = r.start_upload("dig").await;
    let resp = r.c.put(loc).body(blob.clone()).send().await.unwrap();
    expect_error(resp, 400, &[]).await;

    // Digest that does not match the content.
    let wrong = sha256(b"not the content");
    let loc = r.start_upload("dig").await;
    expect_error(r.finish_upload(&loc, &wrong, blob.clone()).await, 400, &["DIGEST_INVALID"]).await;
    expect_status(&r.head(&format!("/v2/dig/blobs/{wrong}")).await, 404);
    expect_status(&r.head(&format!("/v2/dig/blobs/{}", sha256(&blob))).await, 404);

    // Malformed digest.
    let loc = r.start_upload("dig").await;
    expect_error(r.finish_upload(&loc, "sha256:xyz", blob.clone()).await, 400, &["DIGEST_INVALID"]).await;
}

#[tokio::test]
async fn upload_status_cancel_and_unknown() {
    let r = Reg::start();
    let loc = r.start_upload("cancel").await;
    // A fresh session has no bytes: registry:2 reports `Range: 0-0`.
    let (h, _) = expect_status_body(r.c.get(loc.clone()).send().await.unwrap(), 204).await;
    assert_eq!(must_hdr(&h, "range"), "0-0");
    assert!(!must_hdr(&h, "docker-upload-uuid").is_empty());
    let resp = r.c.patch(loc.clone()).body(data(10, 64)).send().await.unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    let loc = r.url(&must_hdr(&h, "location"));
    let (h, _) = expect_status_body(r.c.get(loc.clone()).send().await.unwrap(), 204).await;
    assert_eq!(must_hdr(&h, "range"), "0-63");

    expect_status_body(r.c.delete(loc.clone()).send().await.unwrap(), 204).await;
    expect_error(r.c.get(loc.clone()).send().await.unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    let resp = r.c.patch(loc.clone()).body(data(11, 10)).send().await.unwrap();
    expect_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    expect_error(r.c.delete(loc).send().await.unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]).await;

    let bogus = "/v2/cancel/blobs/uploads/3f0c2a8e-1b7e-4f51-9f5c-2a8f6f4c0d11";
    expect_error(r.get(bogus).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    let resp = r.c.patch(r.url(bogus)).body(data(12, 10)).send().await.unwrap();
    expect_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    let d = sha256(b"x");
    let resp = r.c.put(with_digest(&r.url(bogus), &d)).body(b"x".to_vec()).send().await.unwrap();
    expect_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
}

#[tokio::test]
async fn cross_repo_mount() {
    let r = Reg::start();
    let blob = data(13, 9000);
    let d = r.push_blob("mount/src", &blob).await;

    let resp =
        r.req(Method::POST, &format!("/v2/mount/dst/blobs/uploads/?mount={d}&from=mount/src")).send().await.unwrap();
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(r.url(&must_hdr(&h, "location")).path(), format!("/v2/mount/dst/blobs/{d}"));
    let (_, got) = expect_status_body(r.get(&format!("/v2/mount/dst/blobs/{d}")).await, 200).await;
    assert_eq!(got, blob);

    // Source lacks the blob: falls back to a normal upload session.
    let other = data(14, 500);
    let od = sha256(&other);
    let resp =
        r.req(Method::POST, &format!("/v2/mount/dst2/blobs/uploads/?mount={od}&from=mount/src")).send().await.unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    let loc = r.url(&must_hdr(&h, "location"));
    assert!(loc.path().starts_with("/v2/mount/dst2/blobs/uploads/"), "{loc}");
    assert!(!must_hdr(&h, "docker-upload-uuid").is_empty());
    expect_status(&r.head(&format!("/v2/mount/dst2/blobs/{od}")).await, 404);
    expect_status_body(r.finish_upload(&loc, &od, other.clone()).await, 201).await;
    let (_, got) = expect_status_body(r.get(&format!("/v2/mount/dst2/blobs/{od}")).await, 200).await;
    assert_eq!(got, other);

    // Mounting a blob the source repo has does not leak it elsewhere.
    expect_status(&r.head(&format!("/v2/mount/dst2/blobs/{d}")).await, 404);
}

#[tokio::test]
async fn sha512_blobs() {
    let r = Reg::start();
    let blob = data(15, 12_345);
    let d = sha512(&blob);
    let resp = r
        .req(Method::POST, &format!("/v2/five12/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    let (h, got) = expect_status_body(r.get(&format!("/v2/five12/blobs/{d}")).await, 200).await;
    assert_eq!(got, blob);
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(must_hdr(&h, "content-length"), blob.len().to_string());

    // Chunked upload closed with a sha512 digest.
    let blob2 = data(16, 5000);
    let d2 = sha512(&blob2);
    let loc = r.start_upload("five12").await;
    let resp = r.c.patch(loc).body(blob2[..2000].to_vec()).send().await.unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    let loc = r.url(&must_hdr(&h, "location"));
    let (h, _) = expect_status_body(r.finish_upload(&loc, &d2, blob2[2000..].to_vec()).await, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d2);
    let (_, got) = expect_status_body(r.get(&format!("/v2/five12/blobs/{d2}")).await, 200).await;
    assert_eq!(got, blob2);

    // Wrong sha512 is refused.
    let loc = r.start_upload("five12").await;
    let wrong = sha512(b"nope");
    expect_error(r.finish_upload(&loc, &wrong, blob2.clone()).await, 400, &["DIGEST_INVALID"]).await;

    // A manifest may reference a sha512 layer.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = r.push_blob("five12", config).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &cd, config.len()),
        "layers": [desc(OCI_LAYER, &d, blob.len())],
    }))
    .unwrap();
    r.push_manifest("five12", "v1", OCI_MANIFEST, &m).await;
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oci_manifest_push_and_pull() {
    let r = Reg::start();
    let m = r.image_manifest("img/app", 20).await;
    let d = sha256(&m);
    let resp = r.put_manifest("img/app", "v1", OCI_MANIFEST, &m).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert!(hdr(&h, "oci-subject").is_none(), "no subject, no OCI-Subject header");
    let loc = r.url(&must_hdr(&h, "location"));

    let check = |h: &HeaderMap, body: &[u8], what: &str| {
        assert_eq!(body, &m[..], "{what}: body must be the exact bytes pushed");
        assert_eq!(must_hdr(h, "content-type"), OCI_MANIFEST, "{what}");
        assert_eq!(must_hdr(h, "docker-content-digest"), d, "{what}");
        assert_eq!(must_hdr(h, "content-length"), m.len().to_string(), "{what}");
        assert_eq!(must_hdr(h, "etag"), format!("\"{d}\""), "{what}");
    };
    let accept = |path: String| r.req(Method::GET, &path).header("accept", OCI_MANIFEST).send();
    let (h, body) = expect_status_body(accept("/v2/img/app/manifests/v1".into()).await.unwrap(), 200).await;
    check(&h, &body, "GET by tag");
    let (h, body) = expect_status_body(accept(format!("/v2/img/app/manifests/{d}")).await.unwrap(), 200).await;
    check(&h, &body, "GET by digest");
    let (h, body) = expect_status_body(r.c.get(loc).header("accept", OCI_MANIFEST).send().await.unwrap(), 200).await;
    check(&h, &body, "GET Location");

    for reference in ["v1".to_string(), d.clone()] {
        let resp = r
            .req(Method::HEAD, &format!("/v2/img/app/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        expect_status(&resp, 200);
        let h = resp.headers().clone();
        assert_eq!(must_hdr(&h, "content-type"), OCI_MANIFEST);
        assert_eq!(must_hdr(&h, "docker-content-digest"), d);
        assert_eq!(must_hdr(&h, "content-length"), m.len().to_string());
        assert_eq!(must_hdr(&h, "etag"), format!("\"{d}\""));
        assert!(resp.bytes().await.unwrap().is_empty(), "HEAD must not have a body");
    }

    let (_, v) = r.get_json("/v2/img/app/tags/list").await;
    assert_eq!(v, json!({"name": "img/app", "tags": ["v1"]}));

    // mediaType is optional in the body: Content-Type decides.
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    v["annotations"] = json!({"x": "no-media-type"});
    let m2 = serde_json::to_vec(&v).unwrap();
    r.push_manifest("img/app", "v2", OCI_MANIFEST, &m2).await;
    let (h, body) = expect_status_body(r.get("/v2/img/app/manifests/v2").await, 200).await;
    assert_eq!(body, m2);
    assert_eq!(must_hdr(&h, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn missing_manifests() {
    let r = Reg::start();
    r.push_image("have", "v1", 21).await;
    expect_error(r.get("/v2/have/manifests/nope").await, 404, &["MANIFEST_UNKNOWN"]).await;
    let unknown = sha256(b"no such manifest");
    expect_error(r.get(&format!("/v2/have/manifests/{unknown}")).await, 404, &["MANIFEST_UNKNOWN"]).await;
    let resp = r.head("/v2/have/manifests/nope").await;
    expect_status(&resp, 404);
    assert!(resp.bytes().await.unwrap().is_empty());
    expect_error(r.get("/v2/nothave/manifests/v1").await, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;
    expect_status(&r.head("/v2/nothave/manifests/v1").await, 404);
}

#[tokio::test]
async fn manifest_put_by_digest_is_verified() {
    let r = Reg::start();
    let m = r.image_manifest("bydigest", 22).await;
    let d = sha256(&m);
    let resp = r.put_manifest("bydigest", &d, OCI_MANIFEST, &m).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    assert_eq!(r.url(&must_hdr(&h, "location")).path(), format!("/v2/bydigest/manifests/{d}"));
    let (_, body) = expect_status_body(r.get(&format!("/v2/bydigest/manifests/{d}")).await, 200).await;
    assert_eq!(body, m);
    // Pushed by digest only: no tags.
    let (_, v) = r.get_json("/v2/bydigest/tags/list").await;
    assert_eq!(str_list(&v["tags"]), Vec::<String>::new());

    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v["annotations"] = json!({"k": "v"});
    let m2 = serde_json::to_vec(&v).unwrap();
    let wrong = sha256(b"something else");
    expect_error(r.put_manifest("bydigest", &wrong, OCI_MANIFEST, &m2).await, 400, &["DIGEST_INVALID"]).await;
    expect_status(&r.head(&format!("/v2/bydigest/manifests/{wrong}")).await, 404);
    expect_status(&r.head(&format!("/v2/bydigest/manifests/{}", sha256(&m2))).await, 404);
}

#[tokio::test]
async fn manifest_with_missing_blobs_is_rejected() {
    let r = Reg::start();
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let layer = data(23, 2048);
    let cd = r.push_blob("mb", &config).await;
    let ld = r.push_blob("mb", &layer).await;
    let missing = data(24, 100);
    let md = sha256(&missing);
    let elsewhere = data(25, 100);
    let ed = r.push_blob("mb-other", &elsewhere).await;

    let cases = [
        (
            "missing layer",
            desc(OCI_CONFIG, &cd, config.len()),
            vec![desc(OCI_LAYER, &ld, layer.len()), desc(OCI_LAYER, &md, 100)],
        ),
        ("missing config", desc(OCI_CONFIG, &md, 100), vec![desc(OCI_LAYER, &ld, layer.len())]),
        ("layer in another repo", desc(OCI_CONFIG, &cd, config.len()), vec![desc(OCI_LAYER, &ed, 100)]),
    ];
    for (what, cfg, layers) in cases {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers,
        }))
        .unwrap();
        let resp = r.put_manifest("mb", "t", OCI_MANIFEST, &m).await;
        let code = expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
        assert_eq!(code, "MANIFEST_BLOB_UNKNOWN", "{what}");
        expect_status(&r.head(&format!("/v2/mb/manifests/{}", sha256(&m))).await, 404);
    }
    expect_error(r.get("/v2/mb/manifests/t").await, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let r = Reg::start();
    let m = r.image_manifest("inv", 26).await;

    // Not JSON.
    expect_error(r.put_manifest("inv", "t", OCI_MANIFEST, b"{not json").await, 400, &["MANIFEST_INVALID"]).await;
    // Content-Type disagrees with the body's mediaType.
    expect_error(r.put_manifest("inv", "t", DOCKER_MANIFEST, &m).await, 400, &["MANIFEST_INVALID"]).await;
    expect_error(r.put_manifest("inv", "t", OCI_INDEX, &m).await, 400, &["MANIFEST_INVALID"]).await;
    // Schema 1 is not supported.
    let s1 = serde_json::to_vec(&json!({
        "schemaVersion": 1, "name": "inv", "tag": "t", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(b"x")}], "history": [{"v1Compatibility": "{}"}],
    }))
    .unwrap();
    for ct in [SCHEMA1, SCHEMA1_SIGNED] {
        expect_error(r.put_manifest("inv", "t", ct, &s1).await, 400, &["MANIFEST_INVALID"]).await;
    }
    expect_error(r.get("/v2/inv/manifests/t").await, 404, &["MANIFEST_UNKNOWN"]).await;
    // The valid one still goes in.
    r.push_manifest("inv", "t", OCI_MANIFEST, &m).await;
}

/// An OCI manifest padded with an annotation to exactly `size` bytes.
fn padded_manifest(size: usize) -> Vec<u8> {
    let empty = sha256(b"{}");
    let make = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(OCI_EMPTY, &empty, 2),
            "layers": [desc(OCI_EMPTY, &empty, 2)],
            "annotations": {"pad": "p".repeat(pad)},
        }))
        .unwrap()
    };
    let base = make(0).len();
    let m = make(size - base);
    assert_eq!(m.len(), size);
    m
}

#[tokio::test]
async fn manifest_size_limit() {
    let r = Reg::start();
    r.push_blob("big", b"{}").await;
    let at_limit = padded_manifest(4 * 1024 * 1024);
    r.push_manifest("big", "limit", OCI_MANIFEST, &at_limit).await;
    let (_, body) = expect_status_body(r.get("/v2/big/manifests/limit").await, 200).await;
    assert!(body == at_limit);

    // Over the limit: the client must get to read a 413 SIZE_INVALID, both when
    // it announces the size (Content-Length) and when it streams the body.
    let tmp = tempfile::tempdir().unwrap();
    let over = padded_manifest(4 * 1024 * 1024 + 1024);
    // A client still sending the body must not lose the answer to a reset:
    // repeated because whether it does depends on timing.
    for (attempt, streamed_body) in [false, true].into_iter().cycle().take(20).enumerate() {
        let body = if streamed_body { streamed(tmp.path(), "over", &over).await } else { over.clone().into() };
        let resp = r
            .req(Method::PUT, "/v2/big/manifests/over")
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "attempt {attempt}: PUT of a {}-byte manifest (streamed: {streamed_body}): no HTTP \
                     response could be read ({e:?}); the registry must let the client read its 413 (read \
                     or drain the request body before closing the connection, RFC 9112 §9.6)",
                    over.len()
                )
            });
        expect_error(resp, 413, &["SIZE_INVALID"]).await;
    }
    expect_error(r.get("/v2/big/manifests/over").await, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn oci_index_with_two_children() {
    let r = Reg::start();
    let m1 = r.image_manifest("idx", 30).await;
    let m2 = r.image_manifest("idx", 31).await;
    let d1 = r.push_manifest("idx", &sha256(&m1), OCI_MANIFEST, &m1).await;
    let d2 = r.push_manifest("idx", &sha256(&m2), OCI_MANIFEST, &m2).await;
    let mut e1 = desc(OCI_MANIFEST, &d1, m1.len());
    e1["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut e2 = desc(OCI_MANIFEST, &d2, m2.len());
    e2["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e1, e2],
    }))
    .unwrap();
    let id = r.push_manifest("idx", "multi", OCI_INDEX, &index).await;

    let resp = r
        .req(Method::GET, "/v2/idx/manifests/multi")
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    let (h, body) = expect_status_body(resp, 200).await;
    assert_eq!(body, index);
    assert_eq!(must_hdr(&h, "content-type"), OCI_INDEX);
    assert_eq!(must_hdr(&h, "docker-content-digest"), id);
    for (d, m) in [(&d1, &m1), (&d2, &m2)] {
        let (h, body) = expect_status_body(r.get(&format!("/v2/idx/manifests/{d}")).await, 200).await;
        assert_eq!(&body, m);
        assert_eq!(must_hdr(&h, "content-type"), OCI_MANIFEST);
    }

    // An index whose child is not in the repository.
    let m3 = r.image_manifest("idx", 32).await;
    let mut e3 = desc(OCI_MANIFEST, &sha256(&m3), m3.len());
    e3["platform"] = json!({"architecture": "s390x", "os": "linux"});
    let bad = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(OCI_MANIFEST, &d1, m1.len()), e3],
    }))
    .unwrap();
    let resp = r.put_manifest("idx", "bad", OCI_INDEX, &bad).await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
    expect_error(r.get("/v2/idx/manifests/bad").await, 404, &["MANIFEST_UNKNOWN"]).await;
    // A child manifest that exists only in another repository counts as missing.
    let (mo, dox) = r.push_image("idx-other", "v1", 33).await;
    let bad2 = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(OCI_MANIFEST, &dox, mo.len())],
    }))
    .unwrap();
    let resp = r.put_manifest("idx", "bad2", OCI_INDEX, &bad2).await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_list() {
    let r = Reg::start();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = data(40, 3333);
    let cd = r.push_blob("dock", &config).await;
    let ld = r.push_blob("dock", &layer).await;
    let m = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &cd, config.len()),
        "layers": [desc(DOCKER_LAYER, &ld, layer.len())],
    }))
    .unwrap();
    let md = r.push_manifest("dock", "v2", DOCKER_MANIFEST, &m).await;
    let resp = r.req(Method::GET, "/v2/dock/manifests/v2").header("accept", DOCKER_MANIFEST).send().await.unwrap();
    let (h, body) = expect_status_body(resp, 200).await;
    assert_eq!(body, m, "pretty-printed body must come back byte for byte");
    assert_eq!(must_hdr(&h, "content-type"), DOCKER_MANIFEST);
    assert_eq!(must_hdr(&h, "docker-content-digest"), md);

    let mut entry = desc(DOCKER_MANIFEST, &md, m.len());
    entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [entry],
    }))
    .unwrap();
    let lid = r.push_manifest("dock", "list", DOCKER_LIST, &list).await;
    let resp = r
        .req(Method::GET, "/v2/dock/manifests/list")
        .header("accept", format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"))
        .send()
        .await
        .unwrap();
    let (h, body) = expect_status_body(resp, 200).await;
    assert_eq!(body, list);
    assert_eq!(must_hdr(&h, "content-type"), DOCKER_LIST);
    assert_eq!(must_hdr(&h, "docker-content-digest"), lid);

    // A list whose entry is missing is refused.
    let missing = sha256(b"missing docker manifest");
    let bad = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [desc(DOCKER_MANIFEST, &missing, 500)],
    }))
    .unwrap();
    expect_error(
        r.put_manifest("dock", "bad", DOCKER_LIST, &bad).await,
        400,
        &["MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"],
    )
    .await;
}

#[tokio::test]
async fn accept_negotiation() {
    let r = Reg::start();
    let (m, d) = r.push_image("neg", "oci", 50).await;
    let get = |reference: String, accepts: Vec<&'static str>| {
        let mut b = r.req(Method::GET, &format!("/v2/neg/manifests/{reference}"));
        for a in accepts {
            b = b.header("accept", a);
        }
        b.send()
    };
    // Acceptable.
    for accepts in [
        vec![],
        vec!["*/*"],
        vec![OCI_MANIFEST],
        vec!["application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"],
        vec![DOCKER_MANIFEST, OCI_MANIFEST],
        vec!["application/vnd.oci.image.manifest.v1+json;q=0.9, application/vnd.docker.distribution.manifest.v2+json"],
    ] {
        let (h, body) = expect_status_body(get("oci".into(), accepts.clone()).await.unwrap(), 200).await;
        assert_eq!(body, m, "Accept {accepts:?}");
        assert_eq!(must_hdr(&h, "content-type"), OCI_MANIFEST, "Accept {accepts:?}");
    }
    // Not acceptable: 404 MANIFEST_UNKNOWN, by tag and by digest.
    for reference in ["oci".to_string(), d.clone()] {
        for accepts in [vec![DOCKER_MANIFEST], vec![DOCKER_MANIFEST, DOCKER_LIST], vec![OCI_INDEX]] {
            let resp = get(reference.clone(), accepts.clone()).await.unwrap();
            expect_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
        }
        let resp = r
            .req(Method::HEAD, &format!("/v2/neg/manifests/{reference}"))
            .header("accept", DOCKER_MANIFEST)
            .send()
            .await
            .unwrap();
        expect_status(&resp, 404);
    }

    // Docker manifest stored, only OCI accepted.
    let config = br#"{"os":"linux"}"#.to_vec();
    let cd = r.push_blob("neg", &config).await;
    let dm = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &cd, config.len()), "layers": [],
    }))
    .unwrap();
    r.push_manifest("neg", "docker", DOCKER_MANIFEST, &dm).await;
    expect_error(get("docker".into(), vec![OCI_MANIFEST, OCI_INDEX]).await.unwrap(), 404, &["MANIFEST_UNKNOWN"]).await;
    let (h, _) = expect_status_body(get("docker".into(), vec![DOCKER_MANIFEST]).await.unwrap(), 200).await;
    assert_eq!(must_hdr(&h, "content-type"), DOCKER_MANIFEST);

    // Index stored, only image manifests accepted.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(OCI_MANIFEST, &d, m.len())],
    }))
    .unwrap();
    r.push_manifest("neg", "index", OCI_INDEX, &index).await;
    expect_error(get("index".into(), vec![OCI_MANIFEST]).await.unwrap(), 404, &["MANIFEST_UNKNOWN"]).await;
    let (h, _) = expect_status_body(get("index".into(), vec![OCI_INDEX]).await.unwrap(), 200).await;
    assert_eq!(must_hdr(&h, "content-type"), OCI_INDEX);
}

// ---------------------------------------------------------------------------
// Subject and referrers
// ---------------------------------------------------------------------------

const SBOM_TYPE: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG: &str = "application/vnd.example.sig.config.v1+json";
const BUNDLE_TYPE: &str = "application/vnd.example.bundle.v1";

struct Referrers {
    subject: String,
    sbom: (String, usize),
    sig: (String, usize),
    bundle: (String, usize),
    /// An index with a subject but no `artifactType`.
    plain: (String, usize),
}

/// Pushes a subject image and three referrers to it (an artifact with
/// `artifactType`, one typed only by its config, and an index) into `repo`.
async fn push_referrers(r: &Reg, repo: &str) -> Referrers {
    let (sm, sd) = r.push_image(repo, "subject", 60).await;
    let subject = desc(OCI_MANIFEST, &sd, sm.len());
    let empty = r.push_blob(repo, b"{}").await;
    let sbom_layer = data(61, 640);
    let sbom_ld = r.push_blob(repo, &sbom_layer).await;
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
        "config": desc(OCI_EMPTY, &empty, 2),
        "layers": [desc("application/spdx+json", &sbom_ld, sbom_layer.len())],
        "subject": subject,
        "annotations": {"org.example.kind": "sbom", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
    .unwrap();
    let resp = r.put_manifest(repo, &sha256(&sbom), OCI_MANIFEST, &sbom).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "oci-subject"), sd, "PUT with subject → OCI-Subject");

    let sig_config = br#"{"signer":"test"}"#.to_vec();
    let sig_cd = r.push_blob(repo, &sig_config).await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(SIG_CONFIG, &sig_cd, sig_config.len()),
        "layers": [desc(OCI_EMPTY, &empty, 2)],
        "subject": subject,
        "annotations": {"org.example.kind": "signature"},
    }))
    .unwrap();
    let resp = r.put_manifest(repo, "sig", OCI_MANIFEST, &sig).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "oci-subject"), sd);

    let bundle = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": BUNDLE_TYPE,
        "manifests": [desc(OCI_MANIFEST, &sha256(&sbom), sbom.len())],
        "subject": subject,
    }))
    .unwrap();
    let resp = r.put_manifest(repo, &sha256(&bundle), OCI_INDEX, &bundle).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "oci-subject"), sd);

    let plain = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [desc(OCI_MANIFEST, &sha256(&sig), sig.len())],
        "subject": subject,
        "annotations": {"org.example.kind": "untyped-index"},
    }))
    .unwrap();
    let resp = r.put_manifest(repo, "plain", OCI_INDEX, &plain).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "oci-subject"), sd);

    // Not a referrer: no subject.
    r.push_image(repo, "unrelated", 62).await;
    Referrers {
        subject: sd,
        sbom: (sha256(&sbom), sbom.len()),
        sig: (sha256(&sig), sig.len()),
        bundle: (sha256(&bundle), bundle.len()),
        plain: (sha256(&plain), plain.len()),
    }
}

/// GETs the referrers index and returns (headers, manifests array).
async fn get_referrers(r: &Reg, repo: &str, digest: &str, query: &str) -> (HeaderMap, Vec<Value>) {
    let (h, v) = r.get_json(&format!("/v2/{repo}/referrers/{digest}{query}")).await;
    assert_eq!(must_hdr(&h, "content-type"), OCI_INDEX);
    assert_eq!(v["schemaVersion"], json!(2), "{v}");
    assert_eq!(v["mediaType"], json!(OCI_INDEX), "{v}");
    let ms = v["manifests"].as_array().unwrap_or_else(|| panic!("referrers manifests must be an array: {v}")).clone();
    (h, ms)
}

fn find<'a>(ms: &'a [Value], digest: &str) -> &'a Value {
    ms.iter().find(|m| m["digest"] == json!(digest)).unwrap_or_else(|| panic!("{digest} missing from referrers {ms:?}"))
}

#[tokio::test]
async fn referrers_list_and_filter() {
    let r = Reg::start();
    let x = push_referrers(&r, "ref/app").await;
    // Pushing a referrer again under a tag must not list it twice.
    let (_, sbom_body) = expect_status_body(r.get(&format!("/v2/ref/app/manifests/{}", x.sbom.0)).await, 200).await;
    r.push_manifest("ref/app", "sbom-again", OCI_MANIFEST, &sbom_body).await;

    let (h, ms) = get_referrers(&r, "ref/app", &x.subject, "").await;
    assert!(hdr(&h, "oci-filters-applied").is_none(), "no filter requested");
    assert_eq!(ms.len(), 4, "{ms:?}");
    let sbom = find(&ms, &x.sbom.0);
    assert_eq!(sbom["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(sbom["size"], json!(x.sbom.1));
    assert_eq!(sbom["artifactType"], json!(SBOM_TYPE));
    assert_eq!(
        sbom["annotations"],
        json!({"org.example.kind": "sbom", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"})
    );
    let sig = find(&ms, &x.sig.0);
    assert_eq!(sig["mediaType"], json!(OCI_MANIFEST));
    assert_eq!(sig["size"], json!(x.sig.1));
    assert_eq!(sig["artifactType"], json!(SIG_CONFIG), "artifactType falls back to config mediaType");
    assert_eq!(sig["annotations"], json!({"org.example.kind": "signature"}));
    let bundle = find(&ms, &x.bundle.0);
    assert_eq!(bundle["mediaType"], json!(OCI_INDEX));
    assert_eq!(bundle["size"], json!(x.bundle.1));
    assert_eq!(bundle["artifactType"], json!(BUNDLE_TYPE));
    let plain = find(&ms, &x.plain.0);
    assert_eq!(plain["mediaType"], json!(OCI_INDEX));
    assert_eq!(plain["size"], json!(x.plain.1));
    assert!(plain.get("artifactType").is_none(), "an index without artifactType has none in its descriptor: {plain}");
    assert_eq!(plain["annotations"], json!({"org.example.kind": "untyped-index"}));

    for (ty, want) in [(SBOM_TYPE, &x.sbom.0), (SIG_CONFIG, &x.sig.0), (BUNDLE_TYPE, &x.bundle.0)] {
        let q = format!("?artifactType={}", ty.replace('+', "%2B"));
        let (h, ms) = get_referrers(&r, "ref/app", &x.subject, &q).await;
        assert_eq!(must_hdr(&h, "oci-filters-applied"), "artifactType");
        assert_eq!(ms.len(), 1, "filter {ty}: {ms:?}");
        assert_eq!(ms[0]["digest"], json!(want), "filter {ty}");
    }
    let (h, ms) = get_referrers(&r, "ref/app", &x.subject, "?artifactType=application/vnd.none").await;
    assert_eq!(must_hdr(&h, "oci-filters-applied"), "artifactType");
    assert!(ms.is_empty());

    // The subject itself, the unrelated image and an unknown digest: no referrers.
    let (_, ms) = get_referrers(&r, "ref/app", &sha256(b"unknown subject"), "").await;
    assert!(ms.is_empty());
    let (_, ms) = get_referrers(&r, "ref/app", &x.sbom.0, "").await;
    assert!(ms.is_empty(), "nothing refers to the sbom: {ms:?}");
    // Referrers are per repository.
    r.push_image("ref/other", "v1", 63).await;
    let (_, ms) = get_referrers(&r, "ref/other", &x.subject, "").await;
    assert!(ms.is_empty());

    expect_error(r.get("/v2/ref/app/referrers/sha256:nothex").await, 400, &["DIGEST_INVALID"]).await;
    expect_error(r.get("/v2/ref/app/referrers/latest").await, 400, &["DIGEST_INVALID"]).await;
}

#[tokio::test]
async fn referrer_to_absent_subject_is_accepted() {
    let r = Reg::start();
    let empty = r.push_blob("ref/absent", b"{}").await;
    let ghost = sha256(b"a manifest that was never pushed");
    let art = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
        "config": desc(OCI_EMPTY, &empty, 2),
        "layers": [desc(OCI_EMPTY, &empty, 2)],
        "subject": desc(OCI_MANIFEST, &ghost, 1234),
    }))
    .unwrap();
    let resp = r.put_manifest("ref/absent", "art", OCI_MANIFEST, &art).await;
    let (h, _) = expect_status_body(resp, 201).await;
    assert_eq!(must_hdr(&h, "oci-subject"), ghost);
    let (_, ms) = get_referrers(&r, "ref/absent", &ghost, "").await;
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["digest"], json!(sha256(&art)));
    assert_eq!(ms[0]["artifactType"], json!(SBOM_TYPE));
    assert_eq!(ms[0]["size"], json!(art.len()));
}

// ---------------------------------------------------------------------------
// Tags and catalog
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tags_list_and_pagination() {
    let r = Reg::start();
    let m = r.image_manifest("tags/app", 70).await;
    for t in ["v1.0", "b", "latest", "c2", "a", "c10"] {
        r.push_manifest("tags/app", t, OCI_MANIFEST, &m).await;
    }
    let all = ["a", "b", "c10", "c2", "latest", "v1.0"];
    let (h, v) = r.get_json("/v2/tags/app/tags/list").await;
    assert_eq!(v["name"], json!("tags/app"));
    assert_eq!(str_list(&v["tags"]), all);
    assert!(hdr(&h, "link").is_none(), "complete list has no Link: {:?}", hdr(&h, "link"));

    // Walk pages of 2 through the Link header.
    let (mut h, v) = r.get_json("/v2/tags/app/tags/list?n=2").await;
    let mut pages = vec![str_list(&v["tags"])];
    while let Some(next) = next_link(&r, &h) {
        assert_eq!(next.path(), "/v2/tags/app/tags/list");
        assert_eq!(query(&next, "n").as_deref(), Some("2"), "{next}");
        assert_eq!(query(&next, "last").as_ref(), pages.last().unwrap().last(), "{next}");
        assert!(pages.len() < 10, "pagination does not end");
        let resp = r.c.get(next).send().await.unwrap();
        let (h2, body) = expect_status_body(resp, 200).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        pages.push(str_list(&v["tags"]));
        h = h2;
    }
    assert_eq!(pages, vec![vec!["a", "b"], vec!["c10", "c2"], vec!["latest", "v1.0"]]);

    let (_, v) = r.get_json("/v2/tags/app/tags/list?last=c2").await;
    assert_eq!(str_list(&v["tags"]), ["latest", "v1.0"]);
    let (h, v) = r.get_json("/v2/tags/app/tags/list?n=1&last=b").await;
    assert_eq!(str_list(&v["tags"]), ["c10"]);
    let next = next_link(&r, &h).expect("more tags remain after c10");
    assert_eq!(query(&next, "last").as_deref(), Some("c10"));
    let (h, v) = r.get_json("/v2/tags/app/tags/list?n=6").await;
    assert_eq!(str_list(&v["tags"]), all);
    assert!(hdr(&h, "link").is_none(), "n equal to the tag count: nothing remains");
    let (h, v) = r.get_json("/v2/tags/app/tags/list?n=100").await;
    assert_eq!(str_list(&v["tags"]), all);
    assert!(hdr(&h, "link").is_none());
    let (h, v) = r.get_json("/v2/tags/app/tags/list?n=0").await;
    assert_eq!(v["name"], json!("tags/app"));
    assert_eq!(str_list(&v["tags"]), Vec::<String>::new());
    assert!(hdr(&h, "link").is_none(), "n=0 must not carry a Link header");
    // `last` need not be an existing tag.
    let (_, v) = r.get_json("/v2/tags/app/tags/list?last=c3").await;
    assert_eq!(str_list(&v["tags"]), ["latest", "v1.0"]);
    let (_, v) = r.get_json("/v2/tags/app/tags/list?last=v1.0").await;
    assert_eq!(str_list(&v["tags"]), Vec::<String>::new());

    expect_error(r.get("/v2/tags/none/tags/list").await, 404, &["NAME_UNKNOWN"]).await;
}

#[tokio::test]
async fn catalog_and_pagination() {
    let r = Reg::start();
    let repos = ["zeta", "alpha/two", "beta-x", "alpha/one", "alpha"];
    for (i, repo) in repos.iter().enumerate() {
        r.push_image(repo, "v1", 80 + i as u64).await;
    }
    let all = ["alpha", "alpha/one", "alpha/two", "beta-x", "zeta"];
    let (h, v) = r.get_json("/v2/_catalog").await;
    assert_eq!(str_list(&v["repositories"]), all);
    assert!(hdr(&h, "link").is_none());

    let (mut h, v) = r.get_json("/v2/_catalog?n=2").await;
    let mut pages = vec![str_list(&v["repositories"])];
    while let Some(next) = next_link(&r, &h) {
        assert_eq!(next.path(), "/v2/_catalog");
        assert_eq!(query(&next, "n").as_deref(), Some("2"), "{next}");
        assert_eq!(query(&next, "last").as_ref(), pages.last().unwrap().last(), "{next}");
        assert!(pages.len() < 10, "pagination does not end");
        let (h2, body) = expect_status_body(r.c.get(next).send().await.unwrap(), 200).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        pages.push(str_list(&v["repositories"]));
        h = h2;
    }
    assert_eq!(pages, vec![vec!["alpha", "alpha/one"], vec!["alpha/two", "beta-x"], vec!["zeta"]]);

    let (h, v) = r.get_json("/v2/_catalog?n=5").await;
    assert_eq!(str_list(&v["repositories"]), all);
    assert!(hdr(&h, "link").is_none(), "n equal to the repository count: nothing remains");
    let (_, v) = r.get_json("/v2/_catalog?last=alpha/two").await;
    assert_eq!(str_list(&v["repositories"]), ["beta-x", "zeta"]);
    let (h, v) = r.get_json("/v2/_catalog?n=0").await;
    assert_eq!(str_list(&v["repositories"]), Vec::<String>::new());
    assert!(hdr(&h, "link").is_none(), "n=0 must not carry a Link header");
    let (_, v) = r.get_json("/v2/_catalog?last=alpha/p").await;
    assert_eq!(str_list(&v["repositories"]), ["alpha/two", "beta-x", "zeta"]);
}

// ---------------------------------------------------------------------------
// Deletes and read-only mode
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deletes_when_enabled() {
    let r = Reg::with(DELETE_ENABLED);
    let (m, d) = r.push_image("del", "v1", 90).await;
    r.push_manifest("del", "v2", OCI_MANIFEST, &m).await;

    // Delete a tag: only the tag goes.
    expect_status_body(r.delete("/v2/del/manifests/v1").await, 202).await;
    expect_error(r.get("/v2/del/manifests/v1").await, 404, &["MANIFEST_UNKNOWN"]).await;
    expect_status_body(r.get("/v2/del/manifests/v2").await, 200).await;
    let (_, body) = expect_status_body(r.get(&format!("/v2/del/manifests/{d}")).await, 200).await;
    assert_eq!(body, m);
    let (_, v) = r.get_json("/v2/del/tags/list").await;
    assert_eq!(str_list(&v["tags"]), ["v2"]);
    expect_error(r.delete("/v2/del/manifests/v1").await, 404, &["MANIFEST_UNKNOWN"]).await;

    // Delete by digest.
    expect_status_body(r.delete(&format!("/v2/del/manifests/{d}")).await, 202).await;
    expect_error(r.get(&format!("/v2/del/manifests/{d}")).await, 404, &["MANIFEST_UNKNOWN"]).await;
    expect_error(r.delete(&format!("/v2/del/manifests/{d}")).await, 404, &["MANIFEST_UNKNOWN"]).await;
    // "Once deleted, a GET to the digest and any tag pointing to it returns 404."
    expect_error(r.get("/v2/del/manifests/v2").await, 404, &["MANIFEST_UNKNOWN"]).await;
    let resp = r.delete(&format!("/v2/del-nothing/manifests/{d}")).await;
    expect_error(resp, 404, &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]).await;

    // Delete a blob.
    let v: Value = serde_json::from_slice(&m).unwrap();
    let ld = v["layers"][0]["digest"].as_str().unwrap().to_string();
    expect_status_body(r.delete(&format!("/v2/del/blobs/{ld}")).await, 202).await;
    expect_error(r.get(&format!("/v2/del/blobs/{ld}")).await, 404, &["BLOB_UNKNOWN"]).await;
    expect_error(r.delete(&format!("/v2/del/blobs/{ld}")).await, 404, &["BLOB_UNKNOWN"]).await;
    // A manifest can no longer reference the deleted blob.
    let resp = r.put_manifest("del", "v3", OCI_MANIFEST, &m).await;
    expect_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
    expect_error(r.delete(&format!("/v2/del/blobs/{}", sha256(b"never"))).await, 404, &["BLOB_UNKNOWN"]).await;
    expect_error(r.delete("/v2/del/blobs/sha256:short").await, 400, &["DIGEST_INVALID"]).await;

    // Deleting a referrer removes it from the referrers list.
    let x = push_referrers(&r, "del/ref").await;
    expect_status_body(r.delete(&format!("/v2/del/ref/manifests/{}", x.sbom.0)).await, 202).await;
    let (_, ms) = get_referrers(&r, "del/ref", &x.subject, "").await;
    let got: BTreeSet<String> = ms.iter().map(|m| m["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, BTreeSet::from([x.sig.0.clone(), x.bundle.0.clone(), x.plain.0.clone()]));
}

#[tokio::test]
async fn deletes_disabled_by_default() {
    let r = Reg::start();
    let (m, d) = r.push_image("nodel", "v1", 91).await;
    let v: Value = serde_json::from_slice(&m).unwrap();
    let ld = v["layers"][0]["digest"].as_str().unwrap().to_string();
    expect_error(r.delete("/v2/nodel/manifests/v1").await, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete(&format!("/v2/nodel/manifests/{d}")).await, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete(&format!("/v2/nodel/blobs/{ld}")).await, 405, &["UNSUPPORTED"]).await;
    expect_status_body(r.get("/v2/nodel/manifests/v1").await, 200).await;
    expect_status_body(r.get(&format!("/v2/nodel/blobs/{ld}")).await, 200).await;
}

#[tokio::test]
async fn read_only_mode() {
    let data_dir = tempfile::tempdir().unwrap();
    let root = data_dir.path().join("data");
    let (m, d, session) = {
        let r = Reg::wrap(Berthd::start_with_root(tempfile::tempdir().unwrap(), root.clone(), "", &[]));
        let (m, d) = r.push_image("ro", "v1", 92).await;
        // An upload session left open before the switch to read-only.
        let loc = r.start_upload("ro").await;
        (m, d, loc.path().to_string())
    };
    let r = Reg::wrap(Berthd::start_with_root(
        tempfile::tempdir().unwrap(),
        root,
        &format!("{READ_ONLY}{DELETE_ENABLED}"),
        &[],
    ));
    // Reads work.
    let (_, body) = expect_status_body(r.get("/v2/ro/manifests/v1").await, 200).await;
    assert_eq!(body, m);
    let (_, v) = r.get_json("/v2/ro/tags/list").await;
    assert_eq!(str_list(&v["tags"]), ["v1"]);
    let (_, v) = r.get_json("/v2/_catalog").await;
    assert_eq!(str_list(&v["repositories"]), ["ro"]);
    let v: Value = serde_json::from_slice(&m).unwrap();
    let ld = v["layers"][0]["digest"].as_str().unwrap().to_string();
    expect_status_body(r.get(&format!("/v2/ro/blobs/{ld}")).await, 200).await;

    // Writes are refused, including on an upload session that already exists.
    let resp = r.req(Method::PATCH, &session).body(data(94, 10)).send().await.unwrap();
    expect_error(resp, 405, &["UNSUPPORTED"]).await;
    let blob = data(95, 10);
    let resp = r.c.put(with_digest(&r.url(&session), &sha256(&blob))).body(blob).send().await.unwrap();
    expect_error(resp, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete(&session).await, 405, &["UNSUPPORTED"]).await;
    let resp = r.req(Method::POST, "/v2/ro/blobs/uploads/").send().await.unwrap();
    expect_error(resp, 405, &["UNSUPPORTED"]).await;
    let blob = data(93, 10);
    let resp = r
        .req(Method::POST, &format!("/v2/ro/blobs/uploads/?digest={}", sha256(&blob)))
        .body(blob)
        .send()
        .await
        .unwrap();
    expect_error(resp, 405, &["UNSUPPORTED"]).await;
    let resp = r.req(Method::POST, &format!("/v2/ro2/blobs/uploads/?mount={ld}&from=ro")).send().await.unwrap();
    expect_error(resp, 405, &["UNSUPPORTED"]).await;
    expect_error(r.put_manifest("ro", "v2", OCI_MANIFEST, &m).await, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete("/v2/ro/manifests/v1").await, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete(&format!("/v2/ro/manifests/{d}")).await, 405, &["UNSUPPORTED"]).await;
    expect_error(r.delete(&format!("/v2/ro/blobs/{ld}")).await, 405, &["UNSUPPORTED"]).await;
    expect_status_body(r.get("/v2/ro/manifests/v1").await, 200).await;
    expect_error(r.get("/v2/ro/manifests/v2").await, 404, &["MANIFEST_UNKNOWN"]).await;
}

// ---------------------------------------------------------------------------
// Name, reference and digest validation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn repository_name_validation() {
    let r = Reg::start();
    let long_ok = "a".repeat(255);
    let long_bad = "a".repeat(256);
    let nested_bad = format!("{}/{}", "a".repeat(128), "b".repeat(127));
    let valid = ["a", "a__b", "a--b", "a---b", "a.b/c_d", "0/1/2", &long_ok];
    for name in valid {
        expect_error(r.get(&format!("/v2/{name}/tags/list")).await, 404, &["NAME_UNKNOWN"]).await;
    }
    let invalid = [
        "UPPER",
        "a..b",
        "a___b",
        "a.-b",
        "-a",
        "a-",
        "a_",
        ".a",
        "a/_b",
        "a/B",
        "a//b",
        "a/",
        "a$b",
        &long_bad,
        &nested_bad,
    ];
    for name in invalid {
        expect_error(r.get(&format!("/v2/{name}/tags/list")).await, 400, &["NAME_INVALID"]).await;
    }
    expect_error(r.get("/v2/a..b/manifests/x").await, 400, &["NAME_INVALID"]).await;
    expect_error(r.get(&format!("/v2/Foo/blobs/{}", sha256(b"x"))).await, 400, &["NAME_INVALID"]).await;
    let resp = r.req(Method::POST, "/v2/Foo/blobs/uploads/").send().await.unwrap();
    expect_error(resp, 400, &["NAME_INVALID"]).await;
    let resp = r.put_manifest("Foo", "t", OCI_MANIFEST, b"{}").await;
    expect_error(resp, 400, &["NAME_INVALID"]).await;

    // A name that is valid and pushable at the length limit.
    r.push_image(&long_ok, "v1", 100).await;
}

/// Sends a request with a raw, un-normalised path; returns (status, body).
async fn raw_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response to {path}: {text:?}"));
    (status, text)
}

#[tokio::test]
async fn path_traversal_names_are_invalid() {
    let r = Reg::start();
    r.push_image("secret", "v1", 101).await;
    for path in [
        "/v2/foo/../secret/tags/list",
        "/v2/../secret/tags/list",
        "/v2/foo/%2e%2e/secret/tags/list",
        "/v2/./secret/tags/list",
        "/v2/foo/../../../../etc/tags/list",
    ] {
        let (status, text) = raw_get(&r.d.addr, path).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("NAME_INVALID"), "{path}: {text}");
    }
}

#[tokio::test]
async fn tag_reference_validation() {
    let r = Reg::start();
    let m = r.image_manifest("tagv", 110).await;
    let max = format!("_{}", "a".repeat(127));
    for t in ["latest", "v1.2.3-rc_1", "_x", "A", &max] {
        r.push_manifest("tagv", t, OCI_MANIFEST, &m).await;
        expect_status_body(r.get(&format!("/v2/tagv/manifests/{t}")).await, 200).await;
    }
    let too_long = "a".repeat(129);
    for bad in ["-bad", ".bad", "bad!", "b%20d", ".INVALID_MANIFEST_NAME", &too_long] {
        // No manifest can have it: unknown on reads, as the OCI conformance
        // suite expects; invalid when pushed.
        expect_error(r.get(&format!("/v2/tagv/manifests/{bad}")).await, 404, &["MANIFEST_UNKNOWN"]).await;
        assert_eq!(r.head(&format!("/v2/tagv/manifests/{bad}")).await.status(), 404, "HEAD {bad}");
        expect_error(r.put_manifest("tagv", bad, OCI_MANIFEST, &m).await, 400, &["TAG_INVALID"]).await;
    }
    // Malformed digests as references.
    for bad in ["sha256:abc", "sha256:", &format!("sha256:{}", "Z".repeat(64))] {
        expect_error(r.get(&format!("/v2/tagv/manifests/{bad}")).await, 400, &["DIGEST_INVALID"]).await;
    }
    let md5 = format!("md5:{}", "a".repeat(32));
    expect_error(r.get(&format!("/v2/tagv/manifests/{md5}")).await, 400, &["DIGEST_INVALID", "UNSUPPORTED"]).await;
    let (_, v) = r.get_json("/v2/tagv/tags/list").await;
    let got: BTreeSet<String> = str_list(&v["tags"]).into_iter().collect();
    let want: BTreeSet<String> = ["A", &max, "_x", "latest", "v1.2.3-rc_1"].iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_same_blob() {
    let r = std::sync::Arc::new(Reg::start());
    let blob = std::sync::Arc::new(data(120, 400_000));
    let d = sha256(&blob);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (r, blob, d) = (r.clone(), blob.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Chunked: three PATCHes then PUT.
                let mut loc = r.start_upload("conc").await;
                for part in blob.chunks(150_000) {
                    let resp = r.c.patch(loc.clone()).body(part.to_vec()).send().await.unwrap();
                    let (h, _) = expect_status_body(resp, 202).await;
                    loc = r.url(&must_hdr(&h, "location"));
                }
                expect_status_body(r.finish_upload(&loc, &d, Vec::new()).await, 201).await;
            } else {
                let resp = r
                    .req(Method::POST, &format!("/v2/conc/blobs/uploads/?digest={d}"))
                    .body(blob.to_vec())
                    .send()
                    .await
                    .unwrap();
                expect_status_body(resp, 201).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (h, got) = expect_status_body(r.get(&format!("/v2/conc/blobs/{d}")).await, 200).await;
    assert_eq!(sha256(&got), d);
    assert_eq!(must_hdr(&h, "content-length"), blob.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_of_same_tag() {
    let r = std::sync::Arc::new(Reg::start());
    let base: Value = serde_json::from_slice(&r.image_manifest("conc/tag", 130).await).unwrap();
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let mut v = base.clone();
            v["annotations"] = json!({"writer": format!("task-{i}")});
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for b in bodies.clone() {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                r.push_manifest("conc/tag", "latest", OCI_MANIFEST, &b).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (h, got) = expect_status_body(r.get("/v2/conc/tag/manifests/latest").await, 200).await;
    assert!(bodies.contains(&got), "tag points at a body nobody pushed: {}", String::from_utf8_lossy(&got));
    assert_eq!(must_hdr(&h, "docker-content-digest"), sha256(&got));
    assert_eq!(must_hdr(&h, "content-length"), got.len().to_string());
    for b in &bodies {
        let (_, g) = expect_status_body(r.get(&format!("/v2/conc/tag/manifests/{}", sha256(b))).await, 200).await;
        assert_eq!(&g, b);
    }
    let (_, v) = r.get_json("/v2/conc/tag/tags/list").await;
    assert_eq!(str_list(&v["tags"]), ["latest"]);
}

// ---------------------------------------------------------------------------
// More edge cases from the spec
// ---------------------------------------------------------------------------

#[tokio::test]
async fn empty_blob() {
    let r = Reg::start();
    let d = sha256(b"");
    let upload = r.start_upload("empty").await;
    let (h, _) = expect_status_body(r.finish_upload(&upload, &d, Vec::new()).await, 201).await;
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    let (h, body) = expect_status_body(r.get(&format!("/v2/empty/blobs/{d}")).await, 200).await;
    assert!(body.is_empty());
    assert_eq!(must_hdr(&h, "content-length"), "0");
    assert_eq!(must_hdr(&h, "docker-content-digest"), d);
    let resp = r.head(&format!("/v2/empty/blobs/{d}")).await;
    expect_status(&resp, 200);
    assert_eq!(must_hdr(resp.headers(), "content-length"), "0");
}

/// A body sent with `Transfer-Encoding: chunked` (no Content-Length): reqwest
/// streams a file body of unknown length.
async fn streamed(dir: &std::path::Path, name: &str, bytes: &[u8]) -> reqwest::Body {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    reqwest::Body::from(tokio::fs::File::open(&p).await.unwrap())
}

#[tokio::test]
async fn streamed_bodies_without_content_length() {
    let r = Reg::start();
    let tmp = tempfile::tempdir().unwrap();
    let blob = data(140, 700_000);
    let d = sha256(&blob);
    let loc = r.start_upload("stream").await;
    let resp =
        r.c.patch(loc)
            .header("content-type", "application/octet-stream")
            .body(streamed(tmp.path(), "p1", &blob[..300_000]).await)
            .send()
            .await
            .unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    assert_eq!(must_hdr(&h, "range"), "0-299999");
    let loc = r.url(&must_hdr(&h, "location"));
    let resp =
        r.c.put(with_digest(&loc, &d))
            .header("content-type", "application/octet-stream")
            .body(streamed(tmp.path(), "p2", &blob[300_000..]).await)
            .send()
            .await
            .unwrap();
    expect_status_body(resp, 201).await;
    let (_, got) = expect_status_body(r.get(&format!("/v2/stream/blobs/{d}")).await, 200).await;
    assert!(got == blob, "streamed upload content differs");

    // Monolithic POST with a streamed body.
    let blob2 = data(141, 200_000);
    let d2 = sha256(&blob2);
    let resp = r
        .req(Method::POST, &format!("/v2/stream/blobs/uploads/?digest={d2}"))
        .header("content-type", "application/octet-stream")
        .body(streamed(tmp.path(), "p3", &blob2).await)
        .send()
        .await
        .unwrap();
    expect_status_body(resp, 201).await;
    let (_, got) = expect_status_body(r.get(&format!("/v2/stream/blobs/{d2}")).await, 200).await;
    assert!(got == blob2);
}

#[tokio::test]
async fn upload_sessions_are_repository_scoped() {
    let r = Reg::start();
    let loc = r.start_upload("sess/a").await;
    let uuid = loc.path().rsplit('/').next().unwrap().to_string();
    let mut other = loc.clone();
    other.set_path(&format!("/v2/sess/b/blobs/uploads/{uuid}"));
    expect_error(r.c.get(other.clone()).send().await.unwrap(), 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    let resp = r.c.patch(other.clone()).body(data(150, 10)).send().await.unwrap();
    expect_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    // The session still works under its own repository.
    let blob = data(151, 10);
    let d = sha256(&blob);
    expect_status_body(r.finish_upload(&loc, &d, blob).await, 201).await;
    expect_status(&r.head(&format!("/v2/sess/b/blobs/{d}")).await, 404);
}

#[tokio::test]
async fn manifest_tags_move_and_reput_is_idempotent() {
    let r = Reg::start();
    let (m1, d1) = r.push_image("retag", "latest", 160).await;
    // Same bytes again: same digest, still one tag.
    assert_eq!(r.push_manifest("retag", "latest", OCI_MANIFEST, &m1).await, d1);
    let (m2, d2) = r.push_image("retag", "latest", 161).await;
    assert_ne!(d1, d2);
    let (h, body) = expect_status_body(r.get("/v2/retag/manifests/latest").await, 200).await;
    assert_eq!(body, m2);
    assert_eq!(must_hdr(&h, "docker-content-digest"), d2);
    // The old manifest is still there by digest.
    let (_, body) = expect_status_body(r.get(&format!("/v2/retag/manifests/{d1}")).await, 200).await;
    assert_eq!(body, m1);
    let (_, v) = r.get_json("/v2/retag/tags/list").await;
    assert_eq!(str_list(&v["tags"]), ["latest"]);

    // A blob is not a manifest.
    let v: Value = serde_json::from_slice(&m1).unwrap();
    let ld = v["layers"][0]["digest"].as_str().unwrap().to_string();
    expect_error(r.get(&format!("/v2/retag/manifests/{ld}")).await, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn structurally_invalid_manifests() {
    let r = Reg::start();
    let m = r.image_manifest("struct", 170).await;
    let base: Value = serde_json::from_slice(&m).unwrap();
    let variant = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("schemaVersion 3", variant(&|v| v["schemaVersion"] = json!(3)), &["MANIFEST_INVALID"]),
        ("schemaVersion 1 as OCI", variant(&|v| v["schemaVersion"] = json!(1)), &["MANIFEST_INVALID"]),
        (
            "layer with malformed digest",
            variant(&|v| v["layers"][0]["digest"] = json!("sha256:nothex")),
            &["MANIFEST_INVALID", "DIGEST_INVALID"],
        ),
        ("config not an object", variant(&|v| v["config"] = json!("nope")), &["MANIFEST_INVALID"]),
        ("JSON array", b"[1,2,3]".to_vec(), &["MANIFEST_INVALID"]),
        (
            "subject with malformed digest",
            variant(&|v| v["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 10})),
            &["MANIFEST_INVALID", "DIGEST_INVALID"],
        ),
        ("empty body", Vec::new(), &["MANIFEST_INVALID"]),
    ];
    for (what, body, codes) in cases {
        let resp = r.put_manifest("struct", "t", OCI_MANIFEST, &body).await;
        let code = expect_error(resp, 400, codes).await;
        assert!(codes.contains(&code.as_str()), "{what}");
    }
    expect_error(r.get("/v2/struct/manifests/t").await, 404, &["MANIFEST_UNKNOWN"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_do_not_mix() {
    let r = std::sync::Arc::new(Reg::start());
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let blob = data(200 + i, 90_000 + i as usize * 1000);
            let d = sha256(&blob);
            let mut loc = r.start_upload("mix").await;
            for part in blob.chunks(10_000) {
                let resp = r.c.patch(loc.clone()).body(part.to_vec()).send().await.unwrap();
                let (h, _) = expect_status_body(resp, 202).await;
                loc = r.url(&must_hdr(&h, "location"));
                tokio::task::yield_now().await;
            }
            expect_status_body(r.finish_upload(&loc, &d, Vec::new()).await, 201).await;
            (d, blob)
        }));
    }
    for t in tasks {
        let (d, blob) = t.await.unwrap();
        let (_, got) = expect_status_body(r.get(&format!("/v2/mix/blobs/{d}")).await, 200).await;
        assert!(got == blob, "blob {d} content differs");
    }
}

/// A request that is refused before its body is read (read-only push, expired
/// upload session, bad name or digest) must still let the client read the error:
/// closing the socket with the body unread resets the connection and the client
/// sees a broken pipe instead of the status (RFC 9112 §9.6). Repeated because
/// whether the reset wins depends on timing.
#[tokio::test]
async fn early_rejections_keep_the_response_readable() {
    let ro = Reg::with(READ_ONLY);
    let rw = Reg::start();
    let body = data(180, 8 * 1024 * 1024);
    let d = sha256(&body);
    let bogus = "/v2/x/blobs/uploads/3f0c2a8e-1b7e-4f51-9f5c-2a8f6f4c0d11";
    for attempt in 0..8 {
        let cases: [(&str, RequestBuilder, u16, &[&str]); 3] = [
            (
                "monolithic push to a read-only registry",
                ro.req(Method::POST, &format!("/v2/ro/blobs/uploads/?digest={d}")),
                405,
                &["UNSUPPORTED"],
            ),
            ("PATCH to an unknown upload", rw.req(Method::PATCH, bogus), 404, &["BLOB_UPLOAD_UNKNOWN"]),
            (
                "monolithic push with a malformed digest",
                rw.req(Method::POST, "/v2/x/blobs/uploads/?digest=sha256:zz"),
                400,
                &["DIGEST_INVALID"],
            ),
        ];
        for (what, req, status, codes) in cases {
            let resp = req.body(body.clone()).send().await.unwrap_or_else(|e| {
                panic!(
                    "attempt {attempt}: {what} with an 8 MiB body: no HTTP response could be read ({e:?}); \
                     expected {status} {codes:?}"
                )
            });
            expect_error(resp, status, codes).await;
        }
    }
}

/// Several clients racing on one upload session: chunks are checked against
/// the session's size atomically, so exactly one `0-999` chunk lands and the
/// rest get 416; the session then holds exactly that chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_chunks_on_one_session() {
    let r = std::sync::Arc::new(Reg::start());
    for round in 0..5u64 {
        let loc = r.start_upload("race").await;
        let mut tasks = Vec::new();
        for i in 0..6u64 {
            let (r, loc) = (r.clone(), loc.clone());
            tasks.push(tokio::spawn(async move {
                let chunk = data(300 + round * 10 + i, 1000);
                let resp =
                    r.c.patch(loc)
                        .header("content-type", "application/octet-stream")
                        .header("content-range", "0-999")
                        .body(chunk.clone())
                        .send()
                        .await
                        .unwrap();
                (resp.status().as_u16(), chunk)
            }));
        }
        let mut landed = Vec::new();
        for t in tasks {
            let (status, chunk) = t.await.unwrap();
            assert!(status == 202 || status == 416, "round {round}: racing chunk got {status}");
            if status == 202 {
                landed.push(chunk);
            }
        }
        assert_eq!(landed.len(), 1, "round {round}: exactly one chunk starting at 0 can land");
        let (h, _) = expect_status_body(r.c.get(loc.clone()).send().await.unwrap(), 204).await;
        assert_eq!(must_hdr(&h, "range"), "0-999", "round {round}");
        let d = sha256(&landed[0]);
        expect_status_body(r.finish_upload(&loc, &d, Vec::new()).await, 201).await;
        let (_, got) = expect_status_body(r.get(&format!("/v2/race/blobs/{d}")).await, 200).await;
        assert_eq!(got, landed[0], "round {round}");
    }
}

/// Everything the API exposes survives a restart on the same root: tags,
/// manifests, blobs, the catalog, referrers and open upload sessions.
#[tokio::test]
async fn state_survives_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let root = data_dir.path().join("data");
    let start = || Reg::wrap(Berthd::start_with_root(tempfile::tempdir().unwrap(), root.clone(), "", &[]));
    let blob = data(400, 50_000);
    let d = sha256(&blob);
    let (m, md, x, session) = {
        let r = start();
        let (m, md) = r.push_image("keep/app", "v1", 401).await;
        let x = push_referrers(&r, "keep/ref").await;
        let loc = r.start_upload("keep/app").await;
        let resp = r.c.patch(loc).body(blob[..20_000].to_vec()).send().await.unwrap();
        let (h, _) = expect_status_body(resp, 202).await;
        (m, md, x, r.url(&must_hdr(&h, "location")).path().to_string())
    };
    let r = start();
    let (h, body) = expect_status_body(r.get("/v2/keep/app/manifests/v1").await, 200).await;
    assert_eq!(body, m);
    assert_eq!(must_hdr(&h, "docker-content-digest"), md);
    let (_, v) = r.get_json("/v2/_catalog").await;
    assert_eq!(str_list(&v["repositories"]), ["keep/app", "keep/ref"]);
    let (_, ms) = get_referrers(&r, "keep/ref", &x.subject, "").await;
    let got: BTreeSet<String> = ms.iter().map(|m| m["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, BTreeSet::from([x.sbom.0, x.sig.0, x.bundle.0, x.plain.0]));

    // The upload resumes where it stopped.
    let (h, _) = expect_status_body(r.get(&session).await, 204).await;
    assert_eq!(must_hdr(&h, "range"), "0-19999");
    let resp = r
        .req(Method::PATCH, &session)
        .header("content-range", "20000-49999")
        .body(blob[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    let (h, _) = expect_status_body(resp, 202).await;
    let loc = r.url(&must_hdr(&h, "location"));
    expect_status_body(r.finish_upload(&loc, &d, Vec::new()).await, 201).await;
    let (_, got) = expect_status_body(r.get(&format!("/v2/keep/app/blobs/{d}")).await, 200).await;
    assert!(got == blob);
}
