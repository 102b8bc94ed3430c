//! `daemon/deploy/`: the Kubernetes manifests and the berthd container image.
//!
//! * The kustomization lists every manifest; each manifest, the rendered base
//!   and the overlay docs/deploy.md shows (with the k3s component) validate
//!   against the Kubernetes JSON schemas of every minor release
//!   `kubernetes-validate` bundles, offline (`tests/scripts/install-deploy-tools.sh`).
//!   The rendered DaemonSet is then checked for what the schemas cannot see
//!   (probes on loopback, references between objects, the image version), its
//!   config loads in berthd without warnings and its init step runs.
//! * `daemon/deploy/image/build.sh` builds the image offline with umoci (one
//!   platform, and an amd64 + arm64 index); skopeo pushes it to a berthd;
//!   containerd pulls it and runs it with `--net-host`: `berthd --version`
//!   matches the source, and the image's default command serves `/v2/` as
//!   user 65532 under a 64 MiB memory limit, pulling through a TLS upstream
//!   that it trusts through the image's CA bundle path.
//!
//! The containerd part needs root, like tests/tests/containerd.rs.

use crate::common::{berthd_bin, require_tool, run, workspace_root, Berthd};
use crate::support_e2e::containerd::{Containerd, MIRROR_HOST};
use crate::support_e2e::pki::Pki;
use crate::support_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kubernetes minor versions (1.x) whose schemas the manifests must pass:
/// every one that the pinned kubernetes-validate bundles.
const KUBERNETES_MINORS: std::ops::RangeInclusive<u32> = 25..=37;

/// The image's user, which the DaemonSet's berthd container runs as.
const BERTH_UID: u32 = 65532;

/// The memory limit berthd must live in (the DaemonSet's, and a Pi's budget).
const MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

fn deploy_dir() -> PathBuf {
    workspace_root().join("daemon/deploy")
}

// ---------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------

/// Files named as list items (`- name`, `- path: name`) in a kustomization.yaml.
fn kustomization_entries(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|e| e.trim().strip_prefix("path:").unwrap_or(e).trim().to_string())
        .filter(|e| !e.contains(':') && !e.contains(' '))
        .collect()
}

/// YAML files in `dir` (not recursive), without kustomization.yaml.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    out.sort();
    out
}

/// `kubectl kustomize DIR`, written to `out`.
fn kustomize(dir: &Path, out: &Path) -> String {
    let kubectl = require_tool("kubectl");
    let rendered = run(Command::new(kubectl).arg("kustomize").arg(dir));
    std::fs::write(out, &rendered).unwrap();
    rendered
}

/// `kubernetes-validate --strict` against every minor version in
/// [`KUBERNETES_MINORS`]; panics with the validator's report on failure.
fn validate(files: &[&Path]) {
    let validator = require_tool("kubernetes-validate");
    for minor in KUBERNETES_MINORS {
        let mut cmd = Command::new(&validator);
        cmd.args(["--strict", "--kubernetes-version", &format!("1.{minor}.0")]).args(files);
        let out = cmd.output().expect("spawn kubernetes-validate");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "schema validation failed for Kubernetes 1.{minor}:\n{report}");
        assert!(!report.contains("ERROR") && report.contains("passed"), "kubernetes-validate 1.{minor}:\n{report}");
    }
}

/// The documents of a YAML file as JSON, read by the Python (with PyYAML)
/// that runs `kubernetes-validate`: the tests crate has no YAML parser.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let validator = require_tool("kubernetes-validate");
    let script = std::fs::read(&validator).unwrap();
    let shebang = String::from_utf8_lossy(script.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let interpreter = shebang
        .strip_prefix("#!")
        .unwrap_or_else(|| panic!("{} is not a Python script: {shebang:?}", validator.display()));
    let mut words = interpreter.split_whitespace();
    let mut cmd = Command::new(words.next().expect("shebang names an interpreter"));
    cmd.args(words).args([
        "-c",
        "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
    ]);
    let out = run(cmd.arg(path));
    serde_json::from_str::<Vec<Value>>(&out).expect("YAML converted to JSON")
}

fn object<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"].as_str().unwrap_or("").starts_with(name_prefix))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} named {name_prefix}*: {found:?}");
    found[0]
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// A path to `to` relative to the directory `from` (kustomize refuses absolute
/// resource paths).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let (f, t): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..f.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c);
    }
    p
}

