//! Binds the unix socket and serves the snapshots service until shutdown.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::grpc::SnapshotsService;
use crate::lazy::Lazy;
use crate::snapshots::Snapshotter;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Serves until `shutdown` resolves; in-flight calls finish first.
pub async fn serve(config: &Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let root = config.root.clone();
    let snapshotter = tokio::task::spawn_blocking(move || Snapshotter::open(&root)).await??;
    let snapshotter = Arc::new(snapshotter);
    let lazy = if config.lazy {
        let lazy = Arc::new(Lazy::new(config)?);
        let (l, s) = (lazy.clone(), snapshotter.clone());
        tokio::task::spawn_blocking(move || l.restore(&s)).await?;
        Some(lazy)
    } else {
        None
    };
    if let Some(addr) = config.metrics_address {
        let root = config.root.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, root).await {
                tracing::error!(error = %e, "the metrics endpoint on {addr} failed");
            }
        });
    }
    let listener = bind(&config.address)?;
    tracing::info!(address = %config.address.display(), root = %config.root.display(), "serving containerd snapshots");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(SnapshotsService::new(snapshotter, lazy))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(Error::Grpc);
    let _ = std::fs::remove_file(&config.address);
    result
}

/// Binds `path`, replacing a stale socket but never a live one (a second
/// snapshotter on the same socket would steal containerd's calls).
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::AddressInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(Error::io(format!("cannot remove stale socket {}", path.display())))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(Error::io(format!("cannot listen on {}", path.display())))?;
    // containerd runs as root; nobody else may drive the snapshotter.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("cannot restrict {}", path.display())))?;
    Ok(listener)
}
