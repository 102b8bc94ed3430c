//! Remote snapshots: when containerd prepares a layer's snapshot with the
//! target and CRI labels, and the node's berthd has a seek index for the
//! layer, the snapshot is created already committed, its tree served by a
//! FUSE mount, and Prepare answers `AlreadyExists`: containerd skips the
//! download and unpacking. Anything that stands in the way (no labels,
//! berthd down, no index, a failed mount) makes Prepare go on normally; a
//! pull never fails because the lazy path could not be used.
//!
//! Each mount is served by its own `berth-snapshotter mount-layer` process
//! in its own process group, so restarting or upgrading the snapshotter
//! does not take the file systems of running containers down with it. At
//! start the snapshotter adopts live mounts and remounts dead ones.
//!
//! A lazy snapshot's directory: `fs/` (the mount point), `lazy/index.json`,
//! `lazy/layer.json` ([`MountSpec`]), `lazy/chunks/`, `lazy/mount.log`.

use crate::berthd::{Berthd, LayerRef};
use crate::error::{Error, Result};
use crate::mounts::{is_mounted, is_served, unmount, LABEL_LAZY};
use crate::snapshots::Snapshotter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The committed snapshot containerd wants the layer unpacked into.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
pub const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";

/// What a mount-layer process needs, written beside the index.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MountSpec {
    pub berthd: String,
    pub layer: LayerRef,
    /// Background fetch rate, bytes per second (0: unlimited), for the
    /// node: the fills of all layers take turns under `fill_lock`.
    pub fill_rate: u64,
    /// The file whose lock a fill holds while it fetches and waits out its
    /// share of the rate (absent in specs written before there was one:
    /// those layers fill on their own).
    #[serde(default)]
    pub fill_lock: Option<PathBuf>,
    /// The chain ids the finished layer is checked against (absent when
    /// Prepare did not name them).
    #[serde(default)]
    pub chain: Option<crate::layer::ChainCheck>,
    /// Longest a container read waits for berthd, seconds.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: u64,
    /// Free space (bytes) the fill leaves on the disk.
    #[serde(default)]
    pub min_free: u64,
}

fn default_read_timeout() -> u64 {
    crate::config::DEFAULT_READ_TIMEOUT
}

/// Layers found bad on this node (`<root>/bad-layers`, one digest a line):
/// never mounted lazily again here.
fn bad_layers_path(root: &Path) -> PathBuf {
    root.join("bad-layers")
}

pub struct Lazy {
    /// One remount at a time: two requests finding the same dead mount
    /// must not stack two file systems on it.
    remounting: std::sync::Mutex<()>,
    berthd_url: String,
    berthd: Berthd,
    /// The `berth-snapshotter` binary that serves mounts.
    exe: PathBuf,
    fill_rate: u64,
    fill_lock: PathBuf,
    root: PathBuf,
    read_timeout: u64,
    min_free: u64,
}

impl Lazy {
    /// From the snapshotter's settings; its root holds the node's fill
    /// lock and the list of layers found bad.
    pub fn new(config: &crate::config::Config) -> Result<Lazy> {
        let berthd = Berthd::parse(&config.berthd)?.with_timeout(Duration::from_secs(10));
        let exe = std::env::current_exe().map_err(Error::io("cannot find my own binary"))?;
        let root = config.root.clone();
        let min_free = config.min_free.unwrap_or_else(|| crate::disk::default_reserve(&root));
        Ok(Lazy {
            remounting: Default::default(),
            berthd_url: config.berthd.clone(),
            berthd,
            exe,
            fill_rate: config.fill_rate,
            fill_lock: root.join("fill.lock"),
            root,
            read_timeout: config.read_timeout,
            min_free,
        })
    }

    fn is_bad(&self, digest: &str) -> bool {
        std::fs::read_to_string(bad_layers_path(&self.root)).is_ok_and(|t| t.lines().any(|l| l.trim() == digest))
    }

