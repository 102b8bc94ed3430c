//! Pushing from anywhere, safely: a TLS listener with htpasswd users beside
//! the anonymous loopback listener, token auth with a test signer, and
//! certificate rotation during a running pull. Real skopeo throughout.

use crate::common::{berthd_bin, require_tool, run, sha256, Berthd};
use crate::support_e2e::pki::Pki;
use crate::support_e2e::token::Signer;
use crate::support_e2e::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let file = dir.join("htpasswd");
    let _ = std::fs::remove_file(&file);
    for (i, (u, p)) in users.iter().enumerate() {
        let flags = if i == 0 { "-Bbc" } else { "-Bb" };
        run(Command::new(require_tool("htpasswd")).args([flags]).arg(&file).args([*u, *p]));
    }
    file
}

/// berthd with a loopback listener (anonymous pull) and a TLS listener
/// (credentials for everything), htpasswd auth.
fn start_with_users(pki: &Pki, htpasswd: &Path, node_access: &str) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\nlisteners:\n  - addr: 127.0.0.1:0\n  - addr: 127.0.0.1:0\n    tls:\n      certificate: {}\n      key: {}\n    access:\n      anonymous: []\n{node_access}",
        root.display(),
        htpasswd.display(),
        pki.path("server.crt"),
        pki.path("server.key"),
    );
    Berthd::start_config(dir, root, &yaml, &[])
}

fn cert_dir(pki: &Pki, work: &Path) -> String {
    let d = work.join("certs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(pki.dir.join("ca.crt"), d.join("ca.crt")).unwrap();
    d.display().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pushes_need_credentials_except_where_configured() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let users = htpasswd(work.path(), &[("alice", "wonderland"), ("reader", "readonly")]);
    let berthd = start_with_users(&pki, &users, "");
    let (loopback, node) = (&berthd.addrs[0], &berthd.addrs[1]);
    let certs = cert_dir(&pki, work.path());
    let img = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    let dest = format!("docker://{node}/team/app:v1");

    // TLS listener: refused without credentials, accepted with.
    let out = sk.output(&["copy", "--dest-cert-dir", &certs, &img.layout.oci_ref(), &dest]);
    assert!(!out.status.success(), "push without credentials must fail");
    assert!(
        stderr(&out).contains("authentication required") || stderr(&out).contains("unauthorized"),
        "{}",
        stderr(&out)
    );
    let out =
        sk.output(&["copy", "--dest-cert-dir", &certs, "--dest-creds", "alice:wrong", &img.layout.oci_ref(), &dest]);
    assert!(!out.status.success(), "a wrong password must fail");
    sk.ok(&["copy", "--dest-cert-dir", &certs, "--dest-creds", "alice:wonderland", &img.layout.oci_ref(), &dest]);

    // Loopback: anonymous pull works, anonymous push does not.
    let pulled = sk.pull(loopback, "team/app:v1", &work.path().join("pulled"), "v1", &[]);
    assert_same_image(&img.layout, &pulled);
    let out = sk.output(&[
        "copy",
        "--dest-tls-verify=false",
        &img.layout.oci_ref(),
        &format!("docker://{loopback}/team/app:v2"),
    ]);
    assert!(!out.status.success(), "anonymous push on loopback is refused by default");

    // The answers say what is missing.
    let r = http("POST", &format!("http://{loopback}/v2/team/app/blobs/uploads/"), &[]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("repository:team/app:push"));
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Basic realm=\"berth-test\""));
    let failed = berthd.log_text();
    assert!(
        failed.contains("failed login") && !failed.contains("wrong\""),
        "failed logins are logged without the password"
    );
}

#[test]
fn a_user_gets_only_the_listeners_authenticated_actions() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let users = htpasswd(work.path(), &[("reader", "readonly")]);
    let berthd = start_with_users(&pki, &users, "      authenticated: [pull]\n");
    let certs = cert_dir(&pki, work.path());
    let img = build_busybox_image(work.path(), "img");
    let out = Skopeo::new().output(&[
        "copy",
        "--dest-cert-dir",
        &certs,
        "--dest-creds",
        "reader:readonly",
        &img.layout.oci_ref(),
        &format!("docker://{}/team/app:v1", berthd.addrs[1]),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not allowed repository:team/app:push") || stderr(&out).contains("denied"),
        "{}",
        stderr(&out)
    );

    // The htpasswd file is re-read when it changes.
    htpasswd(work.path(), &[("reader", "readonly"), ("newcomer", "hello")]);
    std::thread::sleep(Duration::from_millis(1200));
    use base64::Engine;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("newcomer:hello"));
    let r = http("GET", &format!("http://{}/v2/_catalog", berthd.addrs[0]), &[("authorization", &basic)]).unwrap();
    assert_eq!(r.status, 200, "the new user can log in: {}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_malformed_htpasswd_line_is_reported_at_start() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("htpasswd");
    std::fs::write(&file, "alice:$apr1$Yq5zQ3nR$kd2.hw6Ze1C5mJ1dmwYhH/\n").unwrap();
    let cfg = work.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: r\n    path: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            work.path().join("data").display(),
            file.display()
        ),
    )
    .unwrap();
    let out = Command::new(berthd_bin()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("htpasswd:1") && err.contains("alice") && err.contains("bcrypt"), "{err}");
}

