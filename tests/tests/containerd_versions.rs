//! containerd 1.7 (Debian 13, trixie) and 2.x (Debian unstable, sid) nodes,
//! each in a Debian root of its own on this host (host: containerd 1.6, the
//! other tests). The same scenario on each, for the distribution's own
//! `config.toml` and for `containerd config default`:
//! `berthd containerd configure --snapshotter` → containerd's effective
//! config (`containerd config dump`) has berthd's hosts directory and berth
//! as CRI's snapshotter with snapshot annotations on → a pull through the
//! hosts.toml berthd wrote, by `ctr` and by CRI (lazily mounted) → `ctr run`
//! on berth after `ctr image pull --snapshotter berth` (containerd 2.x's
//! transfer service) → `berth-snapshotter pull` then `ctr run` (lazy) →
//! `configure --remove` gives back the file byte for byte.
//!
//! Needs root, mmdebstrap (bash tests/scripts/install-ansible.sh) and the
//! tools of install-deps.sh. The roots are cached under /var/cache/berth-test.

use crate::common::*;
use crate::support_e2e::debian_root::{output_text, root_tarball, Recipe, Rootfs};
use crate::support_e2e::snapshotter::{cri_pull_on, snapshotter_bin};
use crate::support_e2e::{build_busybox_image, free_port, Skopeo};
use std::process::Child;
use std::time::{Duration, Instant};

const PACKAGES: &[&str] = &["containerd", "runc", "ca-certificates", "fuse3"];
const RECIPE: &str = "berth-containerd-node-1";
const REGISTRY: &str = "registry.berth.test";
const IMAGE: &str = "registry.berth.test/app:v1";

struct Node {
    fs: Rootfs,
    containerd: Option<Child>,
    others: Vec<Child>,
    berthd_url: String,
}