/// What the schemas cannot check: the objects reference each other
/// correctly, the probes reach berthd on the node's loopback, the image is
/// this version, and berthd runs as the image's non-root user.
fn check_rendered_base(docs: &[Value]) -> (Value, String) {
    let ns = object(docs, "Namespace", "berth-system");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged", "{ns}");
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(d["metadata"]["namespace"], "berth-system", "every object in berth-system: {d}");
    }
    let sa = object(docs, "ServiceAccount", "berthd");
    assert_eq!(sa["automountServiceAccountToken"], false, "berthd needs no API token: {sa}");
    assert!(
        !docs.iter().any(
            |d| ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"].contains(&d["kind"].as_str().unwrap())
        ),
        "berthd never calls the Kubernetes API: no RBAC"
    );
    let secret = object(docs, "Secret", "berth-s3");
    let cm = object(docs, "ConfigMap", "berthd-config-");
    let cm_name = cm["metadata"]["name"].as_str().unwrap();
    let config_yml = cm["data"]["config.yml"].as_str().expect("ConfigMap holds config.yml").to_string();

    let ds = object(docs, "DaemonSet", "berthd");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "{pod}");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "cluster DNS despite host networking: {pod}");
    assert_eq!(pod["enableServiceLinks"], false, "no REGISTRY_* service-link variables: {pod}");
    assert_eq!(pod["serviceAccountName"], "berthd");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(named(&pod["volumes"], "config")["configMap"]["name"], cm_name, "the generated ConfigMap is mounted");
    assert_eq!(named(&pod["volumes"], "cache")["hostPath"]["path"], "/var/lib/berth");
    assert_eq!(named(&pod["volumes"], "containerd-etc")["hostPath"]["path"], "/etc/containerd");
    assert_eq!(
        named(&pod["volumes"], "cluster-ca")["projected"]["sources"][0]["configMap"]["name"],
        "kube-root-ca.crt"
    );
    let containers: Vec<&Value> =
        pod["initContainers"].as_array().unwrap().iter().chain(pod["containers"].as_array().unwrap()).collect();
    for c in &containers {
        for m in c["volumeMounts"].as_array().unwrap() {
            named(&pod["volumes"], m["name"].as_str().unwrap()); // every mount names a volume
        }
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{}", c["name"]);
        assert!(c["resources"]["limits"]["memory"].is_string(), "{} has a memory limit", c["name"]);
    }

    let main = named(&pod["containers"], "berthd");
    let image = main["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!(":{}", berthd::VERSION)),
        "the DaemonSet's image {image} must be tagged with berthd's version {}",
        berthd::VERSION
    );
    assert_eq!(strs(&main["args"]), ["serve", "--config", "/etc/berth/config.yml"]);
    let mount = |c: &Value, volume: &str| -> String {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{} does not mount {volume}", c["name"]))["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mount(main, "config"), "/etc/berth");
    assert_eq!(mount(main, "cache"), "/var/lib/berth");
    assert_eq!(mount(main, "cluster-ca"), "/var/run/secrets/kubernetes.io/serviceaccount");
    for (var, key) in [
        ("REGISTRY_STORAGE_S3_ACCESSKEY", "accesskey"),
        ("REGISTRY_STORAGE_S3_SECRETKEY", "secretkey"),
        ("REGISTRY_LAYERINDEX_KEY", "layerindexkey"),
    ] {
        let r = &named(&main["env"], var)["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "berth-s3", "{var}");
        assert_eq!(r["key"], key, "{var}");
        assert!(secret["stringData"][key].is_string() || secret["data"][key].is_string(), "Secret has {key}");
    }
    let sc = &main["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], BERTH_UID, "berthd runs as the image's user");
    assert_eq!(main["resources"]["limits"]["memory"], "64Mi", "the daemon lives in 64 MiB");

    // Probes: GET /v2/ on the node's loopback, on berthd's listener port.
    let port = |p: &Value| -> u64 {
        match p {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => named(&main["ports"], name)["containerPort"].as_u64().unwrap(),
            other => panic!("probe port {other}"),
        }
    };
    let mut probe_ports = Vec::new();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &main[probe]["httpGet"];
        assert_eq!(get["path"], "/v2/", "{probe}");
        assert_eq!(
            get["host"], "127.0.0.1",
            "{probe}: berthd listens on loopback only, the default host is the node IP"
        );
        probe_ports.push(port(&get["port"]));
    }

    // The init step: `berthd containerd configure`, as root, with the node's
    // /etc/containerd at the same path (config_path must be the node's path).
    let init = named(&pod["initContainers"], "containerd-configure");
    assert_eq!(init["image"], image, "the init step runs the same berthd");
    let args = strs(&init["args"]);
    assert_eq!(args[..2], ["containerd", "configure"], "{args:?}");
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(mount(init, "containerd-etc"), "/etc/containerd");
    assert_eq!(mount(init, "config"), "/etc/berth");
    let owner = named(&pod["initContainers"], "cache-owner");
    assert_eq!(mount(owner, "cache"), "/var/lib/berth");
    assert!(strs(&owner["command"]).join(" ").contains(&format!("chown -R {BERTH_UID}:{BERTH_UID}")));

    // The config berthd gets: loads without a warning (with the Secret's
    // variables set), S3 storage, the cache on the hostPath, the probes'
    // port on loopback.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, &config_yml).unwrap();
    let vars = vec![
        ("REGISTRY_STORAGE_S3_ACCESSKEY".to_string(), "AK".to_string()),
        ("REGISTRY_STORAGE_S3_SECRETKEY".to_string(), "SK".to_string()),
    ];
    let loaded = berthd::config::load(Some(&config_path), &vars).unwrap_or_else(|e| panic!("config.yml: {e}"));
    assert!(loaded.warnings.is_empty(), "config.yml warnings: {:?}", loaded.warnings);
    let config = loaded.config;
    assert!(matches!(config.storage.backend, berthd::config::Backend::S3(_)), "the DaemonSet's config uses S3");
    let cache = config.cache.as_ref().expect("the node cache is on");
    assert!(cache.path.starts_with("/var/lib/berth"), "cache {} is on the hostPath volume", cache.path.display());
    assert!(config.http.addr.ip().is_loopback(), "berthd listens on loopback: {}", config.http.addr);
    for p in probe_ports {
        assert_eq!(p, u64::from(config.http.addr.port()), "probe port is berthd's http.addr port");
    }
    (ds.clone(), config_yml)
}

