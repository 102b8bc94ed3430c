//! Benchmark: S3 storage and the node cache (SeaweedFS), in one run.
//!
//! 1. A large layer pulled cold through a node's cache, against a direct S3
//!    GET of the same object, registry:2's S3 driver, berthd without a
//!    cache, and a warm pull from the cache; with the CPU each server used.
//! 2. A cluster's cold start: `BENCH_NODES` berthd nodes, each with its own
//!    empty cache, pull the same image at once.
//!
//! SeaweedFS runs in a network namespace behind a veth pair
//! ([`support_e2e::netns`]), so both run twice: over the bare veth (the
//! servers share this machine's cores, so CPU is what limits) and with S3's
//! replies shaped to `BENCH_S3_MBIT` (default 1000, a node on gigabit
//! Ethernet, where the link limits, as on a real cluster).
//!
//! `cargo bench -p berth-tests --bench s3_cache` as root (uses
//! `target/release/berthd`; build it first with `cargo build --release -p
//! berthd`). `BENCH_MIB` sets the layer size (default 512), `BENCH_RUNS` the
//! repetitions (default 3), `BENCH_NODES` (default 8) and
//! `BENCH_CLUSTER_MIB` (default 500) the cluster start. Writes
//! `$BENCH_OUT/s3.md` (default `target/bench`) for docs/benchmarks.md.

use berth_tests::common;
use berth_tests::support_e2e;
use berth_tests::support_s3;

use common::Berthd;
use std::process::Command;
use std::time::Instant;
use support_e2e::netns::ShapedLink;
use support_e2e::DockerRegistry;
use support_s3::{uncached_node, Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY};

const MIB: f64 = 1024.0 * 1024.0;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Seconds curl needed to fetch `url` (body discarded), checking the size.
fn curl_time(url: &str, extra: &[&str], size: u64) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl {url} failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    let mut it = text.split_whitespace();
    let t: f64 = it.next().unwrap().parse().unwrap();
    let n: u64 = it.next().unwrap().parse().unwrap();
    assert_eq!(n, size, "{url} returned {n} bytes");
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn node(weed: &Seaweed) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = weed.berthd_yaml(&cache, "4GiB").replace("level: info", "level: info\n  accesslog:\n    disabled: true");
    Berthd::start_config(dir, cache, &yaml, &Seaweed::env())
}

/// Pushes `data` as a blob of `repo` through `node`; returns its digest.
fn push_blob(node: &Berthd, repo: &str, data: &[u8]) -> String {
    let digest = common::sha256(data);
    let file = node.dir.path().join("upload");
    std::fs::write(&file, data).unwrap();
    let push = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H", "Content-Type: application/octet-stream", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", node.url()))
        .output()
        .unwrap();
    assert!(push.status.success(), "push failed: {}", String::from_utf8_lossy(&push.stderr));
    std::fs::remove_file(&file).unwrap();
    digest
}

fn link_name(mbit: u64) -> String {
    if mbit == 0 {
        "bare veth".into()
    } else {
        format!("{mbit} Mbit/s")
    }
}

