//! Pull-through mirroring and node integration, end to end: an upstream
//! registry on loopback with TLS from a test CA and htpasswd auth (Debian's
//! docker-registry), two berthd nodes sharing one storage root, and a real
//! containerd configured only by the files `berthd containerd configure`
//! wrote. Plus the configure command on copies of real containerd 1.6, 2.x
//! and k3s config files.

use crate::common::{berthd_bin, require_tool, run, Berthd};
use crate::support_e2e::containerd::Containerd;
use crate::support_e2e::pki::Pki;
use crate::support_e2e::token::Signer;
use crate::support_e2e::*;
use std::path::Path;
use std::process::Command;

const USER: &str = "mirror";
const PASSWORD: &str = "s3cret-pass";

/// docker-registry with TLS and basic auth, serving `root`.
fn upstream(pki: &Pki, root: &Path, work: &Path) -> DockerRegistry {
    let htpasswd = work.join("htpasswd");
    run(Command::new(require_tool("htpasswd")).args(["-Bbc"]).arg(&htpasswd).args([USER, PASSWORD]));
    let top = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nauth:\n  htpasswd:\n    realm: upstream\n    path: {}\n",
        root.display(),
        htpasswd.display()
    );
    let http_extra =
        format!("  tls:\n    certificate: {}\n    key: {}\n", pki.path("server.crt"), pki.path("server.key"));
    DockerRegistry::start_with(root, &top, &http_extra, "https")
}

/// berthd config mirroring `up_addr` (everything but `http`).
fn mirror_yaml(root: &Path, up_addr: &str, ca: &str, tagttl: &str, allow: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nmirrors:\n  - name: {up_addr}\n    url: https://{up_addr}\n    username: {USER}\n    password: {PASSWORD}\n    tagttl: {tagttl}\n    allow: {allow}\ntls:\n  cacerts: [{ca}]\ncontainerd:\n  registries: [cluster.registry.test]\n",
        root.display()
    )
}

/// Pushes to the TLS + auth upstream with the test CA and credentials.
fn push_upstream(sk: &Skopeo, certs: &Path, layout: &Layout, addr: &str, repo_tag: &str) {
    sk.ok(&[
        "copy",
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        "--dest-cert-dir",
        &certs.display().to_string(),
        &layout.oci_ref(),
        &format!("docker://{addr}/{repo_tag}"),
    ]);
}

fn blob_gets(reg: &DockerRegistry) -> usize {
    reg.log_text().lines().filter(|l| l.contains("GET /v2/") && l.contains("/blobs/sha256:")).count()
}

