//! containerd (`ctr`, containerd 1.6) pulls from a real berthd through a
//! `hosts.toml` mirror entry and runs the image with runc.
//!
//! A private containerd is started per test (own root, state and socket in a
//! temp dir; CRI disabled). Needs root. The overlayfs snapshotter is used when
//! containerd reports it usable, else `native` (e.g. when the temp dir is on
//! overlayfs itself). `BERTH_TEST_SNAPSHOTTER=native|overlayfs` forces one.

mod common;
mod support_e2e;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{require_tool, run, Berthd};
use support_e2e::*;

const MIRROR_HOST: &str = "registry.example.test";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private containerd; killed (with its shims) and its mounts removed on drop.
struct Containerd {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    sock: PathBuf,
    ctr: PathBuf,
    namespace: String,
    snapshotter: String,
    log: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let containerd = require_tool("containerd");
        let ctr = require_tool("ctr");
        require_tool("runc");
        require_tool("containerd-shim-runc-v2");
        assert!(is_root(), "the containerd test needs root (it runs a private containerd and runc)");
        // Unix socket paths are limited to 108 bytes: use $TMPDIR when short enough.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let dir = tempfile::Builder::new().prefix("berth-ctd").tempdir_in(base).unwrap();
        let p = dir.path();
        let sock = p.join("containerd.sock");
        let config = p.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{debug}"
  level = "info"

[metrics]
  address = ""
"#,
                root = p.join("root").display(),
                state = p.join("state").display(),
                sock = sock.display(),
                debug = p.join("debug.sock").display(),
            ),
        )
        .unwrap();
        let log = p.join("containerd.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn containerd");
        let namespace = format!("berthtest-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut c =
            Containerd { child: Some(child), dir: Some(dir), sock, ctr, namespace, snapshotter: String::new(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.as_mut().unwrap().try_wait() {
                panic!("containerd exited with {status}; log:\n{}", c.log_text());
            }
            if c.sock.exists() && c.ctr_output(&["version"]).status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "containerd not ready in 30s; log:\n{}", c.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        // containerd's overlayfs plugin loads even where an overlay mount with
        // its upper dir on this filesystem fails (e.g. the temp dir is itself on
        // overlayfs), so probe with a real mount; fall back to `native`.
        let plugins = c.ctr_ok(&["plugins", "ls"]);
        let overlay_plugin = plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == "io.containerd.snapshotter.v1" && f[1] == "overlayfs" && f[f.len() - 1] == "ok"
        });
        let overlay_ok = overlay_plugin && overlay_mount_works(&c.dir().join("overlay-probe"));
        c.snapshotter = match std::env::var("BERTH_TEST_SNAPSHOTTER") {
            Ok(s) if !s.is_empty() => s,
            _ if overlay_ok => "overlayfs".to_string(),
            _ => "native".to_string(),
        };
        eprintln!("containerd up; snapshotter {}", c.snapshotter);
        c
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.sock).arg("--namespace").arg(&self.namespace).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn ctr_output(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("spawn ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        if !out.status.success() {
            panic!(
                "ctr {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}\ncontainerd log (tail):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_text(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `<dir>/certs.d/<MIRROR_HOST>/hosts.toml` routing pulls to `registry_addr`.
    fn hosts_dir(&self, registry_addr: &str) -> PathBuf {
        let certs = self.dir().join("certs.d");
        let host_dir = certs.join(MIRROR_HOST);
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"https://{MIRROR_HOST}\"\n\n[host.\"http://{registry_addr}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
            ),
        )
        .unwrap();
        certs
    }

    /// The image digest `ctr images ls` records for `reference`.
    fn image_digest(&self, reference: &str) -> String {
        let out = self.ctr_ok(&["images", "ls"]);
        for line in out.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() == Some(&reference) {
                return f[2].to_string();
            }
        }
        panic!("{reference} not in `ctr images ls`:\n{out}");
    }

    fn shim_pids(&self) -> Vec<String> {
        let mut pids = Vec::new();
        let tasks = self.dir().join("state/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for task in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                for f in ["shim.pid", "init.pid"] {
                    if let Ok(p) = std::fs::read_to_string(task.path().join(f)) {
                        let p = p.trim().to_string();
                        if !p.is_empty() {
                            pids.push(p);
                        }
                    }
                }
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers and shims this containerd started (normally none: `run --rm`).
        for pid in self.shim_pids() {
            let _ = Command::new("kill").arg("-KILL").arg(&pid).stderr(Stdio::null()).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Remove any mounts left under the temp dir (deepest first), then the dir.
        if let Some(dir) = self.dir.take() {
            for m in mounts_under(dir.path()).iter().rev() {
                let ok = Command::new("umount").arg(m).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(m).status();
                }
            }
            let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/{}", self.namespace));
            drop(dir);
        }
    }
}

/// Whether an overlay mount with upper/work dirs under `probe` succeeds.
fn overlay_mount_works(probe: &Path) -> bool {
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir_all(probe.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        probe.join("lower").display(),
        probe.join("upper").display(),
        probe.join("work").display()
    );
    let merged = probe.join("merged");
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(&merged).status();
    }
    let _ = std::fs::remove_dir_all(probe);
    ok
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

