//! Benchmark: berthd against Debian's docker-registry (CNCF distribution
//! 2.8.2, the `registry:2` the seeds run), side by side in one run on the
//! same machine and data. Every figure is the median of `BENCH_RUNS` (≥ 3)
//! repetitions; the load generators share the machine with the servers, so
//! the ratios are the figures to compare.
//!
//! Run with `bash tests/bench/run.sh` (installs wrk, builds the release
//! binary, runs this and the S3 cache benchmark, rewrites
//! docs/benchmarks.md and docs/benchmarks.svg).

use berth_tests::common;
use berth_tests::support_e2e;

use common::{require_tool, Berthd};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support_e2e::{build_busybox_image_with, DockerRegistry, Skopeo};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn random_file(path: &Path, bytes: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

fn proc_status_kib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A registry under test: its base URL and process id.
struct Target {
    name: &'static str,
    url: String,
    pid: u32,
}

fn curl(args: &[&str]) -> (f64, u64) {
    let out = Command::new("curl")
        .args(["-sf", "-w", "%{time_total} %{size_download} %{size_upload}"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = text.split_whitespace().collect();
    (v[0].parse().unwrap(), v[1].parse::<u64>().unwrap().max(v[2].parse().unwrap_or(0)))
}

/// Pushes `file` monolithically (POST, then one PUT with the whole body,
/// streamed from disk — registry:2 has no single-POST upload); seconds.
fn push_monolithic(t: &Target, repo: &str, file: &Path, digest: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let len = std::fs::metadata(file).unwrap().len();
        let started = Instant::now();
        let r = client.post(format!("{}/v2/{repo}/blobs/uploads/", t.url)).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let url = if location.starts_with('/') { format!("{}{location}", t.url) } else { location };
        let sep = if url.contains('?') { '&' } else { '?' };
        let f = tokio::fs::File::open(file).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let r = client
            .put(format!("{url}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        started.elapsed().as_secs_f64()
    })
}

/// Pushes `file` as PATCH chunks of `chunk` bytes; seconds.
fn push_chunked(t: &Target, repo: &str, file: &Path, digest: &str, chunk: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let r = client.post(format!("{}/v2/{repo}/blobs/uploads/", t.url)).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let mut location = r.headers()["location"].to_str().unwrap().to_string();
        let data = tokio::fs::read(file).await.unwrap();
        for (i, part) in data.chunks(chunk as usize).enumerate() {
            let start = i as u64 * chunk;
            let url = if location.starts_with('/') { format!("{}{location}", t.url) } else { location.clone() };
            let r = client
                .patch(url)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{}", start + part.len() as u64 - 1))
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "PATCH {:?}", r.text().await);
            location = r.headers()["location"].to_str().unwrap().to_string();
        }
        let url = if location.starts_with('/') { format!("{}{location}", t.url) } else { location.clone() };
        let sep = if url.contains('?') { '&' } else { '?' };
        let r = client.put(format!("{url}{sep}digest={digest}")).send().await.unwrap();
        assert_eq!(r.status(), 201);
        started.elapsed().as_secs_f64()
    })
}

/// Pulls a blob `streams` times at once; aggregate MiB/s.
fn pull_parallel(t: &Target, repo: &str, digest: &str, streams: usize, size: u64) -> f64 {
    pull_parallel_url(&format!("{}/v2/{repo}/blobs/{digest}", t.url), streams, size)
}

