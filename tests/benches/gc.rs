//! Benchmark: garbage collection over a bucket of ~10k blobs and ~1k
//! manifests on S3 (SeaweedFS), half the manifests deleted: the time of a
//! dry run, of the collection that trashes the garbage and of the one that
//! deletes it, with the S3 requests and peak memory each took (`berthd gc`
//! reports both).
//!
//! `cargo bench -p berth-tests --bench gc` (uses `target/release/berthd`;
//! build it first with `cargo build --release -p berthd`). `BENCH_GC_BLOBS`
//! (default 10000) and `BENCH_GC_MANIFESTS` (default 1000) size it. Prints a
//! Markdown table for docs/benchmarks.md.

use berth_tests::common::{self, Berthd};
use berth_tests::support_s3::{uncached_node, Seaweed};
use futures_util::StreamExt;
use std::time::Instant;

const REPOS: usize = 50;
const BLOBS_PER_MANIFEST: usize = 8;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (seconds, the summary lines) of one `berthd gc` run.
fn gc(b: &Berthd, args: &[&str]) -> (f64, String) {
    let t = Instant::now();
    let (code, text) = b.gc(args);
    assert_eq!(code, Some(0), "berthd gc {args:?}: {text}");
    let summary: Vec<&str> = text.lines().filter(|l| !l.starts_with("blob eligible")).collect();
    (t.elapsed().as_secs_f64(), summary.join("\n"))
}

fn field(summary: &str, after: &str) -> String {
    summary
        .split(after)
        .nth(1)
        .and_then(|s| s.split([';', '\n', ' ']).find(|w| !w.is_empty()))
        .unwrap_or("?")
        .to_string()
}

fn main() {
    let (blobs, manifests) = (env_num("BENCH_GC_BLOBS", 10_000), env_num("BENCH_GC_MANIFESTS", 1_000));
    let weed = Seaweed::start();
    let b = uncached_node(&weed);
    let client = reqwest::Client::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = Instant::now();
    // Blobs of 1 KiB, spread over the repositories.
    let digests: Vec<(usize, String)> = rt.block_on(async {
        futures_util::stream::iter(0..blobs)
            .map(|i| {
                let (client, url) = (client.clone(), b.url());
                async move {
                    let data = common::random_bytes(1024, i as u64 + 1);
                    let d = common::sha256(&data);
                    let repo = i % REPOS;
                    let r = client
                        .post(format!("{url}/v2/bench/r{repo}/blobs/uploads/?digest={d}"))
                        .body(data)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    (repo, d)
                }
            })
            .buffered(16)
            .collect()
            .await
    });
    // Manifests, each naming 8 blobs of its repository; every other one deleted.
    let mut deleted = 0;
    rt.block_on(async {
        for m in 0..manifests {
            let repo = m % REPOS;
            let own: Vec<&String> = digests.iter().filter(|(r, _)| *r == repo).map(|(_, d)| d).collect();
            let k = (m / REPOS) * BLOBS_PER_MANIFEST;
            let Some(picked) = own.get(k..k + BLOBS_PER_MANIFEST) else { continue };
            let layers: Vec<String> = picked[1..]
                .iter()
                .map(|d| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":1024}}"#))
                .collect();
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1024}},"layers":[{}]}}"#,
                picked[0],
                layers.join(",")
            );
            let url = format!("{}/v2/bench/r{repo}/manifests/m{m}", b.url());
            let r = client
                .put(url)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            if m % 2 == 1 {
                let d = common::sha256(body.as_bytes());
                let r = client.delete(format!("{}/v2/bench/r{repo}/manifests/{d}", b.url())).send().await.unwrap();
                assert_eq!(r.status(), 202);
                deleted += 1;
            }
        }
    });
    eprintln!("gc bench: {blobs} blobs and {manifests} manifests ({deleted} deleted) stored in {:.0?}", t.elapsed());

    println!("| run | time | S3 requests | peak memory | result |");
    println!("|---|---|---|---|---|");
    let runs: [(&str, &[&str]); 3] = [
        ("dry run", &["--dry-run", "--delay", "0s"]),
        ("first collection (trashes)", &["--delay", "0s"]),
        ("second collection (deletes)", &["--delay", "0s"]),
    ];
    for (name, args) in runs {
        let (secs, summary) = gc(&b, args);
        let line =
            summary.lines().find(|l| l.contains(" blobs (") && l.contains("moved to the trash")).unwrap_or_default();
        // "N blobs (… MiB) moved to the trash (written more than …); M trash entries (… MiB) deleted, K moved back"
        let (trashed, rest) = line.split_once(" (written").unwrap_or((line, ""));
        let rest = rest.split_once("; ").map_or("", |(_, r)| r);
        let result = format!("{trashed}; {rest}");
        let eligible = field(&summary, "stored, ");
        println!(
            "| {name} | {secs:.1} s | {} | {} MiB | {eligible} eligible; {result} |",
            field(&summary, "storage requests: "),
            field(&summary, "peak memory: ")
        );
    }
}
