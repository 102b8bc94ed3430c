//! `serve --metrics-address ADDR`: `/metrics` in the OpenMetrics text format
//! (prometheus-client), summed at each scrape from every lazy mount's counts
//! (see [`crate::stats`]) and `serve`'s own. The endpoint is a few lines of
//! HTTP/1.0 on a TCP socket: one GET per connection, nothing else served.

use crate::stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct Lazy {
    root: PathBuf,
}

impl Collector for Lazy {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = stats::sum(&self.root);
        let counters: [(&str, &str, u64); 7] = [
            ("berth_snapshotter_lazy_reads", "Reads containers made of lazily mounted layers", s.reads),
            ("berth_snapshotter_lazy_read_bytes", "Bytes containers read from lazily mounted layers", s.read_bytes),
            ("berth_snapshotter_fetched_bytes", "Bytes fetched from berthd for lazy layers", s.fetched_bytes),
            ("berth_snapshotter_filled_bytes", "Bytes the background fill fetched and stored", s.filled_bytes),
            ("berth_snapshotter_lazy_mounts", "Layers mounted lazily by this snapshotter", stats::MOUNTS.load(Relaxed)),
            (
                "berth_snapshotter_fallbacks",
                "Layers asked for lazily but pulled normally (no index, berthd unreachable, a bad layer)",
                stats::FALLBACKS.load(Relaxed),
            ),
            ("berth_snapshotter_fetches", "Range requests to berthd for lazy layers", s.fetches),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut per_bucket = Vec::with_capacity(stats::FETCH_BUCKETS.len() + 1);
        for (i, bound) in stats::FETCH_BUCKETS.iter().copied().chain([f64::MAX]).enumerate() {
            per_bucket.push((bound, s.fetch_buckets.get(i).copied().unwrap_or(0)));
        }
        let mut m = encoder.encode_descriptor(
            "berth_snapshotter_fetch_duration_seconds",
            "Time range requests to berthd took",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(s.fetch_seconds, s.fetches, &per_bucket, None)
    }
}

/// Serves `/metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, root: PathBuf) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(metrics_address = %listener.local_addr()?, "metrics on http://{}/metrics", listener.local_addr()?);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Lazy { root }));
    let registry = std::sync::Arc::new(registry);
    loop {
        let (mut conn, _) = listener.accept().await?;
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(10), read).await.is_err() {
                return;
            }
            let (status, ctype, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET /metrics?") {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            } else {
                ("404 Not Found", "text/plain", "only /metrics is served here\n".to_string())
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