fn pull_parallel_url(url: &str, streams: usize, size: u64) -> f64 {
    let url = url.to_string();
    let started = Instant::now();
    let children: Vec<_> = (0..streams)
        .map(|_| Command::new("curl").args(["-sf", "-o", "/dev/null", &url]).stdout(Stdio::null()).spawn().unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    (size * streams as u64) as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64()
}

/// wrk with 64 connections (GET): (requests/s, p50 ms, p99 ms).
fn wrk(url: &str, secs: u64) -> (f64, f64, f64) {
    let accept = format!("Accept: {MANIFEST_ACCEPT}");
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-H", &accept]);
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors for {url}:\n{text}");
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).map(|v| v.trim().parse().unwrap()).unwrap();
    let pct = |p: &str| -> f64 {
        let l = text.lines().find(|l| l.trim_start().starts_with(p)).unwrap();
        let v = l.split_whitespace().nth(1).unwrap();
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().unwrap() / 1000.0
        } else if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().unwrap()
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse::<f64>().unwrap() * 1000.0
        } else {
            v.parse().unwrap()
        }
    };
    (rps, pct("50%"), pct("99%"))
}

/// A closed-loop load of `conns` connections sending `method` to `url` for
/// `secs`: (requests/s, p50 ms, p99 ms). Used for HEAD, which wrk 4.1
/// cannot measure (it waits for a body after a HEAD's Content-Length).
fn load(url: &str, method: reqwest::Method, conns: usize, secs: u64) -> (f64, f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(conns).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (client, url, method) = (client.clone(), url.to_string(), method.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let r = client
                            .request(method.clone(), &url)
                            .header("accept", MANIFEST_ACCEPT)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        let _ = r.bytes().await.unwrap();
                        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        (all.len() as f64 / secs as f64, pct(0.50), pct(0.99))
    })
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// nginx serving `dir` with sendfile, the ceiling for blob pulls.
struct Nginx {
    child: std::process::Child,
    url: String,
}

impl Nginx {
    fn start(dir: &Path, work: &Path) -> Nginx {
        let nginx = require_tool("nginx");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let prefix = work.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{ listen 127.0.0.1:{port}; root {d}; }}\n}}\n",
                p = prefix.display(),
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(nginx).arg("-p").arg(&prefix).arg("-c").arg(&conf).spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if Command::new("curl")
                .args(["-s", "-o", "/dev/null", &format!("{url}/")])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, url }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds from spawning to the first 200 on `/v2/`.
fn startup_time(start: &dyn Fn() -> (Box<dyn std::any::Any>, String)) -> f64 {
    let started = Instant::now();
    let (guard, url) = start();
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &format!("{url}/v2/")])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = started.elapsed().as_secs_f64();
    drop(guard);
    t
}

struct Row {
    what: String,
    unit: &'static str,
    berthd: f64,
    registry2: f64,
    /// true when more is better.
    higher_better: bool,
}

impl Row {
    fn ratio(&self) -> f64 {
        if self.higher_better {
            self.berthd / self.registry2
        } else {
            self.registry2 / self.berthd
        }
    }
}

