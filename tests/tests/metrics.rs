//! `/metrics` on the debug listener, read as Prometheus reads it (the
//! OpenMetrics text format): the families' names, types and labels, and
//! that real requests (skopeo's push and pull, a refused one) move them.

use crate::common::*;
use crate::support_e2e::*;
use std::collections::BTreeMap;

/// One scrape: `# TYPE` of each family, and every sample by its name with
/// labels (as written).
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

fn scrape(node: &Berthd) -> Scrape {
    let r = http_get(&format!("http://{}/metrics", node.debug_addr));
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/openmetrics-text"), "content type {ct}");
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"), "OpenMetrics ends with # EOF");
    let mut s = Scrape { types: BTreeMap::new(), samples: BTreeMap::new() };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            s.types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            s.samples.insert(series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad sample: {line}")));
        }
    }
    s
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

#[test]
fn requests_move_typed_labelled_metrics() {
    // One open listener, one that lets nobody in anonymously.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nlisteners:\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: [pull, push]\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: []\n",
        root.display()
    );
    let node = Berthd::start_config(dir, root, &yaml, &[]);
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    sk.push(&image.layout, &node.addr, "metrics/app:v1", &[]);
    let layer_size = image.layout.blob(&image.layer_digest).len() as f64;
    let get = r#"{route="manifest",method="GET",status="200"}"#;
    let mid = scrape(&node);
    let r = http_get(&format!("{}/v2/metrics/app/manifests/v1", node.url()));
    assert_eq!(r.status, 200);
    let blob = http_get(&format!("{}/v2/metrics/app/blobs/{}", node.url(), image.layer_digest));
    assert_eq!(blob.status, 200);
    let refused = http("GET", &format!("http://{}/v2/", node.addrs[1]), &[]).unwrap();
    assert_eq!(refused.status, 401);
    let after = scrape(&node);
    // Families with samples now: their types.
    for (family, kind) in [
        ("berth_http_requests", "counter"),
        ("berth_http_request_duration_seconds", "histogram"),
        ("berth_http_sent_bytes", "counter"),
        ("berth_http_received_bytes", "counter"),
        ("berth_http_requests_in_flight", "gauge"),
        ("berth_cache_hits", "counter"),
        ("berth_auth_failures", "counter"),
        ("berth_build_info", "gauge"),
    ] {
        assert_eq!(after.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert!(
        after
            .samples
            .keys()
            .any(|k| k.starts_with("berth_build_info{") && k.contains(&format!("version=\"{}\"", berthd::VERSION))),
        "build info names the version"
    );
    if workspace_root().join(".git").exists() {
        let commit =
            after.samples.keys().find_map(|k| k.split("commit=\"").nth(1)?.split('"').next()).unwrap_or_default();
        assert!(
            commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "build info names the commit: {commit}"
        );
    }

    let count = format!("berth_http_request_duration_seconds_count{get}");
    assert_eq!(after.get(&count), mid.get(&count) + 1.0, "a manifest GET moves the histogram by one");
    assert_eq!(
        after.get(&format!("berth_http_requests_total{get}")),
        mid.get(&format!("berth_http_requests_total{get}")) + 1.0
    );
    let inf = after
        .samples
        .iter()
        .find(|(k, _)| {
            k.starts_with("berth_http_request_duration_seconds_bucket{")
                && ["route=\"manifest\"", "method=\"GET\"", "status=\"200\"", "le=\"+Inf\""]
                    .iter()
                    .all(|l| k.contains(l))
        })
        .map(|(_, v)| *v);
    assert_eq!(inf, Some(after.get(&count)), "every observation is in the +Inf bucket");
    let sent = r#"berth_http_sent_bytes_total{route="blob"}"#;
    assert!(after.get(sent) - mid.get(sent) >= layer_size, "the layer's bytes were counted out");
    let received = r#"berth_http_received_bytes_total{route="upload"}"#;
    assert!(mid.get(received) >= layer_size, "the push's bytes were counted in");
    let listener = format!("berth_auth_failures_total{{listener=\"{}\"}}", node.addrs[1]);
    assert_eq!(after.get(&listener), 1.0, "the refused request, on its listener");
    assert_eq!(after.get("berth_http_requests_in_flight"), 0.0, "every response has ended");
    let pushes =
        after.samples.iter().filter(|(k, _)| k.starts_with("berth_http_requests_total{route=\"upload\"")).count();
    assert!(pushes >= 2, "uploads by method and status: {:?}", after.samples.keys().collect::<Vec<_>>());
}
