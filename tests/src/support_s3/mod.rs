//! A throwaway SeaweedFS S3 server (`weed mini`) per test, on free loopback
//! ports with its own data directory. Install it with
//! `bash tests/scripts/install-seaweedfs.sh`; notes in
//! `tests/scripts/seaweedfs.md`.

use crate::common::require_tool;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const ACCESS_KEY: &str = "berthtestkey";
pub const SECRET_KEY: &str = "berthtestsecret";
pub const BUCKET: &str = "berth";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port p such that p and p+10000 are free (weed's admin worker always
/// dials admin port + 10000).
fn free_admin_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free admin port pair found");
}

pub struct Seaweed {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    ports: Vec<(String, u16)>,
    pub s3_port: u16,
    pub metrics_port: u16,
    /// HTTPS S3 port, with the certificate and key it serves.
    https_port: Option<u16>,
    tls_files: Option<(PathBuf, PathBuf)>,
    /// The network namespace it runs in, if not the host's, and the
    /// address it listens on.
    netns: Option<String>,
    host: String,
}

impl Seaweed {
    pub fn start() -> Seaweed {
        Self::start_with(None, None)
    }

    /// Also serves S3 over HTTPS with `cert`/`key` (PEM).
    pub fn start_tls(cert: PathBuf, key: PathBuf) -> Seaweed {
        Self::start_with(Some((cert, key)), None)
    }

    /// Runs in `link`'s namespace, so what it sends crosses the shaped link
    /// (benchmarks). Its ports are picked free on the host too: weed names
    /// unix sockets in the shared /tmp after them.
    pub fn start_in(link: &crate::support_e2e::netns::ShapedLink) -> Seaweed {
        Self::start_with(None, Some((link.ns.clone(), link.ns_ip.clone())))
    }

