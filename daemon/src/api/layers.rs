//! Berth's layer extension for the snapshotter:
//! `GET /v2/<name>/_berth/layer/<digest>/index` (the seek index, JSON) and
//! `GET /v2/<name>/_berth/layer/<digest>/tar` with `Range: bytes=a-b`
//! (uncompressed bytes of the layer's tar). Both need pull access to the
//! repository, like the blob itself. `GET`/`PUT
//! /v2/<name>/_berth/layer/<digest>/prefetch`: the layer's prefetch list
//! (pull to read, push to record). See docs/api.md.

use super::range::{parse_range, RangeRequest};
use super::{json_response, set, ApiError, ApiResult};
use crate::digest::Digest;
use crate::layerindex::MAX_RANGE;
use crate::names::RepoName;
use crate::registry::prefetch::MAX_PREFETCH_BODY;
use crate::registry::{Error, Namespace, Registry};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;

pub async fn index(reg: &Registry, ns: &Namespace, repo: &RepoName, digest: &Digest) -> ApiResult {
    let idx = reg.layer_index(ns, repo, digest).await?;
    let body = serde_json::to_string(&*idx).expect("index serializes");
    let mut r = json_response(StatusCode::OK, body, "application/json");
    // Content-addressed: the index of a digest never changes.
    set(r.headers_mut(), header::CACHE_CONTROL, "max-age=31536000, immutable");
    Ok(r)
}

pub async fn tar(reg: &Registry, ns: &Namespace, repo: &RepoName, digest: &Digest, req: &Parts) -> ApiResult {
    let range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // The size is not known before the index is read; parse against the
    // largest size so `bytes=a-b` keeps its numbers, then clamp.
    let (start, len) = match parse_range(range, u64::MAX) {
        RangeRequest::Partial(r) => (r.start, r.len.min(MAX_RANGE)),
        _ => {
            return Err(ApiError::BadRequest {
                code: "RANGE_INVALID",
                message: format!(
                    "uncompressed layer reads need a `Range: bytes=<start>-<end>` header of at most {MAX_RANGE} bytes"
                ),
            })
        }
    };
    let (bytes, size) = reg.layer_range(ns, repo, digest, start, len).await?;
    let end = start + bytes.len() as u64 - 1;
    let n = bytes.len();
    let mut r = Response::new(axum::body::Body::from(bytes));
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    set(r.headers_mut(), header::CONTENT_LENGTH, &n.to_string());
    set(r.headers_mut(), header::CONTENT_RANGE, &format!("bytes {start}-{end}/{size}"));
    set(r.headers_mut(), header::CONTENT_TYPE, "application/x-tar");
    Ok(r)
}

pub async fn prefetch(reg: &Registry, ns: &Namespace, repo: &RepoName, digest: &Digest) -> ApiResult {
    match reg.layer_prefetch(ns, repo, digest).await? {
        Some(list) => {
            let body = serde_json::to_string(&list).expect("a list serializes");
            Ok(json_response(StatusCode::OK, body, "application/json"))
        }
        None => Err(ApiError::NotFound(format!(
            "no prefetch list is recorded for {digest} yet; the first lazy start of the layer records one"
        ))),
    }
}

pub async fn put_prefetch(
    reg: &Registry,
    ns: &Namespace,
    repo: &RepoName,
    digest: &Digest,
    body: axum::body::Body,
) -> ApiResult {
    let body = axum::body::to_bytes(body, MAX_PREFETCH_BODY).await.map_err(|_| {
        Error::TooLarge(format!("a prefetch list is at most {MAX_PREFETCH_BODY} bytes (or the body broke off)"))
    })?;
    reg.put_layer_prefetch(ns, repo, digest, &body).await?;
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::CREATED;
    Ok(r)
}
