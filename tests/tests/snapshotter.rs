//! berth-snapshotter as containerd 1.6 sees it: a proxy plugin
//! (`[proxy_plugins.berth] type = "snapshot"`) in a private containerd.
//!
//! * every snapshots call and its gRPC codes, through containerd's API and
//!   directly on the snapshotter's socket (containerd's metadata layer
//!   answers some errors itself before the proxy is asked);
//! * metadata survives a restart of the snapshotter;
//! * `ctr image pull` / `ctr run --snapshotter berth` run a real image.
//!
//! Needs root (mounts, containerd, runc).

use crate::common::{require_tool, run, Berthd};
use crate::support_e2e::containerd::{Containerd, MIRROR_HOST};
use crate::support_e2e::snapshotter::{cri_config, cri_pull, SnapshotterProc};
use crate::support_e2e::*;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots as pb;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::tonic::{self, Code};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

type Client = SnapshotsClient<tonic::transport::Channel>;

struct Api {
    client: Client,
    /// containerd's namespace header; empty when talking to the snapshotter directly.
    namespace: String,
    /// The `snapshotter` field containerd routes on.
    snapshotter: String,
    /// The lease every call runs under through containerd, as real clients
    /// do: without one, containerd's garbage collector may remove committed
    /// snapshots nothing references in the middle of the exercise.
    lease: String,
}

impl Api {
    async fn connect(sock: &Path, namespace: &str, snapshotter: &str) -> Api {
        let channel = containerd_client::connect(sock).await.expect("connect");
        let mut api = Api {
            client: SnapshotsClient::new(channel.clone()),
            namespace: namespace.into(),
            snapshotter: snapshotter.into(),
            lease: String::new(),
        };
        if !namespace.is_empty() {
            // Unique per connection: a second one to the same containerd
            // would otherwise collide with the first one's lease.
            static LEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = LEASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("berth-test-{}-{n}", std::process::id());
            let create = containerd_client::services::v1::CreateRequest { id: id.clone(), labels: HashMap::new() };
            LeasesClient::new(channel).create(api.req(create)).await.expect("a containerd lease");
            api.lease = id;
        }
        api
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if !self.namespace.is_empty() {
            r.metadata_mut().insert("containerd-namespace", self.namespace.parse().unwrap());
        }
        if !self.lease.is_empty() {
            r.metadata_mut().insert("containerd-lease", self.lease.parse().unwrap());
        }
        r
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
        let m = pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let r = self.req(m);
        Ok(self.client.prepare(r).await?.into_inner().mounts)
    }

    async fn prepare_labeled(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
        let m = pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let r = self.req(m);
        Ok(self.client.prepare(r).await?.into_inner().mounts)
    }

    async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
        let m = pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let r = self.req(m);
        Ok(self.client.view(r).await?.into_inner().mounts)
    }

    async fn mounts(&mut self, key: &str) -> Result<Vec<containerd_client::types::Mount>, tonic::Status> {
        let r = self.req(pb::MountsRequest { snapshotter: self.snapshotter.clone(), key: key.into() });
        Ok(self.client.mounts(r).await?.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str, labels: &[(&str, &str)]) -> Result<(), tonic::Status> {
        let m = pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let r = self.req(m);
        self.client.commit(r).await.map(|_| ())
    }

    async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let r = self.req(pb::RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() });
        self.client.remove(r).await.map(|_| ())
    }

    async fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        let r = self.req(pb::StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() });
        Ok(self.client.stat(r).await?.into_inner().info.unwrap())
    }

    async fn update(&mut self, key: &str, labels: &[(&str, &str)], paths: &[&str]) -> Result<pb::Info, tonic::Status> {
        let info = pb::Info {
            name: key.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let m = pb::UpdateSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            info: Some(info),
            update_mask: Some(prost_types_field_mask(paths)),
        };
        let r = self.req(m);
        Ok(self.client.update(r).await?.into_inner().info.unwrap())
    }

    async fn list(&mut self, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
        let m = pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let r = self.req(m);
        let mut stream = self.client.list(r).await?.into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info);
        }
        Ok(out)
    }

    async fn usage(&mut self, key: &str) -> Result<(i64, i64), tonic::Status> {
        let r = self.req(pb::UsageRequest { snapshotter: self.snapshotter.clone(), key: key.into() });
        let u = self.client.usage(r).await?.into_inner();
        Ok((u.size, u.inodes))
    }

    async fn cleanup(&mut self) -> Result<(), tonic::Status> {
        let r = self.req(pb::CleanupRequest { snapshotter: self.snapshotter.clone() });
        self.client.cleanup(r).await.map(|_| ())
    }
}

fn prost_types_field_mask(paths: &[&str]) -> prost_types::FieldMask {
    prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn names(infos: &[pb::Info]) -> Vec<String> {
    let mut n: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
    n.sort();
    n
}

/// Mounts what a snapshot call returned at `target`, as containerd would.
fn mount_all(mounts: &[containerd_client::types::Mount], target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    let mut cmd = Command::new("mount");
    match m.r#type.as_str() {
        "bind" => {
            cmd.arg("--rbind").arg(&m.source).arg(target);
        }
        "overlay" => {
            cmd.args(["-t", "overlay", "overlay", "-o", &m.options.join(",")]).arg(target);
        }
        other => panic!("unexpected mount type {other}"),
    }
    crate::common::run(&mut cmd);
    if m.options.iter().any(|o| o == "ro") {
        crate::common::run(Command::new("mount").args(["-o", "remount,ro,bind"]).arg(target));
    }
}

fn umount(target: &Path) {
    crate::common::run(Command::new("umount").arg(target));
}

