//! Start-up and shutdown: build the storage and registry from the config,
//! bind the listeners, serve until SIGTERM/SIGINT, then drain in-flight
//! requests before exiting.

use crate::api::{self, AppState};
use crate::auth::htpasswd::Htpasswd;
use crate::auth::token::TokenVerifier;
use crate::auth::{Authenticator, Gate};
use crate::config::Config;
use crate::config::{AuthConfig, Backend};
use crate::layerindex::signing::IndexKey;
use crate::listen::{self, Limits};
use crate::registry::mirror::Mirrors;
use crate::registry::paths;
use crate::registry::{Policy, Registry};
use crate::storage::cache::CachedDriver;
use crate::storage::fs::FsDriver;
use crate::storage::instrumented::Instrumented;
use crate::storage::s3::S3Driver;
use crate::storage::StorageDriver;
use crate::tls::client::{self as client_tls, Trust};
use crate::upstream::Upstream;
use crate::{Error, Result};
use axum::http::{HeaderName, HeaderValue};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Builds the configured backend, instrumented (no node cache).
pub async fn build_backend(config: &Config) -> Result<Arc<dyn StorageDriver>> {
    let backend: Arc<dyn StorageDriver> = match &config.storage.backend {
        Backend::Filesystem => {
            let root = &config.storage.root;
            std::fs::create_dir_all(root).map_err(|source| Error::DataDir { path: root.clone(), source })?;
            Arc::new(FsDriver::new(root.clone()))
        }
        Backend::S3(s3) => {
            if s3.skip_verify {
                tracing::warn!("storage.s3.skipverify is set: the S3 endpoint's certificate is not checked");
            }
            let trust = Trust { ca_files: config.tls_cacerts.clone(), discover_cluster_ca: true };
            let tls = client_tls::client_config(&trust, s3.skip_verify).map_err(Error::Tls)?;
            let driver = S3Driver::new(s3, tls).await;
            tracing::info!("storage: {}", driver.describe());
            Arc::new(driver)
        }
    };
    Ok(Arc::new(Instrumented(backend)))
}

/// Builds the storage stack: the backend, instrumented, behind the node
/// cache when one is configured.
pub async fn build_storage(config: &Config) -> Result<Arc<dyn StorageDriver>> {
    let backend = build_backend(config).await?;
    Ok(match &config.cache {
        None => backend,
        Some(c) => {
            let cache = CachedDriver::open(backend, paths::content_digest, &c.path, c.max_size)
                .map_err(|source| Error::DataDir { path: c.path.clone(), source })?;
            tracing::info!(cache = %c.path.display(), max_bytes = c.max_size, used_bytes = cache.size(), "node cache");
            Arc::new(cache)
        }
    })
}

/// Builds the registry on the configured storage.
pub async fn build_registry(config: &Config) -> Result<Arc<Registry>> {
    let driver = build_storage(config).await?;
    registry_on(config, driver)
}

/// A registry for maintenance commands (`fsck`): on the backend itself,
/// never through this node's cache, without mirrors.
pub async fn build_maintenance_registry(config: &Config) -> Result<Arc<Registry>> {
    let driver = build_backend(config).await?;
    Ok(Registry::new(driver, policy_of(config)))
}

/// Where pull-through mirrors spool first pulls on this node: beside the
/// data (a hidden directory of the filesystem root, or of the local data
/// directory with S3). Emptied at start: what a crash left there is junk.
fn spool_dir(config: &Config) -> Result<std::path::PathBuf> {
    let dir = config.storage.root.join(".berth-spool");
    if config.mirrors.is_empty() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    crate::durable::create_dirs(&dir).map_err(|source| Error::DataDir { path: dir.clone(), source })?;
    Ok(dir)
}

fn policy_of(config: &Config) -> Policy {
    Policy {
        delete_enabled: config.storage.delete_enabled,
        read_only: config.storage.read_only,
        redirect: !config.storage.redirect_disable,
    }
}

