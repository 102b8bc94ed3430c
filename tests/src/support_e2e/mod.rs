//! Helpers shared by the real-client end-to-end tests (`skopeo`,
//! `containerd`, `registry2_compat`, …) and the benchmarks.
//!
//! * builds a small runnable busybox OCI image layout with `umoci`, offline;
//! * builds a two-platform OCI image index from it;
//! * wraps `skopeo` (explicit permissive policy, plain HTTP on loopback);
//! * runs Debian's `docker-registry` (distribution 2.8) as a reference peer;
//! * compares OCI layouts / registry roots byte for byte.

pub mod arm64;
pub mod browser;
pub mod containerd;
pub mod debian_root;
pub mod latency;
pub mod netns;
pub mod pki;
pub mod snapshotter;
pub mod token;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{require_tool, run, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------------------
// OCI image layouts
// ---------------------------------------------------------------------------

/// An OCI image layout directory holding one tagged image.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub tag: String,
}

impl Layout {
    /// `oci:<dir>:<tag>` reference for skopeo.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }

    /// Digest of the manifest (or index) `tag` points at in `index.json`.
    pub fn digest(&self) -> String {
        layout_ref_digest(&self.dir, &self.tag)
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        read_blob(&self.dir, digest)
    }
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
    layout.join("blobs").join(alg).join(hex)
}

pub fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let p = blob_path(layout, digest);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read blob {}: {e}", p.display()))
}

/// Writes `data` as a blob into `layout` and returns its digest and size.
pub fn write_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let digest = sha256(data);
    let p = blob_path(layout, &digest);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    (digest, data.len() as u64)
}

/// The digest `index.json` of `layout` names for `tag`.
pub fn layout_ref_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let manifests = index["manifests"].as_array().expect("index.json has manifests");
    let found: Vec<&serde_json::Value> =
        manifests.iter().filter(|m| m["annotations"][REF_NAME].as_str() == Some(tag)).collect();
    assert_eq!(found.len(), 1, "exactly one entry for tag {tag} in {}: {index}", layout.display());
    found[0]["digest"].as_str().unwrap().to_string()
}

/// All blob digests reachable from `root` (the root itself first), following
/// index `manifests` and manifest `config`/`layers`.
pub fn reachable_blobs(layout: &Path, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(d) = stack.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        out.push(d.clone());
        let data = read_blob(layout, &d);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
            continue; // a layer
        };
        let is_manifest_like = v.get("schemaVersion").is_some();
        if !is_manifest_like {
            continue; // an image config
        }
        if let Some(ms) = v["manifests"].as_array() {
            for m in ms.iter().rev() {
                stack.push(m["digest"].as_str().unwrap().to_string());
            }
        }
        if let Some(layers) = v["layers"].as_array() {
            for l in layers.iter().rev() {
                stack.push(l["digest"].as_str().unwrap().to_string());
            }
        }
        if let Some(c) = v["config"]["digest"].as_str() {
            stack.push(c.to_string());
        }
    }
    out
}

/// Asserts that `got` holds exactly the image `want` holds: same root digest
/// and every reachable blob byte-identical (and matching its digest).
/// Returns the root digest.
pub fn assert_same_image(want: &Layout, got: &Layout) -> String {
    let d_want = want.digest();
    let d_got = got.digest();
    assert_eq!(d_got, d_want, "root manifest digest differs after the round trip");
    let want_blobs = reachable_blobs(&want.dir, &d_want);
    let got_blobs = reachable_blobs(&got.dir, &d_got);
    assert_eq!(got_blobs, want_blobs, "reachable blob sets differ");
    for d in &want_blobs {
        let a = want.blob(d);
        let b = got.blob(d);
        assert_eq!(sha256(&b), *d, "pulled blob {d} does not match its digest");
        assert!(a == b, "blob {d} differs: {} bytes pushed, {} bytes pulled", a.len(), b.len());
    }
    d_want
}

