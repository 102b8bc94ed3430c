//! The node page's facts: what this berthd was configured with (fixed at
//! start) and how it is doing now (read from the registry and the metrics).

use crate::registry::browse::CollectionRecord;
use crate::registry::Registry;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// How long the storage may take to answer the node page's health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's configuration, as the console shows it: never a secret.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// The host name.
    pub node: String,
    /// The storage backend in words: `filesystem /var/lib/berth`, or the
    /// S3 bucket and endpoint.
    pub storage: String,
    /// The node cache's directory and size limit, with a remote backend.
    pub cache: Option<(PathBuf, u64)>,
    /// How often this node collects garbage (zero: never).
    pub gc_interval: Duration,
    pub started: Option<SystemTime>,
}

impl NodeFacts {
    /// The facts of a configuration.
    pub fn from_config(config: &crate::config::Config) -> NodeFacts {
        let storage = match &config.storage.backend {
            crate::config::Backend::Filesystem => format!("filesystem {}", config.storage.root.display()),
            crate::config::Backend::S3(s3) => format!(
                "S3 bucket {} at {}{}",
                s3.bucket,
                s3.endpoint.as_deref().unwrap_or("AWS"),
                if s3.root_directory.is_empty() { String::new() } else { format!(", under {}", s3.root_directory) }
            ),
        };
        NodeFacts {
            node: crate::registry::gc::this_host(),
            storage,
            cache: config.cache.as_ref().map(|c| (c.path.clone(), c.max_size)),
            gc_interval: if config.storage.read_only { Duration::ZERO } else { config.storage.gc.interval },
            started: Some(SystemTime::now()),
        }
    }
}

pub struct NodeStatus<'a> {
    pub facts: &'a NodeFacts,
    /// The storage answered in this time, or the error.
    pub storage: Result<Duration, String>,
    pub cache: Option<CacheStatus>,
    pub mirrors: Vec<MirrorStatus>,
    /// The cluster's last collection (or why it cannot be read).
    pub last_gc: Result<Option<CollectionRecord>, String>,
    pub next_gc: Option<SystemTime>,
    pub indexes_enabled: bool,
    pub index_builds: u64,
    pub index_failures: u64,
}

pub struct CacheStatus {
    pub path: PathBuf,
    pub max: u64,
    pub used: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub hit_bytes: u64,
    pub fill_bytes: u64,
}

pub struct MirrorStatus {
    pub name: String,
    pub url: String,
    pub allow: Vec<String>,
    pub hits: u64,
    pub misses: u64,
    pub requests: u64,
    pub errors: u64,
    pub last_error: Option<(SystemTime, String)>,
}

/// Reads the node's state now.
pub async fn status<'a>(reg: &Registry, facts: &'a NodeFacts) -> NodeStatus<'a> {
    let m = crate::metrics::get();
    let started = Instant::now();
    let storage = match tokio::time::timeout(PROBE_TIMEOUT, reg.check_storage()).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    };
    let cache = facts.cache.as_ref().map(|(path, max)| CacheStatus {
        path: path.clone(),
        max: *max,
        used: m.cache_size_bytes.get().max(0) as u64,
        hits: m.cache_hits.get(),
        misses: m.cache_misses.get(),
        evictions: m.cache_evictions.get(),
        hit_bytes: m.cache_hit_bytes.get(),
        fill_bytes: m.cache_fill_bytes.get(),
    });
    let mirrors = reg
        .mirror_list()
        .iter()
        .map(|up| {
            let labels = crate::metrics::MirrorLabels { mirror: up.cfg.name.clone() };
            MirrorStatus {
                name: up.cfg.name.clone(),
                url: up.cfg.url.clone(),
                allow: up.cfg.allow.clone(),
                hits: up.activity.hits.load(std::sync::atomic::Ordering::Relaxed),
                misses: up.activity.misses.load(std::sync::atomic::Ordering::Relaxed),
                requests: m.upstream_requests.get_or_create(&labels).get(),
                errors: m.upstream_errors.get_or_create(&labels).get(),
                last_error: up.activity.last_error(),
            }
        })
        .collect();
    let last_gc = reg.last_collection_record().await.map_err(|e| e.to_string());
    // The schedule counts from the cluster's last collection (any node's).
    let next_gc = match (&last_gc, facts.gc_interval.is_zero()) {
        (_, true) => None,
        (Ok(Some(rec)), false) => rec.finished_at.map(|t| t + facts.gc_interval),
        (_, false) => facts.started.map(|t| t + facts.gc_interval.min(Duration::from_secs(60))),
    };
    NodeStatus {
        facts,
        storage,
        cache,
        mirrors,
        last_gc,
        next_gc,
        indexes_enabled: reg.layer_indexes_enabled(),
        index_builds: m.index_builds.get(),
        index_failures: m.index_build_failures.get(),
    }
}