/// The whole contract, on an API that is either containerd (routing to the
/// proxy plugin) or the snapshotter's own socket.
async fn exercise(api: &mut Api, scratch: &Path) {
    // Prepare without a parent: a writable bind mount.
    let m = api.prepare("a", "").await.unwrap();
    assert_eq!(m[0].r#type, "bind", "{m:?}");
    assert_eq!(code(api.prepare("a", "").await), Code::AlreadyExists);
    assert_eq!(code(api.prepare("b", "no-such-parent").await), Code::NotFound);
    let mnt = scratch.join("mnt");
    mount_all(&m, &mnt);
    std::fs::write(mnt.join("hello"), b"from layer one").unwrap();
    std::fs::write(mnt.join("gone"), b"deleted in layer two").unwrap();
    umount(&mnt);
    // An active snapshot is no parent.
    let e = api.prepare("b", "a").await;
    assert!(matches!(e.as_ref().map_err(|s| s.code()), Err(Code::FailedPrecondition | Code::InvalidArgument)), "{e:?}");

    api.commit("l1", "a", &[("x", "1")]).await.unwrap();
    assert_eq!(code(api.stat("a").await), Code::NotFound, "the active key is gone after commit");
    assert_eq!(code(api.commit("l1x", "a", &[]).await), Code::NotFound);
    let info = api.stat("l1").await.unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    assert_eq!(info.labels.get("x").map(String::as_str), Some("1"));
    assert!(info.created_at.is_some());
    let (size, inodes) = api.usage("l1").await.unwrap();
    assert!(size > 0 && inodes >= 3, "usage {size} {inodes}");
    assert_eq!(code(api.mounts("l1").await), Code::FailedPrecondition);

    // A child over it: overlay; a deletion recorded as a whiteout.
    let m = api.prepare("b", "l1").await.unwrap();
    assert_eq!(m[0].r#type, "overlay", "{m:?}");
    assert_eq!(api.mounts("b").await.unwrap(), m, "Mounts repeats Prepare's answer");
    mount_all(&m, &mnt);
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from layer one");
    std::fs::remove_file(mnt.join("gone")).unwrap();
    std::fs::write(mnt.join("new"), b"layer two").unwrap();
    umount(&mnt);
    assert_eq!(code(api.commit("l1", "b", &[]).await), Code::AlreadyExists);
    api.commit("l2", "b", &[]).await.unwrap();
    let (size2, _) = api.usage("l2").await.unwrap();
    assert!(size2 > 0);

    // Views: read-only.
    let v = api.view("v", "l2").await.unwrap();
    mount_all(&v, &mnt);
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), b"layer two");
    assert!(!mnt.join("gone").exists(), "the whiteout hides the lower file");
    assert!(std::fs::write(mnt.join("w"), b"x").is_err(), "a view is read-only");
    umount(&mnt);
    assert_eq!(api.stat("v").await.unwrap().kind, pb::Kind::View as i32);

    // Update: labels only, by field mask.
    let i = api.update("l1", &[("x", "2"), ("y", "3")], &["labels.x"]).await.unwrap();
    assert_eq!(i.labels.get("x").map(String::as_str), Some("2"));
    assert_eq!(i.labels.get("y"), None, "only the masked label changes");
    assert_eq!(api.stat("l1").await.unwrap().labels.get("x").map(String::as_str), Some("2"));
    assert_eq!(code(api.update("nope", &[], &[]).await), Code::NotFound);

    // Walk, all and filtered.
    assert_eq!(names(&api.list(&[]).await.unwrap()), ["l1", "l2", "v"]);
    assert_eq!(names(&api.list(&["labels.x==2"]).await.unwrap()), ["l1"]);
    assert_eq!(names(&api.list(&["kind==view", "name==l2"]).await.unwrap()), ["l2", "v"]);

    // Remove: parents only after their children.
    assert_eq!(code(api.remove("l1").await), Code::FailedPrecondition);
    assert_eq!(code(api.remove("nope").await), Code::NotFound);
    api.remove("v").await.unwrap();
    api.remove("l2").await.unwrap();
    api.remove("l1").await.unwrap();
    match api.cleanup().await {
        Ok(()) => {}
        // containerd 1.6 does not offer Cleanup on its API; its garbage
        // collector calls the proxy's Cleanup itself.
        Err(s) if !api.namespace.is_empty() && s.code() == Code::Unimplemented => {}
        Err(s) => panic!("Cleanup: {s}"),
    }
    assert!(api.list(&[]).await.unwrap().is_empty());
}

#[test]
fn snapshots_api_direct_and_through_containerd() {
    let work = tempfile::tempdir().unwrap();
    let mut snap = SnapshotterProc::start(work.path(), "http://127.0.0.1:1");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Directly on the snapshotter's socket: our own codes.
    rt.block_on(async {
        let mut api = Api::connect(&snap.sock, "", "").await;
        exercise(&mut api, &work.path().join("direct")).await;
        // Metadata survives a crash.
        api.prepare("keep", "").await.unwrap();
    });
    snap.kill();
    snap.spawn("http://127.0.0.1:1");
    rt.block_on(async {
        let mut api = Api::connect(&snap.sock, "", "").await;
        assert_eq!(api.stat("keep").await.unwrap().kind, pb::Kind::Active as i32);
        api.remove("keep").await.unwrap();
        assert!(
            std::fs::read_dir(snap.root.join("snapshots")).unwrap().next().is_none(),
            "removing every snapshot leaves no directory"
        );
    });

    // Through containerd's own API, routed to the proxy plugin.
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let plugins = ctd.ctr_ok(&["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("berth") && l.trim_end().ends_with("ok")),
        "containerd did not load the berth proxy plugin:\n{plugins}"
    );
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, &ctd.namespace, "berth").await;
        exercise(&mut api, &work.path().join("via-containerd")).await;
    });
}