#[test]
fn containerd_pulls_through_the_mirror_once_per_cluster() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let up_root = work.path().join("upstream");
    let reg = upstream(&pki, &up_root, work.path());
    let img = build_busybox_image(work.path(), "img");
    let certs = work.path().join("client-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(pki.dir.join("ca.crt"), certs.join("ca.crt")).unwrap();
    let sk = Skopeo::new();
    push_upstream(&sk, &certs, &img.layout, &reg.addr, "library/app:v1");
    let pushed_gets = blob_gets(&reg);

    // Two nodes on one shared storage root.
    let shared = work.path().join("shared");
    let yaml = mirror_yaml(&shared, &reg.addr, &pki.path("ca.crt"), "0s", "[\"library/*\"]");
    let node_a = Berthd::start_config(tempfile::tempdir().unwrap(), shared.clone(), &yaml, &[]);
    let node_b = Berthd::start_config(tempfile::tempdir().unwrap(), shared.clone(), &yaml, &[]);

    // containerd configured only by what `berthd containerd configure` wrote.
    let etc = work.path().join("etc");
    let node_cfg = work.path().join("node-a.yml");
    std::fs::write(&node_cfg, format!("{yaml}http:\n  addr: {}\n", node_a.addr)).unwrap();
    let certs_d = etc.join("containerd/certs.d");
    let ctd_config = etc.join("containerd/config.toml");
    let configure = |cfg: &Path, extra: &[&str]| {
        run(Command::new(berthd_bin())
            .args(["containerd", "configure", "--config"])
            .arg(cfg)
            .arg("--certs-d")
            .arg(&certs_d)
            .arg("--containerd-config")
            .arg(&ctd_config)
            .args(extra))
    };
    let out = configure(&node_cfg, &[]);
    assert!(out.contains("hosts.toml"), "{out}");
    let hosts = std::fs::read_to_string(certs_d.join(&reg.addr).join("hosts.toml")).unwrap();
    assert!(hosts.contains(&format!("[host.\"http://{}\"]", node_a.addr)), "{hosts}");
    assert!(certs_d.join("cluster.registry.test/hosts.toml").exists());
    assert!(std::fs::read_to_string(&ctd_config).unwrap().contains(&certs_d.display().to_string()));

    let ctd = Containerd::start();
    let image = format!("{}/library/app:v1", reg.addr);
    let hosts_dir = certs_d.display().to_string();
    ctd.ctr_ok(&["image", "pull", "--hosts-dir", &hosts_dir, &image]);
    assert_eq!(ctd.image_digest(&image), img.manifest_digest);
    let snap = format!("--snapshotter={}", ctd.snapshotter);
    let run_out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &image,
        &format!("{}-m", ctd.namespace),
        "/bin/busybox",
        "echo",
        "via-mirror",
    ]);
    assert!(run_out.contains("via-mirror"), "{run_out}");
    let after_a = blob_gets(&reg);
    assert!(after_a > pushed_gets, "node A fetched the layers from the upstream");

    // Node B: same image, no new upstream blob request.
    let direct = http_get(&format!("{}/v2/library/app/manifests/v1?ns={}", node_b.url(), reg.addr));
    assert_eq!(direct.status, 200, "{}", String::from_utf8_lossy(&direct.body));
    assert_eq!(crate::common::sha256(&direct.body), img.manifest_digest);
    for blob in [&img.config_digest, &img.layer_digest] {
        let r = http_get(&format!("{}/v2/library/app/blobs/{blob}?ns={}", node_b.url(), reg.addr));
        assert_eq!(r.status, 200);
        assert_eq!(crate::common::sha256(&r.body), *blob);
    }
    assert_eq!(blob_gets(&reg), after_a, "node B served the layers without asking the upstream");

    // The first mirroring of a layer built its seek index into the shared
    // storage (for lazy pulls on every node), before anyone asked for it.
    let hex = img.layer_digest.trim_start_matches("sha256:");
    let index_file = shared.join(format!("berth/layer-index/v1/sha256/{}/{hex}/index.json.zst", &hex[..2]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !index_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no seek index for the mirrored layer at {}",
            index_file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let idx =
        http_get(&format!("{}/v2/library/app/_berth/layer/{}/index?ns={}", node_b.url(), img.layer_digest, reg.addr));
    assert_eq!(idx.status, 200, "{}", String::from_utf8_lossy(&idx.body));
    assert_eq!(idx.json()["compression"], "gzip");

    // Concurrent first pulls of an uncached layer on one node: one upstream fetch.
    let big = build_busybox_image_with(work.path(), "big", &[("opt/big", &vec![7u8; 8 << 20][..])]);
    push_upstream(&sk, &certs, &big.layout, &reg.addr, "library/big:v1");
    let before = blob_gets(&reg);
    let url = format!("{}/v2/library/big/blobs/{}?ns={}", node_b.url(), big.layer_digest, reg.addr);
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http_get(&url))
        })
        .collect();
    for p in pulls {
        let r = p.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(crate::common::sha256(&r.body), big.layer_digest);
    }
    assert_eq!(blob_gets(&reg) - before, 1, "8 concurrent first pulls fetched the layer from the upstream once");

    // Upstream gone: the cached image still pulls (tag revalidation fails,
    // the last known digest is served).
    let up_addr = reg.addr.clone();
    reg.stop();
    let ctd2 = Containerd::start();
    ctd2.ctr_ok(&["image", "pull", "--hosts-dir", &hosts_dir, &image]);
    assert_eq!(ctd2.image_digest(&image), img.manifest_digest);
    // The console's node page names the mirror, its allow-list and the
    // failure just seen.
    let page = String::from_utf8(http_get(&format!("{}/ui/node", node_a.url())).body).unwrap();
    let mirrors = &page[page.find("id=\"mirrors\"").unwrap()..page.find("id=\"gc\"").unwrap()];
    assert!(mirrors.contains(&up_addr) && mirrors.contains("library/*"), "{mirrors}");
    assert!(mirrors.contains("is unreachable"), "the last error is shown: {mirrors}");

    // The allow-list and the no-push rule.
    let denied = http_get(&format!("{}/v2/other/app/manifests/v1?ns={}", node_b.url(), up_addr));
    assert_eq!(denied.status, 403);
    let body = denied.json();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("allow-list"), "{body}");
    let push = http("POST", &format!("{}/v2/library/app/blobs/uploads/?ns={}", node_b.url(), up_addr), &[]).unwrap();
    assert_eq!(push.status, 405);
    assert_eq!(push.json()["errors"][0]["code"], "UNSUPPORTED");

    // Reversible: --remove restores what was there (nothing).
    configure(&node_cfg, &["--remove"]);
    assert!(!certs_d.join(&up_addr).join("hosts.toml").exists());
    assert!(!ctd_config.exists(), "config.toml did not exist before and is gone again");
}