    fn start_with(tls_files: Option<(PathBuf, PathBuf)>, netns: Option<(String, String)>) -> Seaweed {
        require_tool("weed");
        let dir = tempfile::Builder::new().prefix("berth-weed").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        std::fs::write(
            dir.path().join("identities.json"),
            format!(
                r#"{{"identities":[{{"name":"berth","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let admin = free_admin_port();
        let mut ports: Vec<(String, u16)> = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "metricsPort",
        ]
        .iter()
        .map(|k| (k.to_string(), free_port()))
        .collect();
        ports.push(("admin.port".into(), admin));
        ports.push(("admin.port.grpc".into(), admin + 10000));
        let get = |k: &str| ports.iter().find(|(n, _)| n == k).unwrap().1;
        let (s3_port, metrics_port) = (get("s3.port"), get("metricsPort"));
        let https_port = tls_files.as_ref().map(|_| free_port());
        let (netns, host) = match netns {
            Some((ns, ip)) => (Some(ns), ip),
            None => (None, "127.0.0.1".to_string()),
        };
        let mut w = Seaweed { child: None, dir, ports, s3_port, metrics_port, https_port, tls_files, netns, host };
        w.spawn();
        w
    }

    /// Starts weed; on a port clash (ports are picked free but another
    /// test may take one first) it retries with fresh ports.
    fn spawn(&mut self) {
        for attempt in 0..3 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(log) if attempt < 2 => {
                    eprintln!("SeaweedFS did not start (attempt {}), retrying with new ports: {log}", attempt + 1);
                    self.remove_sockets();
                    for (name, p) in self.ports.iter_mut() {
                        if name != "admin.port" && name != "admin.port.grpc" {
                            *p = free_port();
                        }
                    }
                    let admin = free_admin_port();
                    for (name, p) in self.ports.iter_mut() {
                        match name.as_str() {
                            "admin.port" => *p = admin,
                            "admin.port.grpc" => *p = admin + 10000,
                            _ => {}
                        }
                    }
                    let get = |k: &str| self.ports.iter().find(|(n, _)| n == k).unwrap().1;
                    self.s3_port = get("s3.port");
                    self.metrics_port = get("metricsPort");
                    if self.https_port.is_some() {
                        self.https_port = Some(free_port());
                    }
                }
                Err(log) => panic!("SeaweedFS did not become ready: {log}"),
            }
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "weed"]); // exec: the child is weed
                c
            }
            None => Command::new("weed"),
        };
        cmd.arg(format!("-logdir={}", d.join("log").display()))
            .arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .arg(format!("-ip={}", self.host))
            .arg(format!("-ip.bind={}", self.host));
        for (k, p) in &self.ports {
            cmd.arg(format!("-{k}={p}"));
        }
        cmd.args([
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            "-s3.autoCreateBucket=false",
        ])
        .arg(format!("-s3.config={}", d.join("identities.json").display()));
        if let (Some(port), Some((cert, key))) = (self.https_port, &self.tls_files) {
            cmd.arg(format!("-s3.port.https={port}"))
                .arg(format!("-s3.cert.file={}", cert.display()))
                .arg(format!("-s3.key.file={}", key.display()));
        }
        cmd.arg(format!("-bucket={BUCKET}")).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weed mini");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("ready to use") {
                        let _ = tx.send(());
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                break;
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "weed {} (logs in {})",
                    if exited { "exited" } else { "was not ready in 60s" },
                    d.join("log").display()
                ));
            }
        }
        self.child = Some(child);
        // Signed requests can still fail for a moment after "ready".
        std::thread::sleep(Duration::from_millis(700));
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.s3_port)
    }

    /// Stops the server (SIGTERM, as an outage would look to clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.remove_sockets();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn remove_sockets(&self) {
        for (_, p) in &self.ports {
            for kind in ["master", "volume", "filer", "s3"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-{p}.sock"));
            }
        }
    }

    /// Bytes SeaweedFS's S3 gateway sent for GETs from the test bucket.
    pub fn bytes_sent(&self) -> u64 {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{}:{}/metrics", self.host, self.metrics_port)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| {
                l.starts_with("SeaweedFS_s3_bucket_traffic_sent_bytes_total")
                    && l.contains(&format!("bucket=\"{BUCKET}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// berthd config for this bucket (everything but `http`).
    pub fn berthd_yaml(&self, cache_dir: &std::path::Path, cache_max: &str) -> String {
        berthd_yaml(&self.endpoint(), cache_dir, cache_max, "", "")
    }

    /// The HTTPS endpoint, when started with [`Seaweed::start_tls`].
    pub fn https_endpoint(&self) -> String {
        format!("https://{}:{}", self.host, self.https_port.expect("started with TLS"))
    }

    /// The credentials as berthd reads them in the seeds: from the environment.
    pub fn env() -> [(&'static str, &'static str); 2] {
        [("REGISTRY_STORAGE_S3_ACCESSKEY", ACCESS_KEY), ("REGISTRY_STORAGE_S3_SECRETKEY", SECRET_KEY)]
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// berthd config for a bucket at `endpoint`; `extra_storage` goes inside
/// `storage:` (indented two spaces), `extra_top` at the top level.
pub fn berthd_yaml(
    endpoint: &str,
    cache_dir: &std::path::Path,
    cache_max: &str,
    extra_storage: &str,
    extra_top: &str,
) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  s3:\n    region: us-east-1\n    regionendpoint: {endpoint}\n    bucket: {BUCKET}\n    chunksize: 5242880\n  delete:\n    enabled: true\n{extra_storage}cache:\n  path: {}\n  maxsize: {cache_max}\n{extra_top}",
        cache_dir.display()
    )
}

/// A berthd node on this bucket with its own cache directory.
pub fn node(weed: &Seaweed, cache_max: &str) -> crate::common::Berthd {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = weed.berthd_yaml(&cache, cache_max);
    crate::common::Berthd::start_config(dir, cache, &yaml, &Seaweed::env())
}

/// A node on this bucket without a node cache (every read goes to S3) and
/// without an access log: what the benchmarks measure.
pub fn uncached_node(weed: &Seaweed) -> crate::common::Berthd {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = weed
        .berthd_yaml(&cache, "4GiB")
        .replace("level: info", "level: info\n  accesslog:\n    disabled: true")
        .replace("cache:\n", "cache:\n  enabled: false\n");
    crate::common::Berthd::start_config(dir, cache, &yaml, &Seaweed::env())
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.remove_sockets();
    }
}