#[test]
fn ctr_pulls_and_runs_on_the_berth_snapshotter() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image_with(work.path(), "src", &[("etc/berth-motd", b"lazy or not\n")]);
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    let snap = SnapshotterProc::start(work.path(), &berthd.url());
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let hosts = ctd.hosts_dir(&berthd.addr);
    let image = format!("{MIRROR_HOST}/app:v1");
    ctd.ctr_ok(&["images", "pull", "--snapshotter", "berth", "--hosts-dir", hosts.to_str().unwrap(), &image]);
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, "berth-run-1", "cat", "/etc/berth-motd"]);
    assert_eq!(out, "lazy or not\n");
    // The layers are berth's snapshots now.
    let snaps = ctd.ctr_ok(&["snapshots", "--snapshotter", "berth", "ls"]);
    assert!(snaps.lines().any(|l| l.contains("Committed")), "{snaps}");
    ctd.ctr_ok(&["images", "rm", "--sync", &image]);
}

#[test]
fn configure_snapshotter_is_read_by_containerd_and_reversible() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cfg = dir.join("berthd.yml");
    std::fs::write(&cfg, "http:\n  addr: 127.0.0.1:5000\ncontainerd:\n  registries: [registry.example.test]\n")
        .unwrap();
    let containerd = crate::common::require_tool("containerd");
    // containerd 1.6's own default config, as a node has it.
    let original = crate::common::run(Command::new(&containerd).args(["config", "default"]));
    let ctd_config = dir.join("config.toml");
    std::fs::write(&ctd_config, &original).unwrap();
    let configure = |extra: &[&str]| {
        crate::common::run(
            Command::new(crate::common::berthd_bin())
                .args(["containerd", "configure", "--snapshotter", "--snapshotter-address", "/run/berth/test.sock"])
                .arg("--config")
                .arg(&cfg)
                .arg("--certs-d")
                .arg(dir.join("certs.d"))
                .arg("--containerd-config")
                .arg(&ctd_config)
                .args(extra),
        )
    };
    let first = configure(&[]);
    assert!(first.contains("must be restarted"), "{first}");
    // What containerd itself makes of the edited file.
    let dump = crate::common::run(Command::new(&containerd).arg("--config").arg(&ctd_config).args(["config", "dump"]));
    let compact: String = dump.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        compact.contains(r#"[proxy_plugins.berth] address = "/run/berth/test.sock" type = "snapshot""#)
            || compact.contains(
                r#"[proxy_plugins] [proxy_plugins.berth] address = "/run/berth/test.sock" type = "snapshot""#
            ),
        "{dump}"
    );
    let cri = dump.split("[plugins.\"io.containerd.grpc.v1.cri\".containerd]").nth(1).expect("cri section");
    let cri = cri.split("\n  [").next().unwrap();
    assert!(cri.contains("snapshotter = \"berth\""), "{cri}");
    assert!(cri.contains("disable_snapshot_annotations = false"), "{cri}");
    assert!(configure(&[]).contains("nothing to change"));
    configure(&["--remove"]);
    assert_eq!(std::fs::read_to_string(&ctd_config).unwrap(), original, "byte for byte");
}

/// Polls the layer's seek index until berthd has built it (in the
/// background after the manifest push).
fn wait_index(berthd: &Berthd, repo: &str, layer: &str) -> serde_json::Value {
    let url = format!("{}/v2/{repo}/_berth/layer/{layer}/index", berthd.url());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = http_get(&url);
        if r.status == 200 {
            return r.json();
        }
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
        assert!(std::time::Instant::now() < deadline, "index of {layer} not built in 60s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn berthd_indexes_pushed_layers_and_serves_uncompressed_ranges() {
    let work = tempfile::tempdir().unwrap();
    let motd = b"served from the middle of a gzip stream\n";
    let img = build_busybox_image_with(work.path(), "src", &[("etc/motd", motd)]);
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    let idx = wait_index(&berthd, "app", &img.layer_digest);
    assert_eq!(idx["compression"], "gzip");
    let entries = idx["entries"].as_array().unwrap();
    let find = |p: &str| entries.iter().find(|e| e["path"] == p).unwrap_or_else(|| panic!("{p} not in the index"));
    let e = find("etc/motd");
    let (off, size) = (e["offset"].as_u64().unwrap(), e["size"].as_u64().unwrap());
    assert_eq!(size, motd.len() as u64);
    let url = format!("{}/v2/app/_berth/layer/{}/tar", berthd.url(), img.layer_digest);
    let r = http("GET", &url, &[("Range", &format!("bytes={off}-{}", off + size - 1))]).unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, motd);
    assert_eq!(find("bin/sh")["kind"], "symlink");
    assert_eq!(find("bin/sh")["link"], "busybox");
    // busybox, read whole from the uncompressed stream, is the file we put in.
    let b = find("bin/busybox");
    let (off, size) = (b["offset"].as_u64().unwrap(), b["size"].as_u64().unwrap());
    let r = http("GET", &url, &[("Range", &format!("bytes={off}-{}", off + size - 1))]).unwrap();
    assert_eq!(r.body, std::fs::read("/bin/busybox").unwrap());
    // Errors say what to do.
    let r = http("GET", &url, &[]).unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Range"));
    let other = format!("sha256:{}", "0".repeat(64));
    let r = http_get(&format!("{}/v2/app/_berth/layer/{other}/index", berthd.url()));
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("BLOB_UNKNOWN"));
}

/// Chunk files fetched so far for `layer` under the snapshotter's root.
fn chunks_fetched(root: &Path, layer: &str) -> usize {
    let mut n = 0;
    for d in std::fs::read_dir(root.join("snapshots")).unwrap().flatten() {
        let spec = std::fs::read_to_string(d.path().join("lazy/layer.json")).unwrap_or_default();
        if spec.contains(layer) {
            n += std::fs::read_dir(d.path().join("lazy/chunks")).map(|r| r.count()).unwrap_or(0);
        }
    }
    n
}

/// What `umoci unpack` (a normal, full unpack) makes of the image.
fn unpacked_tree(layout: &Layout, work: &Path) -> Vec<String> {
    let bundle = work.join("reference-unpack");
    crate::common::run(
        Command::new(crate::common::require_tool("umoci"))
            .args(["unpack", "--image", &format!("{}:{}", layout.dir.display(), layout.tag)])
            .arg(&bundle),
    );
    tree_listing(&bundle.join("rootfs"))
}