fn registry_on(config: &Config, driver: Arc<dyn StorageDriver>) -> Result<Arc<Registry>> {
    let policy = policy_of(config);
    let mut upstreams = Vec::new();
    if !config.mirrors.is_empty() {
        let trust = Trust { ca_files: config.tls_cacerts.clone(), discover_cluster_ca: true };
        let tls = client_tls::client_config(&trust, false).map_err(Error::Tls)?;
        for m in &config.mirrors {
            tracing::info!(mirror = %m.name, url = %m.url, "pull-through mirror");
            upstreams.push(Arc::new(Upstream::new(m.clone(), tls.clone())?));
        }
    }
    let index_key = layer_index_key(config)?;
    Ok(Registry::build(
        driver,
        policy,
        Mirrors::new(upstreams, config.proxy_mirror, config.cluster_registries.clone(), spool_dir(config)?),
        index_key,
    ))
}

/// Reads the data directory's own layer index key, making it (0600) when
/// there is none; two berthd starting on one root at once agree on one.
fn local_key_file(p: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p) {
        Ok(mut f) => {
            let k = IndexKey::generate_secret();
            f.write_all(k.as_bytes())?;
            f.sync_all()?;
            if let Some(dir) = p.parent() {
                crate::durable::sync_dir(dir)?;
            }
            tracing::info!(keyfile = %p.display(), "made a layer index key for this data directory");
            Ok(k.into_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another berthd may be writing it this instant.
            for _ in 0..50 {
                let k = std::fs::read_to_string(p)?;
                if k.trim().len() >= 32 {
                    return Ok(k.trim().as_bytes().to_vec());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::io::Error::other(format!("{} holds no key; delete it to have a new one made", p.display())))
        }
        Err(e) => Err(e),
    }
}

/// The key that signs layer indexes: configured (`layerindex.key` or
/// `layerindex.keyfile`), or on the filesystem backend one berthd makes
/// beside the data (`.berth-layerindex.key`: local storage has no other
/// writer to guard against). With S3 and no key, lazy pulls are off — every
/// node on the bucket must hold the same key.
fn layer_index_key(config: &Config) -> Result<Option<IndexKey>> {
    use crate::config::Secret;
    let bad =
        |what: String| Error::Config(crate::config::ConfigError::Invalid { key: "layerindex".into(), message: what });
    let secret = match &config.layer_index_key {
        Some(Secret::Inline(k)) => k.clone().into_bytes(),
        Some(Secret::File(p)) => std::fs::read_to_string(p)
            .map_err(|e| bad(format!("cannot read keyfile {}: {e}", p.display())))?
            .trim()
            .as_bytes()
            .to_vec(),
        None => match &config.storage.backend {
            Backend::Filesystem => {
                let p = config.storage.root.join(".berth-layerindex.key");
                local_key_file(&p).map_err(|source| Error::DataDir { path: p.clone(), source })?
            }
            Backend::S3(_) => {
                tracing::warn!("no layerindex.keyfile: layer indexes are neither built nor served, so lazy pulls fall back to normal pulls; give every node on the bucket the same key (see docs/snapshotter.md)");
                return Ok(None);
            }
        },
    };
    IndexKey::new(&secret).map(Some).map_err(|e| bad(e.to_string()))
}

/// Runs berthd until a shutdown signal arrives.
/// The credential check configured in `auth`.
pub fn build_gate(config: &Config) -> Result<Gate> {
    let auth = match &config.auth {
        AuthConfig::None => Authenticator::None,
        AuthConfig::Htpasswd { realm, path } => {
            let file = Htpasswd::load(path).map_err(Error::Auth)?;
            tracing::info!(htpasswd = %path.display(), "authentication: htpasswd");
            Authenticator::Htpasswd { realm: realm.clone(), file }
        }
        AuthConfig::Token(t) => {
            let v = TokenVerifier::load(&t.realm, &t.service, &t.issuer, &t.rootcertbundle).map_err(Error::Auth)?;
            tracing::info!(realm = %t.realm, service = %t.service, "authentication: token");
            Authenticator::Token(v)
        }
    };
    Ok(Gate::new(auth))
}

/// Runs berthd until a shutdown signal arrives.
pub async fn run(config: Config) -> Result<()> {
    let registry = build_registry(&config).await?;
    if let Err(e) = registry.check_storage().await {
        // Not fatal: the node cache may serve, and the backend may come back.
        tracing::error!("storage is not reachable at start-up: {e}");
    }
    let gate = Arc::new(build_gate(&config)?);
    let headers: Vec<(HeaderName, HeaderValue)> = config
        .http
        .headers
        .iter()
        .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
        .collect();

    let limits = Limits {
        header: config.http.timeouts.header,
        send: config.http.timeouts.send,
        max_connections: config.http.max_connections.unwrap_or_else(listen::default_max_connections),
    };
    // Bind everything first, so a bad address or certificate stops start-up.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let node = Arc::new(crate::console::NodeFacts::from_config(&config));
    for l in &config.listeners {
        let tls = match &l.tls {
            Some(files) => Some(crate::tls::server::server_config(files).map_err(Error::Tls)?),
            None => None,
        };
        let tcp = TcpListener::bind(l.addr).await.map_err(|source| Error::Bind { addr: l.addr, source })?;
        let local = tcp.local_addr().map_err(Error::Serve)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %local, anonymous = ?l.access.anonymous, authenticated = ?l.access.authenticated, "listening on {scheme}://{local}");
        let state = Arc::new(AppState {
            registry: registry.clone(),
            headers: headers.clone(),
            access_log: config.log.access_log,
            base_url: config.http.host.as_deref().unwrap_or("").trim_end_matches('/').to_string(),
            gate: gate.clone(),
            access: l.access,
            body_timeout: config.http.timeouts.body,
            listener: local.to_string(),
            node: node.clone(),
        });
        let app = api::router(state);
        let stop = wait_for(shutdown_rx.clone());
        servers.spawn(listen::serve(tcp, tls, app, limits, stop));
    }

    if config.storage.upload_purging.enabled {
        tokio::spawn(purge_uploads_periodically(registry.clone(), config.storage.upload_purging.clone()));
    }
    if !config.storage.gc.interval.is_zero() && !config.storage.read_only {
        // Collections read the storage itself, never through this node's cache.
        let collector = build_maintenance_registry(&config).await?;
        tokio::spawn(collect_garbage_periodically(
            collector,
            config.storage.gc.clone(),
            config.storage.retention.clone(),
        ));
    }

    if let Some(debug) = config.http.debug_addr {
        let listener = TcpListener::bind(debug).await.map_err(|source| Error::Bind { addr: debug, source })?;
        let local = listener.local_addr().map_err(Error::Serve)?;
        tracing::info!(debug_addr = %local, "debug endpoint on http://{local} (/metrics, /healthz)");
        let registry = registry.clone();
        let stop = wait_for(shutdown_rx.clone());
        tokio::spawn(async move {
            let app = crate::api::debug_router(registry);
            let _ = listen::serve(listener, None, app, limits, stop).await;
        });
    }

    // Pull times, for retention: in batches, never a write per pull.
    let flusher = registry.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PULL_FLUSH_INTERVAL).await;
            if let Err(e) = flusher.flush_pulls().await {
                tracing::warn!("cannot store pull times (kept for the next try): {e}");
            }
        }
    });

    crate::notify::ready();
    tokio::spawn(async move {
        shutdown_signal().await;
        crate::notify::stopping();
        let _ = shutdown_tx.send(true);
    });
    while let Some(res) = servers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Serve(e)),
            Err(e) => return Err(Error::Serve(std::io::Error::other(e))),
        }
    }
    if let Err(e) = registry.flush_pulls().await {
        tracing::warn!("cannot store the last pull times: {e}");
    }
    tracing::info!("shut down: in-flight requests finished");
    Ok(())
}

