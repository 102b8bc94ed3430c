//! Shared harness for the end-to-end tests: start a real `berthd` process on a
//! free loopback port with its own data directory, and find the external
//! programs the tests drive.
//!
//! The test modules and benchmarks use it as `berth_tests::common`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of the `berthd` binary under test: `$BERTHD_BIN`, else the workspace's
/// `target/{debug,release}/berthd` (`.ci/run` builds it before the tests run).
pub fn berthd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTHD_BIN") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("berthd");
        if p.exists() {
            return p;
        }
    }
    panic!("berthd binary not found under {}: run `cargo build -p berthd` first or set BERTHD_BIN", target.display());
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests crate lives in the workspace").to_path_buf()
}

/// True when running under CI (`CI=true`): missing tools are then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Returns the path of `tool` on `$PATH`. When it is missing the test fails
/// loudly under CI; outside CI it panics too, with the install hint, so no
/// test ever passes by skipping silently.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("required program `{tool}` is not installed (CI={}): run `bash tests/scripts/install-deps.sh`", in_ci());
}

/// A running `berthd` with its own temporary data directory. Killed on drop.
pub struct Berthd {
    pub child: Child,
    /// `host:port` it listens on (its first listener).
    pub addr: String,
    /// Every listener's `host:port`, in config order.
    pub addrs: Vec<String>,
    /// `host:port` of its debug listener (`/metrics`, `/healthz`).
    pub debug_addr: String,
    /// Temporary directory holding the config and (unless overridden) the data.
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Extra environment it runs with.
    env: Vec<(String, String)>,
}

impl Berthd {
    /// Starts berthd with a filesystem root in a fresh temp dir; `extra_yaml`
    /// is appended to the generated config (top-level YAML keys other than
    /// `storage.filesystem` and `http.addr`).
    pub fn start(extra_yaml: &str) -> Berthd {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        Self::start_with_root(dir, root, extra_yaml, &[])
    }

