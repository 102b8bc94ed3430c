//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`.

use super::range::{parse_range, RangeRequest};
use super::{set, ApiResult};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::registry::mirror::Download;
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
            BlobSource::Downloading(d) => return downloading(digest, &d, req).await,
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

/// The first pull of a mirrored blob: bytes as they arrive from upstream
/// (a range too, once the size is known). The response waits for the
/// first bytes: a download that failed before it began (a digest that did
/// not match, a stalled upstream) is a 502, not a 200 cut short.
async fn downloading(digest: &Digest, d: &Download, req: &Parts) -> ApiResult {
    use futures_util::StreamExt;
    let range_header = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match d.size.map(|size| (size, parse_range(range_header, size))) {
        None | Some((_, RangeRequest::Whole)) => (StatusCode::OK, 0, d.size),
        Some((_, RangeRequest::Partial(r))) => (StatusCode::PARTIAL_CONTENT, r.start, Some(r.len)),
        Some((size, RangeRequest::Unsatisfiable)) => return Err(Error::RangeNotSatisfiable { size }.into()),
    };
    let stream = d.stream_from(start);
    let mut stream = match len {
        Some(n) if status == StatusCode::PARTIAL_CONTENT => crate::registry::take(stream, n),
        _ => stream,
    };
    let stream = match stream.next().await {
        Some(Err(e)) => return Err(Error::Upstream(format!("the download of {digest} failed: {e}")).into()),
        Some(Ok(first)) => futures_util::stream::once(async move { Ok(first) }).chain(stream).boxed(),
        None => stream,
    };
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Some(n) = len {
        set(h, header::CONTENT_LENGTH, &n.to_string());
    }
    if let (StatusCode::PARTIAL_CONTENT, Some(size), Some(n)) = (status, d.size, len) {
        set(h, header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", start + n - 1));
    }
    set(h, "docker-content-digest", &digest.to_string());
    set(h, header::ETAG, &format!("\"{digest}\""));
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    Ok(r)
}

pub async fn delete(reg: &Registry, repo: &RepoName, digest: &Digest) -> ApiResult {
    reg.delete_blob(repo, digest).await?;
    let mut r = StatusCode::ACCEPTED.into_response();
    set(r.headers_mut(), "docker-content-digest", &digest.to_string());
    Ok(r)
}