/// How often a node leaves the pulls it served in the storage.
const PULL_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Resolves once `rx` turns true.
async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// registry:2's upload purging: shortly after start, then every interval.
async fn purge_uploads_periodically(registry: Arc<Registry>, cfg: crate::config::UploadPurging) {
    let mut next = std::time::Duration::from_secs(60).min(cfg.interval);
    loop {
        tokio::time::sleep(next).await;
        next = cfg.interval;
        match registry.purge_uploads(cfg.age, cfg.dry_run).await {
            Ok(0) => {}
            Ok(n) if cfg.dry_run => tracing::info!("{n} abandoned uploads would be purged (dry run)"),
            Ok(n) => tracing::info!("purged {n} abandoned uploads older than {:?}", cfg.age),
            Err(e) => tracing::warn!("upload purging failed: {e}"),
        }
    }
}

/// `storage.gc`: every node looks now and then whether the cluster's last
/// collection is older than the interval, and if so collects (the lease
/// keeps it to one node at a time; the end marker, to one run per
/// interval across the cluster).
async fn collect_garbage_periodically(
    registry: Arc<Registry>,
    cfg: crate::config::GcSchedule,
    retention: Arc<crate::registry::retention::Retention>,
) {
    use crate::registry::gc::{GcError, GcOptions};
    use std::time::{Duration, SystemTime};
    // Nodes started together look at different moments.
    let look_every = (cfg.interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let jitter = Duration::from_millis(u64::from(std::process::id()) * 7919 % look_every.as_millis().max(1) as u64);
    // Not in the middle of start-up.
    tokio::time::sleep(cfg.interval.min(Duration::from_secs(60)) + jitter).await;
    // Dry runs leave no end marker in the storage: this node keeps its own.
    let mut last_dry_run: Option<std::time::Instant> = None;
    loop {
        let due = match registry.last_collection().await {
            _ if cfg.dry_run => last_dry_run.is_none_or(|t| t.elapsed() >= cfg.interval),
            Ok(Some(at)) => SystemTime::now().duration_since(at).is_ok_and(|age| age >= cfg.interval),
            Ok(None) => true,
            Err(e) => {
                tracing::warn!("garbage collection: cannot read when the last one ran: {e}");
                false
            }
        };
        if due {
            last_dry_run = Some(std::time::Instant::now());
            let opts = GcOptions {
                dry_run: cfg.dry_run,
                delay: cfg.delay,
                holder: crate::registry::gc::this_collector(),
                delete_untagged: cfg.delete_untagged,
                retention: retention.clone(),
            };
            let m = crate::metrics::get();
            m.gc_runs.inc();
            let started = std::time::Instant::now();
            match registry.collect(&opts, &crate::registry::fsck::Quiet).await {
                Ok(r) => {
                    m.gc_last_duration.set(started.elapsed().as_secs_f64());
                    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
                    m.gc_last_success.set(now.as_secs_f64());
                    tracing::info!(
                        eligible = r.eligible.len(),
                        trashed = r.trashed,
                        deleted = r.deleted,
                        deleted_bytes = r.deleted_bytes,
                        restored = r.restored,
                        tags_removed = r.tags_removed.len(),
                        manifests_removed = r.manifests_removed.len(),
                        dry_run = cfg.dry_run,
                        "garbage collection finished"
                    );
                }
                Err(GcError::Busy { holder, .. }) => tracing::info!("garbage collection: {holder} is collecting"),
                Err(e) => {
                    m.gc_failures.inc();
                    tracing::warn!("garbage collection failed: {e}");
                }
            }
        }
        tokio::time::sleep(look_every).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
