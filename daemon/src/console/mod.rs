//! The web console at `/ui/`: server-rendered pages over the registry, for
//! operators who want to see what a node holds without a CLI. It is part of
//! the HTTP layer: [`crate::api`] routes `/ui/…` here after checking the
//! listener's policy for the [`Need`] a page declares (pull to look, delete
//! to delete), so the console can never show or do more than the `/v2` API
//! would allow the same client. It reads only through the registry, and its
//! assets are compiled in: nothing is fetched at run time, and every page
//! works without JavaScript.

mod format;
mod node;
mod views;

pub use node::NodeFacts;

use crate::digest::Digest;
use crate::names::{Reference, RepoName};
use crate::registry::{Error, Registry};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::Markup;

/// Repositories per page of the list.
const PAGE_SIZE: usize = 50;

/// Where the console lives; pages link to each other relatively, so a
/// proxy may mount it under another prefix.
pub const PREFIX: &str = "/ui";

/// A console request, parsed from its path and query.
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    /// `/ui` without the slash: redirected, so relative links resolve.
    Root,
    /// `/ui/?q=…&last=…`: the repositories.
    Repositories { search: String, last: Option<String> },
    /// `/ui/repo?name=…`: a repository's tags.
    Repository { repo: RepoName, notice: Option<String> },
    /// `/ui/image?name=…&ref=…`: one manifest.
    Image { repo: RepoName, reference: Reference },
    /// `/ui/node`: this node's storage, cache, mirrors and collections.
    Node,
    /// `/ui/delete?name=…&ref=…`: the confirmation (GET) and the delete
    /// itself (POST).
    Delete { repo: RepoName, reference: Reference },
    /// `/ui/assets/<file>`.
    Asset(&'static Asset),
    /// Anything else under `/ui/`, or a bad parameter.
    NotFound(String),
}

/// What a page needs from the listener's policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// Anything the listener serves (the assets, a not-found page).
    Base,
    /// Seeing the whole registry (the catalog's rule).
    Catalog,
    Pull(RepoName),
    Delete(RepoName),
}

/// A compiled-in file.
#[derive(Debug, PartialEq)]
pub struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

static ASSETS: [Asset; 2] = [
    Asset { name: "console.css", content_type: "text/css; charset=utf-8", body: include_str!("assets/console.css") },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/console.js"),
    },
];

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

impl Page {
    /// Parses a console path (see [`owns`]) and its query.
    pub fn parse(path: &str, query: Option<&str>) -> Page {
        let q: Vec<(String, String)> =
            query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let repo = || -> Result<RepoName, String> {
            let name = param(&q, "name").ok_or("the page needs a repository: add ?name=<repository>")?;
            RepoName::parse(name).map_err(|e| format!("{name:?} is not a repository name: {e}"))
        };
        let reference = || -> Result<Reference, String> {
            let r = param(&q, "ref").ok_or("the page needs a tag or digest: add &ref=<tag or digest>")?;
            Reference::parse(r).map_err(|e| format!("{r:?} is neither a tag nor a digest: {e}"))
        };
        let page = match path.strip_prefix(PREFIX).unwrap_or("") {
            "" => Ok(Page::Root),
            "/" => Ok(Page::Repositories {
                search: param(&q, "q").unwrap_or("").trim().to_string(),
                last: param(&q, "last").map(str::to_string),
            }),
            "/repo" => repo().map(|repo| Page::Repository { repo, notice: param(&q, "deleted").map(str::to_string) }),
            "/image" => repo().and_then(|repo| Ok(Page::Image { repo, reference: reference()? })),
            "/node" => Ok(Page::Node),
            "/delete" => repo().and_then(|repo| Ok(Page::Delete { repo, reference: reference()? })),
            other => match other.strip_prefix("/assets/").and_then(|f| ASSETS.iter().find(|a| a.name == f)) {
                Some(a) => Ok(Page::Asset(a)),
                None => Err(format!("there is no console page at {path}")),
            },
        };
        page.unwrap_or_else(Page::NotFound)
    }

    pub fn need(&self) -> Need {
        match self {
            Page::Root | Page::Asset(_) | Page::NotFound(_) => Need::Base,
            Page::Repositories { .. } | Page::Node => Need::Catalog,
            Page::Repository { repo, .. } | Page::Image { repo, .. } => Need::Pull(repo.clone()),
            Page::Delete { repo, .. } => Need::Delete(repo.clone()),
        }
    }
}

/// Who asks and what the listener lets them do.
pub struct Viewer<'a> {
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// Whether this listener lets anyone delete (the buttons are shown;
    /// the delete itself is checked like any other request).
    pub may_delete: bool,
    pub facts: &'a NodeFacts,
}

