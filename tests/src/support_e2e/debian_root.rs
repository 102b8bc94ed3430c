//! Debian system roots for tests that need another distribution's
//! programs than this host's: built with `mmdebstrap` from Debian's
//! packages, cached as tarballs under /var/cache/berth-test (keyed by
//! everything they are made of but the mirror), and entered as a private
//! mount + PID namespace whose `/` is the root (`pivot_root`), sharing the
//! host's network. Killing the namespace's holder ends every process in it
//! and takes its mounts with it; the extracted root is a temp dir.

pub use crate::common::output_text;
use crate::common::{require_tool, sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const CACHE_DIR: &str = "/var/cache/berth-test";

/// The Debian mirror apt uses on this machine (`BERTH_TEST_DEBIAN_MIRROR`
/// overrides), else deb.debian.org.
pub fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("BERTH_TEST_DEBIAN_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines().map(str::trim) {
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // deb [options] URI suite components
                let rest = rest.trim_start();
                let rest = match rest.strip_prefix('[') {
                    Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
                    None => rest,
                };
                rest.split_whitespace().take(1).collect()
            } else {
                Vec::new()
            };
            for u in uris {
                let u = u.trim_end_matches('/');
                if u.ends_with("/debian") && !u.contains("security") {
                    return u.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// What a root is made of.
pub struct Recipe<'a> {
    /// Names the cached file (`<name>-<suite>-<arch>-<key>.tar`).
    pub name: &'a str,
    /// Bump when the way the root is built changes (part of the cache key).
    pub version: &'a str,
    pub suite: &'a str,
    pub packages: &'a [&'a str],
    /// Debian's name for the root's architecture (`arm64`); `None`: this
    /// host's. A foreign root runs its programs through qemu-user (binfmt,
    /// `tests/scripts/install-qemu.sh`).
    pub arch: Option<&'a str>,
}

/// A tarball of the root: built once with mmdebstrap, then taken from the
/// cache. Suites newer than this host's (trixie, sid) have Release files
/// the archive signed earlier than this clock says, hence
/// `Check-Valid-Until "false"`.
pub fn root_tarball(r: &Recipe) -> PathBuf {
    let arch = r.arch.unwrap_or(std::env::consts::ARCH);
    let key = sha256(format!("{}|{}|{arch}|minbase|{}", r.version, r.suite, r.packages.join(",")).as_bytes());
    let path = Path::new(CACHE_DIR).join(format!("{}-{}-{arch}-{}.tar", r.name, r.suite, &key[7..23]));
    // Tests of one binary that want the same root wait for one build
    // (different roots build side by side).
    type Locks = std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>;
    static BUILDING: std::sync::Mutex<Option<Locks>> = std::sync::Mutex::new(None);
    let this_root = BUILDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_default()
        .entry(path.clone())
        .or_default()
        .clone();
    let _one_at_a_time = this_root.lock().unwrap_or_else(|e| e.into_inner());
    if path.is_file() {
        eprintln!("{}: root from the cache: {}", r.name, path.display());
        return path;
    }
    let mmdebstrap = require_tool("mmdebstrap");
    std::fs::create_dir_all(CACHE_DIR).unwrap();
    let tmp = path.with_extension(format!("{}.tmp.tar", std::process::id()));
    let mirror = debian_mirror();
    let t = Instant::now();
    eprintln!("{}: building the root with mmdebstrap ({}, {mirror}) ...", r.name, r.suite);
    let mut cmd = Command::new(mmdebstrap);
    cmd.args(["--quiet", "--mode=root", "--variant=minbase", "--format=tar"])
        .arg(format!("--include={}", r.packages.join(",")))
        .arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    if let Some(foreign) = r.arch {
        cmd.arg(format!("--architectures={foreign}"));
    }
    // dpkg without fsync: a third faster, and a half-built root is thrown away anyway.
    let eatmydata = Path::new("/usr/share/mmdebstrap/hooks/eatmydata");
    if eatmydata.is_dir() && Path::new("/usr/bin/eatmydata").is_file() {
        cmd.arg(format!("--hook-dir={}", eatmydata.display()));
    } else {
        cmd.arg("--dpkgopt=force-unsafe-io");
    }
    let out = cmd
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        ])
        .arg(r.suite)
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .expect("spawn mmdebstrap");
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!("mmdebstrap failed ({}):\n{}", out.status, output_text(&out));
    }
    std::fs::rename(&tmp, &path).unwrap();
    eprintln!("{}: root built in {:.0?} -> {}", r.name, t.elapsed(), path.display());
    path
}

/// A root extracted into a temp dir and entered: a mount + PID namespace
/// whose `/` it is (with /proc, /sys, /dev and a private /tmp), held by a
/// process the host knows. Its `/run` is the root's own directory, so the
/// host reaches sockets there by path. Dropped: every process inside ends
/// and the directory goes.
pub struct Rootfs {
    holder: Child,
    /// The holder's process inside (PID 1 of the namespace), for nsenter.
    pub pid: u32,
    pub dir: Option<tempfile::TempDir>,
}

impl Rootfs {
    pub fn enter(tarball: &Path) -> Rootfs {
        let dir = tempfile::Builder::new().prefix("berth-root-").tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let out = Command::new("tar").arg("-xf").arg(tarball).arg("-C").arg(&root).output().unwrap();
        assert!(out.status.success(), "extract {}: {}", tarball.display(), output_text(&out));
        let r = root.display();
        let script = format!(
            "set -e
mount --make-rprivate /
mount --bind {r} {r}
mount -t proc proc {r}/proc
mount --rbind /sys {r}/sys
mount --rbind /dev {r}/dev
mount -t tmpfs tmpfs {r}/tmp
mkdir -p {r}/.oldroot
cd {r}
pivot_root . .oldroot
umount -l /.oldroot
exec sleep infinity"
        );
        let holder = Command::new(require_tool("unshare"))
            .args(["--mount", "--pid", "--fork", "--kill-child", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut fs = Rootfs { pid: 0, holder, dir: Some(dir) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The namespace's PID 1 (`sleep`), once pivot_root is done.
            let child = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", fs.holder.id()))
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()));
            if let Some(pid) = child {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    fs.pid = pid;
                    break;
                }
            }
            if let Ok(Some(status)) = fs.holder.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                let _ = fs.holder.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("entering {} failed ({status}): {err}", root.display());
            }
            assert!(Instant::now() < deadline, "the root's namespace did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    /// The root as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().join("root")
    }

    /// A path inside the root, as the host sees it.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    /// A command run inside the root.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(require_tool("nsenter"));
        c.arg("-t").arg(self.pid.to_string()).args(["-m", "-p", "--", program]);
        c
    }

    /// Runs `program args` inside; its output, whatever its status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().expect("run nsenter")
    }

    /// Runs `program args` inside and returns stdout; panics with the
    /// output when it fails.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(out.status.success(), "{program} {args:?} failed ({}):\n{}", out.status, output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running `program args` inside, its output appended to
    /// `log` (a path inside the root).
    pub fn spawn(&self, program: &str, args: &[&str], log: &str) -> Child {
        let file = std::fs::File::create(self.host_path(log)).unwrap();
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn in the root")
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        // PID 1 of the namespace goes, and the kernel kills the rest of it;
        // its mounts go with the namespace.
        let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if dir.close().is_err() {
                let _ = Command::new("rm").arg("-rf").arg(&path).status();
            }
        }
    }
}
