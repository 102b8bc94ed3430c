//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`, with
//! `Accept` negotiation on reads.

use super::error::ApiError;
use super::{set, ApiResult};
use crate::names::{Reference, RepoName};
use crate::registry::manifest::{MAX_MANIFEST_SIZE, SUPPORTED};
use crate::registry::{Error, Namespace, Registry};
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

/// Whether a client's `Accept` header admits `media_type`. A header that
/// lists no manifest type at all (absent, `*/*`, `application/json`) admits
/// anything, as registry:2 does.
fn accepts(accept: &[String], media_type: &str) -> bool {
    let types: Vec<&str> = accept
        .iter()
        .flat_map(|h| h.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty())
        .collect();
    if types.iter().any(|t| *t == media_type || *t == "*/*" || *t == "application/*") {
        return true;
    }
    !types.iter().any(|t| SUPPORTED.contains(t) || t.starts_with("application/vnd.docker.distribution.manifest"))
}

pub async fn get(reg: &Registry, ns: &Namespace, repo: &RepoName, reference: &Reference, req: &Parts) -> ApiResult {
    let m = reg.manifest(ns, repo, reference).await?;
    let accept: Vec<String> =
        req.headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
    if !accepts(&accept, &m.media_type) {
        return Err(Error::ManifestUnknown(format!(
            "{repo}:{reference} is stored as {} but the request accepts only {}; add that type to the Accept header",
            m.media_type,
            accept.join(", ")
        ))
        .into());
    }
    let etag = format!("\"{}\"", m.digest);
    let len = m.body.len();
    if req.method == Method::GET {
        // A pull (also one the client already holds: 304), for retention's
        // pull times; a HEAD only asks.
        reg.record_pull(ns, repo, &m.digest);
    }
    let not_modified = super::etag_matches(&req.headers, &etag);
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if req.method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        Response::new(Body::from(m.body))
    };
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, &m.media_type);
    set(h, header::CONTENT_LENGTH, &len.to_string());
    set(h, "docker-content-digest", &m.digest.to_string());
    set(h, header::ETAG, &etag);
    Ok(resp)
}

/// Reads the body up to the manifest size limit.
async fn read_limited(body: Body) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::ManifestInvalid(format!("the request body could not be read: {e}")))?;
        if buf.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(
                Error::TooLarge(format!("manifest is larger than the limit of {MAX_MANIFEST_SIZE} bytes")).into()
            );
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub async fn put(reg: &Registry, repo: &RepoName, reference: &Reference, req: &Parts, body: Body) -> ApiResult {
    let content_type = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(len) = req.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
        if len > MAX_MANIFEST_SIZE {
            return Err(
                Error::TooLarge(format!("manifest is {len} bytes; the limit is {MAX_MANIFEST_SIZE} bytes")).into()
            );
        }
    }
    let body = read_limited(body).await?;
    let pushed = reg.put_manifest(repo, reference, content_type.as_deref(), body).await?;
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{repo}/manifests/{}", pushed.digest));
    set(h, "docker-content-digest", &pushed.digest.to_string());
    set(h, header::CONTENT_LENGTH, "0");
    if let Some(subject) = &pushed.subject {
        set(h, "oci-subject", &subject.to_string());
    }
    Ok(r)
}

pub async fn delete(reg: &Registry, repo: &RepoName, reference: &Reference) -> ApiResult {
    reg.delete_manifest(repo, reference).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[cfg(test)]
mod tests {
    use super::accepts;
    use crate::registry::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    fn a(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&a("*/*"), OCI_INDEX));
        assert!(accepts(&a("application/json"), OCI_INDEX));
        assert!(accepts(&a(&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9")), OCI_MANIFEST));
        assert!(!accepts(&a(DOCKER_MANIFEST), OCI_INDEX));
        assert!(accepts(&[DOCKER_MANIFEST.to_string(), OCI_INDEX.to_string()], OCI_INDEX));
    }
}
