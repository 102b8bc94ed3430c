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
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