/// Runs an init container's berthd args with node paths under `node`.
fn run_init_step(args: &[String], node: &Path, config: &Path) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "/etc/berth/config.yml" {
                config.display().to_string()
            } else if a.starts_with("/etc/") {
                node.join(&a[1..]).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    run(Command::new(berthd_bin()).args(&args))
}

#[test]
fn kubernetes_manifests_validate_offline_and_fit_together() {
    let deploy = deploy_dir();
    let work = tempfile::tempdir().unwrap();

    // The kustomization lists every file in the directory, and the k3s
    // component its patch.
    for dir in [deploy.clone(), deploy.join("k3s")] {
        let listed = kustomization_entries(&dir);
        for f in yaml_files(&dir) {
            assert!(
                listed.contains(&f),
                "{}/kustomization.yaml does not list {f} (it lists {listed:?})",
                dir.display()
            );
        }
        for f in &listed {
            assert!(dir.join(f).exists(), "{}/kustomization.yaml lists {f}, which does not exist", dir.display());
        }
    }
    // Each manifest on its own (config.yml is berthd's config, not a manifest).
    let manifests: Vec<PathBuf> =
        yaml_files(&deploy).iter().filter(|f| *f != "config.yml").map(|f| deploy.join(f)).collect();
    assert!(manifests.len() >= 4, "{manifests:?}");
    validate(&manifests.iter().map(PathBuf::as_path).collect::<Vec<_>>());

    // The base as kustomize renders it.
    let base = work.path().join("base.yaml");
    kustomize(&deploy, &base);
    validate(&[&base]);
    let docs = yaml_documents(&base);
    let (ds, config_yml) = check_rendered_base(&docs);

    // The init step as the DaemonSet runs it, on a node with a containerd 1.6
    // config: it writes hosts.toml files and config_path, says containerd
    // must be restarted once, and changes nothing on the next pod start.
    let node = work.path().join("node");
    std::fs::create_dir_all(node.join("etc/containerd")).unwrap();
    std::fs::write(
        node.join("etc/containerd/config.toml"),
        "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n",
    )
    .unwrap();
    let config = work.path().join("config.yml");
    std::fs::write(&config, &config_yml).unwrap();
    let init_args = strs(&named(&ds["spec"]["template"]["spec"]["initContainers"], "containerd-configure")["args"]);
    let first = run_init_step(&init_args, &node, &config);
    assert!(first.contains("containerd must be restarted"), "first run:\n{first}");
    let hosts = std::fs::read_to_string(node.join("etc/containerd/certs.d/docker.io/hosts.toml")).unwrap();
    assert!(hosts.contains("[host.\"http://127.0.0.1:5000\"]"), "docker.io hosts.toml:\n{hosts}");
    assert!(node.join("etc/containerd/certs.d/registry.example.com/hosts.toml").is_file());
    let toml = std::fs::read_to_string(node.join("etc/containerd/config.toml")).unwrap();
    assert!(toml.contains(&format!("config_path = \"{}\"", node.join("etc/containerd/certs.d").display())), "{toml}");
    let again = run_init_step(&init_args, &node, &config);
    assert!(again.contains("nothing to change"), "second run:\n{again}");

    // The overlay docs/deploy.md shows, as shown and with the k3s component.
    for k3s in [false, true] {
        let docs = render_overlay(work.path(), k3s);
        let secret = object(&docs, "Secret", "berth-s3");
        assert_eq!(secret["data"]["accesskey"], "R0tleGFtcGxlYWNjZXNza2V5", "the overlay's credentials: {secret}");
        let cm = object(&docs, "ConfigMap", "berthd-config-");
        assert_eq!(cm["data"]["config.yml"], OVERLAY_CONFIG, "the overlay's config replaces the base's");
        let pod = &object(&docs, "DaemonSet", "berthd")["spec"]["template"]["spec"];
        assert_eq!(named(&pod["volumes"], "config")["configMap"]["name"], cm["metadata"]["name"]);
        let main = named(&pod["containers"], "berthd");
        assert_eq!(main["image"], format!("ghcr.io/example/berthd:{}", berthd::VERSION));
        let init = named(&pod["initContainers"], "containerd-configure");
        assert_eq!(init["image"], main["image"]);
        let init_args = strs(&init["args"]);
        let mounts_k3s = init["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == "/etc/rancher/k3s");
        assert_eq!((init_args.contains(&"--k3s".to_string()), mounts_k3s), (k3s, k3s), "{init_args:?}");
        if k3s {
            // The k3s init step as it runs: registries.yaml gets berthd as mirror.
            let config = work.path().join("my-berth/config.yml");
            let out = run_init_step(&init_args, &node, &config);
            assert!(out.contains("k3s must be restarted"), "k3s init step:\n{out}");
            let registries = std::fs::read_to_string(node.join("etc/rancher/k3s/registries.yaml")).unwrap();
            assert!(registries.contains("http://127.0.0.1:5000"), "registries.yaml:\n{registries}");
        }
    }
}

/// Writes docs/deploy.md's overlay under `work/my-berth` (with its k3s
/// lines uncommented when `k3s`), renders and validates it.
fn render_overlay(work: &Path, k3s: bool) -> Vec<Value> {
    let overlay = work.join("my-berth");
    std::fs::create_dir_all(&overlay).unwrap();
    let base = relative_path(&overlay, &deploy_dir()).display().to_string();
    let mut kustomization = OVERLAY_KUSTOMIZATION.replace("../berth/daemon/deploy", &base);
    if k3s {
        kustomization = kustomization.replace("# components", "components").replace("#   - ", "  - ");
    }
    std::fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
    std::fs::write(overlay.join("config.yml"), OVERLAY_CONFIG).unwrap();
    std::fs::write(overlay.join("s3.env"), OVERLAY_S3_ENV).unwrap();
    let rendered = work.join(if k3s { "overlay-k3s.yaml" } else { "overlay.yaml" });
    kustomize(&overlay, &rendered);
    validate(&[&rendered]);
    yaml_documents(&rendered)
}

/// docs/deploy.md's overlay (`my-berth/kustomization.yaml`); the test also
/// renders it with the commented k3s component enabled.
const OVERLAY_KUSTOMIZATION: &str = r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../berth/daemon/deploy
# components:             # k3s: edit registries.yaml instead of containerd's files
#   - ../berth/daemon/deploy/k3s
configMapGenerator:
  - name: berthd-config
    namespace: berth-system
    behavior: replace
    files:
      - config.yml
secretGenerator:
  - name: berth-s3
    namespace: berth-system
    behavior: replace
    envs:
      - s3.env
images:
  - name: registry.example.com/berth/berthd
    newName: ghcr.io/example/berthd
"#;

/// docs/deploy.md's `my-berth/s3.env`.
const OVERLAY_S3_ENV: &str = "accesskey=GKexampleaccesskey\nsecretkey=example-secret-key\nlayerindexkey=5f0c8e2a9d41b7c36e1f04a8b2d9c7e1a3f6b0d4c8e2f1a7\n";

/// docs/deploy.md's `my-berth/config.yml`.
const OVERLAY_CONFIG: &str = r#"version: 0.1
storage:
  s3:
    regionendpoint: http://seaweedfs-s3.storage.svc:8333
    bucket: registry
cache:
  path: /var/lib/berth/cache
  maxsize: 20GiB
http:
  addr: 127.0.0.1:5000
  debug:
    addr: 127.0.0.1:5001
mirrors:
  - name: docker.io
    url: https://registry-1.docker.io
  - name: ghcr.io
    url: https://ghcr.io
containerd:
  registries: [registry.goldentooth.net]
"#;

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

/// A minimal 64-bit ELF header for `machine` (183 = AArch64): build.sh only
/// reads headers, so this stands in for a cross-compiled berthd. With
/// `interp` it has a PT_INTERP program header, i.e. is dynamically linked.
fn fake_elf(machine: u16, interp: bool) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    if interp {
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        b.extend_from_slice(&ph);
    }
    b.extend_from_slice(b"not a real program\n");
    b
}