    /// Starts berthd serving `root` (which may have been written by another
    /// registry), with `extra_yaml` appended to the config and extra env vars.
    pub fn start_with_root(dir: tempfile::TempDir, root: PathBuf, extra_yaml: &str, env: &[(&str, &str)]) -> Berthd {
        let yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n{}\n",
            root.display(),
            extra_yaml
        );
        Self::start_config(dir, root, &yaml, env)
    }

    /// Starts berthd with `yaml` as its config (every key but `http`, which
    /// the harness adds: a free loopback port and a debug listener). Unless
    /// `yaml` says otherwise, the cluster's own registry name is the one the
    /// containerd tests pull through berthd
    /// ([`MIRROR_HOST`](crate::support_e2e::containerd::MIRROR_HOST)): berthd
    /// serves no other `?ns=`.
    pub fn start_config(dir: tempfile::TempDir, root: PathBuf, yaml: &str, env: &[(&str, &str)]) -> Berthd {
        let config = dir.path().join("config.yml");
        let mut yaml = format!("{yaml}\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n");
        if !yaml.lines().any(|l| l.starts_with("containerd:")) {
            let own = crate::support_e2e::containerd::MIRROR_HOST;
            yaml.push_str(&format!("containerd:\n  registries: [{own}]\n"));
        }
        std::fs::write(&config, yaml).expect("write config");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(dir, root, env)
    }

    /// Kills this berthd with SIGKILL (no chance to clean up) and starts a
    /// new one on the same config and data: a crash and a restart.
    pub fn kill9_and_restart(mut self) -> Berthd {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let (root, env) = (self.root.clone(), self.env.clone());
        Self::spawn(dir, root, env)
    }

    /// Stops this berthd as systemd does (SIGTERM: in-flight requests
    /// finish, pull times are stored) and starts it again on the same
    /// config and data.
    pub fn restart(mut self) -> Berthd {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            assert!(std::time::Instant::now() < deadline, "berthd did not stop on SIGTERM:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let (root, env) = (self.root.clone(), self.env.clone());
        Self::spawn(dir, root, env)
    }

    /// The config file this berthd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// Runs `berthd fsck` (with `--repair` when asked) on this berthd's
    /// config: whether it found the storage clean, and what it printed.
    pub fn fsck(&self, repair: bool) -> (bool, String) {
        let mut cmd = Command::new(berthd_bin());
        cmd.arg("fsck").arg("--config").arg(self.config_path()).envs(self.env.iter().map(|(k, v)| (k, v)));
        if repair {
            cmd.arg("--repair");
        }
        let out = cmd.output().expect("run berthd fsck");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "berthd fsck could not run: {text}");
        (out.status.success(), text)
    }

    /// Runs `berthd gc` with `args` on this berthd's config: its exit
    /// status and what it printed.
    pub fn gc(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(berthd_bin())
            .arg("gc")
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run berthd gc");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }

    fn spawn(dir: tempfile::TempDir, root: PathBuf, env: Vec<(String, String)>) -> Berthd {
        let config = dir.path().join("config.yml");
        let mut cmd = Command::new(berthd_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn berthd");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr) = parse_listen_addr(&line) {
                        let _ = tx.send((false, addr));
                    } else if let Some(addr) = parse_field(&line, "debug_addr") {
                        let _ = tx.send((true, addr));
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        // Listeners are bound (and logged) before the debug listener.
        let (mut addrs, mut debug_addr) = (Vec::new(), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while addrs.is_empty() || debug_addr.is_none() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((true, a)) => debug_addr = Some(a),
                Ok((false, a)) => addrs.push(a),
                Err(_) if !exited && std::time::Instant::now() < deadline => {}
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100)); // let the log threads drain
                    let _ = child.kill();
                    panic!(
                        "berthd exited or did not report its listen addresses within 30s; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        while let Ok((false, a)) = rx.try_recv() {
            addrs.push(a);
        }
        Berthd { child, addr: addrs[0].clone(), addrs, debug_addr: debug_addr.unwrap(), dir, root, log, env }
    }

    /// Prometheus text from the debug listener.
    pub fn metrics(&self) -> String {
        let out = Command::new("curl").args(["-sf", &format!("http://{}/metrics", self.debug_addr)]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field=` in a log line.
fn parse_field(line: &str, field: &str) -> Option<String> {
    let idx = line.find(&format!("{field}="))? + field.len() + 1;
    let rest = &line[idx..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == ',').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// berthd logs `listening on http://ADDR` (text) or a JSON line with
/// `"addr":"ADDR"` and message `listening` once its socket is bound.
fn parse_listen_addr(line: &str) -> Option<String> {
    if !line.contains("listening") {
        return None;
    }
    let idx = line.find("addr=").map(|i| i + 5).or_else(|| line.find("\"addr\":\"").map(|i| i + 8))?;
    let rest = &line[idx..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == ',').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Runs a command, panicking with its output when it fails.
/// What a finished command printed, stdout then stderr.
pub fn output_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 hex digest of bytes, as `sha256:<hex>`.
/// CPU seconds (user + system) process `pid` has used so far, threads
/// included; what benchmarks report beside wall time.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Deterministic incompressible bytes (xorshift64) for blobs and layers.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small tmpfs a test mounts (as root) for a daemon's data; unmounted on
/// drop, also when the test fails.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> SmallDisk {
        assert!(
            run(Command::new("id").arg("-u")).trim() == "0",
            "this test mounts a tmpfs and must run as root (CI runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        run(Command::new(require_tool("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&root));
        SmallDisk { dir }
    }

    pub fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Fills what is left of the file system with one file.
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.root().join("filler")).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            if f.write_all(&block).is_err() {
                break;
            }
        }
        // Whatever is left is smaller than a block: take it byte by byte.
        while f.write_all(&[1]).is_ok() && f.flush().is_ok() {}
    }

    pub fn free(&self) {
        std::fs::remove_file(self.root().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.root()).status();
    }
}