fn configure_in(dir: &Path, cfg: &Path, extra: &[&str]) -> String {
    run(&mut configure_command(dir, cfg, extra))
}

#[test]
fn configure_is_idempotent_and_reversible_on_real_config_files() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("berthd.yml");
    std::fs::write(
        &cfg,
        "http:\n  addr: 127.0.0.1:5000\nmirrors:\n  - url: https://registry-1.docker.io\n  - name: ghcr.io\n    url: https://ghcr.io\n",
    )
    .unwrap();

    // containerd 1.6's own default config, as `containerd config default` prints it.
    let v16 = run(Command::new(require_tool("containerd")).args(["config", "default"]));
    // containerd 2.x's layout (version 3), with the user's comments.
    let v2x = "# containerd 2.x, edited by the operator\nversion = 3\n\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs' # keep this\n\n  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n";
    for (name, original) in [("1.6", v16.as_str()), ("2.x", v2x)] {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), original).unwrap();
        let dry = configure_in(&dir, &cfg, &["--dry-run"]);
        assert!(dry.contains("+server = \"https://registry-1.docker.io\"") && dry.contains("dry run"), "{dry}");
        assert_eq!(std::fs::read_to_string(dir.join("config.toml")).unwrap(), original, "dry run writes nothing");
        let first = configure_in(&dir, &cfg, &[]);
        assert!(first.contains("must be restarted"), "{first}");
        let edited = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(edited.contains(&dir.join("certs.d").display().to_string()), "{edited}");
        if name == "2.x" {
            assert!(edited.contains("# keep this") && edited.contains("# containerd 2.x, edited by the operator"));
            assert!(edited.contains("/etc/docker/certs.d"), "the operator's config_path is kept");
        }
        let second = configure_in(&dir, &cfg, &[]);
        assert!(second.contains("nothing to change"), "second run: {second}");
        configure_in(&dir, &cfg, &["--remove"]);
        assert_eq!(std::fs::read_to_string(dir.join("config.toml")).unwrap(), original, "byte for byte");
        assert!(!dir.join("certs.d/docker.io/hosts.toml").exists());
    }

    // k3s: registries.yaml instead of containerd's files.
    let dir = work.path().join("k3s");
    std::fs::create_dir_all(&dir).unwrap();
    let reg_yaml = dir.join("registries.yaml");
    let original = "# k3s registries\nmirrors:\n  docker.io:\n    endpoint:\n      - \"https://mirror.example.com\"\nconfigs:\n  registry.example.com:\n    auth:\n      username: u\n      password: p\n";
    std::fs::write(&reg_yaml, original).unwrap();
    let k3s_args = ["--k3s-registries", reg_yaml.to_str().unwrap()];
    let first = configure_in(&dir, &cfg, &k3s_args);
    assert!(first.contains("k3s must be restarted"), "{first}");
    let edited = std::fs::read_to_string(&reg_yaml).unwrap();
    assert!(
        edited.contains("http://127.0.0.1:5000")
            && edited.contains("https://mirror.example.com")
            && edited.contains("ghcr.io"),
        "{edited}"
    );
    assert!(edited.find("http://127.0.0.1:5000") < edited.find("https://mirror.example.com"), "berthd first");
    assert!(configure_in(&dir, &cfg, &k3s_args).contains("nothing to change"));
    assert!(!dir.join("config.toml").exists(), "containerd's config is not touched on k3s");
    configure_in(&dir, &cfg, &[&["--remove"][..], &k3s_args[..]].concat());
    assert_eq!(std::fs::read_to_string(&reg_yaml).unwrap(), original, "byte for byte");
}

