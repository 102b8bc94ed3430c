//! Prometheus metrics, served as text on `http.debug.addr` at `/metrics`.
//!
//! A handful of counters do not justify a metrics crate: these are atomics
//! plus one map for labelled request counts, rendered in the Prometheus
//! text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (route, method, status) → count.
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_fills: AtomicU64,
    pub cache_hit_bytes: AtomicU64,
    pub cache_fill_bytes: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cache_size_bytes: AtomicU64,
    pub cache_stale_served: AtomicU64,
    /// Requests to the storage backend (S3 calls when it is S3).
    pub storage_requests: AtomicU64,
    pub storage_errors: AtomicU64,
    pub storage_latency_micros: AtomicU64,
    /// Stored objects moved aside because they did not hash to their digest.
    pub quarantined: AtomicU64,
    /// Password hash (bcrypt) verifications: logins not remembered.
    pub password_checks: AtomicU64,
    /// Stored layer indexes refused because their signature did not check out.
    pub index_auth_failures: AtomicU64,
    /// Garbage collections run by this node (periodic), and those that failed.
    pub gc_runs: AtomicU64,
    pub gc_failures: AtomicU64,
    /// When the last collection of this node finished well, and how long it took (µs).
    pub gc_last_success_micros: AtomicU64,
    pub gc_last_duration_micros: AtomicU64,
    pub gc_trashed_blobs: AtomicU64,
    pub gc_deleted_blobs: AtomicU64,
    pub gc_deleted_bytes: AtomicU64,
    /// Trashed blobs moved back because a request needed them.
    pub gc_restored_blobs: AtomicU64,
    pub gc_removed_tags: AtomicU64,
    pub gc_removed_manifests: AtomicU64,
    pub gc_restored_manifests: AtomicU64,
    /// The lease holder while this node collects (`berth_gc_lease_held`).
    pub gc_lease_holder: Mutex<Option<String>>,
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static M: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn request(&self, route: &'static str, method: &str, status: u16) {
        *self.requests.lock().unwrap().entry((route, method.to_string(), status)).or_default() += 1;
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP berth_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE berth_http_requests_total counter\n");
        for ((route, method, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "berth_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let counters: [(&str, &str, &AtomicU64, &str); 25] = [
            (
                "berth_cache_hits_total",
                "Blob and manifest reads served from the node cache.",
                &self.cache_hits,
                "counter",
            ),
            ("berth_cache_misses_total", "Reads not in the node cache.", &self.cache_misses, "counter"),
            ("berth_cache_fills_total", "Fetches from storage into the node cache.", &self.cache_fills, "counter"),
            ("berth_cache_hit_bytes_total", "Bytes served from the node cache.", &self.cache_hit_bytes, "counter"),
            (
                "berth_cache_fill_bytes_total",
                "Bytes fetched from storage into the node cache.",
                &self.cache_fill_bytes,
                "counter",
            ),
            (
                "berth_cache_evictions_total",
                "Cache entries evicted to stay under cache.maxsize.",
                &self.cache_evictions,
                "counter",
            ),
            ("berth_cache_size_bytes", "Bytes held in the node cache.", &self.cache_size_bytes, "gauge"),
            (
                "berth_cache_stale_served_total",
                "Metadata served from memory while storage was unreachable.",
                &self.cache_stale_served,
                "counter",
            ),
            (
                "berth_storage_requests_total",
                "Requests made to the storage backend.",
                &self.storage_requests,
                "counter",
            ),
            (
                "berth_storage_errors_total",
                "Storage requests that failed (not counting not-found).",
                &self.storage_errors,
                "counter",
            ),
            (
                "berth_storage_latency_seconds_sum",
                "Total time spent in storage requests.",
                &self.storage_latency_micros,
                "counter",
            ),
            (
                "berth_quarantined_total",
                "Stored objects that did not hash to their digest, moved to /berth/quarantine.",
                &self.quarantined,
                "counter",
            ),
            (
                "berth_auth_password_checks_total",
                "bcrypt verifications of htpasswd logins (successful logins are remembered for 5 minutes).",
                &self.password_checks,
                "counter",
            ),
            (
                "berth_layer_index_auth_failures_total",
                "Stored layer indexes refused: their HMAC did not check out under this cluster's key.",
                &self.index_auth_failures,
                "counter",
            ),
            (
                "berth_gc_runs_total",
                "Garbage collections this node ran (storage.gc.interval).",
                &self.gc_runs,
                "counter",
            ),
            ("berth_gc_failures_total", "Garbage collections of this node that failed.", &self.gc_failures, "counter"),
            (
                "berth_gc_last_success_timestamp_seconds",
                "When this node's last garbage collection finished well (Unix time).",
                &self.gc_last_success_micros,
                "gauge",
            ),
            (
                "berth_gc_last_duration_seconds",
                "How long this node's last garbage collection took.",
                &self.gc_last_duration_micros,
                "gauge",
            ),
            (
                "berth_gc_trashed_blobs_total",
                "Blobs garbage collection moved to the trash.",
                &self.gc_trashed_blobs,
                "counter",
            ),
            (
                "berth_gc_deleted_blobs_total",
                "Trashed blobs garbage collection deleted.",
                &self.gc_deleted_blobs,
                "counter",
            ),
            ("berth_gc_deleted_bytes_total", "Bytes garbage collection freed.", &self.gc_deleted_bytes, "counter"),
            (
                "berth_gc_restored_blobs_total",
                "Trashed blobs moved back because a request needed them.",
                &self.gc_restored_blobs,
                "counter",
            ),
            (
                "berth_gc_removed_tags_total",
                "Tags retention policies removed (storage.retention).",
                &self.gc_removed_tags,
                "counter",
            ),
            (
                "berth_gc_removed_manifests_total",
                "Manifests garbage collection removed: untagged, or referrers whose subject is gone.",
                &self.gc_removed_manifests,
                "counter",
            ),
            (
                "berth_gc_restored_manifests_total",
                "Trashed manifests moved back because a request needed them.",
                &self.gc_restored_manifests,
                "counter",
            ),
        ];
        for (name, help, v, kind) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let value = v.load(Relaxed);
            if name.contains("_seconds") {
                let _ = writeln!(out, "{name} {}", value as f64 / 1e6);
            } else {
                let _ = writeln!(out, "{name} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP berth_gc_lease_held 1 while this node holds the garbage collection lease, labelled with the holder.\n# TYPE berth_gc_lease_held gauge"
        );
        match &*self.gc_lease_holder.lock().unwrap() {
            Some(h) => {
                let h = h.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "berth_gc_lease_held{{holder=\"{h}\"}} 1");
            }
            None => {
                let _ = writeln!(out, "berth_gc_lease_held 0");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let m = super::Metrics::default();
        m.request("blob", "GET", 200);
        m.request("blob", "GET", 200);
        m.cache_hits.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("berth_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("berth_cache_hits_total 3"));
        assert!(text.contains("# TYPE berth_cache_size_bytes gauge"));
    }
}
