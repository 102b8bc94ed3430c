//! One table from errors to HTTP: status code, OCI error code and a JSON body
//! whose message says what went wrong and what to do.

use crate::registry::Error;
use crate::registry::StorageError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Errors the HTTP layer returns: registry errors plus a few of its own.
#[derive(Debug)]
pub enum ApiError {
    Registry(Error),
    /// No such endpoint.
    NotFound(String),
    /// Endpoint exists, method does not.
    MethodNotAllowed(String),
    /// A malformed request parameter (`n`, `Content-Range`, …).
    BadRequest {
        code: &'static str,
        message: String,
    },
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Registry(e)
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Registry(e) => registry_status(e),
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Registry(e) => e.code(),
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "UNSUPPORTED",
            ApiError::BadRequest { code, .. } => code,
        }
    }

    /// What the client is told. Storage failures name no internal path
    /// or endpoint: the client is told what to do, the log has the detail.
    pub fn message(&self) -> String {
        match self {
            ApiError::Registry(Error::Storage(e)) => match e {
                StorageError::Full { .. } => {
                    "the registry's storage is full: free space on the storage backend (or raise its quota), then retry"
                        .into()
                }
                // The backend and the cause help whoever runs the cluster;
                // they name no object path.
                StorageError::Unavailable { .. } => format!("{e}; retry later"),
                StorageError::NotFound(_) => {
                    "an object the registry needs is missing from its storage; retry, and if it persists run `berthd fsck`"
                        .into()
                }
                _ => "the registry's storage failed; retry, and see berthd's log for the cause".into(),
            },
            ApiError::Registry(e) => e.to_string(),
            ApiError::NotFound(m) | ApiError::MethodNotAllowed(m) => m.clone(),
            ApiError::BadRequest { message, .. } => message.clone(),
        }
    }
}

fn registry_status(e: &Error) -> StatusCode {
    match e {
        Error::BlobUnknown(_)
        | Error::BlobUploadUnknown(_)
        | Error::ManifestUnknown(_)
        | Error::NameUnknown(_)
        | Error::NamespaceUnknown(_)
        | Error::IndexUnavailable(_) => StatusCode::NOT_FOUND,
        Error::BlobUploadInvalid(_)
        | Error::DigestInvalid(_)
        | Error::ManifestBlobUnknown(_)
        | Error::ManifestInvalid(_)
        | Error::NameInvalid(_)
        | Error::TagInvalid(_)
        | Error::PrefetchInvalid(_)
        | Error::SizeInvalid(_) => StatusCode::BAD_REQUEST,
        Error::UploadOutOfOrder { .. } | Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::Denied(_) => StatusCode::FORBIDDEN,
        Error::UpstreamUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Storage(StorageError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Storage(StorageError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for crate::auth::Refusal {
    fn into_response(self) -> Response {
        use crate::auth::Refusal;
        let (status, code, message, challenge) = match self {
            Refusal::Unauthorized { message, challenge } => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message, challenge)
            }
            Refusal::Denied(m) => (StatusCode::FORBIDDEN, "DENIED", m, None),
            Refusal::TooManyAttempts(m) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", m, None),
        };
        let body = serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] });
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            let detail = match &self {
                ApiError::Registry(e) => e.to_string(),
                other => other.message(),
            };
            tracing::error!(code = self.code(), error = %detail, "request failed");
        }
        let detail = match &self {
            ApiError::Registry(Error::UploadOutOfOrder { expected, .. }) => {
                serde_json::json!({ "expected_offset": expected })
            }
            ApiError::Registry(Error::RangeNotSatisfiable { size }) => serde_json::json!({ "size": size }),
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "errors": [{ "code": self.code(), "message": self.message(), "detail": detail }]
        });
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let ApiError::Registry(Error::TooManyRequests { retry_after, .. }) = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if let ApiError::Registry(Error::RangeNotSatisfiable { size }) = &self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_name_no_internal_path() {
        let path = "/docker/registry/v2/repositories/app/_uploads/x/data";
        for e in [
            StorageError::NotFound(path.into()),
            StorageError::InvalidPath(path.into()),
            StorageError::Full { path: path.into() },
            StorageError::io(path, std::io::Error::other("Directory not empty")),
            StorageError::Unavailable { backend: "s3 bucket b at http://10.0.0.5".into(), message: "timed out".into() },
        ] {
            let api = ApiError::from(Error::Storage(e));
            let m = api.message();
            assert!(!m.contains("/docker"), "{m}");
            assert!(api.status().is_server_error());
        }
        assert_eq!(ApiError::from(Error::Storage(StorageError::Full { path: path.into() })).status().as_u16(), 507);
    }
}
