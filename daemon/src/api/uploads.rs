//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic with
//! `?digest=`, or cross-repository mount), and `GET`/`PATCH`/`PUT`/`DELETE`
//! on the session's location.

use super::error::ApiError;
use super::range::parse_content_range;
use super::{body_stream, query, query_param, set, ApiResult};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::registry::{Error, Registry, UploadStatus};
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

fn digest_param(q: &[(String, String)]) -> Result<Option<Digest>, ApiError> {
    match query_param(q, "digest") {
        None => Ok(None),
        Some(d) => Ok(Some(d.parse().map_err(Error::from)?)),
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// 202 with the session's location and progress.
fn accepted(repo: &RepoName, status: &UploadStatus, code: StatusCode) -> Response {
    let mut r = code.into_response();
    let h = r.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{repo}/blobs/uploads/{}", status.id));
    set(h, header::RANGE, &format!("0-{}", status.size.saturating_sub(1)));
    set(h, "docker-upload-uuid", &status.id);
    set(h, header::CONTENT_LENGTH, "0");
    r
}

fn created(repo: &RepoName, digest: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{repo}/blobs/{digest}"));
    set(h, "docker-content-digest", &digest.to_string());
    set(h, header::CONTENT_LENGTH, "0");
    r
}

pub async fn start(reg: &Registry, repo: &RepoName, req: &Parts, body: Body) -> ApiResult {
    let q = query(req);
    if let Some(mount) = query_param(&q, "mount") {
        let digest: Digest = mount.parse().map_err(Error::from)?;
        if let Some(from) = query_param(&q, "from") {
            let from = RepoName::parse(from).map_err(Error::from)?;
            if reg.mount_blob(repo, &digest, &from).await? {
                return Ok(created(repo, &digest));
            }
        }
        // Not mountable: the spec says to start an ordinary session instead.
        let status = reg.start_upload(repo).await?;
        return Ok(accepted(repo, &status, StatusCode::ACCEPTED));
    }
    if let Some(digest) = digest_param(&q)? {
        let info = reg.upload_whole(repo, &digest, body_stream(body)).await?;
        return Ok(created(repo, &info.digest));
    }
    let status = reg.start_upload(repo).await?;
    Ok(accepted(repo, &status, StatusCode::ACCEPTED))
}

pub async fn status(reg: &Registry, repo: &RepoName, id: &str) -> ApiResult {
    let status = reg.upload_status(repo, id).await?;
    Ok(accepted(repo, &status, StatusCode::NO_CONTENT))
}

pub async fn patch(reg: &Registry, repo: &RepoName, id: &str, req: &Parts, body: Body) -> ApiResult {
    let start = match req.headers.get(header::CONTENT_RANGE) {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or_default();
            let (start, len) = parse_content_range(text).ok_or_else(|| {
                ApiError::from(Error::BlobUploadInvalid(format!(
                    "Content-Range {text:?} is not of the form <start>-<end>"
                )))
            })?;
            if content_length(&req.headers).is_some_and(|cl| cl != len) {
                return Err(Error::SizeInvalid(format!(
                    "Content-Range {text:?} announces {len} bytes but Content-Length differs"
                ))
                .into());
            }
            Some((start, len))
        }
    };
    let status = reg.append_chunk(repo, id, start, body_stream(body)).await?;
    Ok(accepted(repo, &status, StatusCode::ACCEPTED))
}

pub async fn finish(reg: &Registry, repo: &RepoName, id: &str, req: &Parts, body: Body) -> ApiResult {
    let q = query(req);
    let digest = digest_param(&q)?.ok_or_else(|| {
        ApiError::from(Error::DigestInvalid(
            "finishing an upload needs the blob's digest: PUT <location>?digest=<algorithm:hex>".into(),
        ))
    })?;
    let has_body = content_length(&req.headers).is_none_or(|n| n > 0);
    let body = has_body.then(|| body_stream(body));
    let info = reg.finish_upload(repo, id, &digest, body).await?;
    Ok(created(repo, &info.digest))
}

pub async fn cancel(reg: &Registry, repo: &RepoName, id: &str) -> ApiResult {
    reg.cancel_upload(repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
