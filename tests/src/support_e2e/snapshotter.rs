//! A `berth-snapshotter serve` process for tests: its own socket and root
//! in a temp dir, killed on drop (or by the test, to test restarts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::workspace_root;
use crate::support_e2e::containerd::{Containerd, MIRROR_HOST};

pub fn snapshotter_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_SNAPSHOTTER_BIN") {
        return PathBuf::from(p);
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("berth-snapshotter");
        if p.exists() {
            return p;
        }
    }
    panic!("berth-snapshotter not found under {}: run `cargo build --workspace` first", target.display());
}

pub struct SnapshotterProc {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub sock: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
}

impl SnapshotterProc {
    /// Starts one with socket `<dir>/snap.sock` and root `<dir>/snap-root`.
    pub fn start(dir: &Path, berthd_url: &str) -> SnapshotterProc {
        SnapshotterProc::start_with(dir, berthd_url, &[])
    }

    /// With extra `serve` flags (kept for restarts).
    pub fn start_with(dir: &Path, berthd_url: &str, args: &[&str]) -> SnapshotterProc {
        let mut s = SnapshotterProc {
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            sock: dir.join("snap.sock"),
            root: dir.join("snap-root"),
            log: dir.join("snapshotter.log"),
        };
        s.spawn(berthd_url);
        s
    }

    pub fn spawn(&mut self, berthd_url: &str) {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(snapshotter_bin())
            .arg("serve")
            .arg("--address")
            .arg(&self.sock)
            .arg("--root")
            .arg(&self.root)
            .arg("--berthd")
            .arg(berthd_url)
            .args(&self.args)
            .env("BERTH_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn berth-snapshotter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                panic!("berth-snapshotter exited with {st}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "berth-snapshotter not listening in 20s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// containerd config lines registering this snapshotter as `berth`.
    pub fn proxy_plugin_toml(&self) -> String {
        format!("[proxy_plugins.berth]\n  type = \"snapshot\"\n  address = \"{}\"\n", self.sock.display())
    }
}

impl Drop for SnapshotterProc {
    fn drop(&mut self) {
        self.kill();
        // Lazy layers' FUSE mounts (their serving processes exit with them).
        for m in crate::support_e2e::containerd::mounts_under(&self.root).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).stderr(Stdio::null()).status();
        }
    }
}

/// containerd's CRI plugin set up the way `berthd containerd configure
/// --snapshotter` leaves a node: berth as the CRI snapshotter, snapshot
/// annotations on, registries through hosts.toml pointing at `berthd`.
pub fn cri_config(work: &Path, snap: &SnapshotterProc, berthd_addr: &str) -> String {
    let certs = work.join("certs.d");
    let host = certs.join(MIRROR_HOST);
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(
        host.join("hosts.toml"),
        format!("server = \"https://{MIRROR_HOST}\"\n\n[host.\"http://{berthd_addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    std::fs::create_dir_all(work.join("cni")).unwrap();
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{MIRROR_HOST}/pause:none"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "berth"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"

{proxy}"#,
        certs = certs.display(),
        cni = work.join("cni").display(),
        proxy = snap.proxy_plugin_toml(),
    )
}

/// PullImage through the CRI image service of the containerd listening on
/// `sock`, as kubelet does.
pub fn cri_pull_on(sock: &Path, rt: &tokio::runtime::Runtime, image: &str) -> Result<(), String> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    rt.block_on(async {
        let channel = containerd_client::connect(sock).await.unwrap();
        let mut images = ImageServiceClient::new(channel);
        let req = k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec { image: image.to_string(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        images.pull_image(req).await.map(|_| ()).map_err(|status| format!("{status:?}"))
    })
}

/// [`cri_pull_on`] the test's containerd; on failure, both logs.
pub fn cri_pull(ctd: &Containerd, rt: &tokio::runtime::Runtime, image: &str, snap: &SnapshotterProc) {
    let r = cri_pull_on(&ctd.sock, rt, image);
    assert!(
        r.is_ok(),
        "CRI PullImage {image}: {r:?}\nsnapshotter log:\n{}\ncontainerd log:\n{}",
        snap.log_text(),
        ctd.log_text().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}
