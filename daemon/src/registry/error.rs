//! The registry's one error type. Each variant is an OCI distribution error
//! code (or a storage failure); the HTTP layer maps them to status codes in
//! one table, and every message says what to do next.

use crate::digest::{Digest, DigestError};
use crate::names::{NameError, RepoName};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob {0} is not in this repository; push it first or mount it from a repository that has it")]
    BlobUnknown(Digest),
    #[error("upload {0} is unknown: it was finished, cancelled or never started; start a new upload with POST /v2/<name>/blobs/uploads/")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("chunk starts at byte {got} but the upload has {expected} bytes; send chunks in order, resuming at byte {expected}")]
    UploadOutOfOrder { expected: u64, got: u64 },
    #[error("requested range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest references {0}, which is not in this repository; push the blob (or child manifest) before the manifest")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest {0} is not in this repository")]
    ManifestUnknown(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    /// containerd's `?ns=` names a registry this one does not serve.
    #[error("{0}")]
    NamespaceUnknown(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    UpstreamUnavailable(String),
    /// A layer's seek index does not exist (yet) or cannot serve a read:
    /// the snapshotter falls back to a normal pull.
    #[error("{0}")]
    IndexUnavailable(String),
    /// A prefetch list that does not fit the layer's index.
    #[error("{0}")]
    PrefetchInvalid(String),
    #[error("{0}")]
    Upstream(String),
    /// An upstream asked for a pause; clients should wait `retry_after` s.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// The OCI error code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BlobUnknown(_) => "BLOB_UNKNOWN",
            Error::BlobUploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            Error::BlobUploadInvalid(_) | Error::UploadOutOfOrder { .. } => "BLOB_UPLOAD_INVALID",
            Error::RangeNotSatisfiable { .. } => "RANGE_INVALID",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Error::ManifestInvalid(_) => "MANIFEST_INVALID",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) | Error::NamespaceUnknown(_) => "NAME_UNKNOWN",
            Error::TagInvalid(_) => "TAG_INVALID",
            Error::SizeInvalid(_) | Error::TooLarge(_) => "SIZE_INVALID",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::Denied(_) => "DENIED",
            Error::UpstreamUnavailable(_) => "UNAVAILABLE",
            Error::IndexUnavailable(_) => "INDEX_UNAVAILABLE",
            Error::PrefetchInvalid(_) => "PREFETCH_INVALID",
            Error::Upstream(_) => "UNKNOWN",
            Error::TooManyRequests { .. } => "TOOMANYREQUESTS",
            Error::Storage(StorageError::Unavailable { .. }) => "UNAVAILABLE",
            Error::Storage(_) => "UNKNOWN",
        }
    }
}

impl Error {
    /// Whether an upstream registry is at fault (unreachable, slow, broken,
    /// asking for a pause): a mirror may then serve its last known answer.
    pub fn is_upstream_fault(&self) -> bool {
        matches!(self, Error::UpstreamUnavailable(_) | Error::Upstream(_) | Error::TooManyRequests { .. })
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        match e {
            NameError::Digest(d) => d.into(),
            NameError::Tag(_) => Error::TagInvalid(e.to_string()),
            other => Error::NameInvalid(other.to_string()),
        }
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Error {
        Error::DigestInvalid(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