/// The 200 MiB three-layer image, built once for the tests of this file.
fn layered_image() -> &'static LayeredImage {
    static IMAGE: std::sync::OnceLock<(tempfile::TempDir, LayeredImage)> = std::sync::OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let img = build_layered_image(dir.path(), "lazy", 200 << 20);
            (dir, img)
        })
        .1
}

#[test]
fn lazy_layers_are_served_by_fuse_and_match_a_full_unpack() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    // The big layer's checkpoint windows (32 KiB per 2 MiB of tar) are kept
    // beside its index, not in it: the index a node fetches first is small.
    let hex = img.layers[1].trim_start_matches("sha256:");
    let dir = berthd.root.join(format!("berth/layer-index/v1/sha256/{}/{hex}", &hex[..2]));
    let index_len = std::fs::metadata(dir.join("index.json.zst")).unwrap().len();
    let windows_len = std::fs::metadata(dir.join("windows")).unwrap().len();
    assert!(windows_len >= 99 * 32 * 1024, "{windows_len} bytes of windows");
    assert!(index_len < 64 * 1024, "the index is {index_len} bytes");
    // A slow background fill, so the test sees reads served before it.
    let mut snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "65536"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mnt = work.path().join("lazy-view");
    rt.block_on(async {
        let mut api = Api::connect(&snap.sock, "", "").await;
        let mut parent = String::new();
        for (i, layer) in img.layers.iter().enumerate() {
            let target = format!("chain-{i}");
            let labels = [
                ("containerd.io/snapshot.ref", target.as_str()),
                ("containerd.io/snapshot/cri.image-ref", "registry.example.test/app:v1"),
                ("containerd.io/snapshot/cri.layer-digest", layer.as_str()),
            ];
            let r = api.prepare_labeled(&format!("extract-{i}"), &parent, &labels).await;
            assert_eq!(code(r), Code::AlreadyExists, "layer {i} is mounted lazily, so containerd skips it");
            let info = api.stat(&target).await.unwrap();
            assert_eq!(info.kind, pb::Kind::Committed as i32);
            assert_eq!(info.labels.get("berth.io/lazy-layer"), Some(layer));
            parent = target;
        }
        let v = api.view("lazy-view", &parent).await.unwrap();
        mount_all(&v, &mnt);
    });
    // Small files read before the big layer was.
    assert_eq!(std::fs::read_to_string(mnt.join("etc/motd")).unwrap(), "layer three motd\n");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/motd.link")).unwrap(), "layer three motd\n");
    assert!(!mnt.join("etc/old").exists() && !mnt.join("etc/dir/a").exists(), "whiteouts hide deleted files");
    let out =
        crate::common::run(Command::new(mnt.join("bin/busybox")).args(["echo", "busybox runs from a lazy layer"]));
    assert_eq!(out, "busybox runs from a lazy layer\n");
    let big_chunks = chunks_fetched(&snap.root, &img.layers[1]);
    assert!(big_chunks <= 2, "the 200 MiB layer was not read yet ({big_chunks} chunks fetched)");

    // The whole tree, file by file, equals a full unpack (this reads all of it).
    let lazy = tree_listing(&mnt);
    let full = unpacked_tree(&img.layout, work.path());
    assert_eq!(lazy, full);
    assert!(lazy.iter().any(|l| l.starts_with("/data/big.bin file") && l.contains(&img.big_sha256)));
    assert_special_files(&lazy);

    // Killed with the view mounted: the mounts live on, and a restart adopts them.
    snap.kill();
    assert_eq!(std::fs::read_to_string(mnt.join("etc/new")).unwrap(), "new in layer three\n");
    snap.spawn(&berthd.url());
    assert_eq!(std::fs::read_to_string(mnt.join("etc/keep")).unwrap(), "kept\n");
    umount(&mnt);
}