/// Serves a page the caller has authorised for [`Page::need`]. `form` is
/// the decoded body of a POST.
pub async fn serve(
    reg: &Registry,
    page: Page,
    method: &Method,
    headers: &HeaderMap,
    form: &[(String, String)],
    viewer: &Viewer<'_>,
) -> Response {
    let may_delete = viewer.may_delete && reg.deletes_enabled();
    let chrome = views::Chrome { user: viewer.user, node: &viewer.facts.node };
    let res = match (page, method) {
        (Page::NotFound(m), _) => Err((StatusCode::NOT_FOUND, m)),
        (_, m) if !matches!(*m, Method::GET | Method::HEAD | Method::POST) => {
            Err((StatusCode::METHOD_NOT_ALLOWED, format!("the console does not answer {m}")))
        }
        (Page::Delete { repo, reference }, &Method::POST) => {
            return delete(reg, &chrome, &repo, &reference, headers, form).await;
        }
        (_, &Method::POST) => Err((StatusCode::METHOD_NOT_ALLOWED, "only deletes are posted".into())),
        (Page::Root, _) => return redirect(&format!("{PREFIX}/")),
        (Page::Asset(a), _) => return asset(a),
        (Page::Repositories { search, last }, _) => reg
            .repository_list(&search, PAGE_SIZE, last.as_deref())
            .await
            .map(|list| views::repositories(&chrome, &search, &list))
            .map_err(failure),
        (Page::Repository { repo, notice }, _) => reg
            .repository_tags(&repo)
            .await
            .map(|tags| views::repository(&chrome, &repo, &tags, may_delete, notice.as_deref()))
            .map_err(failure),
        (Page::Image { repo, reference }, _) => reg
            .image_view(&repo, &reference)
            .await
            .map(|img| views::image(&chrome, &repo, &reference, &img, may_delete))
            .map_err(failure),
        (Page::Node, _) => Ok(views::node(&chrome, &node::status(reg, viewer.facts).await)),
        (Page::Delete { repo, reference }, _) => {
            if !may_delete {
                Err((StatusCode::METHOD_NOT_ALLOWED, deletes_off(reg)))
            } else {
                confirm_target(reg, &repo, &reference)
                    .await
                    .map(|tags| views::confirm_delete(&chrome, &repo, &reference, &tags, None))
                    .map_err(failure)
            }
        }
    };
    match res {
        Ok(markup) => html(StatusCode::OK, markup),
        Err((status, message)) => html(status, views::problem(&chrome, status, &message)),
    }
}

/// The page for a request the listener refused (401 keeps its challenge,
/// so a browser asks for the password).
pub fn refused(status: StatusCode, message: &str, facts: &NodeFacts) -> Response {
    let chrome = views::Chrome { user: None, node: &facts.node };
    html(status, views::problem(&chrome, status, message))
}

fn deletes_off(reg: &Registry) -> String {
    if reg.deletes_enabled() {
        "this listener allows no deletes (its policy has no `delete`)".into()
    } else {
        "deletes are disabled on this registry; set storage.delete.enabled: true (and leave read-only mode) to allow them"
            .into()
    }
}

/// The tags a delete of `reference` removes (a tag: itself; a digest:
/// every tag naming it), after checking the manifest exists.
async fn confirm_target(reg: &Registry, repo: &RepoName, reference: &Reference) -> Result<Vec<String>, Error> {
    let digest = reg.resolve(repo, reference).await?;
    match reference {
        Reference::Tag(t) => Ok(vec![t.as_str().to_string()]),
        Reference::Digest(_) => reg.tags_naming(repo, &digest).await,
    }
}

/// What the user must type to confirm deleting `reference`: the tag, or
/// the digest's first 12 hex digits.
pub fn confirmation_word(reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => t.as_str().to_string(),
        Reference::Digest(d) => short(d),
    }
}

/// A digest's first 12 hex digits, as `docker images` shows them.
pub fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}

async fn delete(
    reg: &Registry,
    chrome: &views::Chrome<'_>,
    repo: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Response {
    if let Err(m) = same_origin(headers) {
        return html(StatusCode::FORBIDDEN, views::problem(chrome, StatusCode::FORBIDDEN, &m));
    }
    let typed = param(form, "confirm").unwrap_or("").trim();
    if typed != confirmation_word(reference) {
        let tags = confirm_target(reg, repo, reference).await.unwrap_or_default();
        let m = format!("type {} to confirm; nothing was deleted", confirmation_word(reference));
        return html(StatusCode::BAD_REQUEST, views::confirm_delete(chrome, repo, reference, &tags, Some(&m)));
    }
    match reg.delete_manifest(repo, reference).await {
        Ok(()) => {
            tracing::info!(target: "berthd::console", repository = %repo, reference = %reference, "deleted through the console");
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("name", repo.as_str())
                .append_pair("deleted", &reference.to_string())
                .finish();
            redirect(&format!("repo?{q}"))
        }
        Err(e) => {
            let (status, m) = failure(e);
            html(status, views::problem(chrome, status, &m))
        }
    }
}

/// Refuses a cross-site form post: a browser that holds the user's
/// password would otherwise delete for any page that posts here. Browsers
/// send `Origin` with every POST (and `Sec-Fetch-Site`); a client without
/// either is not a browser and has no ambient credentials to abuse.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" {
            return Err(format!("a delete must come from the console's own page (Sec-Fetch-Site: {site})"));
        }
    }
    if let Some(origin) = get("origin") {
        let host = get("host").unwrap_or("");
        let bare = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if bare != host {
            return Err(format!("a delete must come from the console's own page, not {origin}"));
        }
    }
    Ok(())
}

/// A registry error as a status and a message that says what to do.
fn failure(e: Error) -> (StatusCode, String) {
    let status = match e.code() {
        "NAME_UNKNOWN" | "MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" => StatusCode::NOT_FOUND,
        "NAME_INVALID" | "TAG_INVALID" | "DIGEST_INVALID" | "MANIFEST_INVALID" => StatusCode::BAD_REQUEST,
        "UNSUPPORTED" => StatusCode::METHOD_NOT_ALLOWED,
        "DENIED" => StatusCode::FORBIDDEN,
        "UNAVAILABLE" | "TOOMANYREQUESTS" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(target: "berthd::console", error = %e, "console page failed");
    }
    (status, e.to_string())
}

/// Headers every console response carries: no framing, no inline script,
/// nothing loaded from elsewhere.
fn harden(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

fn html(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(&mut r);
    r
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    harden(&mut r);
    r
}

fn asset(a: &Asset) -> Response {
    let mut r = Response::new(Body::from(a.body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    // The assets change only with the binary.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    harden(&mut r);
    r
}

#[cfg(test)]
mod tests;