fn write_executable(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const SOURCE_URL: &str = "https://example.invalid/berth";
/// The build time the test gives build.sh, and what it becomes in the image.
const SOURCE_DATE_EPOCH: &str = "1700000000";
const CREATED: &str = "2023-11-14T22:13:20Z";

fn build_sh() -> Command {
    let mut c = Command::new("bash");
    c.arg(deploy_dir().join("image/build.sh"));
    c
}

/// build.sh with `args`; returns the layout tagged with berthd's version.
fn build_image(out: &Path, args: &[&str]) -> Layout {
    let mut c = build_sh();
    c.args(args).arg("--out").arg(out).args(["--source", SOURCE_URL]).env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH);
    let stdout = run(&mut c);
    assert_eq!(stdout.trim(), format!("oci:{}:{}", out.display(), berthd::VERSION), "build.sh prints the reference");
    Layout { dir: out.to_path_buf(), tag: berthd::VERSION.to_string() }
}

/// Checks the image manifest `digest` of `layout` for `arch`; returns the
/// layer's file listing (`tar -tv` lines).
fn check_image_manifest(layout: &Layout, digest: &str, arch: &str) -> String {
    let manifest: Value = serde_json::from_slice(&layout.blob(digest)).unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{manifest}");
    let config: Value = serde_json::from_slice(&layout.blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], arch);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/berthd"]), "{config}");
    assert_eq!(c["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(c["User"], format!("{BERTH_UID}:{BERTH_UID}"), "the image runs as non-root");
    assert!(c["ExposedPorts"]["5000/tcp"].is_object(), "{config}");
    let env = strs(&c["Env"]);
    for var in ["XDG_DATA_HOME=/var/lib", "MALLOC_ARENA_MAX=2"] {
        assert!(env.contains(&var.to_string()), "image Env {env:?} lacks {var}");
    }
    assert_eq!(c["Labels"]["org.opencontainers.image.version"], berthd::VERSION);
    assert_eq!(c["Labels"]["org.opencontainers.image.source"], SOURCE_URL);
    assert_eq!(config["created"], CREATED, "timestamps from SOURCE_DATE_EPOCH");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], berthd::VERSION);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], OCI_LAYER_GZIP);
    let blob = blob_path(&layout.dir, layers[0]["digest"].as_str().unwrap());
    run(Command::new("tar").arg("-tvzf").arg(&blob))
}

