//! A private containerd for tests: own root, state and socket in a temp dir,
//! CRI disabled; killed (with its shims) and its mounts removed on drop.
//! Needs root. The overlayfs snapshotter is used when a real overlay mount
//! works in the temp dir, else `native`; `BERTH_TEST_SNAPSHOTTER` forces one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{require_tool, run};

/// The registry host name the tests pull as; `hosts.toml` mirrors it to berthd.
pub const MIRROR_HOST: &str = "registry.example.test";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private containerd; killed (with its shims) and its mounts removed on drop.
pub struct Containerd {
    pub child: Option<Child>,
    pub dir: Option<tempfile::TempDir>,
    pub sock: PathBuf,
    pub ctr: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub log: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with("")
    }

    /// A private containerd whose config.toml ends with `extra` (e.g. a
    /// `[proxy_plugins.berth]` table).
    pub fn start_with(extra: &str) -> Containerd {
        Containerd::start_inner(extra, false)
    }

    /// A private containerd with its CRI plugin on (for the CRI image
    /// service); `extra` usually holds `[plugins."io.containerd.grpc.v1.cri"…]`
    /// tables.
    pub fn start_cri(extra: &str) -> Containerd {
        Containerd::start_inner(extra, true)
    }

    fn start_inner(extra: &str, cri: bool) -> Containerd {
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
{disabled}

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{debug}"
  level = "info"

[metrics]
  address = ""

{extra}
"#,
                root = p.join("root").display(),
                state = p.join("state").display(),
                sock = sock.display(),
                debug = p.join("debug.sock").display(),
                disabled = if cri { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]" },
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

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.sock).arg("--namespace").arg(&self.namespace).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("spawn ctr")
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
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
    pub fn hosts_dir(&self, registry_addr: &str) -> PathBuf {
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
    pub fn image_digest(&self, reference: &str) -> String {
        let out = self.ctr_ok(&["images", "ls"]);
        for line in out.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() == Some(&reference) {
                return f[2].to_string();
            }
        }
        panic!("{reference} not in `ctr images ls`:\n{out}");
    }

    pub fn shim_pids(&self) -> Vec<String> {
        let mut pids = shims_serving(&self.sock);
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

/// Shims started for the containerd on `sock`, found by their command line
/// (`-address <sock>`): a shim whose task was never deleted outlives
/// containerd and its state files, and must not outlive the test.
fn shims_serving(sock: &Path) -> Vec<String> {
    let sock = sock.to_string_lossy();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // (argv ends in a NUL: the last item is empty)
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        if is_shim && args.windows(2).any(|w| w[0] == "-address" && w[1] == sock) {
            pids.push(name);
        }
    }
    pids
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
        for pid in shims_serving(&self.sock) {
            let _ = Command::new("kill").arg("-KILL").arg(&pid).stderr(Stdio::null()).status();
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
pub fn overlay_mount_works(probe: &Path) -> bool {
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

pub fn is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

/// Mount points at or below `dir`, in /proc/self/mountinfo order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
