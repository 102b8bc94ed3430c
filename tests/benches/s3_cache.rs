//! Benchmark: cold pull of a large layer through a node's cache, against a
//! direct S3 GET and against registry:2's S3 driver, and a warm pull from
//! the cache. One run, same machine, same bucket (SeaweedFS).
//!
//! `cargo bench -p berth-tests --bench s3_cache` (uses `target/release/berthd`;
//! build it first with `cargo build --release -p berthd`). `BENCH_MIB` sets
//! the layer size (default 512), `BENCH_RUNS` the repetitions (default 3).
//! Prints a Markdown table for docs/benchmarks.md.

use berth_tests::common;
use berth_tests::support_e2e;
use berth_tests::support_s3;

use common::Berthd;
use std::process::Command;
use support_e2e::DockerRegistry;
use support_s3::{uncached_node, Seaweed, ACCESS_KEY, BUCKET, SECRET_KEY};

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

fn main() {
    if std::env::var_os("BERTHD_BIN").is_none() {
        let release = common::workspace_root().join("target/release/berthd");
        assert!(release.exists(), "build the release binary first: cargo build --release -p berthd");
        std::env::set_var("BERTHD_BIN", release);
    }
    let mib = env_num("BENCH_MIB", 512);
    let runs = env_num("BENCH_RUNS", 3);
    let size = (mib * 1024 * 1024) as u64;
    let weed = Seaweed::start();

    // One random layer, pushed through a node.
    let data = common::random_bytes(size as usize, 0x9e3779b97f4a7c15);
    let digest = common::sha256(&data);
    let pusher = node(&weed);
    let file = pusher.dir.path().join("layer");
    std::fs::write(&file, &data).unwrap();
    drop(data);
    let push = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
        ])
        .arg(format!("{}/v2/bench/layer/blobs/uploads/?digest={digest}", pusher.url()))
        .output()
        .unwrap();
    assert!(push.status.success(), "push failed: {}", String::from_utf8_lossy(&push.stderr));
    std::fs::remove_file(&file).unwrap();
    let hex = digest.trim_start_matches("sha256:");
    let s3_url = format!("{}/{BUCKET}/docker/registry/v2/blobs/sha256/{}/{hex}/data", weed.endpoint(), &hex[..2]);
    let creds = format!("{ACCESS_KEY}:{SECRET_KEY}");
    let sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", creds.as_str()];

    let blob_path = format!("/v2/bench/layer/blobs/{digest}");
    let (mut direct, mut cold, mut warm, mut r2, mut proxied) = (vec![], vec![], vec![], vec![], vec![]);
    let uncached = uncached_node(&weed);
    let storage = format!(
        "storage:\n  s3:\n    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    region: us-east-1\n    regionendpoint: {}\n    bucket: {BUCKET}\n    secure: false\n    v4auth: true\n    rootdirectory: /\n  redirect:\n    disable: true\n",
        weed.endpoint()
    );
    let work = tempfile::tempdir().unwrap();
    let registry2 = DockerRegistry::start_with_storage(work.path(), &storage);
    for _ in 0..runs {
        direct.push(curl_time(&s3_url, &sigv4, size));
        r2.push(curl_time(&format!("{}{blob_path}", registry2.url()), &[], size));
        proxied.push(curl_time(&format!("{}{blob_path}", uncached.url()), &[], size));
        let b = node(&weed); // empty cache
        cold.push(curl_time(&format!("{}{blob_path}", b.url()), &[], size));
        warm.push(curl_time(&format!("{}{blob_path}", b.url()), &[], size));
    }
    let mibs = |t: f64| mib as f64 / t;
    let (d, c, w, r, p) = (median(direct), median(cold), median(warm), median(r2), median(proxied));
    println!("| {mib} MiB layer, median of {runs} | seconds | MiB/s | vs direct S3 GET |");
    println!("|---|---|---|---|");
    println!("| direct S3 GET (curl, SigV4) | {d:.2} | {:.0} | 1.00× |", mibs(d));
    println!("| registry:2 2.8 S3 driver, proxied | {r:.2} | {:.0} | {:.2}× |", mibs(r), d / r);
    println!("| berthd without cache, proxied | {p:.2} | {:.0} | {:.2}× |", mibs(p), d / p);
    println!("| berthd cold pull (fills node cache) | {c:.2} | {:.0} | {:.2}× |", mibs(c), d / c);
    println!("| berthd warm pull (from node cache) | {w:.2} | {:.0} | {:.2}× |", mibs(w), d / w);
}