/// Mount points at or below `dir`, in /proc/self/mountinfo order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn containerd_pulls_and_runs_image_from_berthd() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    sk.push(&img.layout, &berthd.addr, "app:v1", &[]);
    sk.push(&multi, &berthd.addr, "app:multi", &["--all"]);

    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir(&berthd.addr);
    let hosts = hosts.to_str().unwrap();
    let snap = format!("--snapshotter={}", ctd.snapshotter);
    let image = format!("{MIRROR_HOST}/app:v1");

    let pull = ctd.ctr_ok(&["images", "pull", &snap, "--hosts-dir", hosts, &image]);
    assert!(pull.contains("done"), "ctr pull output:\n{pull}");
    // What containerd resolved through berthd is exactly what skopeo pushed.
    assert_eq!(ctd.image_digest(&image), img.manifest_digest, "pulled image digest");
    // `ctr images check` verifies all content of the image is present locally.
    let check = ctd.ctr_ok(&["images", "check"]);
    assert!(check.lines().any(|l| l.starts_with(&image) && l.contains("complete")), "ctr images check:\n{check}");

    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &image,
        &format!("{}-t1", ctd.namespace),
        "/bin/busybox",
        "echo",
        "hello-from-berth",
    ]);
    assert_eq!(out.trim_end_matches(['\r', '\n']), "hello-from-berth", "container stdout");

    // The image's own CMD (`/bin/sh -c "echo hi"`) runs too.
    let out = ctd.ctr_ok(&["run", "--rm", &snap, &image, &format!("{}-t2", ctd.namespace)]);
    assert_eq!(out.trim_end_matches(['\r', '\n']), "hi", "container stdout (image CMD)");

    // A multi-platform index: containerd resolves the index through berthd
    // and picks the linux/amd64 manifest.
    let multi_ref = format!("{MIRROR_HOST}/app:multi");
    ctd.ctr_ok(&["images", "pull", &snap, "--platform", "linux/amd64", "--hosts-dir", hosts, &multi_ref]);
    assert_eq!(ctd.image_digest(&multi_ref), index_digest, "pulled index digest");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &multi_ref,
        &format!("{}-t3", ctd.namespace),
        "/bin/sh",
        "-c",
        "echo multi-$((20+22))",
    ]);
    assert_eq!(out.trim(), "multi-42", "container stdout (multi-arch)");

    // A Docker manifest list (skopeo converts the OCI index), all platforms.
    sk.push(&multi, &berthd.addr, "app:list", &["--all", "--format", "v2s2"]);
    let list_digest = common::sha256(&sk.inspect_raw(&berthd.addr, "app:list"));
    let list_ref = format!("{MIRROR_HOST}/app:list");
    ctd.ctr_ok(&["images", "pull", &snap, "--all-platforms", "--hosts-dir", hosts, &list_ref]);
    assert_eq!(ctd.image_digest(&list_ref), list_digest, "pulled manifest list digest");
    let check = ctd.ctr_ok(&["images", "check"]);
    assert!(
        check.lines().any(|l| l.starts_with(&list_ref) && l.contains("complete")),
        "all platforms of the list must be fetched; ctr images check:\n{check}"
    );
    let out = ctd.ctr_ok(&["run", "--rm", &snap, &list_ref, &format!("{}-t4", ctd.namespace)]);
    assert_eq!(out.trim(), "hi", "container stdout (manifest list)");

    // containerd's own pusher (POST, then a monolithic PUT ?digest=; HEAD
    // checks) writes a copy into another repository.
    let pushed_ref = format!("{MIRROR_HOST}/pushed/by-ctr:v1");
    ctd.ctr_ok(&["images", "tag", &image, &pushed_ref]);
    let push = ctd.ctr_output(&["images", "push", "--hosts-dir", hosts, &pushed_ref]);
    assert!(
        push.status.success(),
        "ctr push failed:\n{}\n{}\nberthd log (tail):\n{}",
        String::from_utf8_lossy(&push.stdout),
        String::from_utf8_lossy(&push.stderr),
        berthd.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let pulled = sk.pull(&berthd.addr, "pushed/by-ctr:v1", &work.path().join("ctr-pushed"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);

    // A tag berthd does not have fails the pull with not found.
    let missing = ctd.ctr_output(&["images", "pull", &snap, "--hosts-dir", hosts, &format!("{MIRROR_HOST}/app:nope")]);
    assert!(!missing.status.success(), "pulling a missing tag must fail");
    let err = String::from_utf8_lossy(&missing.stderr);
    // containerd logs berthd's 404 and then falls back to the (unresolvable) server.
    assert!(
        err.lines().any(|l| l.contains("http.StatusNotFound") && l.contains(&format!("host=\"{}\"", berthd.addr))),
        "berthd must answer 404 for a missing tag; ctr stderr:\n{err}"
    );

    let ctd_dir = ctd.dir().to_path_buf();
    drop(ctd);
    let leftover = mounts_under(&ctd_dir);
    assert!(leftover.is_empty(), "mounts left behind: {leftover:?}");
    assert!(!ctd_dir.exists(), "containerd temp dir not removed: {}", ctd_dir.display());
}
