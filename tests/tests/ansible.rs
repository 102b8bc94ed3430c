//! The Ansible rollout (`ansible/site.yml`, role `ansible/roles/berth`) on a
//! real Debian 12 node.
//!
//! The node is a system root made with `mmdebstrap` from Debian's packages
//! (systemd, python3, containerd 1.6, runc), booted with
//! `systemd-nspawn -b --private-network`. Ansible reaches it without a network
//! through the `community.docker.nsenter` connection (the PID of the node's
//! systemd). SeaweedFS serves S3 on the node's loopback (started on the host
//! inside the node's network namespace), so berthd runs as it would in a
//! cluster: S3 storage, credentials in the environment file, node cache.
//!
//! The test walks what a user does and checks what the issue promises:
//! `--check --diff` on a new node changes nothing; the rollout installs,
//! configures and starts berthd, points containerd at it and restarts it;
//! containerd then pulls an image pushed through berthd and runs it; a second
//! run reports `changed=0` (and restarts nothing), so does `--check`; a bad
//! configuration stops the rollout on its first batch. With
//! `berth_snapshotter: true` the rollout installs berth-snapshotter and its
//! unit and makes it containerd's proxy snapshotter: containerd lists the
//! plugin, pulls an image into it and runs it; a second such run changes
//! nothing; set back to false, the unit and binary go and containerd's
//! config.toml is as it was without it. `berth_state: absent`
//! leaves containerd's configuration as it was, byte for byte. Then the same
//! node as a k3s agent (a stand-in `k3s-agent` unit): registries.yaml is
//! edited, k3s-agent restarted, and both given back exactly. `ansible-lint`
//! runs meanwhile. Secrets never appear in the play's output. A second
//! test rolls out berth-snapshotter on a Debian 13 node (systemd 257,
//! containerd 1.7) and removes it again.
//!
//! Needs root, `bash tests/scripts/install-ansible.sh` (mmdebstrap,
//! systemd-container, Ansible in /opt/berth-test/ansible) and the tools of
//! install-deps.sh / install-seaweedfs.sh. The system root is cached under
//! /var/cache/berth-test/, keyed by its package list. The berthd and
//! berth-snapshotter binaries rolled out are the workspace's, built by the
//! test (`cargo build`, a no-op when they are up to date) unless
//! `BERTHD_BIN` / `BERTH_SNAPSHOTTER_BIN` name them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{berthd_bin, output_text as sh_out, require_tool, run, workspace_root};
use crate::support_e2e::snapshotter::snapshotter_bin;
use crate::support_e2e::{build_busybox_image, debian_root, Layout, Skopeo};

/// What the node's system root holds (besides mmdebstrap's minbase).
const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "python3", "containerd", "runc"];
const SUITE: &str = "bookworm";
/// Bump when the way the root is built changes (part of the cache key).
const ROOT_RECIPE: &str = "berth-ansible-node-1";

/// The cluster's registry name the node pulls as; berthd fronts it.
const REGISTRY: &str = "registry.berth.test";
const S3_PORT: u16 = 8333;
const S3_BUCKET: &str = "berth";
const S3_ACCESS_KEY: &str = "berth-ansible-key";
/// `$`, `/`, `+` and `=` must reach berthd unchanged through the environment file.
const S3_SECRET_KEY: &str = "Sx/9+berth=ans$ible-secret";
const CACHE_PATH: &str = "/var/cache/berth-node";
/// A port the bad configuration listens on while something else holds it.
const BUSY_PORT: u16 = 5050;
/// berth-snapshotter's socket (the role's unit and `berthd containerd configure` default).
const SNAPSHOTTER_SOCKET: &str = "/run/berth/snapshotter.sock";

/// containerd's configuration as an administrator left it: comments and
/// settings Berth must keep, and give back byte for byte.
const CONTAINERD_CONFIG: &str = r#"# /etc/containerd/config.toml, maintained by hand.
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    # pinned on purpose
    sandbox_image = "registry.k8s.io/pause:3.9"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

/// k3s's registries.yaml as an administrator left it.
const K3S_REGISTRIES: &str =
    "# k3s registries, by hand\nconfigs:\n  \"registry.berth.test\":\n    tls:\n      insecure_skip_verify: true\n";
/// A stand-in for k3s's agent unit (k3s is not a Debian package).
const K3S_AGENT_UNIT: &str =
    "[Unit]\nDescription=stand-in for k3s-agent\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

fn elapsed(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

/// The berthd and berth-snapshotter binaries to roll out: the workspace's,
/// built now (`cargo test` builds only berthd's library for the tests), in
/// the profile of this test; `BERTHD_BIN` / `BERTH_SNAPSHOTTER_BIN` win.
fn workspace_binaries() -> (PathBuf, PathBuf) {
    let wanted: Vec<(&str, &str)> = [("BERTHD_BIN", "berthd"), ("BERTH_SNAPSHOTTER_BIN", "berth-snapshotter")]
        .into_iter()
        .filter(|(var, _)| std::env::var_os(var).is_none())
        .collect();
    let mut built = BTreeMap::new();
    if !wanted.is_empty() {
        let t = Instant::now();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args(["build", "--bins", "--message-format=json-render-diagnostics"]);
        // Not what cargo set for this test (build scripts watch some of it,
        // e.g. ring's CARGO_MANIFEST_DIR): the build must be the one
        // `cargo build` in the workspace makes, fresh when it is up to date.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"]
                .iter()
                .any(|p| key.starts_with(p))
            {
                cmd.env_remove(&*key);
            }
        }
        // The whole workspace, all targets, as tests/run.sh builds it: one
        // set of features, so nothing is rebuilt (`-p` would resolve
        // features for those packages alone and rebuild their dependencies).
        cmd.args(["--workspace", "--all-targets"]);
        // target/<profile>/deps/<this test>
        let exe = std::env::current_exe().unwrap();
        if exe.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let o = cmd.stderr(Stdio::inherit()).output().expect("spawn cargo");
        assert!(o.status.success(), "cargo build of {wanted:?} failed ({})", o.status);
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            // The binary itself, not its unit-test harness (also a "bin" target).
            let is_bin = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"))
                && msg["profile"]["test"] == false;
            if let (true, Some(name), Some(exe)) = (is_bin, msg["target"]["name"].as_str(), msg["executable"].as_str())
            {
                built.insert(name.to_string(), PathBuf::from(exe));
            }
        }
        eprintln!("ansible: cargo build of {wanted:?} in {}", elapsed(t));
    }
    let mut pick = |name: &str, fallback: fn() -> PathBuf| match built.remove(name) {
        Some(p) => p,
        None if wanted.iter().any(|(_, pkg)| *pkg == name) => panic!("cargo build made no {name} binary"),
        None => fallback(),
    };
    (pick("berthd", berthd_bin), pick("berth-snapshotter", snapshotter_bin))
}