/// The tree shows what `build_layered_image` put beyond plain files, so an
/// equal reference tree cannot hide a kind of entry both sides dropped.
fn assert_special_files(tree: &[String]) {
    let has = |prefix: &str, part: &str| {
        assert!(
            tree.iter().any(|l| l.starts_with(prefix) && l.contains(part)),
            "no `{prefix}` line with `{part}` in:\n{}",
            tree.join("\n")
        )
    };
    has("/devices/fifo fifo", "mode=620");
    has("/devices/null char 1:3", "mode=666");
    has("/devices/loop7 block 7:7", "mode=660");
    has("/etc/new file", r#"uid=1234 gid=5678"#);
    has("/etc/new file", r#""user.berth.note=from layer three""#);
    has("/etc/dir dir", r#""user.berth.dir=d""#);
    has("/etc/setuid file", "mode=4755");
    has("/sticky dir", "mode=1777");
    has("/etc/keep file", "mtime=978307200");
}

/// `ctr` in CRI's namespace.
fn ctr_k8s(ctd: &Containerd, args: &[&str]) -> std::process::Output {
    Command::new(&ctd.ctr).arg("--address").arg(&ctd.sock).args(["--namespace", "k8s.io"]).args(args).output().unwrap()
}

fn ctr_k8s_ok(ctd: &Containerd, args: &[&str]) -> String {
    let out = ctr_k8s(ctd, args);
    assert!(
        out.status.success(),
        "ctr {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctd.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The committed snapshot no other snapshot has as parent: the image's top.
async fn top_snapshot(api: &mut Api) -> (String, Vec<pb::Info>) {
    let all = api.list(&[]).await.unwrap();
    let committed: Vec<pb::Info> = all.into_iter().filter(|i| i.kind == pb::Kind::Committed as i32).collect();
    let top = committed.iter().find(|c| !committed.iter().any(|o| o.parent == c.name)).unwrap().name.clone();
    (top, committed)
}

#[test]
fn cri_pull_is_lazy_and_containers_survive_a_snapshotter_restart() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    let mut snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "65536"]);
    let ctd = Containerd::start_cri(&cri_config(work.path(), &snap, &berthd.addr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = format!("{MIRROR_HOST}/app:v1");
    cri_pull(&ctd, &rt, &image, &snap);
    let big_chunks = chunks_fetched(&snap.root, &img.layers[1]);
    assert!(big_chunks <= 2, "the pull did not download the 200 MiB layer ({big_chunks} chunks)");

    // The container starts and reads its files (ctr in CRI's namespace).
    let out = ctr_k8s_ok(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "berth",
            &image,
            &format!("lazy-{}", std::process::id()),
            "cat",
            "/etc/motd",
            "/etc/new",
        ],
    );
    assert_eq!(out, "layer three motd\nnew in layer three\n");
    assert!(chunks_fetched(&snap.root, &img.layers[1]) <= 2, "starting the container read only what it needed");

    // The tree containerd assembled equals a full unpack, whiteouts included.
    let mnt = work.path().join("cri-view");
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, "k8s.io", "berth").await;
        let (top, committed) = top_snapshot(&mut api).await;
        assert_eq!(committed.len(), 3, "{committed:?}");
        assert!(committed.iter().all(|c| c.labels.contains_key("berth.io/lazy-layer")), "{committed:?}");
        let v = api.view("cri-view", &top).await.unwrap();
        mount_all(&v, &mnt);
    });
    let tree = tree_listing(&mnt);
    assert_eq!(tree, unpacked_tree(&img.layout, work.path()));
    assert_special_files(&tree);
    umount(&mnt);

    // A running container keeps its file system while the snapshotter is
    // killed and restarted.
    // runc's state for CRI's namespace is machine-wide: ids unique per run.
    let long = format!("long-{}", std::process::id());
    ctr_k8s_ok(&ctd, &["run", "-d", "--snapshotter", "berth", &image, &long, "/bin/busybox", "sleep", "600"]);
    snap.kill();
    let exec = |id: &str| ctr_k8s_ok(&ctd, &["task", "exec", "--exec-id", id, &long, "cat", "/etc/keep"]);
    assert_eq!(exec("e1"), "kept\n");
    snap.spawn(&berthd.url());
    assert_eq!(exec("e2"), "kept\n");
    // containerd redials the proxy socket with backoff after the restart.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id = format!("after-restart-{}", std::process::id());
    let args = ["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/motd.link"];
    let out = loop {
        let out = ctr_k8s(&ctd, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("unavailable") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "layer three motd\n", "{}", String::from_utf8_lossy(&out.stderr));
    let _ = ctr_k8s(&ctd, &["task", "kill", "-s", "SIGKILL", &long]);
    let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/k8s.io/{long}"));
}

#[test]
fn lazy_pull_falls_back_to_a_normal_pull_when_berthd_is_down() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image_with(work.path(), "src", &[("etc/motd", b"pulled the normal way\n")]);
    // Two berthd on one storage root, as two nodes share a bucket: the
    // snapshotter's own berthd is stopped, containerd pulls through the other.
    let root = work.path().join("shared-root");
    let a = Berthd::start_with_root(tempfile::tempdir().unwrap(), root.clone(), "", &[]);
    let b = Berthd::start_with_root(tempfile::tempdir().unwrap(), root, "", &[]);
    Skopeo::new().push(&img.layout, &b.addr, "app:v1", &[]);
    wait_index(&b, "app", &img.layer_digest);
    let snap = SnapshotterProc::start(work.path(), &a.url());
    drop(a);
    let ctd = Containerd::start_cri(&cri_config(work.path(), &snap, &b.addr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = format!("{MIRROR_HOST}/app:v1");
    cri_pull(&ctd, &rt, &image, &snap);
    let out = ctr_k8s_ok(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "berth",
            &image,
            &format!("fallback-{}", std::process::id()),
            "cat",
            "/etc/motd",
        ],
    );
    assert_eq!(out, "pulled the normal way\n");
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, "k8s.io", "berth").await;
        let (_, committed) = top_snapshot(&mut api).await;
        assert!(!committed.is_empty());
        assert!(committed.iter().all(|c| !c.labels.contains_key("berth.io/lazy-layer")), "{committed:?}");
    });
    assert!(snap.log_text().contains("pulling normally"), "{}", snap.log_text());
}

/// `berth-snapshotter pull` as a homelab node without kubelet runs it.
fn snapshotter_pull(ctd: &Containerd, berthd: &Berthd, image: &str) -> String {
    crate::common::run(
        Command::new(crate::support_e2e::snapshotter::snapshotter_bin())
            .args(["pull", "--containerd"])
            .arg(&ctd.sock)
            .args(["--namespace", &ctd.namespace, "--berthd", &berthd.url(), image]),
    )
}

