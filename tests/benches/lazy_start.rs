//! Benchmark: container start time — CRI `PullImage` plus the first output
//! of `ctr run` — with berth-snapshotter's lazy layers against a normal
//! pull, berthd's storage an S3 server (SeaweedFS) behind a link throttled
//! to 100 Mbit/s, with 0, 20 and 50 ms of added round-trip time.
//!
//! * SeaweedFS runs in a network namespace this benchmark makes
//!   (`berth-lazybench`, a veth pair 10.250.77.1 ↔ 10.250.77.2) with a
//!   `tc tbf` qdisc on its side of the pair: everything S3 sends is shaped.
//!   berthd, containerd and berth-snapshotter run in the host namespace.
//!   Round-trip time is added by a relay in front of S3
//!   ([`support_e2e::latency`]): this kernel has no `netem`.
//! * Normal and lazy use the same berth-snapshotter binary; the normal runs
//!   give it `lazy: false` (`--config`), so laziness is the only difference.
//! * Every run is cold: a new berthd with an empty node cache, a new
//!   snapshotter root and a new containerd root. The layers' seek indexes
//!   are built once, before any timing (unthrottled).
//! * Three images: the 200 MiB three-layer busybox image of the snapshotter
//!   tests (`cat /etc/motd`), a Debian bookworm minbase root file system
//!   made by `mmdebstrap`, one layer as Debian's own images have
//!   (`cat /etc/os-release`), and the same with Debian's `python3`
//!   (`python3 -c 'import json, http.server'`).
//!
//! Needs root (network namespace, tc, containerd, FUSE). Run it with
//! `bash tests/bench/lazy.sh` (installs what it needs, builds release
//! binaries, runs this and puts the section into docs/benchmarks.md), or
//! `cargo bench -p berth-tests --bench lazy_start` after
//! `cargo build --release -p berthd -p berth-snapshotter`.
//!
//! `BENCH_RUNS` (default 3) repetitions per cell, `BENCH_LINKS` (default
//! `100/0,100/20,100/50`: Mbit/s and added round-trip ms), `BENCH_BIG_MIB`
//! (default 200), `BENCH_FILL_RATE` (bytes/s for
//! the lazy runs; default: the snapshotter's default, 8 MiB/s),
//! `BENCH_DEBIAN_TAR` (a root file system tarball to use instead of running
//! mmdebstrap; by default mmdebstrap's output is kept as
//! `$BENCH_OUT/debian-bookworm-minbase.tar` and reused, likewise
//! `BENCH_PYTHON_TAR` and `debian-bookworm-python3.tar`), `BENCH_IMAGES`
//! (comma-separated words; only images whose name contains one run, e.g.
//! `python`: for trying a change on one image). Writes
//! `$BENCH_OUT/lazy.md` (default `target/bench`).

use berth_tests::common;
use berth_tests::support_e2e;
use berth_tests::support_s3;

use common::{require_tool, run, Berthd};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support_e2e::containerd::{Containerd, MIRROR_HOST};
use support_e2e::latency::LatencyRelay;
use support_e2e::netns::ShapedLink;
use support_e2e::snapshotter::{cri_config, cri_pull, SnapshotterProc};
use support_e2e::{build_layered_image, http_get, Layout, Skopeo};
use support_s3::Seaweed;

/// berth-snapshotter's default background fill rate (snapshotter/src/config.rs).
const DEFAULT_FILL_RATE: u64 = 8 << 20;
const MIB: f64 = 1024.0 * 1024.0;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------
// The throttled network namespace and SeaweedFS in it
// ---------------------------------------------------------------------------

fn node(endpoint: &str) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Every node of the bucket holds the same layer index key.
    let yaml = support_s3::berthd_yaml(
        endpoint,
        &cache,
        "8GiB",
        "",
        "layerindex:\n  key: berth-bench-layer-index-key-0123456789abcdef\n",
    )
    .replace("level: info", "level: info\n  accesslog:\n    disabled: true");
    Berthd::start_config(dir, cache, &yaml, &Seaweed::env())
}