/// Part 1: one layer, five ways, over the link as it is now.
fn layer_table(weed: &Seaweed, registry2: &DockerRegistry, layer: &Layer, runs: usize, mbit: u64) -> String {
    let uncached = uncached_node(weed);
    let hex = layer.digest.trim_start_matches("sha256:");
    let s3_url = format!("{}/{BUCKET}/docker/registry/v2/blobs/sha256/{}/{hex}/data", weed.endpoint(), &hex[..2]);
    let creds = format!("{ACCESS_KEY}:{SECRET_KEY}");
    let sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", creds.as_str()];
    let blob_path = format!("/v2/bench/layer/blobs/{}", layer.digest);
    // Each row: wall seconds, CPU seconds of the server in between (none
    // for the direct GET) and of SeaweedFS.
    let mut rows: [Vec<(f64, f64, f64)>; 5] = Default::default();
    let timed = |url: &str, extra: &[&str], server: Option<u32>| {
        let cpu = |pid: Option<u32>| pid.map(common::cpu_seconds).unwrap_or(0.0);
        let (s0, w0) = (cpu(server), common::cpu_seconds(weed.pid()));
        let t = curl_time(url, extra, layer.size);
        (t, cpu(server) - s0, common::cpu_seconds(weed.pid()) - w0)
    };
    for _ in 0..runs {
        rows[0].push(timed(&s3_url, &sigv4, None));
        rows[1].push(timed(&format!("{}{blob_path}", registry2.url()), &[], Some(registry2.pid())));
        rows[2].push(timed(&format!("{}{blob_path}", uncached.url()), &[], Some(uncached.child.id())));
        let b = node(weed); // empty cache
        rows[3].push(timed(&format!("{}{blob_path}", b.url()), &[], Some(b.child.id())));
        rows[4].push(timed(&format!("{}{blob_path}", b.url()), &[], Some(b.child.id())));
    }
    let names = [
        "direct S3 GET (curl, SigV4)",
        "registry:2 2.8 S3 driver, proxied",
        "berthd without cache, proxied",
        "berthd cold pull (fills node cache)",
        "berthd warm pull (from node cache)",
    ];
    let d = median(rows[0].iter().map(|r| r.0).collect());
    let mib = layer.size as f64 / MIB;
    let mut s = format!(
        "| {mib:.0} MiB layer, S3 over {}, median of {runs} | seconds | MiB/s | vs direct S3 GET | server CPU s | \
         SeaweedFS CPU s |\n|---|---|---|---|---|---|\n",
        link_name(mbit)
    );
    for (i, (name, row)) in names.iter().zip(&rows).enumerate() {
        let t = median(row.iter().map(|r| r.0).collect());
        let server = median(row.iter().map(|r| r.1).collect());
        let seaweed = median(row.iter().map(|r| r.2).collect());
        let server = if i == 0 { "—".into() } else { format!("{server:.2}") };
        s += &format!("| {name} | {t:.2} | {:.0} | {:.2}× | {server} | {seaweed:.2} |\n", mib / t, d / t);
    }
    s
}

struct Layer {
    digest: String,
    size: u64,
}

/// The cluster's image: layers of `layer_mib` MiB adding up to `mib`, a
/// config and a manifest, pushed through `pusher`.
fn push_image(pusher: &Berthd, repo: &str, mib: usize, layer_mib: usize) -> Vec<Layer> {
    let mut layers = vec![];
    let mut left = mib;
    while left > 0 {
        let n = left.min(layer_mib);
        let data = common::random_bytes(n << 20, 0x5151 + layers.len() as u64);
        layers.push(Layer { digest: push_blob(pusher, repo, &data), size: data.len() as u64 });
        left -= n;
    }
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(pusher, repo, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size
        })).collect::<Vec<_>>(),
    });
    let put = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json", "--data-binary"])
        .arg(manifest.to_string())
        .arg(format!("{}/v2/{repo}/manifests/v1", pusher.url()))
        .output()
        .unwrap();
    assert!(put.status.success(), "manifest push failed: {}", String::from_utf8_lossy(&put.stderr));
    layers
}

/// One node's pull as containerd makes it: the manifest, then the layers,
/// three at a time (containerd's default). Returns seconds since `t0`.
fn pull_image(node: &Berthd, repo: &str, layers: &[Layer], t0: Instant) -> f64 {
    let manifest = format!("{}/v2/{repo}/manifests/v1", node.url());
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(&manifest)
        .status()
        .unwrap();
    assert!(out.success(), "manifest GET from a node failed");
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(l) = layers.get(i) else { break };
                curl_time(&format!("{}/v2/{repo}/blobs/{}", node.url(), l.digest), &[], l.size);
            });
        }
    });
    t0.elapsed().as_secs_f64()
}