#[test]
fn snapshotter_pull_then_ctr_run_starts_before_the_image_is_downloaded() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    let metrics_addr = format!("127.0.0.1:{}", crate::support_e2e::free_port());
    let snap = SnapshotterProc::start_with(
        work.path(),
        &berthd.url(),
        &["--fill-rate", "65536", "--metrics-address", &metrics_addr],
    );
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    let out = snapshotter_pull(&ctd, &berthd, &image);
    assert!(out.contains("3 layer(s) mounted lazily, 0 unpacked"), "{out}");
    // Again, on a terminal (script(1) gives it one): a line per layer as it is done.
    let cmdline = format!(
        "{} pull --containerd {} --namespace {} --berthd {} {image}",
        crate::support_e2e::snapshotter::snapshotter_bin().display(),
        ctd.sock.display(),
        ctd.namespace,
        berthd.url()
    );
    let tty =
        crate::common::run(Command::new(crate::common::require_tool("script")).args(["-qec", &cmdline, "/dev/null"]));
    assert_eq!(tty.matches("already present").count(), 4, "three layer lines and the summary:\n{tty}");
    for l in &img.layers {
        assert!(tty.contains(&l[..19]), "a line for {l}:\n{tty}");
    }
    let id = format!("pull-run-{}", std::process::id());
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/motd", "/etc/keep"]);
    assert_eq!(out, "layer three motd\nkept\n");
    // The snapshotter's metrics: its mounts, and the reads and fetches of
    // the mount processes (which write their counts every 5 s).
    let metric = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let r = http_get(&format!("http://{metrics_addr}/metrics"));
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        if metric(&text, "berth_snapshotter_lazy_reads_total") > 0.0 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(metric(&text, "berth_snapshotter_lazy_mounts_total"), 3.0, "{text}");
    assert_eq!(metric(&text, "berth_snapshotter_fallbacks_total"), 0.0, "{text}");
    assert!(metric(&text, "berth_snapshotter_lazy_reads_total") > 0.0, "the container's reads: {text}");
    assert!(metric(&text, "berth_snapshotter_fetched_bytes_total") > 0.0, "{text}");
    let fetches = metric(&text, "berth_snapshotter_fetches_total");
    assert!(fetches > 0.0 && metric(&text, "berth_snapshotter_fetch_duration_seconds_count") == fetches, "{text}");
    assert!(text.contains("# TYPE berth_snapshotter_fetch_duration_seconds histogram"), "{text}");
    assert!(chunks_fetched(&snap.root, &img.layers[1]) <= 2, "the 200 MiB layer was not downloaded to start");
    assert_eq!(ctd.image_digest(&image), img.layout.digest());
    // The tree containerd assembled from the lazy layers equals a full unpack.
    let mnt = work.path().join("pull-view");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, &ctd.namespace, "berth").await;
        let (top, committed) = top_snapshot(&mut api).await;
        assert_eq!(committed.len(), 3, "{committed:?}");
        let v = api.view("pull-view", &top).await.unwrap();
        mount_all(&v, &mnt);
    });
    let tree = tree_listing(&mnt);
    umount(&mnt);
    assert_eq!(tree, unpacked_tree(&img.layout, work.path()));
    assert_special_files(&tree);
    let again = snapshotter_pull(&ctd, &berthd, &image);
    assert!(again.contains("3 already present"), "{again}");

    // One layer's mount process killed, another layer unmounted: a new
    // container still sees every file (the layers are mounted again before
    // containerd gets the mounts), never an empty or dead layer.
    let servers = mount_layer_processes(&snap.root);
    assert_eq!(servers.len(), 3, "one mount process per lazy layer: {servers:?}");
    run(Command::new("kill").args(["-KILL", &servers[0].0]));
    run(Command::new(require_tool("umount")).arg("-l").arg(&servers[1].1));
    let id = format!("pull-rerun-{}", std::process::id());
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/motd", "/etc/keep"]);
    assert_eq!(out, "layer three motd\nkept\n");
    assert!(snap.log_text().contains("mounting it again"), "{}", snap.log_text());

    // The image removed (containerd removes its snapshots): the counts of
    // the lazy layers stay in the totals, never read as a counter reset.
    let reads = metric(
        &String::from_utf8(http_get(&format!("http://{metrics_addr}/metrics")).body).unwrap(),
        "berth_snapshotter_lazy_reads_total",
    );
    ctd.ctr_ok(&["snapshots", "--snapshotter", "berth", "rm", "pull-view"]);
    ctd.ctr_ok(&["image", "rm", "--sync", &image]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ctd.ctr_ok(&["snapshots", "--snapshotter", "berth", "ls"]).lines().skip(1).all(|l| l.trim().is_empty()) {
        let left = ctd.ctr_ok(&["snapshots", "--snapshotter", "berth", "ls"]);
        assert!(std::time::Instant::now() < deadline, "containerd did not remove the image's snapshots:\n{left}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let text = String::from_utf8(http_get(&format!("http://{metrics_addr}/metrics")).body).unwrap();
    assert!(metric(&text, "berth_snapshotter_lazy_reads_total") >= reads, "reads went down after the remove: {text}");
    assert!(metric(&text, "berth_snapshotter_fetches_total") >= fetches, "{text}");
}

/// The `mount-layer` processes serving lazy layers under `root`: (pid,
/// mount point).
fn mount_layer_processes(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount-layer") && args.last().is_some_and(|m| Path::new(m).starts_with(root)) {
            found.push((pid, PathBuf::from(args.last().unwrap())));
        }
    }
    found.sort();
    found
}

#[test]
fn background_fill_leaves_the_whole_image_on_the_node() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    let chunks: Vec<usize> =
        img.layers.iter().map(|l| wait_index(&berthd, "app", l)["chunks"].as_array().unwrap().len()).collect();
    // No rate limit: the fill runs as fast as berthd serves.
    let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "0"]);
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    let out = snapshotter_pull(&ctd, &berthd, &image);
    assert!(out.contains("3 layer(s) mounted lazily"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let have: Vec<usize> = img.layers.iter().map(|l| chunks_fetched(&snap.root, l)).collect();
        if have == chunks {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fill incomplete: {have:?} of {chunks:?} chunks");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // With berthd gone, the whole tree still reads, from the node's disk.
    drop(berthd);
    let mnt = work.path().join("filled-view");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, &ctd.namespace, "berth").await;
        let (top, _) = top_snapshot(&mut api).await;
        let v = api.view("filled-view", &top).await.unwrap();
        mount_all(&v, &mnt);
    });
    let tree = tree_listing(&mnt);
    umount(&mnt);
    assert_eq!(tree, unpacked_tree(&img.layout, work.path()));
}