/// The owner (`uid/gid`) of `path` in a `tar -tv` listing.
fn tar_owner<'a>(listing: &'a str, path: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.split_whitespace().last().map(|p| p.trim_end_matches('/')) == Some(path))
        .unwrap_or_else(|| panic!("{path} not in the layer:\n{listing}"))
        .split_whitespace()
        .nth(1)
        .unwrap()
}

/// `ctr task ls`: (pid, status) of `id`.
fn task(ctd: &Containerd, id: &str) -> Option<(u32, String)> {
    let out = ctd.ctr_ok(&["task", "ls"]);
    out.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| (f[1].parse().unwrap(), f[2].to_string()))
    })
}

/// A `/proc/<pid>/status` field in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

/// The memory cgroup of `pid`: (limit in bytes, OOM kills so far), from
/// cgroup v2 or v1.
fn memory_cgroup(pid: u32) -> (u64, u64) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let field = |text: &str, name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.trim().parse().unwrap())
    };
    if let Some(path) = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())) {
        let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let limit = read(dir.join("memory.limit_in_bytes")).trim().parse().unwrap();
        (limit, field(&read(dir.join("memory.oom_control")), "oom_kill"))
    } else {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 path");
        let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let limit = read(dir.join("memory.max")).trim().parse().unwrap();
        (limit, field(&read(dir.join("memory.events")), "oom_kill"))
    }
}