// ---------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------

struct Image {
    name: &'static str,
    repo: &'static str,
    layout: Layout,
    layers: Vec<String>,
    /// Compressed bytes of the layers (what a normal pull downloads).
    compressed: u64,
    /// Filled in after the push: uncompressed tar bytes and entries, from the indexes.
    uncompressed: u64,
    entries: usize,
    index_bytes: u64,
    /// The checkpoints' windows, stored beside the indexes.
    window_bytes: u64,
    cmd: Vec<&'static str>,
    expected: String,
}

fn manifest_layers(layout: &Layout) -> (Vec<String>, u64) {
    let manifest: serde_json::Value = serde_json::from_slice(&layout.blob(&layout.digest())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let digests = layers.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    (digests, layers.iter().map(|l| l["size"].as_u64().unwrap()).sum())
}

/// The name of the image [`large_image`] builds.
const LARGE_LAYER: &str = "large-layer";

fn large_image(work: &Path, big_mib: u64) -> Image {
    let img = build_layered_image(work, "large", (big_mib << 20) as usize);
    let (layers, compressed) = manifest_layers(&img.layout);
    Image {
        name: LARGE_LAYER,
        repo: "bench/large",
        layout: img.layout,
        layers,
        compressed,
        uncompressed: 0,
        entries: 0,
        index_bytes: 0,
        window_bytes: 0,
        cmd: vec!["/bin/cat", "/etc/motd"],
        expected: "layer three motd\n".into(),
    }
}

/// A Debian bookworm root file system as a tarball: `$env_var`, or
/// mmdebstrap's minbase output with `include`d packages, kept in `out` as
/// `name.tar` for the next run.
fn debian_tar(out: &Path, env_var: &str, name: &str, include: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let tar = out.join(format!("{name}.tar"));
    if tar.is_file() {
        return tar;
    }
    let tmp = out.join(format!("{name}.tar.part"));
    eprintln!("lazy_start: mmdebstrap --variant=minbase bookworm {include} (about a minute, once)");
    let mut cmd = Command::new(require_tool("mmdebstrap"));
    cmd.args(["--variant=minbase", "--mode=root", "--format=tar"]);
    if !include.is_empty() {
        cmd.arg(format!("--include={include}"));
    }
    run(cmd.arg("bookworm").arg(&tmp).stdin(Stdio::null()));
    std::fs::rename(&tmp, &tar).unwrap();
    tar
}

/// What a Debian image is built from and runs.
struct DebianSpec {
    name: &'static str,
    repo: &'static str,
    env_var: &'static str,
    tar_name: &'static str,
    include: &'static str,
    cmd: Vec<&'static str>,
    /// What the command prints, from the unpacked tree.
    expected: fn(&Path) -> String,
}

fn debian_minbase() -> DebianSpec {
    DebianSpec {
        name: "Debian bookworm minbase",
        repo: "bench/debian",
        env_var: "BENCH_DEBIAN_TAR",
        tar_name: "debian-bookworm-minbase",
        include: "",
        cmd: vec!["/bin/cat", "/etc/os-release"],
        expected: |rootfs| std::fs::read_to_string(rootfs.join("etc/os-release")).expect("/etc/os-release"),
    }
}

/// A Python start: the interpreter, its standard library's `json` and
/// `http.server` (with what they import) read from the image.
fn debian_python() -> DebianSpec {
    DebianSpec {
        name: "Debian bookworm python3",
        repo: "bench/python",
        env_var: "BENCH_PYTHON_TAR",
        tar_name: "debian-bookworm-python3",
        include: "python3",
        cmd: vec!["/usr/bin/python3", "-c", "import json, http.server; print('imported')"],
        expected: |_| "imported\n".to_string(),
    }
}

/// One layer holding a Debian tree (device nodes left out: runtimes
/// mount /dev), made with umoci like the test images.
fn debian_image(work: &Path, out: &Path, spec: DebianSpec) -> Image {
    let tar = debian_tar(out, spec.env_var, spec.tar_name, spec.include);
    let umoci = require_tool("umoci");
    let dir = work.join(spec.tar_name);
    let bundle = work.join(format!("{}-bundle", spec.tar_name));
    let image = format!("{}:latest", dir.display());
    run(Command::new(&umoci).arg("init").arg("--layout").arg(&dir));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--exclude=./dev/*", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs));
    let expected = (spec.expected)(&rootfs);
    run(Command::new(&umoci).args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new(&umoci).args(["config", "--image", &image, "--config.cmd=/bin/bash"]));
    run(Command::new(&umoci).arg("gc").arg("--layout").arg(&dir));
    let _ = std::fs::remove_dir_all(&bundle);
    let layout = Layout { dir, tag: "latest".into() };
    let (layers, compressed) = manifest_layers(&layout);
    Image {
        name: spec.name,
        repo: spec.repo,
        layout,
        layers,
        compressed,
        uncompressed: 0,
        entries: 0,
        index_bytes: 0,
        window_bytes: 0,
        cmd: spec.cmd,
        expected,
    }
}

/// Waits (up to 10 s) until the layers of `img` that the first start read
/// have a prefetch list; returns how many have one. A layer the command
/// never reads gets none.
fn wait_prefetch_lists(endpoint: &str, img: &Image) -> usize {
    let reader = node(endpoint);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = img
            .layers
            .iter()
            .filter(|l| http_get(&format!("{}/v2/{}/_berth/layer/{l}/prefetch", reader.url(), img.repo)).status == 200)
            .count();
        if listed == img.layers.len() || Instant::now() > deadline {
            return listed;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until berthd has built the seek index of `layer`; returns it and
/// its size in bytes as stored (zstd-compressed JSON: what a node reads
/// from S3 before the layer's first read).
fn wait_index(berthd: &Berthd, repo: &str, layer: &str) -> (serde_json::Value, u64) {
    let url = format!("{}/v2/{repo}/_berth/layer/{layer}/index", berthd.url());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = http_get(&url);
        if r.status == 200 {
            let stored: berthd::layerindex::LayerIndex = serde_json::from_slice(&r.body).unwrap();
            return (r.json(), berthd::layerindex::encode(&stored).len() as u64);
        }
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
        assert!(Instant::now() < deadline, "index of {layer} not built in 600s:\n{}", berthd.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// One timed start
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Lazy,
    /// Lazy with the background fill held back (`--fill-rate 1`: the fill
    /// fetches each layer's first chunk, then waits for days): what the
    /// container itself reads, and what the fill costs the start.
    LazyNoFill,
}

struct Sample {
    pull: f64,
    first_output: f64,
    /// Bytes S3 sent over the throttled link until the first output.
    link_bytes: u64,
    /// Bytes the lazy mounts had fetched (whole 512 KiB chunks) by then.
    fetched: u64,
    /// Lazy runs: the background fill in the [`FILL_WINDOW`] after the
    /// container exited, as chunk bytes/s and link bytes/s.
    fill: Option<(f64, f64)>,
}

/// How long the background fill is watched after a lazy start.
const FILL_WINDOW: Duration = Duration::from_secs(5);

/// Lazily mounted layers under the snapshotter's root, and the bytes of
/// the chunks they have fetched.
fn lazy_state(root: &Path) -> (usize, u64) {
    let (mut layers, mut bytes) = (0, 0);
    for d in std::fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
        let lazy = d.path().join("lazy");
        if !lazy.join("layer.json").is_file() {
            continue;
        }
        layers += 1;
        for c in std::fs::read_dir(lazy.join("chunks")).into_iter().flatten().flatten() {
            if c.file_name().to_string_lossy().ends_with(".tmp") {
                continue;
            }
            bytes += c.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (layers, bytes)
}

fn start_once(
    img: &Image,
    mode: Mode,
    endpoint: &str,
    ns: &ShapedLink,
    rt: &tokio::runtime::Runtime,
    fill_rate: u64,
    id: &str,
) -> Sample {
    let work = tempfile::tempdir().unwrap();
    let berthd = node(endpoint);
    let config = work.path().join("snapshotter.yml");
    std::fs::write(&config, if mode == Mode::Normal { "lazy: false\n" } else { "lazy: true\n" }).unwrap();
    let fill = match mode {
        Mode::LazyNoFill => "1".to_string(),
        _ => fill_rate.to_string(),
    };
    let args = ["--config", config.to_str().unwrap(), "--fill-rate", &fill];
    let snap = SnapshotterProc::start_with(work.path(), &berthd.url(), &args);
    let ctd = Containerd::start_cri(&cri_config(work.path(), &snap, &berthd.addr));
    let image = format!("{MIRROR_HOST}/{}:v1", img.repo);

    let before = ns.rx_bytes();
    let started = Instant::now();
    cri_pull(&ctd, rt, &image, &snap);
    let pull = started.elapsed().as_secs_f64();
    let mut child = Command::new(&ctd.ctr)
        .arg("--address")
        .arg(&ctd.sock)
        .args(["--namespace", "k8s.io", "run", "--rm", "--snapshotter", "berth", &image, id])
        .args(&img.cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr");
    let mut stdout = child.stdout.take().unwrap();
    let mut out = vec![0u8; 64 << 10];
    let n = stdout.read(&mut out).unwrap();
    let first_output = started.elapsed().as_secs_f64();
    let link_bytes = ns.rx_bytes() - before;
    let (lazy_layers, fetched) = lazy_state(&snap.root);
    out.truncate(n);
    stdout.read_to_end(&mut out).unwrap();
    let result = child.wait_with_output().unwrap();
    assert!(
        result.status.success() && out == img.expected.as_bytes(),
        "ctr run {id}: {}\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
        result.status,
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&result.stderr),
        support_e2e::containerd::tail(&ctd.log_text(), 30)
    );
    // A lazy run that fell back to a normal pull would measure nothing.
    let want = if mode == Mode::Normal { 0 } else { img.layers.len() };
    assert_eq!(lazy_layers, want, "lazily mounted layers; snapshotter log:\n{}", snap.log_text());
    let fill = (mode == Mode::Lazy).then(|| {
        let (t, link, fetched) = (Instant::now(), ns.rx_bytes(), lazy_state(&snap.root).1);
        std::thread::sleep(FILL_WINDOW);
        let secs = t.elapsed().as_secs_f64();
        ((lazy_state(&snap.root).1 - fetched) as f64 / secs, (ns.rx_bytes() - link) as f64 / secs)
    });
    drop(ctd);
    drop(snap);
    drop(berthd);
    Sample { pull, first_output, link_bytes, fetched, fill }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

/// The link between berthd and S3.
#[derive(Clone, Copy)]
struct Link {
    mbit: u64,
    rtt_ms: u64,
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Mbit/s, +{} ms", self.mbit, self.rtt_ms)
    }
}

struct Cell {
    link: Link,
    image: usize,
    normal: Vec<Sample>,
    lazy: Vec<Sample>,
    nofill: Vec<Sample>,
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(&v.iter().map(f).collect::<Vec<_>>())
}

/// First line of a command's output, or "?".
fn first_line(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(
    images: &[Image],
    cells: &[Cell],
    first_starts: &[(f64, usize)],
    runs: u64,
    fill_rate: u64,
    load: (&str, &str),
) -> String {
    let mut s = String::new();
    let fill = if fill_rate == DEFAULT_FILL_RATE {
        format!("{} MiB/s, the default", fill_rate >> 20)
    } else if fill_rate == 0 {
        "unlimited".to_string()
    } else {
        format!("{:.1} MiB/s", fill_rate as f64 / MIB)
    };
    s += &format!(
        "Time from CRI `PullImage` until the container's first output (`ctr -n k8s.io run --rm --snapshotter berth \
         IMAGE ID CMD`), berth-snapshotter with lazy layers against the same snapshotter with `lazy: false`; \
         berthd on SeaweedFS, whose replies cross a veth pair shaped by `tc tbf` in a network namespace; \
         \"+N ms\" is round-trip time added by a relay in front of S3 (`tests/src/support_e2e/latency.rs`; this \
         kernel has no `netem`), paid by every request and by a new connection's handshake. Every \
         run is cold: new berthd with an empty node cache, new snapshotter root, new containerd root (indexes \
         were built after the push, before timing). Background fill of lazy layers: {fill}, for the node (the \
         layers' fills take turns). \"Fill held back\" runs pass `--fill-rate 1`: the fill fetches one chunk, \
         then waits for days, so what is fetched is what the container read. Median of {runs} runs. \
         Before timing, one lazy start of each image on the first link found no prefetch list and recorded one \
         (as a cluster's first node does); every timed lazy start fetches its list's chunks at mount.\n\n"
    );
    s += "| image | layers | compressed | uncompressed | files | command | seek indexes + their windows (stored) | first lazy start, \
          recording the list: first output (layers listed) |\n";
    s += "|---|---|---|---|---|---|---|---|\n";
    for (i, img) in images.iter().enumerate() {
        let first = first_starts.get(i).map_or("—".to_string(), |(t, listed)| format!("{t:.2} s ({listed})"));
        s += &format!(
            "| {} | {} | {:.0} MiB | {:.0} MiB | {} | `{}` | {:.2} + {:.1} MiB | {first} |\n",
            img.name,
            img.layers.len(),
            img.compressed as f64 / MIB,
            img.uncompressed as f64 / MIB,
            img.entries,
            img.cmd.join(" "),
            img.index_bytes as f64 / MIB,
            img.window_bytes as f64 / MIB
        );
    }
    s += "\n| image | S3 link | normal: pull / first output | lazy: pull / first output | speed-up | ≥ 5×? | \
          lazy, fill held back: first output | speed-up |\n|---|---|---|---|---|---|---|---|\n";
    for c in cells {
        let img = &images[c.image];
        let (np, nf) = (med(&c.normal, |x| x.pull), med(&c.normal, |x| x.first_output));
        let (lp, lf) = (med(&c.lazy, |x| x.pull), med(&c.lazy, |x| x.first_output));
        let hf = med(&c.nofill, |x| x.first_output);
        s += &format!(
            "| {} | {} | {np:.2} s / **{nf:.2} s** | {lp:.2} s / **{lf:.2} s** | **{:.1}×** | {} | {hf:.2} s | \
             {:.1}× |\n",
            img.name,
            c.link,
            nf / lf,
            if nf / lf >= 5.0 { "yes" } else { "no" },
            nf / hf
        );
    }
    s += &format!(
        "\n| image | S3 link | sent over the link until first output: normal / lazy / lazy, fill held back | \
         fetched by the lazy mounts, fill held back (share of the image) | background fill in the {} s after \
         the start: chunks / link use |\n|---|---|---|---|---|\n",
        FILL_WINDOW.as_secs()
    );
    for c in cells {
        let img = &images[c.image];
        let mb = |v: &[Sample]| med(v, |x| x.link_bytes as f64) / MIB;
        let fetched = med(&c.nofill, |x| x.fetched as f64);
        let chunks = med(&c.lazy, |x| x.fill.unwrap().0) / MIB;
        let link = med(&c.lazy, |x| x.fill.unwrap().1) * 8.0 / 1e6;
        s += &format!(
            "| {} | {} | {:.1} / {:.1} / {:.1} MiB | {:.1} MiB ({:.1} %) | {chunks:.1} MiB/s / {link:.0} Mbit/s \
             ({:.0} %) |\n",
            img.name,
            c.link,
            mb(&c.normal),
            mb(&c.lazy),
            mb(&c.nofill),
            fetched / MIB,
            100.0 * fetched / img.uncompressed as f64,
            100.0 * link / c.link.mbit as f64
        );
    }
    s += "\nEvery run (seconds to first output): ";
    let runs_text: Vec<String> = cells
        .iter()
        .map(|c| {
            let list = |v: &[Sample]| v.iter().map(|x| format!("{:.2}", x.first_output)).collect::<Vec<_>>().join(", ");
            format!(
                "{} at {}: normal {}; lazy {}; fill held back {}",
                images[c.image].name,
                c.link,
                list(&c.normal),
                list(&c.lazy),
                list(&c.nofill)
            )
        })
        .collect();
    s += &runs_text.join(". ");
    s += ".\n";
    s += &format!(
        "\nMeasured {} on {} cores ({}), berthd and berth-snapshotter {} (release build), containerd {}, \
         SeaweedFS {}; load average {} when the benchmark started, {} when it ended. \
         `bash tests/bench/lazy.sh` (root) runs this benchmark alone and rewrites this section; \
         `bash tests/bench/run.sh` runs it with the others.\n",
        first_line(&["date", "-u", "+%Y-%m-%d"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line(&["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"]),
        first_line(&["git", "-C", common::workspace_root().to_str().unwrap(), "describe", "--always", "--dirty"]),
        first_line(&["containerd", "--version"]).split_whitespace().nth(2).unwrap_or("?"),
        first_line(&["sh", "-c", "weed version 2>&1"]).split_whitespace().nth(2).unwrap_or("?"),
        load.0,
        load.1,
    );
    s
}

fn main() {
    assert!(support_e2e::containerd::is_root(), "the lazy start benchmark needs root (netns, tc, mounts)");
    let release = common::workspace_root().join("target/release");
    for (var, bin) in [("BERTHD_BIN", "berthd"), ("BERTH_SNAPSHOTTER_BIN", "berth-snapshotter")] {
        if std::env::var_os(var).is_none() {
            let p = release.join(bin);
            assert!(
                p.exists(),
                "build the release binaries first: cargo build --release -p berthd -p berth-snapshotter"
            );
            std::env::set_var(var, p);
        }
    }
    let out =
        std::env::var("BENCH_OUT").map(PathBuf::from).unwrap_or_else(|_| common::workspace_root().join("target/bench"));
    std::fs::create_dir_all(&out).unwrap();
    // Everything this run mounts lives under one directory, so a clean-up
    // after a killed run (tests/bench/lazy.sh) touches nothing else.
    let tmp = out.join("lazy-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::env::set_var("TMPDIR", &tmp);
    let runs = env_num("BENCH_RUNS", 3).max(1);
    let links: Vec<Link> = std::env::var("BENCH_LINKS")
        .unwrap_or_else(|_| "100/0,100/20,100/50".into())
        .split(',')
        .map(|l| {
            let (mbit, rtt) = l.trim().split_once('/').unwrap_or((l.trim(), "0"));
            let num = |v: &str| v.parse().expect("BENCH_LINKS: comma-separated MBIT/RTT_MS, e.g. 100/20");
            Link { mbit: num(mbit), rtt_ms: num(rtt) }
        })
        .collect();
    let fill_rate = env_num("BENCH_FILL_RATE", DEFAULT_FILL_RATE);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bench_started = Instant::now();
    let mut n = 0;
    let load_start = loadavg();

    let work = tempfile::tempdir().unwrap();
    // Only the images BENCH_IMAGES names are built (all without it).
    let only = std::env::var("BENCH_IMAGES").ok();
    let words: Vec<String> =
        only.iter().flat_map(|o| o.split(',')).map(|w| w.trim().to_lowercase()).filter(|w| !w.is_empty()).collect();
    let chosen = |name: &str| words.is_empty() || words.iter().any(|w| name.to_lowercase().contains(w));
    let mut images = Vec::new();
    if chosen(LARGE_LAYER) {
        images.push(large_image(work.path(), env_num("BENCH_BIG_MIB", 200)));
    }
    for spec in [debian_minbase(), debian_python()] {
        if chosen(spec.name) {
            images.push(debian_image(work.path(), &out, spec));
        }
    }
    assert!(!images.is_empty(), "BENCH_IMAGES={} names none of the images", only.unwrap_or_default());
    eprintln!("lazy_start: images built ({:.0} s)", bench_started.elapsed().as_secs_f64());

    let ns = ShapedLink::create("berth-lazybench", "blb", 77);
    let weed = Seaweed::start_in(&ns);
    let endpoint = weed.endpoint();
    {
        // Push and index, unthrottled.
        let pusher = node(&endpoint);
        for img in images.iter_mut() {
            Skopeo::new().push(&img.layout, &pusher.addr, &format!("{}:v1", img.repo), &[]);
            for l in &img.layers {
                let (idx, bytes) = wait_index(&pusher, img.repo, l);
                img.uncompressed += idx["size"].as_u64().unwrap();
                img.entries += idx["entries"].as_array().unwrap().len();
                img.index_bytes += bytes;
                img.window_bytes += idx["checkpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["window_len"].as_u64().unwrap_or(0))
                    .sum::<u64>();
            }
        }
    }
    eprintln!("lazy_start: pushed and indexed ({:.0} s)", bench_started.elapsed().as_secs_f64());

    let mut cells = Vec::new();
    let mut first_starts = Vec::new();
    for &link in &links {
        ns.limit(link.mbit);
        // berthd reaches S3 through a relay adding the round trip, or directly.
        let relay = (link.rtt_ms > 0).then(|| {
            let target = endpoint.trim_start_matches("http://");
            LatencyRelay::start(target, Duration::from_millis(link.rtt_ms))
        });
        let endpoint = relay.as_ref().map_or(endpoint.clone(), LatencyRelay::url);
        if first_starts.is_empty() {
            // The first lazy start of each image finds no prefetch list and
            // records one, as a cluster's first node does; every timed start
            // finds it.
            for img in &images {
                n += 1;
                let s = start_once(img, Mode::Lazy, &endpoint, &ns, &rt, fill_rate, &format!("lazybench-rec-{n}"));
                let listed = wait_prefetch_lists(&endpoint, img);
                eprintln!(
                    "lazy_start: {} first start at {link} (records the prefetch list): first output {:.2} s; \
                     lists for {listed} of {} layers",
                    img.name,
                    s.first_output,
                    img.layers.len()
                );
                first_starts.push((s.first_output, listed));
            }
        }
        for (i, img) in images.iter().enumerate() {
            let mut cell = Cell { link, image: i, normal: vec![], lazy: vec![], nofill: vec![] };
            for r in 0..runs {
                for mode in [Mode::Normal, Mode::Lazy, Mode::LazyNoFill] {
                    n += 1;
                    let id = format!("lazybench-{}-{n}", std::process::id());
                    let s = start_once(img, mode, &endpoint, &ns, &rt, fill_rate, &id);
                    let name = match mode {
                        Mode::Normal => "normal",
                        Mode::Lazy => "lazy",
                        Mode::LazyNoFill => "lazy, fill held back",
                    };
                    let fill = s.fill.map_or(String::new(), |(c, l)| {
                        format!(", then fill {:.1} MiB/s of chunks, {:.0} Mbit/s over the link", c / MIB, l * 8.0 / 1e6)
                    });
                    eprintln!(
                        "lazy_start: {} at {link}, run {}, {name}: pull {:.2} s, first output {:.2} s, \
                         {:.1} MiB over the link, {:.1} MiB fetched lazily{fill} ({:.0} s in)",
                        img.name,
                        r + 1,
                        s.pull,
                        s.first_output,
                        s.link_bytes as f64 / MIB,
                        s.fetched as f64 / MIB,
                        bench_started.elapsed().as_secs_f64()
                    );
                    match mode {
                        Mode::Normal => cell.normal.push(s),
                        Mode::Lazy => cell.lazy.push(s),
                        Mode::LazyNoFill => cell.nofill.push(s),
                    }
                }
            }
            cells.push(cell);
        }
    }
    ns.limit(0);
    drop(weed);
    drop(ns);
    let text = report(&images, &cells, &first_starts, runs, fill_rate, (&load_start, &loadavg()));
    std::fs::write(out.join("lazy.md"), &text).unwrap();
    println!("{text}");
    println!("wrote {} ({:.0} s)", out.join("lazy.md").display(), bench_started.elapsed().as_secs_f64());
}
