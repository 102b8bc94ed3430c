//! Errors that stop `berthd` from starting or serving. Request-level errors
//! are [`crate::registry::Error`], rendered by the HTTP layer.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}; is another registry already running there? set http.addr to another address")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage check failed: {0}")]
    Storage(#[from] crate::registry::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Mirror(#[from] crate::upstream::SetupError),
    #[error("garbage collection: {0}")]
    Gc(#[from] crate::registry::gc::GcError),
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// Whether fixing the configuration (or a file it names) is what it
    /// takes: berthd then exits with status 2, which the systemd unit's
    /// `RestartPreventExitStatus=2` does not retry.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Error::Config(_) | Error::Tls(_) | Error::Auth(_) | Error::Mirror(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