/// Unpacks the image manifest `digest` of `layout` (the arm64 entry) into a
/// directory and runs its berthd from there — its own files, its user, its
/// environment — through qemu-user: `--version`, then `serve` answering
/// `/v2/`.
fn arm64_entry_serves_from_its_own_files(layout: &Layout, digest: &str, work: &Path) {
    use crate::support_e2e::arm64::{elf_machine, require_arm64_emulation};
    require_arm64_emulation();
    let manifest: Value = serde_json::from_slice(&layout.blob(digest)).unwrap();
    let layer = blob_path(&layout.dir, manifest["layers"][0]["digest"].as_str().unwrap());
    let rootfs = work.join("arm64-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    run(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&rootfs).arg("--same-owner"));
    assert_eq!(elf_machine(&rootfs.join("usr/local/bin/berthd")), 183, "the arm64 entry holds an AArch64 berthd");
    let version = run(Command::new("chroot").arg(&rootfs).args(["/usr/local/bin/berthd", "--version"]));
    assert_eq!(version.trim(), format!("berthd {}", berthd::VERSION));
    for d in ["proc", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let port = free_port();
    let r = rootfs.display();
    // A private mount + PID namespace: killing it ends berthd and takes the mounts.
    let script = format!(
        "mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && exec chroot --userspec={BERTH_UID}:{BERTH_UID} {r} /usr/local/bin/berthd serve"
    );
    let log = work.join("arm64-serve.log");
    let mut server = PidNamespace(
        Command::new(require_tool("unshare"))
            .args(["--mount", "--pid", "--fork", "--kill-child", "--", "sh", "-c", &script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XDG_DATA_HOME", "/var/lib")
            .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match http("GET", &format!("http://127.0.0.1:{port}/v2/"), &[]) {
            Ok(r) => break r.status,
            Err(e) => {
                let exited = server.0.try_wait().unwrap();
                let text = || std::fs::read_to_string(&log).unwrap_or_default();
                assert!(exited.is_none(), "the image's arm64 berthd exited ({exited:?}):\n{}", text());
                assert!(Instant::now() < deadline, "the image's arm64 berthd does not answer: {e}\n{}", text());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    drop(server);
    assert_eq!(status, 200, "the image's arm64 berthd serves /v2/");
}

/// `unshare --pid --fork` and what runs in its namespace. Dropped (also
/// when a test fails), it kills the namespace's first process, which ends
/// everything in the namespace, then unshare: `--kill-child` alone does
/// not reach a child that changed its user (`chroot --userspec` clears the
/// parent-death signal).
struct PidNamespace(std::process::Child);

impl Drop for PidNamespace {
    fn drop(&mut self) {
        let id = self.0.id();
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")) {
            for pid in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn image_builds_offline_and_runs_under_containerd() {
    require_tool("umoci");
    require_tool("jq");
    let curl = require_tool("curl");
    let work = tempfile::tempdir().unwrap();
    let bin = berthd_bin().display().to_string();
    // The real arm64 build (tests/scripts/build-arm64.sh), run below from the image's files.
    let (arm64, _) = crate::support_e2e::arm64::arm64_binaries();
    let arm64 = arm64.display().to_string();

    // build.sh refuses binaries it cannot package.
    let dynamic_arm64 = work.path().join("dynamic-arm64");
    write_executable(&dynamic_arm64, &fake_elf(183, true));
    for (args, why) in [
        (vec!["--arm64", bin.as_str()], "the binary is for amd64"),
        (vec!["--arm64", dynamic_arm64.to_str().unwrap()], "must be static"),
        (vec!["--amd64", bin.as_str(), "--version", "9.9.9"], "expected \"berthd 9.9.9\""),
    ] {
        let out = build_sh().args(&args).arg("--out").arg(work.path().join("refused")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "build.sh {args:?} must fail with {why:?}:\n{err}");
    }

    // One platform: the tag names its manifest. Rebuilding gives the same digest.
    let single = build_image(&work.path().join("single"), &["--amd64", &bin]);
    let digest = single.digest();
    let listing = check_image_manifest(&single, &digest, "amd64");
    let again = build_image(&work.path().join("single-again"), &["--amd64", &bin]);
    assert_eq!(again.digest(), digest, "build.sh is reproducible");
    assert_eq!(tar_owner(&listing, "usr/local/bin/berthd"), "0/0");
    assert_eq!(tar_owner(&listing, "var/lib/berth"), format!("{BERTH_UID}/{BERTH_UID}"), "data dir owned by berth");
    assert_eq!(tar_owner(&listing, "etc/ssl/certs/ca-certificates.crt"), "0/0");
    let layer = blob_path(
        &single.dir,
        serde_json::from_slice::<Value>(&single.blob(&digest)).unwrap()["layers"][0]["digest"].as_str().unwrap(),
    );
    let file = |path: &str| run(Command::new("tar").arg("-xzOf").arg(&layer).arg(path));
    assert_eq!(
        file("etc/ssl/certs/ca-certificates.crt"),
        std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap(),
        "the system CA bundle is in the image"
    );
    assert!(file("etc/passwd").contains(&format!("berth:x:{BERTH_UID}:{BERTH_UID}:")), "passwd has berth");

    // Two platforms: the tag names an index of both.
    let multi = build_image(&work.path().join("multi"), &["--amd64", &bin, "--arm64", &arm64]);
    let index_digest = multi.digest();
    let index: Value = serde_json::from_slice(&multi.blob(&index_digest)).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    let manifests = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            let p = &m["platform"];
            format!(
                "{}/{}{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(manifests[0]["digest"], digest.as_str(), "the amd64 image is the single-platform one");
    check_image_manifest(&multi, manifests[1]["digest"].as_str().unwrap(), "arm64");
    arm64_entry_serves_from_its_own_files(&multi, manifests[1]["digest"].as_str().unwrap(), work.path());

    // A berthd to push to: plain HTTP for skopeo and containerd, and a TLS
    // listener (test CA) as the upstream of the containerized berthd below.
    let pki = Pki::new(&work.path().join("pki"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nlisteners:\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: [pull, push]\n  - addr: 127.0.0.1:0\n    tls:\n      certificate: {}\n      key: {}\n",
        root.display(),
        pki.path("server.crt"),
        pki.path("server.key")
    );
    let registry = Berthd::start_config(dir, root, &yaml, &[]);
    let (plain, tls) = (registry.addrs[0].clone(), registry.addrs[1].clone());
    let repo_tag = format!("berth/berthd:{}", berthd::VERSION);
    let sk = Skopeo::new();
    sk.push(&multi, &plain, &repo_tag, &["--all"]);

    // containerd pulls it through hosts.toml and runs it with host networking.
    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir(&plain);
    let hosts = hosts.to_str().unwrap();
    let snap = format!("--snapshotter={}", ctd.snapshotter);
    let image = format!("{MIRROR_HOST}/{repo_tag}");
    ctd.ctr_ok(&["images", "pull", &snap, "--hosts-dir", hosts, &image]);
    assert_eq!(ctd.image_digest(&image), index_digest, "containerd resolved the index");
    let id = format!("{}-version", ctd.namespace);
    let version = version_in(&ctd, &snap, &image, &id, work.path());
    assert_eq!(version.trim(), format!("berthd {}", berthd::VERSION), "berthd --version in the image");

    // Without a registry: one platform's image as an archive, imported into
    // the node's containerd (docs/deploy.md, first install).
    let archive = work.path().join("berthd-amd64.tar");
    let imported = format!("registry.example.com/berth/berthd:{}", berthd::VERSION);
    sk.ok(&[
        "copy",
        &format!("oci:{}:{}-amd64", multi.dir.display(), berthd::VERSION),
        &format!("oci-archive:{}:{imported}", archive.display()),
    ]);
    ctd.ctr_ok(&["images", "import", &snap, archive.to_str().unwrap()]);
    assert_eq!(ctd.image_digest(&imported), digest, "the imported image is the amd64 one");
    let id = format!("{}-imported", ctd.namespace);
    let version = version_in(&ctd, &snap, &imported, &id, work.path());
    assert_eq!(version.trim(), format!("berthd {}", berthd::VERSION), "berthd --version in the imported image");

    // The image's own command (`serve`), as its user, in 64 MiB; its
    // upstream is the TLS listener, trusted through the CA bundle path the
    // image ships (here with the test CA added).
    let bundle = work.path().join("ca-bundle.crt");
    let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap();
    pem.extend(std::fs::read(pki.dir.join("ca.crt")).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = work.path().join("berthd-container.log");
    let id = format!("{}-serve", ctd.namespace);
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--net-host",
        &snap,
        "--memory-limit",
        &MEMORY_LIMIT.to_string(),
        "--log-uri",
        &format!("file://{}", log.display()),
        "--env",
        &format!("REGISTRY_HTTP_ADDR={addr}"),
        "--env",
        &format!("REGISTRY_PROXY_REMOTEURL=https://{tls}"),
        "--mount",
        &format!("type=bind,src={},dst=/etc/ssl/certs/ca-certificates.crt,options=rbind:ro", bundle.display()),
        &image,
        &id,
    ]);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let v2 = loop {
        match http("GET", &format!("http://{addr}/v2/"), &[]) {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "containerized berthd does not answer /v2/: {e}\nlog:\n{}",
                    log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(v2.status, 200, "/v2/: {}", String::from_utf8_lossy(&v2.body));
    assert_eq!(v2.header("docker-distribution-api-version").as_deref(), Some("registry/2.0"));
    let (pid, status) = task(&ctd, &id).expect("the task is listed");
    assert_eq!(status, "RUNNING");
    let uid_line = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = uid_line.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uid_line.split_whitespace().nth(1), Some(BERTH_UID.to_string().as_str()), "runs as berth: {uid_line}");
    let (limit, _) = memory_cgroup(pid);
    assert_eq!(limit, MEMORY_LIMIT, "the container's memory limit");

    // Load: the whole image (both platforms) through the containerized
    // berthd, which fetches it over TLS and stores it as uid 65532 in the
    // image's /var/lib/berth; then eight concurrent reads of the layer.
    let through = sk.pull(&addr, &repo_tag, &work.path().join("through"), berthd::VERSION, &["--all"]);
    assert_eq!(assert_same_image(&multi, &through), index_digest);
    assert!(log_text().contains("pull-through mirror"), "the upstream is a mirror; log:\n{}", log_text());
    let layer_digest = serde_json::from_slice::<Value>(&multi.blob(&digest)).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{addr}/v2/berth/berthd/blobs/{layer_digest}");
    let readers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(&curl)
                .args(["-sf", "-o", "/dev/null", "-w", "%{size_download}", &url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let size = std::fs::metadata(&layer).unwrap().len().to_string();
    for r in readers {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "concurrent blob read failed; log:\n{}", log_text());
        assert_eq!(String::from_utf8_lossy(&out.stdout), size, "bytes read");
    }
    let (pid_after, status) = task(&ctd, &id).expect("the task is still listed");
    assert_eq!((pid_after, status.as_str()), (pid, "RUNNING"), "berthd survived the load; log:\n{}", log_text());
    let peak_kib = proc_status_kb(pid, "VmHWM");
    let (_, oom_kills) = memory_cgroup(pid);
    eprintln!("containerized berthd: peak RSS {} KiB under a {} MiB limit", peak_kib, MEMORY_LIMIT >> 20);
    assert_eq!(oom_kills, 0, "no OOM kill in the container's cgroup");
    assert!(peak_kib * 1024 < MEMORY_LIMIT, "peak RSS {peak_kib} KiB");
    assert_eq!(http_get(&format!("http://{addr}/v2/")).status, 200);

    // SIGTERM (what the kubelet sends) stops it cleanly, as PID 1.
    ctd.ctr_ok(&["task", "kill", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while task(&ctd, &id).is_some_and(|(_, s)| s != "STOPPED") {
        assert!(Instant::now() < deadline, "berthd did not stop on SIGTERM; log:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        log_text().contains("shutdown signal received; draining in-flight requests"),
        "berthd did not handle SIGTERM; log:\n{}",
        log_text()
    );
    // Exit status 0 is the proof of a clean stop: berthd exits 0 only once
    // every listener drained. Its last log line ("shut down: in-flight
    // requests finished") is not awaited: containerd 1.6's shim sometimes
    // drops the last output of a stopping task on a loaded machine (seen
    // twice in CI, 10 s after the task stopped).
    // `ctr task rm` warns about a non-zero exit status.
    let rm = ctd.ctr_output(&["task", "rm", &id]);
    let rm_err = String::from_utf8_lossy(&rm.stderr);
    assert!(rm.status.success() && !rm_err.contains("exit code"), "berthd's exit: {rm_err}\nlog:\n{}", log_text());
    ctd.ctr_ok(&["containers", "rm", &id]);
}

/// `berthd --version` run in a container of `image`. The output goes to a
/// file the process writes itself (`--log-uri file://`): ctr's own stdout
/// copy can lose what a process prints just before it exits (containerd#770).
fn version_in(ctd: &Containerd, snap: &str, image: &str, id: &str, dir: &Path) -> String {
    let log = dir.join(format!("{id}.out"));
    let uri = format!("file://{}", log.display());
    ctd.ctr_ok(&[
        "run",
        "--rm",
        "--net-host",
        snap,
        "--log-uri",
        &uri,
        image,
        id,
        "/usr/local/bin/berthd",
        "--version",
    ]);
    std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("no output of berthd --version in {image}: {e}"))
}