fn main() {
    if std::env::var_os("BERTHD_BIN").is_none() {
        let release = common::workspace_root().join("target/release/berthd");
        assert!(release.exists(), "build the release binary first: cargo build --release -p berthd");
        std::env::set_var("BERTHD_BIN", release);
    }
    for tool in ["wrk", "curl", "skopeo", "umoci", "docker-registry", "sha256sum"] {
        require_tool(tool);
    }
    let runs = env_num("BENCH_RUNS", 3).max(3);
    let blob_mib = env_num("BENCH_BLOB_MIB", 1024) as u64;
    let wrk_secs = env_num("BENCH_WRK_SECS", 3) as u64;
    let work = tempfile::tempdir().unwrap();
    let blob = work.path().join("blob");
    let size = blob_mib * 1024 * 1024;
    random_file(&blob, size, 42);
    let digest = sha256_file(&blob);
    let img_extra: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let p = work.path().join(format!("layer{i}"));
            random_file(&p, 16 << 20, 100 + i);
            (format!("opt/data{i}"), std::fs::read(&p).unwrap())
        })
        .collect();
    let extra: Vec<(&str, &[u8])> = img_extra.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let image = build_busybox_image_with(work.path(), "img", &extra);
    // Every timed push gets an image of its own, so no layer is already there.
    let push_images: Vec<_> = (0..runs * 2)
        .map(|i| {
            let files: Vec<(String, Vec<u8>)> = (0..4)
                .map(|j| {
                    let p = work.path().join(format!("l{i}-{j}"));
                    random_file(&p, 16 << 20, 1000 + (i * 10 + j) as u64);
                    (format!("opt/data{j}"), std::fs::read(&p).unwrap())
                })
                .collect();
            let extra: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
            build_busybox_image_with(work.path(), &format!("push{i}"), &extra)
        })
        .collect();
    let sk = Skopeo::new();

    // Start-up time to first 200, for each.
    let berthd_start = || -> (Box<dyn std::any::Any>, String) {
        let b = Berthd::start("");
        let url = b.url();
        (Box::new(b), url)
    };
    let startup_berthd = median((0..runs).map(|_| startup_time(&berthd_start)).collect());
    let reg_root = work.path().join("r2-start");
    let r2_start = || -> (Box<dyn std::any::Any>, String) {
        let r = DockerRegistry::start(&reg_root);
        let url = r.url();
        (Box::new(r), url)
    };
    let startup_r2 = median((0..runs).map(|_| startup_time(&r2_start)).collect());

    let mut results: Vec<Vec<f64>> = Vec::new();
    let berthd = Berthd::start("  delete:\n    enabled: true\n");
    let r2_root = work.path().join("r2");
    let r2 = DockerRegistry::start(&r2_root);
    let targets = [
        Target { name: "berthd", url: berthd.url(), pid: berthd.child.id() },
        Target { name: "registry:2", url: r2.url(), pid: r2.pid() },
    ];
    std::thread::sleep(Duration::from_secs(1));
    for (ti, t) in targets.iter().enumerate() {
        let idle_rss = proc_status_kib(t.pid, "VmRSS:") / 1024.0;
        // What the process itself allocated, without the pages of its
        // binary and libraries that it shares with the page cache (which
        // the kernel can drop and read again at any time).
        let idle_anon = proc_status_kib(t.pid, "RssAnon:") / 1024.0;
        let mono: Vec<f64> = (0..runs).map(|_| push_monolithic(t, "bench/blob", &blob, &digest)).collect();
        let chunked: Vec<f64> = (0..runs).map(|_| push_chunked(t, "bench/chunked", &blob, &digest, 16 << 20)).collect();
        let pull1: Vec<f64> = (0..runs)
            .map(|_| {
                let (secs, n) = curl(&["-o", "/dev/null", &format!("{}/v2/bench/blob/blobs/{digest}", t.url)]);
                assert_eq!(n, size);
                blob_mib as f64 / secs
            })
            .collect();
        let pull16: Vec<f64> = (0..runs).map(|_| pull_parallel(t, "bench/blob", &digest, 16, size)).collect();
        let addr = t.url.trim_start_matches("http://").to_string();
        sk.push(&image.layout, &addr, "bench/app:v1", &[]);
        let push_img: Vec<f64> = (0..runs)
            .map(|i| {
                let started = Instant::now();
                sk.push(&push_images[ti * runs + i].layout, &addr, &format!("bench/app{i}:v1"), &[]);
                started.elapsed().as_secs_f64()
            })
            .collect();
        let pull_img: Vec<f64> = (0..runs)
            .map(|i| {
                let started = Instant::now();
                sk.pull(
                    &addr,
                    "bench/app:v1",
                    &work.path().join(format!("pull-{}-{i}", t.name.replace(':', ""))),
                    "v1",
                    &[],
                );
                started.elapsed().as_secs_f64()
            })
            .collect();
        let tag_url = format!("{}/v2/bench/app/manifests/v1", t.url);
        let digest_url = format!("{}/v2/bench/app/manifests/{}", t.url, image.manifest_digest);
        let mut manifest = Vec::new();
        for (url, head) in [(&tag_url, false), (&digest_url, false), (&tag_url, true), (&digest_url, true)] {
            let r: Vec<(f64, f64, f64)> = (0..runs)
                .map(|_| if head { load(url, reqwest::Method::HEAD, 64, wrk_secs) } else { wrk(url, wrk_secs) })
                .collect();
            manifest.push(median(r.iter().map(|x| x.0).collect()));
            manifest.push(median(r.iter().map(|x| x.1).collect()));
            manifest.push(median(r.iter().map(|x| x.2).collect()));
        }
        let peak_rss = proc_status_kib(t.pid, "VmHWM:") / 1024.0;
        let mut row = vec![
            blob_mib as f64 / median(mono),
            blob_mib as f64 / median(chunked),
            median(pull1),
            median(pull16),
            median(push_img),
            median(pull_img),
        ];
        row.extend(manifest);
        row.push(idle_rss);
        row.push(idle_anon);
        row.push(peak_rss);
        results.push(row);
    }
    // The ceiling: nginx serving the same bytes as static files (sendfile).
    std::fs::write(work.path().join("manifest.json"), image.layout.blob(&image.manifest_digest)).unwrap();
    let ng = Nginx::start(work.path(), work.path());
    let ng_target = Target { name: "nginx", url: ng.url.clone(), pid: ng.child.id() };
    let nginx1 = median(
        (0..runs)
            .map(|_| {
                let (secs, n) = curl(&["-o", "/dev/null", &format!("{}/blob", ng_target.url)]);
                assert_eq!(n, size);
                blob_mib as f64 / secs
            })
            .collect(),
    );
    let nginx16 = median((0..runs).map(|_| pull_parallel_url(&format!("{}/blob", ng_target.url), 16, size)).collect());
    let nginx_manifest =
        median((0..runs).map(|_| wrk(&format!("{}/manifest.json", ng_target.url), wrk_secs).0).collect());
    drop(ng);
    let (b, r) = (&results[0], &results[1]);
    let mut rows = vec![
        Row {
            what: format!("push {blob_mib} MiB blob, monolithic"),
            unit: "MiB/s",
            berthd: b[0],
            registry2: r[0],
            higher_better: true,
        },
        Row {
            what: format!("push {blob_mib} MiB blob, 16 MiB chunks"),
            unit: "MiB/s",
            berthd: b[1],
            registry2: r[1],
            higher_better: true,
        },
        Row {
            what: format!("pull {blob_mib} MiB blob, 1 stream"),
            unit: "MiB/s",
            berthd: b[2],
            registry2: r[2],
            higher_better: true,
        },
        Row {
            what: format!("pull {blob_mib} MiB blob, 16 streams"),
            unit: "MiB/s",
            berthd: b[3],
            registry2: r[3],
            higher_better: true,
        },
        Row {
            what: "skopeo push, new 5-layer image (~65 MiB)".into(),
            unit: "s",
            berthd: b[4],
            registry2: r[4],
            higher_better: false,
        },
        Row {
            what: "skopeo pull, 5-layer image (~65 MiB)".into(),
            unit: "s",
            berthd: b[5],
            registry2: r[5],
            higher_better: false,
        },
    ];
    for (i, name) in
        ["GET manifest by tag", "GET manifest by digest", "HEAD manifest by tag", "HEAD manifest by digest"]
            .iter()
            .enumerate()
    {
        let k = 6 + i * 3;
        rows.push(Row {
            what: format!("{name}, 64 conns"),
            unit: "req/s",
            berthd: b[k],
            registry2: r[k],
            higher_better: true,
        });
        rows.push(Row {
            what: format!("{name}, p50"),
            unit: "ms",
            berthd: b[k + 1],
            registry2: r[k + 1],
            higher_better: false,
        });
        rows.push(Row {
            what: format!("{name}, p99"),
            unit: "ms",
            berthd: b[k + 2],
            registry2: r[k + 2],
            higher_better: false,
        });
    }
    rows.push(Row {
        what: "resident memory, idle after start".into(),
        unit: "MiB",
        berthd: b[18],
        registry2: r[18],
        higher_better: false,
    });
    rows.push(Row {
        what: "of which anonymous (not the binary's pages), idle".into(),
        unit: "MiB",
        berthd: b[19],
        registry2: r[19],
        higher_better: false,
    });
    rows.push(Row {
        what: "resident memory, peak under the loads above".into(),
        unit: "MiB",
        berthd: b[20],
        registry2: r[20],
        higher_better: false,
    });
    rows.push(Row {
        what: "start-up to first 200 on /v2/".into(),
        unit: "ms",
        berthd: startup_berthd * 1000.0,
        registry2: startup_r2 * 1000.0,
        higher_better: false,
    });

    let mut table =
        String::from("| measurement | unit | berthd | registry:2 | berthd advantage |\n|---|---|---|---|---|\n");
    for row in &rows {
        table.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2}× |\n",
            row.what,
            row.unit,
            row.berthd,
            row.registry2,
            row.ratio()
        ));
    }
    table.push_str(&format!(
        "\nnginx with sendfile serving the same file: {nginx1:.0} MiB/s (1 stream), {nginx16:.0} MiB/s (16 streams); berthd reaches {:.0}% and {:.0}% of it.\n",
        b[2] / nginx1 * 100.0,
        b[3] / nginx16 * 100.0
    ));
    table.push_str(&format!(
        "nginx serving the same manifest as a static file: {nginx_manifest:.0} req/s (64 connections); berthd's GET by tag reaches {:.0}% and by digest {:.0}% of it.\n",
        b[6] / nginx_manifest * 100.0,
        b[9] / nginx_manifest * 100.0
    ));
    println!("{table}");
    let out_dir =
        std::env::var("BENCH_OUT").map(PathBuf::from).unwrap_or_else(|_| common::workspace_root().join("target/bench"));
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("registry.md"), &table).unwrap();
    std::fs::write(out_dir.join("registry.svg"), svg(&rows)).unwrap();
    println!("wrote {}/registry.md and registry.svg", out_dir.display());
}