#[test]
fn snapshotter_pull_unpacks_normally_what_cannot_be_lazy() {
    let work = tempfile::tempdir().unwrap();
    // The 200 MiB layer streams into containerd's content store: no layer
    // is held in memory whole, and none is sent in one gRPC message
    // (containerd refuses messages over 16 MiB).
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    // The snapshotter's berthd is unreachable: no lazy mounts.
    let snap = SnapshotterProc::start(work.path(), "http://127.0.0.1:1");
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    let out = snapshotter_pull(&ctd, &berthd, &image);
    assert!(out.contains("0 layer(s) mounted lazily, 3 unpacked"), "{out}");
    let id = format!("pull-unpacked-{}", std::process::id());
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/motd", "/etc/keep"]);
    assert_eq!(out, "layer three motd\nkept\n");
    let content = ctd.ctr_ok(&["content", "ls", "-q"]);
    assert!(content.lines().any(|l| l == img.layers[1]), "the big layer is in the content store:\n{content}");

    let mnt = work.path().join("unpacked-view");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = Api::connect(&ctd.sock, &ctd.namespace, "berth").await;
        let (top, committed) = top_snapshot(&mut api).await;
        assert_eq!(committed.len(), 3, "{committed:?}");
        assert!(committed.iter().all(|c| !c.labels.contains_key("berth.io/lazy-layer")), "{committed:?}");
        let v = api.view("unpacked-view", &top).await.unwrap();
        mount_all(&v, &mnt);
    });
    let tree = tree_listing(&mnt);
    umount(&mnt);
    assert_eq!(tree, unpacked_tree(&img.layout, work.path()));
}

/// The snapshot directories of lazy layers under `root` that were refused.
fn condemned(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
        if e.path().join("lazy/bad").exists() {
            out.push(e.path());
        }
    }
    out
}

/// A finished lazy layer whose bytes do not hash to the chain id
/// containerd named its snapshot by is refused: every read fails, a
/// container stacked on it is refused with a clear error, and the node
/// pulls that layer normally from then on.
#[test]
fn a_layer_that_fails_its_chain_id_is_refused_and_pulled_normally_after() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    wait_index(&berthd, "app", &img.layers[0]);
    let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "0"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wrong_chain = format!("sha256:{}", "0".repeat(64));
    rt.block_on(async {
        let mut api = Api::connect(&snap.sock, "", "").await;
        let labels = [
            ("containerd.io/snapshot.ref", wrong_chain.as_str()),
            ("containerd.io/snapshot/cri.image-ref", "registry.example.test/app:v1"),
            ("containerd.io/snapshot/cri.layer-digest", img.layers[0].as_str()),
        ];
        assert_eq!(code(api.prepare_labeled("extract-0", "", &labels).await), Code::AlreadyExists);
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while condemned(&snap.root).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the filled layer was not checked:\n{}", snap.log_text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    rt.block_on(async {
        let mut api = Api::connect(&snap.sock, "", "").await;
        let refused = api.view("on-top", &wrong_chain).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(refused.message().contains("failed its check"), "{}", refused.message());
        // The same layer under another name is now prepared normally.
        let labels = [
            ("containerd.io/snapshot.ref", "chain-again"),
            ("containerd.io/snapshot/cri.image-ref", "registry.example.test/app:v1"),
            ("containerd.io/snapshot/cri.layer-digest", img.layers[0].as_str()),
        ];
        let mounts = api.prepare_labeled("extract-again", "", &labels).await.expect("a normal snapshot");
        assert!(!mounts.is_empty());
    });
    let bad = std::fs::read_to_string(snap.root.join("bad-layers")).unwrap();
    assert!(bad.contains(&img.layers[0]), "{bad}");
    let dir = &condemned(&snap.root)[0];
    assert!(!dir.join("lazy/chunks").exists(), "its chunks were dropped");
}

/// An index edited in storage by someone without the cluster's key is
/// refused by berthd: the layer is pulled normally, the container runs the
/// real files.
#[test]
fn a_tampered_index_in_storage_means_a_normal_pull() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    // Layer three: give /etc/motd the set-uid bit and swap the data offsets
    // of two files, as an attacker with write access to the bucket would.
    let hex = img.layers[2].trim_start_matches("sha256:");
    let stored = berthd.root.join(format!("berth/layer-index/v1/sha256/{}/{hex}/index.json.zst", &hex[..2]));
    let mut idx = berthd::layerindex::decode(&std::fs::read(&stored).unwrap()).unwrap();
    let motd = idx.entries.iter().position(|e| e.path == "etc/motd").unwrap();
    let new = idx.entries.iter().position(|e| e.path == "etc/new").unwrap();
    idx.entries[motd].mode |= 0o4000;
    let (a, b) = (idx.entries[motd].offset, idx.entries[new].offset);
    idx.entries[motd].offset = b;
    idx.entries[new].offset = a;
    std::fs::write(&stored, berthd::layerindex::encode(&idx)).unwrap();
    // A restart forgets the index berthd held in memory.
    let berthd = berthd.kill9_and_restart();

    let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "65536"]);
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    let out = snapshotter_pull(&ctd, &berthd, &image);
    assert!(out.contains("2 layer(s) mounted lazily, 1 unpacked"), "{out}");
    let id = format!("tampered-{}", std::process::id());
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/motd", "/etc/new"]);
    assert_eq!(out, "layer three motd\nnew in layer three\n", "the real files");
    assert!(berthd.metric("berth_layer_index_auth_failures_total") >= 1.0);
}

/// The snapshotter's disk is small: the background fill stops at the
/// reserve, reads are served from berthd, and new containers keep starting
/// (the metadata store has room).
#[test]
fn the_fill_leaves_the_snapshotter_disk_its_reserve() {
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    let disk = crate::common::SmallDisk::mount("96m");
    let root = disk.root();
    let snap_dir = root.join("snap");
    std::fs::create_dir_all(&snap_dir).unwrap();
    let snap = SnapshotterProc::start_with(&snap_dir, &berthd.url(), &["--fill-rate", "0", "--min-free", "33554432"]);
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    let out = snapshotter_pull(&ctd, &berthd, &image);
    assert!(out.contains("3 layer(s) mounted lazily"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_dir(snap.root.join("snapshots")).unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("lazy/mount.log")).is_ok_and(|l| l.contains("cannot keep chunks"))
    }) {
        assert!(std::time::Instant::now() < deadline, "the fill never hit the reserve");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let df = run(Command::new("df").args(["-B1", "--output=avail"]).arg(&snap.root));
    let free: u64 = df.lines().last().unwrap().trim().parse().unwrap();
    assert!(free >= 24 << 20, "the reserve stays free ({free} bytes free)");
    // The big file reads whole and right although most of it is not on disk.
    let id = format!("reserve-{}", std::process::id());
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "berth",
        &image,
        &id,
        "/bin/busybox",
        "sha256sum",
        "/data/big.bin",
    ]);
    assert!(out.contains(img.big_sha256.trim_start_matches("sha256:")), "{out}");
    let id = format!("reserve2-{}", std::process::id());
    assert_eq!(ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/keep"]), "kept\n");
    drop(ctd);
    drop(snap);
    for m in crate::support_e2e::containerd::mounts_under(&root).iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
}