/// A minimal token service, as docker_auth runs it: checks basic
/// credentials and signs a token for the requested scope.
struct TokenService {
    addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenService {
    fn start(key_pem: Vec<u8>, user: &'static str, password: &'static str) -> TokenService {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem).unwrap();
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut authorized = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                    use base64::Engine;
                    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                    if h.to_ascii_lowercase().starts_with("authorization:") && h.contains(&expected) {
                        authorized = true;
                    }
                }
                seen.lock().unwrap().push(request_line.clone());
                let query =
                    request_line.split_whitespace().nth(1).unwrap_or("").split_once('?').map(|x| x.1).unwrap_or("");
                let scope: String = form_decode(query, "scope");
                let mut stream = stream;
                if !authorized {
                    let _ = stream
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    continue;
                }
                let parts: Vec<&str> = scope.split(':').collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let claims = serde_json::json!({
                    "iss": "upstream-issuer", "sub": user, "aud": "upstream", "exp": now + 300, "iat": now,
                    "access": [{"type": parts.first().unwrap_or(&""), "name": parts.get(1).unwrap_or(&""),
                                "actions": parts.get(2).unwrap_or(&"").split(',').collect::<Vec<_>>()}],
                });
                let token =
                    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
                        .unwrap();
                let body = serde_json::json!({ "token": token, "expires_in": 300 }).to_string();
                let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            }
        });
        TokenService { addr, requests }
    }
}

fn form_decode(query: &str, key: &str) -> String {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap_or(b'?'));
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .unwrap_or_default()
}

#[test]
fn the_mirror_follows_the_bearer_token_flow() {
    let work = tempfile::tempdir().unwrap();
    let signer = Signer::new(work.path());
    let tokens = TokenService::start(std::fs::read(work.path().join("signer.key")).unwrap(), "mirror-bot", "hub-token");

    // The upstream: a berthd with token auth (what Docker Hub does).
    let up_dir = tempfile::tempdir().unwrap();
    let up_root = up_dir.path().join("data");
    let up_yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  token:\n    realm: http://{}/token\n    service: upstream\n    issuer: upstream-issuer\n    rootcertbundle: {}\nlisteners:\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: []\n",
        up_root.display(),
        tokens.addr,
        signer.bundle.display()
    );
    let upstream = Berthd::start_config(up_dir, up_root, &up_yaml, &[]);
    let img = build_busybox_image(work.path(), "img");
    let push_token = signer.token(
        serde_json::json!([{"type":"repository","name":"library/busybox","actions":["pull","push"]}]),
        300,
        "upstream-issuer",
        "upstream",
    );
    Skopeo::new().ok(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-registry-token",
        &push_token,
        &img.layout.oci_ref(),
        &format!("docker://{}/library/busybox:1.36", upstream.addr),
    ]);

    // The mirror, named docker.io: one-word names get `library/`.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nmirrors:\n  - name: docker.io\n    url: http://{}\n    username: mirror-bot\n    password: hub-token\n",
        root.display(),
        upstream.addr
    );
    let mirror = Berthd::start_config(dir, root, &yaml, &[]);
    let r = http_get(&format!("{}/v2/busybox/manifests/1.36?ns=docker.io", mirror.url()));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(crate::common::sha256(&r.body), img.manifest_digest);
    let layer = http_get(&format!("{}/v2/library/busybox/blobs/{}?ns=docker.io", mirror.url(), img.layer_digest));
    assert_eq!(layer.status, 200);
    assert_eq!(crate::common::sha256(&layer.body), img.layer_digest);
    let seen = tokens.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l.contains("scope=repository%3Alibrary%2Fbusybox%3Apull")
            || l.contains("scope=repository:library/busybox:pull")),
        "the mirror asked the token service for the pull scope: {seen:?}"
    );
    assert!(seen.len() <= 2, "tokens are reused until they expire: {seen:?}");
    assert!(!mirror.log_text().contains("hub-token"), "the upstream password never appears in the log");
}
