//! The snapshotter's one error type. Each variant maps to the gRPC code
//! containerd's snapshot service contract expects (containerd turns
//! `AlreadyExists` from Prepare into "skip this layer", `NotFound` into
//! "pull it", so the codes are part of the protocol, not decoration).
//!
//! Modules with errors of their own keep them in small enums that callers
//! can match on, and that convert into [`Error`] with `?`:
//! [`crate::berthd::ClientError`] (talking to berthd),
//! [`crate::layer::ReadError`] (reading a lazy layer),
//! [`crate::pull::PullError`] (`berth-snapshotter pull`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("metadata store: {0}; the store is {1}")]
    Store(#[source] redb::Error, PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for [`crate::config::Config`].
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    /// A JSON file the snapshotter wrote (a mount spec, a layer index)
    /// does not parse.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// A stored layer index parses but does not hold together.
    #[error("{}: {why}", path.display())]
    BadIndex { path: PathBuf, why: String },
    /// Another snapshotter answers on the socket.
    #[error("{} is in use by a running snapshotter; stop it first or pass another --address", .0.display())]
    AddressInUse(PathBuf),
    #[error("gRPC server: {0}")]
    Grpc(#[source] tonic::transport::Error),
    /// A blocking task the server waited for panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Berthd(#[from] crate::berthd::ClientError),
    #[error(transparent)]
    Read(#[from] crate::layer::ReadError),
    #[error(transparent)]
    Pull(#[from] crate::pull::PullError),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Store(..)
            | Error::Io { .. }
            | Error::Config { .. }
            | Error::Json { .. }
            | Error::BadIndex { .. }
            | Error::AddressInUse(_)
            | Error::Grpc(_)
            | Error::Task(_)
            | Error::Berthd(_)
            | Error::Read(_)
            | Error::Pull(_) => tonic::Status::internal(msg),
        }
    }
}