/// berthd stops answering: a container's read of a chunk not on disk
/// fails after the read timeout — once, not once per kernel retry — and
/// works again when berthd does.
#[test]
fn a_stalled_berthd_fails_a_read_within_the_timeout() {
    let work = tempfile::tempdir().unwrap();
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    for l in &img.layers {
        wait_index(&berthd, "app", l);
    }
    let snap =
        SnapshotterProc::start_with(work.path(), &berthd.url(), &["--fill-rate", "65536", "--read-timeout", "3"]);
    let ctd = Containerd::start_with(&snap.proxy_plugin_toml());
    let image = format!("{MIRROR_HOST}/app:v1");
    snapshotter_pull(&ctd, &berthd, &image);
    let pid = berthd.child.id().to_string();
    run(Command::new("kill").args(["-STOP", &pid]));
    struct Cont(String);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let cont = Cont(pid);
    let started = std::time::Instant::now();
    let id = format!("stalled-{}", std::process::id());
    let out =
        ctd.ctr_output(&["run", "--rm", "--snapshotter", "berth", &image, &id, "tail", "-c", "16", "/data/big.bin"]);
    let took = started.elapsed();
    assert!(!out.status.success(), "the read cannot succeed while berthd is stopped");
    assert!(took < std::time::Duration::from_secs(25), "failed within the timeout, not per retry ({took:?})");
    drop(cont);
    let id = format!("resumed-{}", std::process::id());
    let out = ctd.ctr_ok(&["run", "--rm", "--snapshotter", "berth", &image, &id, "cat", "/etc/keep"]);
    assert_eq!(out, "kept\n");
}

/// Whether chunk `i` of `layer` is on disk under the snapshotter's root.
fn has_chunk(root: &Path, layer: &str, i: usize) -> bool {
    std::fs::read_dir(root.join("snapshots")).unwrap().flatten().any(|d| {
        std::fs::read_to_string(d.path().join("lazy/layer.json")).unwrap_or_default().contains(layer)
            && d.path().join("lazy/chunks").join(i.to_string()).exists()
    })
}

/// The first lazy start of an image records which chunks its reads
/// fetched; a later lazy mount on another node (here a fresh snapshotter
/// and containerd) fetches them at mount, before any container reads.
#[test]
fn a_first_lazy_start_records_a_prefetch_list_that_later_mounts_fetch_at_once() {
    let img = layered_image();
    let berthd = Berthd::start("");
    Skopeo::new().push(&img.layout, &berthd.addr, "app:v1", &[]);
    let big = &img.layers[1];
    let mut last = 0;
    for l in &img.layers {
        let idx = wait_index(&berthd, "app", l);
        if l == big {
            last = idx["chunks"].as_array().unwrap().len() - 1;
        }
    }
    let list_url = format!("{}/v2/app/_berth/layer/{big}/prefetch", berthd.url());
    let none = http_get(&list_url);
    assert_eq!(none.status, 404, "{}", String::from_utf8_lossy(&none.body));
    // A list that does not fit the layer is refused with a clear error.
    let bad = http_with_body("PUT", &list_url, &[], br#"{"chunks":[999999]}"#.to_vec()).unwrap();
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("PREFETCH_INVALID"), "{}", String::from_utf8_lossy(&bad.body));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = format!("{MIRROR_HOST}/app:v1");
    // `--fill-rate 1`: the background fill fetches one chunk, then waits,
    // so every other chunk on disk was read or prefetched.
    let fill_held = ["--fill-rate", "1"];
    let cmd = ["/bin/busybox", "sh", "-c", "tail -c 16 /data/big.bin | wc -c"];
    {
        let work = tempfile::tempdir().unwrap();
        let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &fill_held);
        let ctd = Containerd::start_cri(&cri_config(work.path(), &snap, &berthd.addr));
        cri_pull(&ctd, &rt, &image, &snap);
        let id = format!("record-{}", std::process::id());
        let out = ctr_k8s_ok(&ctd, &[&["run", "--rm", "--snapshotter", "berth", &image, &id][..], &cmd].concat());
        assert_eq!(out.trim(), "16");
        assert!(has_chunk(&snap.root, big, last), "the read fetched the big layer's last chunk");
        // The list is stored once the reads have been quiet for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = http_get(&list_url);
            if r.status == 200 {
                let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let chunks: Vec<u64> = list["chunks"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
                assert!(chunks.contains(&(last as u64)), "the list names the chunk read: {chunks:?}");
                assert!(chunks.len() <= 3, "only what the start read: {chunks:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no prefetch list was recorded; snapshotter log:\n{}",
                snap.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    // Another node: the pull mounts the layers, and the listed chunk arrives
    // without any container reading it.
    let work = tempfile::tempdir().unwrap();
    let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &fill_held);
    let ctd = Containerd::start_cri(&cri_config(work.path(), &snap, &berthd.addr));
    cri_pull(&ctd, &rt, &image, &snap);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !has_chunk(&snap.root, big, last) {
        assert!(
            std::time::Instant::now() < deadline,
            "the list was not prefetched; snapshotter log:\n{}",
            snap.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let id = format!("prefetched-{}", std::process::id());
    let out = ctr_k8s_ok(&ctd, &[&["run", "--rm", "--snapshotter", "berth", &image, &id][..], &cmd].concat());
    assert_eq!(out.trim(), "16");
}