impl Node {
    fn start(suite: &str) -> Node {
        let tar =
            root_tarball(&Recipe { name: "containerd-node", version: RECIPE, suite, packages: PACKAGES, arch: None });
        let fs = Rootfs::enter(&tar);
        let opt = fs.host_path("/opt/berth");
        std::fs::create_dir_all(&opt).unwrap();
        std::fs::copy(berthd_bin(), opt.join("berthd")).unwrap();
        std::fs::copy(snapshotter_bin(), opt.join("berth-snapshotter")).unwrap();
        std::fs::create_dir_all(fs.host_path("/etc/berth")).unwrap();
        std::fs::create_dir_all(fs.host_path("/var/log")).unwrap();
        let port = free_port();
        std::fs::write(
            fs.host_path("/etc/berth/config.yml"),
            format!(
                "storage:\n  filesystem:\n    rootdirectory: /var/lib/berth\nhttp:\n  addr: 127.0.0.1:{port}\ncontainerd:\n  registries: [{REGISTRY}]\n"
            ),
        )
        .unwrap();
        let mut node =
            Node { fs, containerd: None, others: Vec::new(), berthd_url: format!("http://127.0.0.1:{port}") };
        let berthd =
            node.fs.spawn("/opt/berth/berthd", &["serve", "--config", "/etc/berth/config.yml"], "/var/log/berthd.log");
        node.others.push(berthd);
        wait_until(
            "berthd listens",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || node.log("berthd"),
        );
        std::fs::create_dir_all(node.fs.host_path("/run/berth")).unwrap();
        let url = node.berthd_url.clone();
        let snap = node.fs.spawn(
            "/opt/berth/berth-snapshotter",
            &[
                "serve",
                "--address",
                "/run/berth/snapshotter.sock",
                "--root",
                "/var/lib/berth-snapshotter",
                "--berthd",
                &url,
            ],
            "/var/log/snapshotter.log",
        );
        node.others.push(snap);
        wait_until(
            "berth-snapshotter listens",
            || node.fs.host_path("/run/berth/snapshotter.sock").exists(),
            || node.log("snapshotter"),
        );
        node
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.fs.host_path(&format!("/var/log/{name}.log"))).unwrap_or_default()
    }

    fn restart_containerd(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            let _ = self.fs.run("sh", &["-c", "kill $(pidof containerd)"]);
            let _ = c.wait();
        }
        self.containerd = Some(self.fs.spawn("containerd", &[], "/var/log/containerd.log"));
        wait_until(
            "containerd answers",
            || self.fs.run("ctr", &["version"]).status.success(),
            || self.log("containerd"),
        );
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.fs.ok("ctr", args)
    }

    fn configure(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["containerd", "configure", "--config", "/etc/berth/config.yml"];
        args.extend_from_slice(extra);
        self.fs.run("/opt/berth/berthd", &args)
    }

    /// Removes the image and everything it left in the default namespace,
    /// before the next step: `--sync` waits for containerd's garbage
    /// collection (else it may remove a snapshot the next pull found in
    /// place), and snapshots go children first, pass after pass.
    fn forget_image(&self) {
        let _ = self.fs.run("ctr", &["image", "rm", "--sync", IMAGE]);
        loop {
            let snaps = self.ctr(&["snapshot", "--snapshotter", "berth", "ls"]);
            let keys: Vec<&str> = snaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
            let removed = keys
                .iter()
                .filter(|key| self.fs.run("ctr", &["snapshot", "--snapshotter", "berth", "rm", key]).status.success())
                .count();
            if removed == 0 {
                break;
            }
        }
        for digest in self.ctr(&["content", "ls", "-q"]).lines() {
            let _ = self.fs.run("ctr", &["content", "rm", digest]);
        }
    }

    fn cri_pull(&self, image: &str) {
        let sock = self.fs.host_path("/run/containerd/containerd.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = cri_pull_on(&sock, &rt, image);
        assert!(r.is_ok(), "CRI PullImage {image}: {r:?}\ncontainerd log:\n{}", self.log("containerd"));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in self.containerd.iter_mut().chain(self.others.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `key` in the section of a `containerd config dump` whose
/// header is `header` (quotes as that version writes them).
fn dumped(dump: &str, header: &str, key: &str) -> Option<String> {
    let mut lines = dump.lines().map(str::trim).skip_while(|l| *l != header);
    lines.next()?;
    lines
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
}

fn scenario(suite: &str, want_version: &str) {
    let work = tempfile::tempdir().unwrap();
    let mut node = Node::start(suite);
    let version = node.fs.ok("containerd", &["--version"]);
    let release = version.split_whitespace().nth(2).unwrap_or_default().trim_start_matches('v').to_string();
    assert!(release.starts_with(want_version), "{suite} has containerd {release}: {version}");
    eprintln!("{suite}: containerd {release}");
    let v2 = release.starts_with('2');
    for log in ["berthd", "snapshotter"] {
        assert!(!node.log(log).contains('\u{1b}'), "colour codes in {log}'s log file:\n{}", node.log(log));
    }

    let image = build_busybox_image(work.path(), "img");
    Skopeo::new().push(&image.layout, node.berthd_url.trim_start_matches("http://"), "app:v1", &[]);

    let distro = std::fs::read_to_string(node.fs.host_path("/etc/containerd/config.toml")).unwrap();
    let default = node.fs.ok("containerd", &["config", "default"]);
    for (variant, original) in [("the distribution's config.toml", distro), ("containerd config default", default)] {
        let what = format!("containerd {release}, {variant}");
        std::fs::write(node.fs.host_path("/etc/containerd/config.toml"), &original).unwrap();
        node.restart_containerd();
        let out = node.configure(&["--snapshotter", "--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(3), "{what}: configure: {}", output_text(&out));
        node.restart_containerd();

        // What containerd really runs with.
        let dump = node.fs.ok("containerd", &["config", "dump"]);
        let (images, registry) = if v2 {
            ("[plugins.'io.containerd.cri.v1.images']", "[plugins.'io.containerd.cri.v1.images'.registry]")
        } else {
            ("[plugins.\"io.containerd.grpc.v1.cri\".containerd]", "[plugins.\"io.containerd.grpc.v1.cri\".registry]")
        };
        let config_path = dumped(&dump, registry, "config_path").unwrap_or_default();
        assert!(config_path.split(':').any(|p| p == "/etc/containerd/certs.d"), "{what}: config_path {config_path:?}");
        assert_eq!(dumped(&dump, images, "snapshotter").as_deref(), Some("berth"), "{what}:\n{dump}");
        assert_eq!(dumped(&dump, images, "disable_snapshot_annotations").as_deref(), Some("false"), "{what}");

        // A pull through the hosts.toml berthd wrote: ctr (default snapshotter), then CRI (berth, lazily).
        node.ctr(&["image", "pull", "--hosts-dir", "/etc/containerd/certs.d", IMAGE]);
        let ran = node.ctr(&["run", "--rm", IMAGE, "plain"]);
        assert_eq!(ran.trim(), "hi", "{what}: ctr run on overlayfs");
        node.forget_image();
        node.cri_pull(IMAGE);
        let lazy = node.ctr(&["-n", "k8s.io", "snapshot", "--snapshotter", "berth", "ls"]);
        assert!(lazy.lines().count() > 1, "{what}: CRI pulled into berth:\n{lazy}");
        assert!(node.log("snapshotter").contains("mounted lazily"), "{what}: {}", node.log("snapshotter"));

        // ctr on berth (containerd 2.x: through the transfer service's unpack_config).
        node.ctr(&["image", "pull", "--hosts-dir", "/etc/containerd/certs.d", "--snapshotter", "berth", IMAGE]);
        let ran = node.ctr(&["run", "--rm", "--snapshotter", "berth", IMAGE, "on-berth"]);
        assert_eq!(ran.trim(), "hi", "{what}: ctr run on berth");
        node.forget_image();

        // Lazy: berth-snapshotter pull, then run.
        let url = node.berthd_url.clone();
        let pulled = node.fs.ok("/opt/berth/berth-snapshotter", &["pull", "--berthd", &url, IMAGE]);
        assert!(pulled.contains("1 layer(s) mounted lazily"), "{what}: {pulled}");
        let ran = node.ctr(&["run", "--rm", "--snapshotter", "berth", IMAGE, "lazy"]);
        assert_eq!(ran.trim(), "hi", "{what}: ctr run after a lazy pull");
        node.forget_image();

        let out = node.configure(&["--remove"]);
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        let back = std::fs::read_to_string(node.fs.host_path("/etc/containerd/config.toml")).unwrap();
        assert!(back == original, "{what}: --remove gives back config.toml byte for byte");
        assert!(!node.fs.host_path("/etc/containerd/certs.d").exists(), "{what}: certs.d was berthd's");
    }
}

#[test]
fn containerd_1_7_on_debian_13() {
    scenario("trixie", "1.7");
}

#[test]
fn containerd_2_on_debian_unstable() {
    scenario("sid", "2.");
}