/// The test image: a layout made by umoci holding busybox (static) with
/// `/bin/{sh,echo,cat}` symlinks; `cmd` set to `/bin/sh -c "echo hi"`.
pub struct BusyboxImage {
    pub layout: Layout,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

/// Builds the busybox image under `work/<name>` (offline, with umoci).
pub fn build_busybox_image(work: &Path, name: &str) -> BusyboxImage {
    build_busybox_image_with(work, name, &[])
}

/// Like [`build_busybox_image`], with extra files (path relative to the
/// rootfs, contents) in the same layer.
pub fn build_busybox_image_with(work: &Path, name: &str, extra: &[(&str, &[u8])]) -> BusyboxImage {
    let umoci = require_tool("umoci");
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox missing: install busybox-static (bash tests/scripts/install-deps.sh)");
    let dir = work.join(name);
    let bundle = work.join(format!("{name}-bundle"));
    let image = format!("{}:latest", dir.display());
    run(Command::new(&umoci).arg("init").arg("--layout").arg(&dir));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for l in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(l)).unwrap();
    }
    for (path, data) in extra {
        let p = bundle.join("rootfs").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    run(Command::new(&umoci).args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.cmd=/bin/sh",
        "--config.cmd=-c",
        "--config.cmd=echo hi",
    ]));
    run(Command::new(&umoci).arg("gc").arg("--layout").arg(&dir));
    let _ = std::fs::remove_dir_all(&bundle);

    let layout = Layout { dir, tag: "latest".into() };
    let manifest_digest = layout.digest();
    let manifest: serde_json::Value = serde_json::from_slice(&layout.blob(&manifest_digest)).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "umoci image has one layer: {manifest}");
    let layer_digest = layers[0]["digest"].as_str().unwrap().to_string();
    BusyboxImage { layout, manifest_digest, config_digest, layer_digest }
}

/// A three-layer image for lazy-pull tests, tagged `latest` in `work/<name>`:
/// 1. busybox, `/etc/motd`, `/etc/old`, `/etc/dir/{a,b}`, `/etc/keep`;
/// 2. `/data/big.bin` (`big` bytes of incompressible data) and a hard link
///    `/data/big.link` to it;
/// 3. deletes `/etc/old` and `/etc/dir/a`, replaces `/etc/motd`, adds a
///    symlink `/etc/motd.link` and `/etc/new`.
pub struct LayeredImage {
    pub layout: Layout,
    pub layers: Vec<String>,
    pub big_sha256: String,
}

pub fn build_layered_image(work: &Path, name: &str, big: usize) -> LayeredImage {
    let umoci = require_tool("umoci");
    let base = build_busybox_image_with(
        work,
        name,
        &[
            ("etc/motd", b"layer one motd\n"),
            ("etc/old", b"deleted by layer three\n"),
            ("etc/dir/a", b"a\n"),
            ("etc/dir/b", b"b\n"),
            ("etc/keep", b"kept\n"),
        ],
    );
    let dir = base.layout.dir.clone();
    let image = format!("{}:latest", dir.display());
    let bundle = work.join(format!("{name}-layers"));
    let step = |change: &dyn Fn(&Path)| {
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new(&umoci).args(["repack", "--image", &image]).arg(&bundle));
        let _ = std::fs::remove_dir_all(&bundle);
    };
    let data = crate::common::random_bytes(big, 99);
    let big_sha256 = sha256(&data);
    step(&|root: &Path| {
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/big.bin"), &data).unwrap();
        std::fs::hard_link(root.join("data/big.bin"), root.join("data/big.link")).unwrap();
    });
    drop(data);
    step(&|root: &Path| {
        std::fs::remove_file(root.join("etc/old")).unwrap();
        std::fs::remove_file(root.join("etc/dir/a")).unwrap();
        std::fs::write(root.join("etc/motd"), b"layer three motd\n").unwrap();
        std::os::unix::fs::symlink("motd", root.join("etc/motd.link")).unwrap();
        std::fs::write(root.join("etc/new"), b"new in layer three\n").unwrap();
        special_files(root);
    });
    run(Command::new(&umoci).arg("gc").arg("--layout").arg(&dir));
    let layout = Layout { dir, tag: "latest".into() };
    let manifest: serde_json::Value = serde_json::from_slice(&layout.blob(&layout.digest())).unwrap();
    let layers: Vec<String> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(layers.len(), 3, "{manifest}");
    LayeredImage { layout, layers, big_sha256 }
}

