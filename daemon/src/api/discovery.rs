//! `GET /v2/<name>/tags/list`, `GET /v2/_catalog` and
//! `GET /v2/<name>/referrers/<digest>`.

use super::error::ApiError;
use super::{json_response, query, query_param, set, ApiResult};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::registry::manifest::OCI_INDEX;
use crate::registry::{Namespace, Page, Registry};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::Response;

fn page_params(req: &Parts) -> Result<(Option<usize>, Option<String>), ApiError> {
    let q = query(req);
    let n = match query_param(&q, "n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::bad_request("PAGINATION_NUMBER_INVALID", format!("n={v:?} is not a non-negative integer"))
        })?),
    };
    Ok((n, query_param(&q, "last").map(str::to_string)))
}

/// Adds the `Link: <…?n=&last=>; rel="next"` header when more items follow.
fn with_link(mut r: Response, page: &Page, path: &str, n: Option<usize>) -> Response {
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let n = n.unwrap_or(page.items.len());
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        set(r.headers_mut(), header::LINK, &format!("<{path}?n={n}&last={last}>; rel=\"next\""));
    }
    r
}

pub async fn tags(reg: &Registry, ns: &Namespace, repo: &RepoName, req: &Parts) -> ApiResult {
    let (n, last) = page_params(req)?;
    let page = reg.list_tags(ns, repo, n, last.as_deref()).await?;
    let body = serde_json::json!({ "name": repo.as_str(), "tags": page.items });
    let r = json_response(StatusCode::OK, body.to_string(), "application/json");
    Ok(with_link(r, &page, &format!("/v2/{repo}/tags/list"), n))
}

pub async fn catalog(reg: &Registry, req: &Parts) -> ApiResult {
    let (n, last) = page_params(req)?;
    let page = reg.catalog(n, last.as_deref()).await?;
    let body = serde_json::json!({ "repositories": page.items });
    let r = json_response(StatusCode::OK, body.to_string(), "application/json");
    Ok(with_link(r, &page, "/v2/_catalog", n))
}

pub async fn referrers(reg: &Registry, ns: &Namespace, repo: &RepoName, subject: &Digest, req: &Parts) -> ApiResult {
    let q = query(req);
    let filter = query_param(&q, "artifactType");
    let list = reg.referrers(ns, repo, subject, filter).await?;
    let body = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list });
    let mut r = json_response(StatusCode::OK, body.to_string(), OCI_INDEX);
    if filter.is_some() {
        set(r.headers_mut(), "oci-filters-applied", "artifactType");
    }
    Ok(r)
}