#[test]
fn tokens_grant_exactly_their_scopes() {
    let work = tempfile::tempdir().unwrap();
    let signer = Signer::new(work.path());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  token:\n    realm: https://auth.example.test/token\n    service: berth-test\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        root.display(),
        signer.bundle.display()
    );
    let berthd = Berthd::start_config(dir, root, &yaml, &[]);
    let img = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    let dest = format!("docker://{}/team/app:v1", berthd.addr);
    let push_token = signer.token(
        serde_json::json!([{"type":"repository","name":"team/app","actions":["pull","push"]}]),
        300,
        "test-issuer",
        "berth-test",
    );
    let pull_token = signer.token(
        serde_json::json!([{"type":"repository","name":"team/app","actions":["pull"]}]),
        300,
        "test-issuer",
        "berth-test",
    );
    let expired = signer.token(
        serde_json::json!([{"type":"repository","name":"team/app","actions":["*"]}]),
        -120,
        "test-issuer",
        "berth-test",
    );
    let foreign = signer.token(
        serde_json::json!([{"type":"repository","name":"team/app","actions":["*"]}]),
        300,
        "someone-else",
        "berth-test",
    );

    // Without a token: the challenge names realm, service and scope.
    let r = http("GET", &format!("{}/v2/team/app/tags/list", berthd.url()), &[]).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        "Bearer realm=\"https://auth.example.test/token\",service=\"berth-test\",scope=\"repository:team/app:pull\""
    );

    let out = sk.output(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-registry-token",
        &pull_token,
        &img.layout.oci_ref(),
        &dest,
    ]);
    assert!(!out.status.success(), "a pull-only token cannot push");
    sk.ok(&["copy", "--dest-tls-verify=false", "--dest-registry-token", &push_token, &img.layout.oci_ref(), &dest]);
    let raw = sk.ok(&["inspect", "--raw", "--tls-verify=false", "--registry-token", &pull_token, &dest]);
    assert_eq!(sha256(raw.as_bytes()), img.manifest_digest);

    let bearer = |t: &str| format!("Bearer {t}");
    let url = format!("{}/v2/team/app/manifests/v1", berthd.url());
    let r = http("GET", &url, &[("authorization", &bearer(&expired))]).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("expired"));
    let r = http("GET", &url, &[("authorization", &bearer(&foreign))]).unwrap();
    assert_eq!(r.status, 401);
    // A token valid only from an hour ahead is refused until then.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let future = signer.sign(&serde_json::json!({
        "iss": "test-issuer", "sub": "ci", "aud": "berth-test", "iat": now, "nbf": now + 3600, "exp": now + 7200,
        "access": [{"type":"repository","name":"team/app","actions":["*"]}],
    }));
    let r = http("GET", &url, &[("authorization", &bearer(&future))]).unwrap();
    assert_eq!(r.status, 401, "a token is not valid before its nbf");
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("not valid yet"));
    let r = http("DELETE", &url, &[("authorization", &bearer(&pull_token))]).unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    assert!(r.json()["errors"][0]["message"].as_str().unwrap().contains("repository:team/app:delete"));
    // The catalog needs registry:catalog:*.
    let r = http("GET", &format!("{}/v2/_catalog", berthd.url()), &[("authorization", &bearer(&push_token))]).unwrap();
    assert_eq!(r.status, 403);
    let catalog = signer.token(
        serde_json::json!([{"type":"registry","name":"catalog","actions":["*"]}]),
        300,
        "test-issuer",
        "berth-test",
    );
    let r = http("GET", &format!("{}/v2/_catalog", berthd.url()), &[("authorization", &bearer(&catalog))]).unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_running_pull_survives_certificate_rotation() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let users = htpasswd(work.path(), &[("alice", "wonderland")]);
    let berthd = start_with_users(&pki, &users, "");
    let node = berthd.addrs[1].clone();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.dir.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let data: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let digest = sha256(&data);
    let r = client
        .post(format!("https://{node}/v2/big/blob/blobs/uploads/?digest={digest}"))
        .basic_auth("alice", Some("wonderland"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Start a pull and read it slowly.
    let mut resp = client
        .get(format!("https://{node}/v2/big/blob/blobs/{digest}"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let first = resp.chunk().await.unwrap().unwrap();
    got.extend_from_slice(&first);

    // Rotate the certificate files while the pull is running.
    pki.issue("next", "rotated");
    std::fs::rename(pki.dir.join("next.key"), pki.dir.join("server.key")).unwrap();
    std::fs::rename(pki.dir.join("next.crt"), pki.dir.join("server.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let subject = tokio::task::spawn_blocking({
        let node = node.clone();
        let ca = pki.path("ca.crt");
        move || {
            let out = Command::new("openssl")
                .args(["s_client", "-connect", &node, "-CAfile", &ca, "-brief"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        }
    })
    .await
    .unwrap();
    assert!(subject.contains("O = rotated"), "the next handshake shows the new certificate: {subject}");

    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), data.len(), "the running pull completed");
    assert_eq!(sha256(&got), digest);
}

#[test]
fn a_client_certificate_signed_by_clientcas_authenticates() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    pki.issue("client", "ci-runner");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nlisteners:\n  - addr: 127.0.0.1:0\n    tls:\n      certificate: {}\n      key: {}\n      clientcas: [{}]\n    access:\n      anonymous: [pull]\n",
        root.display(),
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("ca.crt"),
    );
    let berthd = Berthd::start_config(dir, root, &yaml, &[]);
    let url = format!("https://{}/v2/team/app/blobs/uploads/", berthd.addr);
    let curl = |extra: &[&str]| -> String {
        let out = Command::new(require_tool("curl"))
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--cacert", &pki.path("ca.crt")])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401", "without a certificate the client is anonymous");
    assert_eq!(
        curl(&["--cert", &pki.path("client.crt"), "--key", &pki.path("client.key")]),
        "202",
        "a certificate from clientcas authenticates"
    );
}