/// What an image layer may carry beyond plain files, so that a tree
/// comparison covers it: a FIFO, character and block devices, extended
/// attributes on a file and a directory, set-id and sticky bits, a foreign
/// owner and a fixed modification time.
fn special_files(root: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let ok = |rc: libc::c_int, what: &str| assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
    let dev = root.join("devices");
    std::fs::create_dir_all(&dev).unwrap();
    // SAFETY: plain libc calls on NUL-terminated paths that outlive them.
    unsafe {
        ok(libc::mkfifo(c(&dev.join("fifo")).as_ptr(), 0o620), "mkfifo");
        ok(libc::mknod(c(&dev.join("null")).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)), "mknod c");
        ok(libc::mknod(c(&dev.join("loop7")).as_ptr(), libc::S_IFBLK | 0o660, libc::makedev(7, 7)), "mknod b");
        for (path, name, value) in [
            (root.join("etc/new"), "user.berth.note", "from layer three"),
            (root.join("etc/dir"), "user.berth.dir", "d"),
        ] {
            let (n, v) = (CString::new(name).unwrap(), value.as_bytes());
            ok(libc::lsetxattr(c(&path).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0), "lsetxattr");
        }
        ok(libc::lchown(c(&root.join("etc/new")).as_ptr(), 1234, 5678), "lchown");
    }
    for (name, mode) in [("fifo", 0o620), ("null", 0o666), ("loop7", 0o660)] {
        std::fs::set_permissions(dev.join(name), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let setuid = root.join("etc/setuid");
    std::fs::write(&setuid, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&setuid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let sticky = root.join("sticky");
    std::fs::create_dir_all(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    std::fs::File::options().write(true).open(root.join("etc/keep")).unwrap().set_modified(old).unwrap();
}

/// Extended attributes of `p` (not following a symlink) as `name=value`,
/// sorted; overlayfs' own are hidden from a merged view, so skipped here too.
fn xattr_listing(p: &Path) -> Vec<String> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: the buffers are as long as the lengths passed.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}: {}", p.display(), std::io::Error::last_os_error());
    let mut out = Vec::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = CString::new(name).unwrap();
        let shown = name.to_string_lossy().into_owned();
        if shown.starts_with("trusted.overlay.") || shown == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let len =
            unsafe { libc::lgetxattr(path.as_ptr(), CStr::as_ptr(&name), value.as_mut_ptr().cast(), value.len()) };
        assert!(len >= 0, "lgetxattr {} {shown}: {}", p.display(), std::io::Error::last_os_error());
        out.push(format!("{shown}={}", String::from_utf8_lossy(&value[..len as usize])));
    }
    out.sort();
    out
}