/// A horizontal bar chart of the ratios (1.0 = parity with registry:2).
fn svg(rows: &[Row]) -> String {
    let (w, bar_h, gap, left) = (900.0, 18.0, 8.0, 360.0);
    let h = 60.0 + rows.len() as f64 * (bar_h + gap);
    // Log scale from 0.1× to the largest ratio (at least 10×).
    let max = rows.iter().map(Row::ratio).fold(10.0f64, f64::max).min(1000.0);
    let span = max.log10() + 1.0;
    let x_of = |r: f64| left + (r.clamp(0.1, max).log10() + 1.0) / span * (w - left - 80.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">berthd vs registry:2 — advantage ratio (log scale, 1× = parity, higher is better)</text>\n"
    );
    let parity = x_of(1.0);
    s.push_str(&format!(
        "<line x1=\"{parity}\" y1=\"35\" x2=\"{parity}\" y2=\"{}\" stroke=\"#444\" stroke-dasharray=\"4\"/>\n",
        h - 10.0
    ));
    for (i, row) in rows.iter().enumerate() {
        let y = 45.0 + i as f64 * (bar_h + gap);
        let r = row.ratio();
        let (x0, x1) = if r >= 1.0 { (parity, x_of(r)) } else { (x_of(r), parity) };
        let color = if r >= 1.0 { "#2e7d32" } else { "#c62828" };
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 8.0, y + 13.0, row.what));
        s.push_str(&format!(
            "<rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{color}\"/>\n",
            (x1 - x0).max(1.0)
        ));
        s.push_str(&format!("<text x=\"{:.1}\" y=\"{}\">{r:.2}×</text>\n", x1.max(x0) + 4.0, y + 13.0));
    }
    s.push_str("</svg>\n");
    s
}
