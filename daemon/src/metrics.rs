//! Prometheus metrics, served on `http.debug.addr` at `/metrics` in the
//! OpenMetrics text format (which Prometheus scrapes as it scrapes its own),
//! through the `prometheus-client` crate: typed counters, gauges and
//! histograms registered once, each with its help text. Counters are named
//! without `_total` here; the encoder appends it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// An HTTP request: the route's name (never the path, which would give one
/// series per repository), the method and the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// A storage backend operation (`get`, `put`, `stat`, `list`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

/// A mirror, by the name clients use for it (`docker.io`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: String,
}

/// A listener, by its address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolderLabels {
    pub holder: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 0.5 ms to about 30 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 13))
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency)
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Histograms<RequestLabels>,
    pub http_bytes_in: Family<RouteLabels, Counter>,
    pub http_bytes_out: Family<RouteLabels, Counter>,
    pub http_in_flight: Gauge,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_fills: Counter,
    pub cache_hit_bytes: Counter,
    pub cache_fill_bytes: Counter,
    pub cache_evictions: Counter,
    pub cache_size_bytes: Gauge,
    pub cache_stale_served: Counter,
    pub storage_requests: Family<OperationLabels, Counter>,
    pub storage_errors: Family<OperationLabels, Counter>,
    pub storage_duration: Histograms<OperationLabels>,
    /// Storage requests of any kind, for `berthd gc`'s summary.
    pub storage_requests_all: Counter,
    pub upstream_requests: Family<MirrorLabels, Counter>,
    pub upstream_errors: Family<MirrorLabels, Counter>,
    pub upstream_duration: Histograms<MirrorLabels>,
    pub index_builds: Counter,
    pub index_build_failures: Counter,
    pub quarantined: Counter,
    pub password_checks: Counter,
    pub auth_failures: Family<ListenerLabels, Counter>,
    pub index_auth_failures: Counter,
    pub gc_runs: Counter,
    pub gc_failures: Counter,
    pub gc_last_success: Gauge<f64, AtomicU64>,
    pub gc_last_duration: Gauge<f64, AtomicU64>,
    pub gc_trashed_blobs: Counter,
    pub gc_deleted_blobs: Counter,
    pub gc_deleted_bytes: Counter,
    pub gc_restored_blobs: Counter,
    pub gc_removed_tags: Counter,
    pub gc_removed_manifests: Counter,
    pub gc_restored_manifests: Counter,
    pub gc_lease_held: Family<HolderLabels, Gauge>,
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                r.register($name, $help, m.clone());
                m
            }};
        }
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
                commit: option_env!("BERTH_COMMIT").unwrap_or("unknown"),
            })
            .set(1);
        r.register("berth_build_info", "berthd's version and commit (always 1)", build);
        Metrics {
            http_requests: reg!("berth_http_requests", "HTTP requests by route, method and status", Family::default()),
            http_duration: reg!(
                "berth_http_request_duration_seconds",
                "Time from a request's arrival to the end of its response body, by route, method and status",
                histograms()
            ),
            http_bytes_in: reg!(
                "berth_http_received_bytes",
                "Request body bytes received, by route",
                Family::default()
            ),
            http_bytes_out: reg!("berth_http_sent_bytes", "Response body bytes sent, by route", Family::default()),
            http_in_flight: reg!(
                "berth_http_requests_in_flight",
                "Requests whose response has not ended",
                Gauge::default()
            ),
            cache_hits: reg!(
                "berth_cache_hits",
                "Blob and manifest reads served from the node cache",
                Counter::default()
            ),
            cache_misses: reg!("berth_cache_misses", "Reads not in the node cache", Counter::default()),
            cache_fills: reg!("berth_cache_fills", "Fetches from storage into the node cache", Counter::default()),
            cache_hit_bytes: reg!("berth_cache_hit_bytes", "Bytes served from the node cache", Counter::default()),
            cache_fill_bytes: reg!(
                "berth_cache_fill_bytes",
                "Bytes fetched from storage into the node cache",
                Counter::default()
            ),
            cache_evictions: reg!(
                "berth_cache_evictions",
                "Cache entries evicted to stay under cache.maxsize",
                Counter::default()
            ),
            cache_size_bytes: reg!("berth_cache_size_bytes", "Bytes held in the node cache", Gauge::default()),
            cache_stale_served: reg!(
                "berth_cache_stale_served",
                "Metadata served from memory while storage was unreachable",
                Counter::default()
            ),
            storage_requests: reg!(
                "berth_storage_requests",
                "Requests to the storage backend (S3 calls on S3), by operation",
                Family::default()
            ),
            storage_errors: reg!(
                "berth_storage_errors",
                "Storage requests that failed (not counting \"not found\"), by operation",
                Family::default()
            ),
            storage_duration: reg!(
                "berth_storage_request_duration_seconds",
                "Time storage requests took, by operation (streams: until the stream opened)",
                histograms()
            ),
            storage_requests_all: Counter::default(),
            upstream_requests: reg!(
                "berth_upstream_requests",
                "Requests to upstream registries, by mirror",
                Family::default()
            ),
            upstream_errors: reg!(
                "berth_upstream_errors",
                "Upstream requests that failed (connection, timeout, 5xx, 429), by mirror",
                Family::default()
            ),
            upstream_duration: reg!(
                "berth_upstream_request_duration_seconds",
                "Time to an upstream's response headers, by mirror",
                histograms()
            ),
            index_builds: reg!(
                "berth_layer_index_builds",
                "Lazy-pull seek indexes built for layers",
                Counter::default()
            ),
            index_build_failures: reg!(
                "berth_layer_index_build_failures",
                "Seek index builds that failed (the layer is pulled whole instead)",
                Counter::default()
            ),
            quarantined: reg!(
                "berth_quarantined",
                "Stored objects moved to /berth/quarantine because they did not hash to their digest",
                Counter::default()
            ),
            password_checks: reg!(
                "berth_auth_password_checks",
                "bcrypt verifications of htpasswd logins (successful logins are remembered for 5 minutes)",
                Counter::default()
            ),
            auth_failures: reg!(
                "berth_auth_failures",
                "Requests refused for their credentials (401) or their rights (403), by listener",
                Family::default()
            ),
            index_auth_failures: reg!(
                "berth_layer_index_auth_failures",
                "Stored layer indexes refused: their HMAC did not check out under this cluster's key",
                Counter::default()
            ),
            gc_runs: reg!(
                "berth_gc_runs",
                "Garbage collections this node ran (storage.gc.interval)",
                Counter::default()
            ),
            gc_failures: reg!("berth_gc_failures", "Garbage collections of this node that failed", Counter::default()),
            gc_last_success: reg!(
                "berth_gc_last_success_timestamp_seconds",
                "When this node's last garbage collection finished well (Unix time)",
                Gauge::default()
            ),
            gc_last_duration: reg!(
                "berth_gc_last_duration_seconds",
                "How long this node's last garbage collection took",
                Gauge::default()
            ),
            gc_trashed_blobs: reg!(
                "berth_gc_trashed_blobs",
                "Blobs garbage collection moved to the trash",
                Counter::default()
            ),
            gc_deleted_blobs: reg!(
                "berth_gc_deleted_blobs",
                "Trashed blobs garbage collection deleted",
                Counter::default()
            ),
            gc_deleted_bytes: reg!("berth_gc_deleted_bytes", "Bytes garbage collection freed", Counter::default()),
            gc_restored_blobs: reg!(
                "berth_gc_restored_blobs",
                "Trashed blobs moved back because a request needed them",
                Counter::default()
            ),
            gc_removed_tags: reg!(
                "berth_gc_removed_tags",
                "Tags retention policies removed (storage.retention)",
                Counter::default()
            ),
            gc_removed_manifests: reg!(
                "berth_gc_removed_manifests",
                "Manifests garbage collection removed: untagged, or referrers whose subject is gone",
                Counter::default()
            ),
            gc_restored_manifests: reg!(
                "berth_gc_restored_manifests",
                "Trashed manifests moved back because a request needed them",
                Counter::default()
            ),
            gc_lease_held: reg!(
                "berth_gc_lease_held",
                "1 while this node holds the garbage collection lease, labelled with the holder",
                Family::default()
            ),
            registry: r,
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_families_with_help() {
        let m = Metrics::new();
        let get = RequestLabels { route: "blob", method: "GET".into(), status: 200 };
        m.http_requests.get_or_create(&get).inc();
        m.http_requests.get_or_create(&get).inc();
        m.http_duration.get_or_create(&get).observe(0.003);
        m.cache_hits.inc_by(3);
        m.storage_requests.get_or_create(&OperationLabels { operation: "stat" }).inc();
        let text = m.render();
        assert!(text.contains("berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("# TYPE berth_http_request_duration_seconds histogram"), "{text}");
        assert!(
            text.contains("berth_http_request_duration_seconds_count{route=\"blob\",method=\"GET\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_cache_hits_total 3"));
        assert!(text.contains("# TYPE berth_cache_size_bytes gauge"));
        assert!(text.contains("berth_storage_requests_total{operation=\"stat\"} 1"));
        assert!(text.contains(&format!("berth_build_info{{version=\"{}\",", crate::VERSION)), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    /// Every series name a fully populated registry exposes.
    fn exposed_names() -> std::collections::BTreeSet<String> {
        let m = Metrics::new();
        let req = RequestLabels { route: "blob", method: "GET".into(), status: 200 };
        let op = OperationLabels { operation: "get" };
        let mirror = MirrorLabels { mirror: "docker.io".into() };
        m.http_requests.get_or_create(&req).inc();
        m.http_duration.get_or_create(&req).observe(0.1);
        m.http_bytes_in.get_or_create(&RouteLabels { route: "blob" }).inc();
        m.http_bytes_out.get_or_create(&RouteLabels { route: "blob" }).inc();
        m.storage_requests.get_or_create(&op).inc();
        m.storage_errors.get_or_create(&op).inc();
        m.storage_duration.get_or_create(&op).observe(0.1);
        m.upstream_requests.get_or_create(&mirror).inc();
        m.upstream_errors.get_or_create(&mirror).inc();
        m.upstream_duration.get_or_create(&mirror).observe(0.1);
        m.auth_failures.get_or_create(&ListenerLabels { listener: "127.0.0.1:5000".into() }).inc();
        m.gc_lease_held.get_or_create(&HolderLabels { holder: "n".into() }).set(1);
        m.render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_grafana_dashboard_asks_only_for_what_berthd_exports() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/monitoring/grafana-dashboard.json")).unwrap();
        let exposed = exposed_names();
        let mut exprs = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() >= 15, "{exprs:?}");
        let mut asked = 0;
        for expr in &exprs {
            for (i, _) in expr.match_indices("berth_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(exposed.contains(&name), "the dashboard asks for {name}, which berthd does not export: {expr}");
                asked += 1;
            }
        }
        assert!(asked >= exprs.len());
    }

    #[test]
    fn the_pod_monitor_selects_the_daemonsets_pods_and_port() {
        let monitor = include_str!("../deploy/monitoring/podmonitor.yaml");
        let daemonset = include_str!("../deploy/daemonset.yaml");
        assert!(monitor.contains("- port: debug") && daemonset.contains("- name: debug"));
        for label in ["app.kubernetes.io/name: berthd", "app.kubernetes.io/component: registry"] {
            assert!(monitor.contains(label) && daemonset.contains(label), "{label}");
        }
    }
}