/// Every path under `root` (not crossing mounts) with what unpacking
/// decides: type, mode, owner, size, content digest or link target, device
/// numbers, extended attributes and (for all but directories, whose times
/// change as entries are added) the modification time.
pub fn tree_listing(root: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = md.file_type();
        let what = if ft.is_dir() {
            let mut kids: Vec<PathBuf> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!("file {} {}", md.len(), sha256(&std::fs::read(&p).unwrap()))
        } else if ft.is_char_device() {
            format!("char {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()))
        } else if ft.is_block_device() {
            format!("block {}:{}", libc::major(md.rdev()), libc::minor(md.rdev()))
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        out.push(format!(
            "/{rel} {what} mode={:o} uid={} gid={} nlink={} mtime={} xattrs={:?}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            if ft.is_dir() { 0 } else { md.nlink() },
            if ft.is_dir() { 0 } else { md.mtime() },
            xattr_listing(&p),
        ));
    }
    out.sort();
    out
}

/// A two-platform OCI index (linux/amd64 + linux/arm64) sharing the busybox
/// layer, with distinct configs and manifests, in a new layout `work/<name>`
/// tagged `multi`. Returns the layout and the index digest.
pub fn build_multiarch_index(work: &Path, name: &str, base: &BusyboxImage) -> (Layout, String) {
    let dir = work.join(name);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let layer = base.layout.blob(&base.layer_digest);
    write_blob(&dir, &layer);
    let base_config: serde_json::Value = serde_json::from_slice(&base.layout.blob(&base.config_digest)).unwrap();
    let diff_ids = base_config["rootfs"]["diff_ids"].clone();

    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh", "-c", "echo hi"], "Labels": {"berth.test.arch": arch}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, cs) = write_blob(&dir, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": base.layer_digest, "size": layer.len()}],
        });
        let (md, ms) = write_blob(&dir, &serde_json::to_vec(&manifest).unwrap());
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let (id, is) = write_blob(&dir, &serde_json::to_vec(&index).unwrap());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_INDEX, "digest": id, "size": is, "annotations": {REF_NAME: "multi"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    (Layout { dir, tag: "multi".into() }, id)
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

/// Runs skopeo against plain-HTTP loopback registries with an explicit
/// accept-anything signature policy (no dependence on /etc/containers).
pub struct Skopeo {
    bin: PathBuf,
    policy: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for Skopeo {
    fn default() -> Self {
        Skopeo::new()
    }
}

impl Skopeo {
    pub fn new() -> Skopeo {
        let bin = require_tool("skopeo");
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, br#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        Skopeo { bin, policy, _dir: dir }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--policy").arg(&self.policy);
        c
    }

    /// Runs `skopeo <args>` and returns its output (never panics).
    pub fn output(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        c.output().unwrap_or_else(|e| panic!("spawn skopeo {args:?}: {e}"))
    }

    /// Runs `skopeo <args>`, panicking with its output on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let mut c = self.cmd();
        c.args(args);
        run(&mut c)
    }

    /// `skopeo copy [extra] src dst` with TLS verification off on both sides.
    pub fn copy(&self, extra: &[&str], src: &str, dst: &str) -> String {
        let mut args = vec!["copy", "--src-tls-verify=false", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[src, dst]);
        self.ok(&args)
    }

    /// Pushes `layout` to `docker://<addr>/<repo_tag>`.
    pub fn push(&self, layout: &Layout, addr: &str, repo_tag: &str, extra: &[&str]) {
        self.copy(extra, &layout.oci_ref(), &format!("docker://{addr}/{repo_tag}"));
    }

    /// Pulls `docker://<addr>/<repo_tag>` into a new layout `dir` tagged `tag`.
    pub fn pull(&self, addr: &str, repo_tag: &str, dir: &Path, tag: &str, extra: &[&str]) -> Layout {
        let layout = Layout { dir: dir.to_path_buf(), tag: tag.into() };
        self.copy(extra, &format!("docker://{addr}/{repo_tag}"), &layout.oci_ref());
        layout
    }

    /// `skopeo inspect --raw`: the manifest bytes exactly as served.
    pub fn inspect_raw(&self, addr: &str, reference: &str) -> Vec<u8> {
        let out = self.output(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{addr}/{reference}")]);
        assert!(
            out.status.success(),
            "skopeo inspect --raw {reference} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `skopeo inspect` parsed as JSON.
    pub fn inspect(&self, addr: &str, reference: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", "--tls-verify=false", &format!("docker://{addr}/{reference}")]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect output not JSON ({e}): {out}"))
    }

    /// `skopeo list-tags`, sorted.
    pub fn list_tags(&self, addr: &str, repo: &str) -> Vec<String> {
        let out = self.ok(&["list-tags", "--tls-verify=false", &format!("docker://{addr}/{repo}")]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut tags: Vec<String> =
            v["Tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        tags.sort();
        tags
    }
}

// ---------------------------------------------------------------------------
// plain HTTP
// ---------------------------------------------------------------------------

/// A response read by [`http`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One blocking HTTP request (`method url`, with `headers`).
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, String> {
    http_with_body(method, url, headers, Vec::new())
}

/// One blocking HTTP request with a body.
pub fn http_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
        let mut req = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(HttpResponse { status, headers, body })
    })
}

pub fn http_get(url: &str) -> HttpResponse {
    http("GET", url, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Uploads `data` as a blob of `repo` in one request; returns its digest.
pub fn upload_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let d = crate::common::sha256(data);
    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={d}");
    let r = http_with_body("POST", &url, &[("content-type", "application/octet-stream")], data.to_vec()).unwrap();
    assert_eq!(r.status, 201, "upload: {}", String::from_utf8_lossy(&r.body));
    d
}

/// Pushes by digest an artifact of `artifact_type` with one layer
/// (`layer`: media type and bytes) whose subject is `subject` (a manifest
/// of `repo`: digest and size), as signers and SBOM tools do; returns its
/// digest.
pub fn push_artifact(
    base: &str,
    repo: &str,
    artifact_type: &str,
    layer: (&str, &[u8]),
    subject: (&str, usize),
) -> String {
    let (empty, payload) = (upload_blob(base, repo, b"{}"), upload_blob(base, repo, layer.1));
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": layer.0, "digest": payload, "size": layer.1.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.0, "size": subject.1},
    })
    .to_string();
    let d = crate::common::sha256(body.as_bytes());
    let url = format!("{base}/v2/{repo}/manifests/{d}");
    let r = http_with_body("PUT", &url, &[("content-type", OCI_MANIFEST)], body.into_bytes()).unwrap();
    assert_eq!(r.status, 201, "artifact push: {}", String::from_utf8_lossy(&r.body));
    d
}

/// `GET /v2/<repo>/tags/list`, tags sorted.
pub fn tags_list(base_url: &str, repo: &str) -> Vec<String> {
    let r = http_get(&format!("{base_url}/v2/{repo}/tags/list"));
    assert_eq!(r.status, 200, "tags/list: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["name"], repo, "tags/list name: {v}");
    let mut tags: Vec<String> =
        v["tags"].as_array().unwrap_or(&Vec::new()).iter().map(|t| t.as_str().unwrap().to_string()).collect();
    tags.sort();
    tags
}

/// GETs `path` (e.g. `/v2/_catalog?n=1`) from `base_url` and follows the
/// `Link: <...>; rel="next"` headers; returns every page body as JSON.
pub fn paginate(base_url: &str, path: &str) -> Vec<serde_json::Value> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(p) = next.take() {
        assert!(pages.len() < 50, "pagination does not end: {pages:?}");
        let r = http_get(&format!("{base_url}{p}"));
        assert_eq!(r.status, 200, "GET {p}: {}", String::from_utf8_lossy(&r.body));
        pages.push(r.json());
        if let Some(link) = r.header("link") {
            let start = link.find('<').expect("Link has <url>") + 1;
            let end = link.find('>').expect("Link has <url>");
            assert!(link.contains("rel=\"next\""), "Link header: {link}");
            let url = &link[start..end];
            // registry:2 sends a path; accept an absolute URL too.
            let url = url.find("/v2/").map_or(url, |i| &url[i..]);
            next = Some(url.to_string());
        }
    }
    pages
}

/// `berthd containerd configure --config CFG` on the containerd files of
/// `dir` (`certs.d/`, `config.toml`), with `extra` arguments.
pub fn configure_command(dir: &Path, cfg: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(crate::common::berthd_bin());
    c.args(["containerd", "configure", "--config"])
        .arg(cfg)
        .arg("--certs-d")
        .arg(dir.join("certs.d"))
        .arg("--containerd-config")
        .arg(dir.join("config.toml"))
        .args(extra);
    c
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// docker-registry (distribution 2.8) as the reference peer
// ---------------------------------------------------------------------------

/// A running Debian `docker-registry` serving `root` on 127.0.0.1. Killed on drop.
pub struct DockerRegistry {
    child: Child,
    pub addr: String,
    pub root: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts `docker-registry serve` with deletes enabled on `root`; waits
    /// until `GET /v2/` answers 200. Retries on another port if the chosen
    /// port was taken meanwhile.
    pub fn start(root: &Path) -> DockerRegistry {
        let storage = format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n",
            root.display()
        );
        Self::start_with_storage(root, &storage)
    }

    /// Starts `docker-registry serve` with `storage` (a YAML `storage:`
    /// block); `root` is only recorded. `AWS_CA_BUNDLE` is removed from its
    /// environment: the 2.8 S3 driver panics at start when it is set.
    pub fn start_with_storage(root: &Path, storage: &str) -> DockerRegistry {
        Self::start_with(root, storage, "", "http")
    }

    /// Like [`DockerRegistry::start_with_storage`], with `top` (more
    /// top-level YAML, e.g. `auth:`) and `http_extra` (lines inside `http:`,
    /// e.g. `tls:`); `scheme` is what `/v2/` is probed with.
    pub fn start_with(root: &Path, top: &str, http_extra: &str, scheme: &str) -> DockerRegistry {
        let storage = top;
        let bin = require_tool("docker-registry");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n{storage}http:\n  addr: {addr}\n{http_extra}"
                ),
            )
            .unwrap();
            let mut child = Command::new(&bin)
                .env_remove("AWS_CA_BUNDLE")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn docker-registry");
            let log = Arc::new(Mutex::new(Vec::new()));
            for stream in [
                Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(child.stdout.take().unwrap()),
            ] {
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        log.lock().unwrap().push(line);
                    }
                });
            }
            let mut reg = DockerRegistry { child, addr, root: root.to_path_buf(), log, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = reg.child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100)); // let the log threads drain
                    last_log = format!("exited with {status}:\n{}", reg.log_text());
                    break;
                }
                if scheme == "https" {
                    // TLS (and maybe auth): any answer from /v2/ means it is up.
                    let out = Command::new("curl")
                        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &format!("https://{}/v2/", reg.addr)])
                        .output();
                    if out.is_ok_and(|o| matches!(&o.stdout[..], b"200" | b"401")) {
                        return reg;
                    }
                } else if let Ok(r) = http("GET", &format!("{}/v2/", reg.url()), &[]) {
                    if r.status == 200 {
                        return reg;
                    }
                }
                if Instant::now() > deadline {
                    panic!("docker-registry did not answer GET /v2/ within 30s; log:\n{}", reg.log_text());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("docker-registry failed to start 5 times; last log:\n{last_log}");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Process id, for resource measurements.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the registry (SIGKILL; it holds no state outside the root).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `docker-registry garbage-collect` (mark and sweep of unreferenced
/// blobs, no `--delete-untagged`) over `root`; returns its output.
pub fn docker_registry_gc(root: &Path) -> String {
    let bin = require_tool("docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )
    .unwrap();
    run(Command::new(bin).arg("garbage-collect").arg(&config))
}

// ---------------------------------------------------------------------------
// registry:2 on-disk layout
// ---------------------------------------------------------------------------

/// `<root>/docker/registry/v2`.
pub fn v2_dir(root: &Path) -> PathBuf {
    root.join("docker/registry/v2")
}

/// Path of a blob's `data` file in a registry:2 root.
pub fn registry_blob_data(root: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    v2_dir(root).join("blobs").join(alg).join(&hex[..2]).join(hex).join("data")
}

fn read_link(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read link {}: {e}", p.display()))
}

/// Asserts that a registry:2 root holds `image` (every reachable blob, as a
/// byte-identical `data` file), that `repo` links each of them the way
/// distribution does (manifests under `_manifests/revisions`, configs and
/// layers under `_layers`), and that tag `tag` resolves to the root digest.
pub fn assert_root_holds(root: &Path, repo: &str, tag: &str, image: &Layout) {
    let repo_dir = v2_dir(root).join("repositories").join(repo);
    let top = image.digest();
    let link = repo_dir.join("_manifests/tags").join(tag).join("current/link");
    assert_eq!(read_link(&link), top, "{} must contain the tagged digest", link.display());
    let (alg, hex) = top.split_once(':').unwrap();
    let idx = repo_dir.join("_manifests/tags").join(tag).join("index").join(alg).join(hex).join("link");
    assert_eq!(read_link(&idx), top, "tag index link {}", idx.display());
    for d in reachable_blobs(&image.dir, &top) {
        let data = registry_blob_data(root, &d);
        let bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("blob data {}: {e}", data.display()));
        assert!(bytes == image.blob(&d), "blob data {} differs from the pushed blob", data.display());
        let (alg, hex) = d.split_once(':').unwrap();
        let bytes_json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let is_manifest = bytes_json.as_ref().is_some_and(|v| v.get("schemaVersion").is_some());
        let link = if is_manifest {
            repo_dir.join("_manifests/revisions").join(alg).join(hex).join("link")
        } else {
            repo_dir.join("_layers").join(alg).join(hex).join("link")
        };
        assert_eq!(read_link(&link), d, "link file {}", link.display());
    }
}

/// Blob digests a registry:2 root stores (from `blobs/sha256/xx/<hex>/data`).
pub fn root_blob_digests(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let base = v2_dir(root).join("blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&base) else {
        return out;
    };
    for p in prefixes.flatten() {
        for b in std::fs::read_dir(p.path()).unwrap().flatten() {
            if b.path().join("data").is_file() {
                out.insert(format!("sha256:{}", b.file_name().to_string_lossy()));
            }
        }
    }
    out
}
