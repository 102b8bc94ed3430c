//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use super::range::{parse_range, RangeRequest};
use super::{set, ApiResult};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::registry::{BlobSource, Error, Namespace, Registry};
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

pub async fn get(reg: &Registry, ns: &Namespace, repo: &RepoName, digest: &Digest, req: &Parts) -> ApiResult {
    let info = if req.method == Method::HEAD {
        reg.blob_info(ns, repo, digest).await?
    } else {
        match reg.blob(ns, repo, digest).await? {
            BlobSource::Stored(info) => info,
            BlobSource::Streaming { size, stream } => return Ok(streaming(digest, size, stream)),
        }
    };
    let etag = format!("\"{digest}\"");
    let range_header = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match parse_range(range_header, info.size) {
        RangeRequest::Whole => (StatusCode::OK, 0, info.size),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.len),
        RangeRequest::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size: info.size }.into()),
    };
    let not_modified = super::etag_matches(&req.headers, &etag);
    if req.method == Method::GET && !not_modified {
        if let Some(url) = reg.blob_redirect(digest).await? {
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            set(r.headers_mut(), header::LOCATION, &url);
            set(r.headers_mut(), "docker-content-digest", &digest.to_string());
            return Ok(r);
        }
    }
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if req.method == Method::HEAD {
        let mut r = status.into_response();
        set(r.headers_mut(), header::CONTENT_LENGTH, &len.to_string());
        r
    } else {
        let stream = reg.read_blob(&info, start, len).await?;
        let mut r = Response::new(Body::from_stream(stream));
        *r.status_mut() = status;
        set(r.headers_mut(), header::CONTENT_LENGTH, &len.to_string());
        r
    };
    let h = resp.headers_mut();
    set(h, "docker-content-digest", &digest.to_string());
    set(h, header::ETAG, &etag);
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    set(h, header::CACHE_CONTROL, "max-age=31536000");
    if status == StatusCode::PARTIAL_CONTENT {
        set(h, header::CONTENT_RANGE, &format!("bytes {}-{}/{}", start, start + len - 1, info.size));
    }
    Ok(resp)
}

/// The first pull of a mirrored blob: bytes as they arrive from upstream.
fn streaming(digest: &Digest, size: Option<u64>, stream: crate::registry::BodyStream) -> Response {
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    if let Some(size) = size {
        set(h, header::CONTENT_LENGTH, &size.to_string());
    }
    set(h, "docker-content-digest", &digest.to_string());
    set(h, header::ETAG, &format!("\"{digest}\""));
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    r
}

pub async fn delete(reg: &Registry, repo: &RepoName, digest: &Digest) -> ApiResult {
    reg.delete_blob(repo, digest).await?;
    let mut r = StatusCode::ACCEPTED.into_response();
    set(r.headers_mut(), "docker-content-digest", &digest.to_string());
    Ok(r)
}