// ---------------------------------------------------------------------------
// The node's system root (mmdebstrap), cached by package list
// ---------------------------------------------------------------------------

/// A tarball of the node's system root (see [`debian_root::root_tarball`]).
fn node_root_tarball(suite: &str) -> PathBuf {
    debian_root::root_tarball(&debian_root::Recipe {
        name: "ansible-node",
        version: ROOT_RECIPE,
        suite,
        packages: PACKAGES,
        arch: None,
    })
}

// ---------------------------------------------------------------------------
// The node: systemd-nspawn, reached with nsenter
// ---------------------------------------------------------------------------

struct Node {
    nspawn: Option<Child>,
    /// The node's systemd (PID 1 inside), as the host sees it.
    pid: u32,
    root: PathBuf,
    weed: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

fn host_runs_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").map(|c| c.trim() == "systemd").unwrap_or(false)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Node {
    fn boot(tarball: &Path) -> Node {
        let nspawn = require_tool("systemd-nspawn");
        require_tool("nsenter");
        // Not under /tmp's possible overlay: nested mounts (overlayfs for runc) need a real filesystem.
        let dir = tempfile::Builder::new().prefix("berth-ansible-").tempdir_in("/var/tmp").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        run(Command::new("tar").arg("-C").arg(&root).args(["--numeric-owner", "-xf"]).arg(tarball));
        std::fs::write(root.join("etc/containerd/config.toml"), CONTAINERD_CONFIG).unwrap();
        std::fs::write(root.join("etc/hostname"), "berth-node\n").unwrap();

        // Unique per node: two tests boot nodes at once.
        static NODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let machine = format!("berth-ansible-{}-{n}", std::process::id());
        let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let mut cmd = Command::new(nspawn);
        cmd.args(["--quiet", "-b", "--private-network", "--register=no", "--console=pipe"])
            // runc inside needs the keyring system calls.
            .arg("--system-call-filter=@keyring")
            .arg(format!("--machine={machine}"))
            .arg("-D")
            .arg(&root);
        if !host_runs_systemd() {
            // No systemd to make a scope for the container: stay in ours.
            cmd.arg("--keep-unit");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("spawn systemd-nspawn");
        let mut node = Node { pid: 0, nspawn: Some(child), root, weed: None, dir: Some(dir) };
        let t = Instant::now();
        let nspawn_pid = node.nspawn.as_ref().unwrap().id();
        while node.pid == 0 {
            if let Some(p) = children(nspawn_pid).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim() == "systemd").unwrap_or(false)
            }) {
                node.pid = p;
            } else if t.elapsed() > Duration::from_secs(30)
                || node.nspawn.as_mut().unwrap().try_wait().ok().flatten().is_some()
            {
                panic!("the node did not boot; console:\n{}", node.console());
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The first moments, systemd's bus is not there yet ("Failed to connect to bus").
        let state = loop {
            let o = node.exec(&["timeout", "120", "systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !state.is_empty() && state != "offline" && state != "initializing" && state != "starting" {
                break state;
            }
            if t.elapsed() > Duration::from_secs(120) {
                panic!("the node did not finish booting ({state:?}, {}); console:\n{}", sh_out(&o), node.console());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if state != "running" {
            let failed = sh_out(&node.exec(&["systemctl", "--failed", "--no-pager"]));
            // degraded is acceptable only for units that do not matter here
            assert!(
                state == "degraded" && !failed.contains("containerd"),
                "the node is {state:?} after boot:\n{failed}\nconsole:\n{}",
                node.console()
            );
            eprintln!("ansible: node is degraded (ignored):\n{failed}");
        }
        node.writable_cgroups();
        eprintln!("ansible: node booted in {} (pid {})", elapsed(t), node.pid);
        node
    }

    fn console(&self) -> String {
        let p = self.dir.as_ref().unwrap().path().join("console.log");
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// On a cgroup v1 host nspawn mounts the controllers read-only; runc
    /// inside must create cgroups, so make them writable in the node's mount
    /// namespace only.
    fn writable_cgroups(&self) {
        let host_fs = Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/cgroup"]).output().unwrap();
        if String::from_utf8_lossy(&host_fs.stdout).trim() == "cgroup2fs" {
            return;
        }
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| *m == "/sys/fs/cgroup" || m.starts_with("/sys/fs/cgroup/"))
            .collect();
        points.sort_by_key(|m| m.len());
        points.dedup();
        for m in points {
            let t = self.pid.to_string();
            run(Command::new("nsenter").args([
                "-t",
                &t,
                "-m",
                "--",
                "mount",
                "-o",
                "remount,bind,rw,nosuid,nodev,noexec",
                m,
            ]));
        }
    }

    /// Runs a command inside the node (all its namespaces but the cgroup one).
    fn exec(&self, args: &[&str]) -> Output {
        let t = self.pid.to_string();
        Command::new("nsenter")
            .args(["-t", &t, "-m", "-u", "-i", "-n", "-p", "--"])
            .args(args)
            .output()
            .expect("spawn nsenter")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(o.status.success(), "in the node: {args:?} failed ({}):\n{}", o.status, sh_out(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn netns(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.pid)
    }

    fn unit(&self, unit: &str, prop: &str) -> String {
        self.ok(&["systemctl", "show", "--value", "-p", prop, unit]).trim().to_string()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn journal(&self, unit: &str) -> String {
        sh_out(&self.exec(&["journalctl", "--no-pager", "-n", "60", "-u", unit]))
    }

    /// containerd's snapshotter plugins (`ctr plugins ls`): ID → status.
    fn snapshotter_plugins(&self) -> BTreeMap<String, String> {
        self.ok(&["ctr", "plugins", "ls"])
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() >= 3 && w[0] == "io.containerd.snapshotter.v1")
            .map(|w| (w[1].to_string(), w[w.len() - 1].to_string()))
            .collect()
    }

    /// SeaweedFS serving S3 on the node's 127.0.0.1:8333: the host's weed, in
    /// the node's network namespace, with a private /tmp (weed puts sockets
    /// named by port there).
    fn start_seaweed(&mut self) {
        let weed = require_tool("weed");
        let dir = self.dir.as_ref().unwrap().path().join("weed");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let identities = serde_json::json!({"identities": [{
            "name": "berth",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("identities.json"), identities.to_string()).unwrap();
        let script = format!(
            "mount -t tmpfs -o mode=1777 tmpfs /tmp && exec {weed} -logdir={d}/log mini -dir={d}/data \
             -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=9333 -master.port.grpc=19333 -volume.port=8080 \
             -volume.port.grpc=18080 -filer.port=8888 -filer.port.grpc=18888 -s3.port={S3_PORT} \
             -s3.port.grpc=18333 -metricsPort=9327 -admin.port=23646 -admin.port.grpc=33646 \
             -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
             -volume.preStopSeconds=0 -s3.autoCreateBucket=false -s3.config={d}/identities.json -bucket={S3_BUCKET}",
            weed = weed.display(),
            d = dir.display(),
        );
        let mut child = Command::new("nsenter")
            .arg(self.netns())
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weed");
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("ready to use") {
                        let _ = tx.send(());
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let t = Instant::now();
        while rx.recv_timeout(Duration::from_millis(200)).is_err() {
            if t.elapsed() > Duration::from_secs(90) || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("SeaweedFS did not start in the node's network namespace:\n{}", log.lock().unwrap());
            }
        }
        // Signed requests can fail for a moment after "ready" (tests/scripts/seaweedfs.md).
        std::thread::sleep(Duration::from_millis(700));
        self.weed = Some(child);
        eprintln!("ansible: SeaweedFS ready on the node's 127.0.0.1:{S3_PORT} in {}", elapsed(t));
    }

    /// Holds `port` on the node's loopback (listening, never accepting) until dropped.
    fn hold_port(&self, port: u16) -> KillOnDrop {
        let script = format!(
            "import socket, sys, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port}))\ns.listen(1)\nprint('listening', flush=True)\ntime.sleep(3600)\n"
        );
        let mut child = Command::new("nsenter")
            .arg(self.netns())
            .args(["python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening", "could not hold port {port} in the node");
        KillOnDrop(child)
    }

    /// Pushes `layout` into the node's berthd (127.0.0.1:5000 in its network).
    fn push(&self, layout: &Layout, repo_tag: &str) {
        let sk = Skopeo::new();
        let c = sk.cmd();
        let mut cmd = Command::new("nsenter");
        cmd.arg(self.netns()).arg(c.get_program()).args(c.get_args()).args([
            "copy",
            "--dest-tls-verify=false",
            &layout.oci_ref(),
            &format!("docker://127.0.0.1:5000/{repo_tag}"),
        ]);
        run(&mut cmd);
    }

    /// containerd pulls `REGISTRY/<repo_tag>` (through the hosts.toml the
    /// role wrote, so through berthd), and runs it; returns the image digest
    /// and the container's output.
    fn pull_and_run(&self, repo_tag: &str, name: &str) -> (String, String) {
        self.pull_and_run_with(repo_tag, name, &[], &[])
    }

    /// [`Self::pull_and_run`] with more `ctr` arguments for the pull and the
    /// run (`--snapshotter …`), and the container's command (empty: the image's).
    fn pull_and_run_with(&self, repo_tag: &str, name: &str, ctr_args: &[&str], command: &[&str]) -> (String, String) {
        let image = format!("{REGISTRY}/{repo_tag}");
        let pull = self.ok(&[
            &["ctr", "-n", "berth-test", "images", "pull"],
            ctr_args,
            &["--hosts-dir", "/etc/containerd/certs.d", &image],
        ]
        .concat());
        assert!(pull.contains("done"), "ctr pull:\n{pull}");
        let list = self.ok(&["ctr", "-n", "berth-test", "images", "ls"]);
        let digest = list
            .lines()
            .find(|l| l.starts_with(&format!("{image} ")))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .unwrap_or_else(|| panic!("{image} not in ctr images ls:\n{list}"))
            .to_string();
        // The output goes to a file the container's process writes itself:
        // ctr's own stdout copy can lose what a process prints just before
        // it exits (containerd#770).
        let log = format!("/var/tmp/{name}.out");
        let uri = format!("file://{log}");
        self.ok(&[&["ctr", "-n", "berth-test", "run", "--rm", "--log-uri", &uri], ctr_args, &[&image, name], command]
            .concat());
        let out = std::fs::read_to_string(self.path(&log)).unwrap_or_else(|e| panic!("no output of {name}: {e}"));
        (digest, out)
    }

    fn shutdown(&mut self) {
        if let Some(mut w) = self.weed.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut c) = self.nspawn.take() {
            // SIGTERM: nspawn asks the node's systemd to power off.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.dir.take() {
            let path = d.path().to_path_buf();
            if d.close().is_err() {
                eprintln!("ansible: could not remove {} entirely", path.display());
            }
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Every file and directory under `dir`: path → (mode, content; `None` for
/// a directory, the target for a symlink).
fn tree(dir: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        let rel = p.strip_prefix(dir).unwrap().display().to_string();
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            out.insert(rel, (mode, None));
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if meta.file_type().is_symlink() {
            out.insert(rel, (mode, Some(std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes())));
        } else {
            out.insert(rel, (mode, Some(std::fs::read(&p).unwrap())));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Ansible
// ---------------------------------------------------------------------------

struct Ansible {
    bin: PathBuf,
    dir: PathBuf,
    home: tempfile::TempDir,
    /// Every line Ansible printed, to check that no secret leaked.
    transcript: String,
}

struct Play {
    ok: bool,
    out: String,
}

impl Play {
    /// `ok=`, `changed=`, `failed=` … of `host` in the PLAY RECAP.
    fn recap(&self, host: &str) -> BTreeMap<String, u32> {
        let line = self
            .out
            .lines()
            .rev()
            .find(|l| l.split_whitespace().next() == Some(host) && l.contains("changed="))
            .unwrap_or_else(|| panic!("no recap for {host} in:\n{}", self.out));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    }

    fn changed(&self, host: &str) -> u32 {
        self.recap(host)["changed"]
    }

    /// The names of the tasks that reported `changed` (for failure messages).
    fn changed_tasks(&self) -> String {
        let mut task = "";
        let mut names = Vec::new();
        for l in self.out.lines() {
            if l.starts_with("TASK [") || l.starts_with("RUNNING HANDLER [") {
                task = l.trim_end_matches(['*', ' ']);
            } else if l.starts_with("changed:") {
                names.push(task);
            }
        }
        names.join("\n")
    }
}

impl Ansible {
    fn new() -> Ansible {
        let prefix = std::env::var("BERTH_ANSIBLE_PREFIX")
            .map(PathBuf::from)
            .unwrap_or_else(|_| "/opt/berth-test/ansible".into());
        let bin = prefix.join("bin");
        for tool in ["ansible-playbook", "ansible-lint"] {
            assert!(
                bin.join(tool).is_file(),
                "{} is missing (CI={}): run `bash tests/scripts/install-ansible.sh`",
                bin.join(tool).display(),
                crate::common::in_ci()
            );
        }
        let home = tempfile::Builder::new().prefix("berth-ansible-home").tempdir().unwrap();
        Ansible { bin, dir: workspace_root().join("ansible"), home, transcript: String::new() }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new("timeout");
        c.args(["--kill-after=10", "900"]).arg(self.bin.join(tool)).current_dir(&self.dir);
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", self.bin.display()))
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.home.path())
            .env("ANSIBLE_LOCAL_TEMP", self.home.path().join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("NO_COLOR", "1")
            .env("PY_COLORS", "0")
            // Where the inventory takes the S3 credentials from.
            .env("BERTH_TEST_S3_ACCESS_KEY", S3_ACCESS_KEY)
            .env("BERTH_TEST_S3_SECRET_KEY", S3_SECRET_KEY)
            .stdin(Stdio::null());
        c
    }

    /// `ansible-playbook site.yml -i <inventory> <args>`.
    fn playbook(&mut self, what: &str, inventory: &Path, args: &[&str]) -> Play {
        self.run_playbook(what, Path::new("site.yml"), inventory, args)
    }

    /// `ansible-playbook <playbook> -i <inventory> <args>`.
    fn run_playbook(&mut self, what: &str, playbook: &Path, inventory: &Path, args: &[&str]) -> Play {
        let t = Instant::now();
        let mut c = self.cmd("ansible-playbook");
        c.arg(playbook).arg("-i").arg(inventory).args(args);
        let o = c.output().expect("spawn ansible-playbook");
        let out = sh_out(&o);
        self.transcript.push_str(&out);
        let play = Play { ok: o.status.success(), out };
        let recap: Vec<&str> = play.out.lines().filter(|l| l.contains(" ok=") && l.contains("changed=")).collect();
        eprintln!("ansible: {what}: {} in {}\n  {}", o.status, elapsed(t), recap.join("\n  "));
        play
    }

    fn ok(&mut self, what: &str, inventory: &Path, args: &[&str]) -> Play {
        let play = self.playbook(what, inventory, args);
        assert!(play.ok, "{what} failed:\n{}", play.out);
        play
    }
}

/// The inventory: `hosts` are names for the node (more than one alias the
/// same node, to watch the batches), with the variables a user would set.
fn write_inventory(path: &Path, node: &Node, hosts: &[&str], berthd: &Path, snapshotter: &Path) {
    let hosts: serde_json::Map<String, serde_json::Value> =
        hosts.iter().map(|h| (h.to_string(), serde_json::json!({"ansible_nsenter_pid": node.pid}))).collect();
    let inventory = serde_json::json!({
        "berth": {
            "hosts": hosts,
            "vars": {
                "ansible_connection": "community.docker.nsenter",
                "ansible_python_interpreter": "/usr/bin/python3",
                // nsenter is root already; site.yml's become would ask for sudo
                "ansible_become": false,
                "berth_berthd_src": berthd,
                // Installed only with berth_snapshotter: true (-e).
                "berth_snapshotter_src": snapshotter,
                "berth_s3_endpoint": format!("http://127.0.0.1:{S3_PORT}"),
                "berth_s3_bucket": S3_BUCKET,
                "berth_s3_access_key": "{{ lookup('ansible.builtin.env', 'BERTH_TEST_S3_ACCESS_KEY') }}",
                "berth_s3_secret_key": "{{ lookup('ansible.builtin.env', 'BERTH_TEST_S3_SECRET_KEY') }}",
                "berth_layerindex_key": "ansible-test-layer-index-key-0123456789abcdef",
                "berth_cache_maxsize": "1GiB",
                "berth_cache_path": CACHE_PATH,
                "berth_registries": [REGISTRY],
                "berth_config": {"http": {"debug": {"addr": "127.0.0.1:5001"}}, "log": {"level": "info"}},
            },
        },
    });
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(serde_json::to_string_pretty(&inventory).unwrap().as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn ansible_rolls_out_berth_on_a_debian_node_and_removes_it_exactly() {
    let started = Instant::now();
    assert!(is_root(), "the Ansible test needs root (it boots a node with systemd-nspawn)");
    for tool in ["mmdebstrap", "systemd-nspawn", "nsenter", "unshare", "skopeo", "umoci", "weed", "tar", "timeout"] {
        require_tool(tool);
    }
    let mut ansible = Ansible::new();

    // ansible-lint (offline, production profile from ansible/.ansible-lint),
    // while the node is being made.
    let mut lint = ansible.cmd("ansible-lint");
    let lint = std::thread::spawn(move || {
        let t = Instant::now();
        let o = lint.output().expect("spawn ansible-lint");
        (o, t.elapsed())
    });

    let work = tempfile::Builder::new().prefix("berth-ansible-work").tempdir_in("/var/tmp").unwrap();
    let image = build_busybox_image(work.path(), "busybox");
    let image3 =
        crate::support_e2e::build_busybox_image_with(work.path(), "busybox3", &[("etc/berth-test", b"snapshotter\n")]);
    // Copies: the binaries the whole test installs, whatever a build does to target/ meanwhile.
    let (berthd_built, snapshotter_built) = workspace_binaries();
    let berthd = work.path().join("berthd");
    std::fs::copy(berthd_built, &berthd).expect("copy berthd");
    let snapshotter = work.path().join("berth-snapshotter");
    std::fs::copy(snapshotter_built, &snapshotter).expect("copy berth-snapshotter");
    let tarball = node_root_tarball(SUITE);
    let mut node = Node::boot(&tarball);
    node.start_seaweed();
    let inventory = work.path().join("inventory.yml");
    write_inventory(&inventory, &node, &["node1"], &berthd, &snapshotter);
    let containerd_before = tree(&node.path("/etc/containerd"));
    let containerd_pid = node.unit("containerd", "MainPID");
    assert_ne!(containerd_pid, "0", "containerd runs on the new node:\n{}", node.journal("containerd"));

    // 1. --check --diff on a new node: says what it would do, changes nothing.
    let check = ansible.ok("check mode on a new node", &inventory, &["--check", "--diff"]);
    assert!(check.changed("node1") > 0, "check mode shows the changes to come:\n{}", check.out);
    assert!(!node.path("/usr/local/bin/berthd").exists(), "check mode installed berthd");
    assert!(!node.path("/etc/berth").exists(), "check mode wrote /etc/berth");
    assert!(
        !std::fs::read_to_string(node.path("/etc/passwd")).unwrap().contains("berth:"),
        "check mode made an account"
    );
    assert!(tree(&node.path("/etc/containerd")) == containerd_before, "check mode changed /etc/containerd");
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid, "check mode restarted containerd");

    // 2. The rollout.
    let first = ansible.ok("rollout", &inventory, &["--diff", "-v"]);
    assert!(first.changed("node1") > 0, "{}", first.out);
    assert_eq!(node.unit("berth", "ActiveState"), "active", "{}", node.journal("berth"));
    assert_eq!(node.unit("berth", "UnitFileState"), "enabled");
    let berth_pid = node.unit("berth", "MainPID");
    let containerd_pid_1 = node.unit("containerd", "MainPID");
    assert_ne!(containerd_pid_1, containerd_pid, "config.toml changed, so containerd was restarted");
    assert_eq!(node.unit("containerd", "ActiveState"), "active", "{}", node.journal("containerd"));

    // containerd reads berthd's hosts directory; the rest of config.toml is kept.
    let config_toml = std::fs::read_to_string(node.path("/etc/containerd/config.toml")).unwrap();
    assert!(config_toml.contains("config_path = \"/etc/containerd/certs.d\""), "{config_toml}");
    assert!(config_toml.contains("# pinned on purpose") && config_toml.contains("pause:3.9"), "{config_toml}");
    let hosts_toml =
        std::fs::read_to_string(node.path(&format!("/etc/containerd/certs.d/{REGISTRY}/hosts.toml"))).unwrap();
    assert!(hosts_toml.contains("[host.\"http://127.0.0.1:5000\"]"), "{hosts_toml}");

    // The unit is sandboxed and runs as its own account.
    for (prop, want) in [
        ("User", "berth"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(node.unit("berth", prop), want, "berth.service {prop}");
    }
    let rw = node.unit("berth", "ReadWritePaths");
    assert_eq!(rw, CACHE_PATH, "berthd writes only its cache (S3 storage)");
    let status = node.ok(&["cat", &format!("/proc/{berth_pid}/status")]);
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "berthd runs as root: {uid}");
    let security = sh_out(&node.exec(&["systemd-analyze", "security", "--no-pager", "berth.service"]));
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("berth.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    eprintln!("ansible: systemd-analyze security berth.service: {exposure}");
    assert!(exposure <= 2.0, "berth.service exposure {exposure} (systemd-analyze security):\n{security}");

    // Credentials: only in the root-only environment file, never in the config or the play's output.
    let env_file = node.path("/etc/berth/berth.env");
    let meta = std::fs::metadata(&env_file).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o600, 0), "berth.env mode and owner");
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert!(env_text.contains("REGISTRY_STORAGE_S3_SECRETKEY"), "{env_text}");
    let config_yml = std::fs::read_to_string(node.path("/etc/berth/config.yml")).unwrap();
    assert!(!config_yml.contains(S3_SECRET_KEY) && !config_yml.contains(S3_ACCESS_KEY), "{config_yml}");
    assert!(config_yml.contains("maxsize: 1GiB") && config_yml.contains(CACHE_PATH), "{config_yml}");
    let environ = node.ok(&["cat", &format!("/proc/{berth_pid}/environ")]);
    assert!(
        environ.split('\0').any(|v| v == format!("REGISTRY_STORAGE_S3_SECRETKEY={S3_SECRET_KEY}")),
        "berthd got the secret key unchanged from the environment file"
    );

    // 3. containerd pulls through the node's berthd (S3 behind it) and runs the image.
    node.push(&image.layout, "app:v1");
    let (digest, out) = node.pull_and_run("app:v1", "berth-e2e-1");
    assert_eq!(digest, image.manifest_digest, "containerd pulled what was pushed");
    assert_eq!(out.trim(), "hi", "the container's output");
    let cached = tree(&node.path(CACHE_PATH));
    assert!(cached.values().any(|(_, c)| c.is_some()), "berthd's node cache is empty after a pull: {cached:?}");
    let cache_meta = std::fs::metadata(node.path(CACHE_PATH)).unwrap();
    assert_ne!(cache_meta.uid(), 0, "the cache belongs to berthd's account");

    // 4. A second run changes nothing and restarts nothing.
    let second = ansible.ok("second rollout", &inventory, &["--diff"]);
    assert_eq!(second.changed("node1"), 0, "second run changed:\n{}\n\n{}", second.changed_tasks(), second.out);
    assert_eq!(node.unit("berth", "MainPID"), berth_pid, "the second run restarted berthd");
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid_1, "the second run restarted containerd");

    // 5. So does --check --diff on the installed node.
    let check2 = ansible.ok("check mode on the installed node", &inventory, &["--check", "--diff"]);
    assert_eq!(check2.changed("node1"), 0, "check mode changed:\n{}\n\n{}", check2.changed_tasks(), check2.out);

    // 6. A bad configuration stops the rollout on the first batch: node2 (the
    //    same node under a second name, in the second batch) is never touched.
    let two = work.path().join("inventory-two.yml");
    write_inventory(&two, &node, &["node1", "node2"], &berthd, &snapshotter);
    //    The port berthd is told to listen on is taken (by a socket that
    //    never answers), so berthd cannot start and /v2/ never answers.
    let squatter = node.hold_port(BUSY_PORT);
    let bad = ansible.playbook(
        "rollout with a listener on a port in use",
        &two,
        &["-e", &format!("berth_listen_addr=127.0.0.1:{BUSY_PORT}"), "-e", "berth_wait_timeout=6"],
    );
    drop(squatter);
    assert!(!bad.ok, "a berthd that cannot listen must fail the rollout:\n{}", bad.out);
    assert!(bad.out.contains("berthd does not answer"), "{}", bad.out);
    assert_eq!(bad.recap("node1")["failed"], 1, "{}", bad.out);
    assert!(!bad.out.contains("[node2]"), "the rollout went on to the next batch:\n{}", bad.out);
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid_1, "a failed berthd must not touch containerd");

    // 7. The good configuration again: berthd is restarted, containerd is not
    //    (its configuration did not change), and pulls work.
    let fixed = ansible.ok("rollout with the configuration fixed", &inventory, &[]);
    assert!(fixed.changed("node1") > 0, "{}", fixed.out);
    assert!(fixed.out.contains("RUNNING HANDLER [berth : Restart berthd]"), "{}", fixed.out);
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid_1, "containerd restarted without a config change");
    let image2 = crate::support_e2e::build_busybox_image_with(work.path(), "busybox2", &[("etc/berth-test", b"v2\n")]);
    node.push(&image2.layout, "app:v2");
    let (digest2, out2) = node.pull_and_run("app:v2", "berth-e2e-2");
    assert_eq!((digest2, out2.trim().to_string()), (image2.manifest_digest.clone(), "hi".to_string()));

    // 8. berth_snapshotter: true installs berth-snapshotter and its unit and
    //    makes it containerd's proxy snapshotter (containerd restarted to read
    //    it); containerd pulls into it through berthd and runs the image.
    let on = ["-e", r#"{"berth_snapshotter": true}"#];
    let berth_pid = node.unit("berth", "MainPID");
    let snap_on = ansible.ok("rollout with berth-snapshotter", &inventory, &[&on[..], &["--diff"]].concat());
    assert!(snap_on.changed("node1") > 0, "{}", snap_on.out);
    let installed = node.path("/usr/local/bin/berth-snapshotter");
    assert!(
        std::fs::read(&installed).ok() == Some(std::fs::read(&snapshotter).unwrap()),
        "{} is not the workspace's berth-snapshotter",
        installed.display()
    );
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(node.path("/etc/systemd/system/berth-snapshotter.service").is_file(), "no berth-snapshotter unit");
    assert_eq!(node.unit("berth-snapshotter", "ActiveState"), "active", "{}", node.journal("berth-snapshotter"));
    assert_eq!(node.unit("berth-snapshotter", "UnitFileState"), "enabled");
    let snapshotter_pid = node.unit("berth-snapshotter", "MainPID");
    // /run is the node's own tmpfs: look from inside.
    assert!(
        node.exec(&["test", "-S", SNAPSHOTTER_SOCKET]).status.success(),
        "berth-snapshotter does not listen on {SNAPSHOTTER_SOCKET}:\n{}",
        node.journal("berth-snapshotter")
    );
    assert_eq!(node.unit("berth", "MainPID"), berth_pid, "berthd restarted for the snapshotter");
    let config_toml_snap = std::fs::read_to_string(node.path("/etc/containerd/config.toml")).unwrap();
    for want in ["[proxy_plugins.berth]", SNAPSHOTTER_SOCKET, "snapshotter = \"berth\"", "# pinned on purpose"] {
        assert!(config_toml_snap.contains(want), "config.toml has no {want}:\n{config_toml_snap}");
    }
    let containerd_pid_3 = node.unit("containerd", "MainPID");
    assert_ne!(containerd_pid_3, containerd_pid_1, "config.toml changed, so containerd was restarted");
    assert_eq!(node.unit("containerd", "ActiveState"), "active", "{}", node.journal("containerd"));
    // Lazy layers are FUSE mounts made by the snapshotter's processes:
    // containerd must see them, and a restart of the unit must leave them.
    let mnt_ns = |pid: &str| node.ok(&["readlink", &format!("/proc/{pid}/ns/mnt")]);
    assert_eq!(
        mnt_ns(&snapshotter_pid),
        mnt_ns(&containerd_pid_3),
        "berth-snapshotter runs in a mount namespace of its own: containerd would not see its mounts"
    );
    assert_eq!(node.unit("berth-snapshotter", "KillMode"), "process");
    let plugins = node.snapshotter_plugins();
    assert_eq!(plugins.get("berth").map(String::as_str), Some("ok"), "ctr plugins ls: {plugins:?}");
    node.push(&image3.layout, "app:v3");
    let (digest3, out3) = node.pull_and_run_with(
        "app:v3",
        "berth-e2e-3",
        &["--snapshotter", "berth"],
        &["sh", "-c", "echo hi && cat /etc/berth-test"],
    );
    assert_eq!(digest3, image3.manifest_digest, "containerd pulled what was pushed");
    assert_eq!(out3.trim(), "hi\nsnapshotter", "the container's output, from berth-snapshotter's snapshot");
    let snapshots = node.ok(&["ctr", "-n", "berth-test", "snapshots", "--snapshotter", "berth", "ls"]);
    assert!(snapshots.lines().count() > 1, "berth-snapshotter holds no snapshot:\n{snapshots}");

    // 9. Run again with it on: nothing changes, nothing restarts.
    let snap_again = ansible.ok("second rollout with berth-snapshotter", &inventory, &on);
    assert_eq!(
        snap_again.changed("node1"),
        0,
        "second run changed:\n{}\n\n{}",
        snap_again.changed_tasks(),
        snap_again.out
    );
    assert_eq!(node.unit("berth-snapshotter", "MainPID"), snapshotter_pid, "berth-snapshotter was restarted");
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid_3, "containerd was restarted");

    // 10. Back to berth_snapshotter: false: containerd's config.toml is as it
    //     was before (containerd restarted to read it), the unit and the
    //     binary are gone, and containerd runs containers as before.
    let snap_off = ansible.ok("rollout with berth-snapshotter switched off", &inventory, &["--diff"]);
    assert!(snap_off.changed("node1") > 0, "{}", snap_off.out);
    let config_toml_off = std::fs::read_to_string(node.path("/etc/containerd/config.toml")).unwrap();
    assert!(
        config_toml_off == config_toml,
        "config.toml still differs from the one without berth-snapshotter:\n{config_toml_off}"
    );
    assert_ne!(
        node.unit("containerd", "MainPID"),
        containerd_pid_3,
        "config.toml changed, so containerd was restarted"
    );
    assert_eq!(node.unit("containerd", "ActiveState"), "active", "{}", node.journal("containerd"));
    assert!(!node.snapshotter_plugins().contains_key("berth"), "containerd still loads the proxy plugin");
    for gone in ["/usr/local/bin/berth-snapshotter", "/etc/systemd/system/berth-snapshotter.service"] {
        assert!(!node.path(gone).exists(), "{gone} is still there with berth_snapshotter: false");
    }
    assert_eq!(node.unit("berth-snapshotter", "LoadState"), "not-found");
    let (_, out_off) = node.pull_and_run("app:v2", "berth-e2e-4");
    assert_eq!(out_off.trim(), "hi");
    let containerd_pid_4 = node.unit("containerd", "MainPID");

    // 11. berth_state: absent gives containerd's configuration back byte for
    //     byte, restarts containerd and removes Berth; a second removal changes nothing.
    let absent = ansible.ok("removal", &inventory, &["-e", "berth_state=absent", "--diff"]);
    assert!(absent.changed("node1") > 0, "{}", absent.out);
    let containerd_after = tree(&node.path("/etc/containerd"));
    if containerd_after != containerd_before {
        let before: Vec<&String> = containerd_before.keys().collect();
        let after: Vec<&String> = containerd_after.keys().collect();
        panic!(
            "/etc/containerd differs after removal\nbefore: {before:?}\nafter: {after:?}\nconfig.toml now:\n{}",
            std::fs::read_to_string(node.path("/etc/containerd/config.toml")).unwrap_or_default()
        );
    }
    assert_ne!(node.unit("containerd", "MainPID"), containerd_pid_4, "containerd was restarted to read its old config");
    assert_eq!(node.unit("containerd", "ActiveState"), "active");
    for gone in ["/usr/local/bin/berthd", "/etc/systemd/system/berth.service", "/etc/berth", "/var/cache/berth"] {
        assert!(!node.path(gone).exists(), "{gone} is still there after removal");
    }
    assert_eq!(node.unit("berth", "LoadState"), "not-found");
    let absent2 = ansible.ok("second removal", &inventory, &["-e", "berth_state=absent"]);
    assert_eq!(absent2.changed("node1"), 0, "{}\n\n{}", absent2.changed_tasks(), absent2.out);

    // 12. A k3s agent node: k3s's registries.yaml instead of containerd's
    //     files, and k3s-agent is the unit restarted. (A stand-in k3s-agent
    //     unit: what is checked is the role's wiring, not k3s itself.)
    std::fs::create_dir_all(node.path("/etc/rancher/k3s")).unwrap();
    std::fs::write(node.path("/etc/rancher/k3s/registries.yaml"), K3S_REGISTRIES).unwrap();
    std::fs::write(node.path("/etc/systemd/system/k3s-agent.service"), K3S_AGENT_UNIT).unwrap();
    node.ok(&["systemctl", "daemon-reload"]);
    node.ok(&["systemctl", "enable", "--now", "k3s-agent.service"]);
    let rancher_before = tree(&node.path("/etc/rancher"));
    let containerd_before = tree(&node.path("/etc/containerd"));
    let (k3s_pid, containerd_pid_2) = (node.unit("k3s-agent", "MainPID"), node.unit("containerd", "MainPID"));
    ansible.ok("rollout on a k3s agent node", &inventory, &[]);
    let registries = std::fs::read_to_string(node.path("/etc/rancher/k3s/registries.yaml")).unwrap();
    assert!(
        registries.contains("http://127.0.0.1:5000") && registries.contains("insecure_skip_verify"),
        "{registries}"
    );
    assert_ne!(node.unit("k3s-agent", "MainPID"), k3s_pid, "k3s-agent was not restarted after registries.yaml changed");
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid_2, "containerd is not k3s's runtime here");
    let config_toml_k3s = std::fs::read(node.path("/etc/containerd/config.toml")).unwrap();
    assert!(config_toml_k3s == CONTAINERD_CONFIG.as_bytes(), "containerd's config.toml was edited on a k3s node");
    let k3s_pid_1 = node.unit("k3s-agent", "MainPID");
    ansible.ok("removal from the k3s agent node", &inventory, &["-e", "berth_state=absent"]);
    assert!(tree(&node.path("/etc/rancher")) == rancher_before, "/etc/rancher differs after removal");
    assert!(tree(&node.path("/etc/containerd")) == containerd_before, "/etc/containerd differs after removal");
    assert_ne!(node.unit("k3s-agent", "MainPID"), k3s_pid_1, "k3s-agent was not restarted to read its old config");

    // No credential in anything Ansible printed (-v and --diff included).
    for secret in [S3_SECRET_KEY, S3_ACCESS_KEY] {
        assert!(!ansible.transcript.contains(secret), "a credential appears in the play's output");
    }

    let (lint, lint_time) = lint.join().unwrap();
    eprintln!("ansible: ansible-lint took {:.1}s", lint_time.as_secs_f64());
    assert!(lint.status.success(), "ansible-lint failed:\n{}", sh_out(&lint));

    node.shutdown();
    eprintln!("ansible: done in {}", elapsed(started));
}

/// Debian 13 (systemd 257, containerd 1.7, Python 3.13) boots under
/// systemd-nspawn here too: the rollout with berth-snapshotter on, a pull
/// run lazily through it, a second run that changes nothing, and a removal
/// that gives containerd's configuration back byte for byte.
#[test]
fn ansible_rolls_out_berth_with_the_snapshotter_on_debian_13() {
    assert!(is_root(), "the Ansible test needs root (it boots a node with systemd-nspawn)");
    for tool in ["mmdebstrap", "systemd-nspawn", "nsenter", "unshare", "skopeo", "umoci", "weed", "tar", "timeout"] {
        require_tool(tool);
    }
    let mut ansible = Ansible::new();
    let work = tempfile::Builder::new().prefix("berth-ansible-work").tempdir_in("/var/tmp").unwrap();
    let image =
        crate::support_e2e::build_busybox_image_with(work.path(), "busybox", &[("etc/berth-test", b"trixie\n")]);
    let (berthd_built, snapshotter_built) = workspace_binaries();
    let berthd = work.path().join("berthd");
    std::fs::copy(berthd_built, &berthd).expect("copy berthd");
    let snapshotter = work.path().join("berth-snapshotter");
    std::fs::copy(snapshotter_built, &snapshotter).expect("copy berth-snapshotter");
    let mut node = Node::boot(&node_root_tarball("trixie"));
    node.start_seaweed();
    let inventory = work.path().join("inventory.yml");
    write_inventory(&inventory, &node, &["node1"], &berthd, &snapshotter);
    let containerd_before = tree(&node.path("/etc/containerd"));
    let version = node.ok(&["containerd", "--version"]);
    assert!(version.contains(" 1.7."), "Debian 13 ships containerd 1.7: {version}");

    let on = ["-e", r#"{"berth_snapshotter": true}"#];
    let first = ansible.ok("rollout on Debian 13", &inventory, &[&on[..], &["--diff"]].concat());
    assert!(first.changed("node1") > 0, "{}", first.out);
    for unit in ["berth", "berth-snapshotter", "containerd"] {
        assert_eq!(node.unit(unit, "ActiveState"), "active", "{unit}: {}", node.journal(unit));
    }
    let (berth_pid, containerd_pid) = (node.unit("berth", "MainPID"), node.unit("containerd", "MainPID"));
    node.push(&image.layout, "app:v1");
    let (digest, out) = node.pull_and_run_with(
        "app:v1",
        "berth-trixie-1",
        &["--snapshotter", "berth"],
        &["sh", "-c", "echo hi && cat /etc/berth-test"],
    );
    assert_eq!(digest, image.manifest_digest, "containerd pulled what was pushed");
    assert_eq!(out.trim(), "hi\ntrixie", "the container's output, from berth-snapshotter's snapshot");

    let again = ansible.ok("second rollout on Debian 13", &inventory, &on);
    assert_eq!(again.changed("node1"), 0, "second run changed:\n{}\n\n{}", again.changed_tasks(), again.out);
    assert_eq!(node.unit("berth", "MainPID"), berth_pid, "the second run restarted berthd");
    assert_eq!(node.unit("containerd", "MainPID"), containerd_pid, "the second run restarted containerd");

    let absent = ansible.ok("removal on Debian 13", &inventory, &["-e", "berth_state=absent", "--diff"]);
    assert!(absent.changed("node1") > 0, "{}", absent.out);
    assert!(
        tree(&node.path("/etc/containerd")) == containerd_before,
        "/etc/containerd differs after removal; config.toml now:\n{}",
        std::fs::read_to_string(node.path("/etc/containerd/config.toml")).unwrap_or_default()
    );
    assert_eq!(node.unit("containerd", "ActiveState"), "active", "{}", node.journal("containerd"));
    assert_eq!(node.unit("berth", "LoadState"), "not-found");
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// The role picks berthd for the node's architecture from a mapping. On an
/// arm64 node (Debian 12 arm64, run through qemu-user, reached like the
/// other node with nsenter) it installs the real arm64 build, after checking
/// that it runs there (`--version`); a second run changes nothing.
#[test]
fn the_role_installs_the_arm64_berthd_on_an_aarch64_node() {
    use crate::support_e2e::arm64::{arm64_binaries, debian12_arm64_root};
    assert!(is_root(), "the arm64 Ansible test needs root (it enters a system root)");
    let (arm64, _) = arm64_binaries();
    let node = debian_root::Rootfs::enter(&debian12_arm64_root());
    let mut ansible = Ansible::new();
    let work = tempfile::Builder::new().prefix("berth-ansible-arm64").tempdir().unwrap();
    let inventory = work.path().join("inventory.json");
    let hosts = serde_json::json!({
        "berth": {
            "hosts": {"pi": {"ansible_nsenter_pid": node.pid}},
            "vars": {
                "ansible_connection": "community.docker.nsenter",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_become": false,
                "berth_berthd_src": {"amd64": berthd_bin(), "arm64": arm64},
            },
        },
    });
    std::fs::write(&inventory, serde_json::to_vec_pretty(&hosts).unwrap()).unwrap();
    let playbook = work.path().join("binary.yml");
    std::fs::write(
        &playbook,
        "- name: Install berthd only\n  hosts: berth\n  tasks:\n    - name: The role's binary tasks\n      ansible.builtin.include_role:\n        name: berth\n        tasks_from: binary\n",
    )
    .unwrap();
    let first = ansible.run_playbook("arm64 binary", &playbook, &inventory, &[]);
    assert!(first.ok, "installing berthd on the arm64 node failed:\n{}", first.out);
    assert!(first.out.contains("Choose the berthd binary for arm64"), "{}", first.out);
    let installed = node.host_path("/usr/local/bin/berthd");
    assert_eq!(
        crate::common::sha256(&std::fs::read(&installed).unwrap()),
        crate::common::sha256(&std::fs::read(&arm64).unwrap()),
        "the arm64 build is what the node got"
    );
    assert_eq!(node.ok("/usr/local/bin/berthd", &["--version"]).trim(), format!("berthd {}", berthd::VERSION));
    let again = ansible.run_playbook("arm64 binary again", &playbook, &inventory, &[]);
    assert!(again.ok, "{}", again.out);
    assert_eq!(again.changed("pi"), 0, "the second run changes nothing:\n{}", again.changed_tasks());
}