    /// Remembers a layer found bad, so it is pulled normally from now on.
    fn remember_bad(&self, digest: &str) {
        use std::io::Write;
        if self.is_bad(digest) {
            return;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(bad_layers_path(&self.root));
        if let Ok(mut f) = f {
            let _ = writeln!(f, "{digest}");
        }
    }

    /// The target snapshot name and layer a Prepare asks for, when its
    /// labels allow a lazy mount.
    pub fn wanted(labels: &BTreeMap<String, String>) -> Option<(String, LayerRef)> {
        let target = labels.get(LABEL_TARGET)?;
        let layer = LayerRef::from_image_ref(labels.get(LABEL_IMAGE_REF)?, labels.get(LABEL_LAYER_DIGEST)?)?;
        Some((target.clone(), layer))
    }

    /// Tries the lazy path for a Prepare. `Some(AlreadyExists)` when the
    /// target snapshot exists (made now, or before); `None`: prepare
    /// normally. Runs on a blocking thread (it waits for berthd and the
    /// mount).
    pub fn prepare(
        &self,
        sn: &Snapshotter,
        parent: &str,
        labels: &BTreeMap<String, String>,
        rt: &tokio::runtime::Handle,
    ) -> Option<Error> {
        let (target, layer) = Self::wanted(labels)?;
        tracing::debug!(target = %target, layer = %layer.digest, labels = ?labels, "prepare asks for a remote snapshot");
        if sn.stat(&target).is_ok() {
            return Some(Error::AlreadyExists(target));
        }
        if self.is_bad(&layer.digest) {
            tracing::info!(layer = %layer.digest, "this layer was found bad on this node before; pulling normally");
            crate::stats::fell_back();
            return None;
        }
        let index = match rt.block_on(self.berthd.index(&layer)) {
            Ok((_, raw)) => raw,
            Err(e) => {
                tracing::info!(layer = %layer.digest, reason = %e, "lazy mount not possible; pulling normally");
                crate::stats::fell_back();
                return None;
            }
        };
        // containerd names layer snapshots by chain id: the finished layer
        // can be checked against its diff_id through them.
        let is_chain_id = |s: &str| s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64);
        let chain = (is_chain_id(&target) && (parent.is_empty() || is_chain_id(parent)))
            .then(|| crate::layer::ChainCheck { parent: parent.to_string(), target: target.clone() });
        let spec = MountSpec {
            berthd: self.berthd_url.clone(),
            layer: layer.clone(),
            fill_rate: self.fill_rate,
            fill_lock: Some(self.fill_lock.clone()),
            chain,
            read_timeout: self.read_timeout,
            min_free: self.min_free,
        };
        let mut labels = labels.clone();
        labels.insert(LABEL_LAZY.into(), layer.digest.clone());
        let made = sn.create_committed(&target, parent, labels, |dir| {
            let lazy = dir.join("lazy");
            std::fs::create_dir_all(&lazy).map_err(Error::io(format!("cannot create {}", lazy.display())))?;
            std::fs::write(lazy.join("index.json"), &index).map_err(Error::io("cannot write the layer index"))?;
            let spec = serde_json::to_vec(&spec).expect("spec serializes");
            std::fs::write(lazy.join("layer.json"), spec).map_err(Error::io("cannot write the mount spec"))?;
            self.mount(dir)
        });
        match made {
            Ok(()) => {
                tracing::info!(target = %target, layer = %layer.digest, "layer mounted lazily");
                crate::stats::mounted();
                Some(Error::AlreadyExists(target))
            }
            Err(Error::AlreadyExists(t)) => Some(Error::AlreadyExists(t)),
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %e, "lazy mount failed; pulling normally");
                crate::stats::fell_back();
                None
            }
        }
    }

    /// Starts the mount-layer process for snapshot directory `dir` and
    /// waits until `dir/fs` is mounted.
    pub fn mount(&self, dir: &Path) -> Result<()> {
        let fs = dir.join("fs");
        let lazy = dir.join("lazy");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lazy.join("mount.log"))
            .map_err(Error::io("cannot open the mount log"))?;
        let mut child = std::process::Command::new(&self.exe)
            .arg("mount-layer")
            .arg(&lazy)
            .arg(&fs)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(Error::io("mount log"))?)
            .stderr(log)
            // Its own process group: stopping the snapshotter leaves it be.
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("cannot start {}", self.exe.display())))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if is_mounted(&fs) {
                // Reaped by a thread, so it never lingers as a zombie.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(lazy.join("mount.log")).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(Error::FailedPrecondition(format!(
                    "mount-layer exited with {status}: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(Error::FailedPrecondition("layer mount did not come up in 15s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes sure every lazy layer among `dirs` (snapshot directories a
    /// container is about to stack on) is served: a layer whose mount is
    /// gone (unmounted: an empty directory) or dead (its process was
    /// killed: `ENOTCONN`) is mounted again before containerd gets the
    /// mounts. If that fails the request fails, saying so — a container
    /// never starts on an empty or broken layer.
    pub fn ensure_served(&self, dirs: &[PathBuf]) -> Result<()> {
        for dir in dirs.iter().filter(|d| d.join("lazy").join("layer.json").exists()) {
            if let Ok(why) = std::fs::read_to_string(dir.join("lazy").join(crate::layer::BAD)) {
                if let Some(digest) = read_spec(dir).map(|s| s.layer.digest) {
                    self.remember_bad(&digest);
                }
                return Err(Error::FailedPrecondition(format!(
                    "a lazily mounted layer of this image failed its check ({why}); remove the image and pull it again (it will be pulled normally)"
                )));
            }
            let fs = dir.join("fs");
            if is_served(&fs) {
                continue;
            }
            let _one = self.remounting.lock().unwrap_or_else(|e| e.into_inner());
            if is_served(&fs) {
                continue;
            }
            if is_mounted(&fs) {
                unmount(&fs);
            }
            tracing::warn!(dir = %dir.display(), "lazy layer was not served (its mount process died or it was unmounted); mounting it again");
            self.mount(dir).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "lazy layer {} is not served and could not be mounted again ({e}); restart berth-snapshotter, or remove the image and pull it again",
                    dir.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Adopts live mounts of lazy snapshots and remounts dead or missing
    /// ones (after a restart of the snapshotter or of the node).
    pub fn restore(&self, sn: &Snapshotter) {
        for dir in sn.lazy_dirs() {
            let fs = dir.join("fs");
            if is_mounted(&fs) {
                if std::fs::metadata(&fs).is_ok() {
                    continue;
                }
                // The serving process died: the mount answers ENOTCONN.
                unmount(&fs);
            }
            match self.mount(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "lazy layer remounted"),
                Err(e) => tracing::error!(dir = %dir.display(), error = %e, "cannot remount lazy layer"),
            }
        }
    }
}

fn read_spec(dir: &Path) -> Option<MountSpec> {
    serde_json::from_slice(&std::fs::read(dir.join("lazy").join("layer.json")).ok()?).ok()
}

/// `berth-snapshotter mount-layer LAZY_DIR MOUNTPOINT`: serves one layer
/// until it is unmounted.
pub fn serve_mount(lazy: &Path, mountpoint: &Path) -> Result<()> {
    let spec: MountSpec = read_json(lazy, "layer.json")?;
    let index: berth_wire::layer_index::LayerIndex = read_json(lazy, "index.json")?;
    index.validate().map_err(|why| Error::BadIndex { path: lazy.join("index.json"), why })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::io("cannot start the async runtime"))?;
    let berthd = Berthd::parse(&spec.berthd)?;
    let guards = crate::layer::Guards {
        chain: spec.chain.clone(),
        read_timeout: Duration::from_secs(spec.read_timeout.max(1)),
        min_free: spec.min_free,
    };
    let layer = std::sync::Arc::new(
        crate::layer::Layer::new(index, lazy, berthd, spec.layer.clone(), spec.fill_lock.clone(), guards)
            .map_err(Error::io(format!("cannot create {}", lazy.join("chunks").display())))?,
    );
    rt.spawn(layer.clone().fill(spec.fill_rate));
    rt.spawn(crate::prefetch::run(layer.clone()));
    // Counts for `serve --metrics-address`, which sums every mount's file;
    // a layer mounted again goes on from its earlier counts.
    crate::stats::resume(lazy);
    let stats_dir = lazy.to_path_buf();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(crate::stats::SAVE_EVERY).await;
            if let Err(e) = crate::stats::save(&stats_dir) {
                tracing::debug!(error = %e, "cannot write stats.json");
            }
        }
    });
    let fs = crate::lazyfs::LazyFs::new(layer, rt.handle().clone());
    tracing::info!(layer = %spec.layer.digest, mountpoint = %mountpoint.display(), "serving lazy layer");
    crate::lazyfs::serve(fs, mountpoint).map_err(Error::io(format!("FUSE mount at {}", mountpoint.display())))?;
    let _ = crate::stats::save(lazy);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; exiting");
    Ok(())
}

/// `lazy/<name>`, a JSON file the snapshotter wrote.
fn read_json<T: serde::de::DeserializeOwned>(lazy: &Path, name: &str) -> Result<T> {
    let raw = std::fs::read(lazy.join(name)).map_err(Error::io(format!("cannot read {name}")))?;
    serde_json::from_slice(&raw).map_err(|source| Error::Json { context: name.to_string(), source })
}