/// Part 2: `nodes` fresh nodes pull the image at once.
fn cluster_row(weed: &Seaweed, link: &ShapedLink, layers: &[Layer], nodes: usize, mbit: u64) -> String {
    let image: u64 = layers.iter().map(|l| l.size).sum();
    let fleet: Vec<Berthd> = (0..nodes).map(|_| node(weed)).collect();
    let (sent0, rx0) = (weed.bytes_sent(), link.rx_bytes());
    let t0 = Instant::now();
    let mut done: Vec<f64> = std::thread::scope(|s| {
        let pulls: Vec<_> = fleet.iter().map(|n| s.spawn(move || pull_image(n, "bench/cluster", layers, t0))).collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let (sent, rx) = (weed.bytes_sent() - sent0, link.rx_bytes() - rx0);
    done.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let from_s3 = sent as f64 / MIB;
    // What a node-to-node fetch would change: S3 sends the image once.
    let once = image as f64 / MIB;
    let paper =
        if mbit == 0 { "—".to_string() } else { format!("{:.1} s", image as f64 * 8.0 / (mbit as f64 * 1e6)) };
    format!(
        "| {} | {nodes} | {:.1} s | {:.1} s | {:.1} s | {from_s3:.0} MiB ({:.1}× the image) | {:.0} MiB | {:.0} MiB \
         (1×), {paper} |\n",
        link_name(mbit),
        done[0],
        done[done.len() / 2],
        done[done.len() - 1],
        from_s3 / once,
        rx as f64 / MIB,
        once,
    )
}

fn main() {
    assert!(support_e2e::containerd::is_root(), "the S3 benchmark needs root (a network namespace, tc)");
    if std::env::var_os("BERTHD_BIN").is_none() {
        let release = common::workspace_root().join("target/release/berthd");
        assert!(release.exists(), "build the release binary first: cargo build --release -p berthd");
        std::env::set_var("BERTHD_BIN", release);
    }
    let out = std::env::var("BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| common::workspace_root().join("target/bench"));
    std::fs::create_dir_all(&out).unwrap();
    let mib = env_num("BENCH_MIB", 512);
    let runs = env_num("BENCH_RUNS", 3);
    let shaped = env_num("BENCH_S3_MBIT", 1000) as u64;
    let nodes = env_num("BENCH_NODES", 8);
    let cluster_mib = env_num("BENCH_CLUSTER_MIB", 500);
    let link = ShapedLink::create("berth-s3bench", "bsb", 78);
    let weed = Seaweed::start_in(&link);

    // One random layer, pushed through a node.
    let pusher = node(&weed);
    let data = common::random_bytes(mib << 20, 0x9e3779b97f4a7c15);
    let layer = Layer { digest: push_blob(&pusher, "bench/layer", &data), size: data.len() as u64 };
    drop(data);
    let cluster_layers = push_image(&pusher, "bench/cluster", cluster_mib, 100);
    drop(pusher);

    let storage = format!(
        "storage:\n  s3:\n    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    region: us-east-1\n    regionendpoint: {}\n    bucket: {BUCKET}\n    secure: false\n    v4auth: true\n    rootdirectory: /\n  redirect:\n    disable: true\n",
        weed.endpoint()
    );
    let work = tempfile::tempdir().unwrap();
    let registry2 = DockerRegistry::start_with_storage(work.path(), &storage);

    let mut md = String::new();
    let mut cluster = String::new();
    for mbit in [0, shaped] {
        link.limit(mbit);
        md += &layer_table(&weed, &registry2, &layer, runs, mbit);
        md += "\n";
        cluster += &cluster_row(&weed, &link, &cluster_layers, nodes, mbit);
    }
    link.limit(0);
    md += &format!(
        "### A cluster's cold start\n\n{nodes} berthd nodes, each with its own empty node cache, one SeaweedFS: \
         every node pulls the same {cluster_mib} MiB image ({} layers) at once, as containerd does (manifest, then \
         three layers at a time). One run per link.\n\n\
         | S3 link | nodes | first node done | median node | last node done | sent by S3 | over the link | \
         on paper, with node-to-node fetch: sent by S3, S3 link busy |\n|---|---|---|---|---|---|---|---|\n{cluster}",
        cluster_layers.len()
    );
    std::fs::write(out.join("s3.md"), &md).unwrap();
    println!("{md}");
}
