//! The HTTP layer: parses each request once into a [`route::Route`], calls
//! the registry, and renders the result or the error. It never touches a
//! storage backend.

mod blobs;
mod discovery;
mod drain;
pub mod error;
mod layers;
mod manifests;
pub mod range;
pub mod route;
mod ui;
mod uploads;

use crate::auth::{Access, Action, Gate, Identity, Refusal, Scope};
use crate::listen::PeerInfo;
use crate::names::RepoName;
use crate::registry::{Error, Registry};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use error::ApiError;
use http_body_util::BodyExt;
use hyper::body::Frame;
use route::{Route, RouteError};
use std::sync::Arc;
use std::time::Instant;

/// Everything a request handler needs.
pub struct AppState {
    pub registry: Arc<Registry>,
    /// Extra headers from `http.headers`, added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub access_log: bool,
    /// `http.host` without a trailing slash: makes `Location` headers
    /// absolute, as registry:2 does behind a proxy. Empty: relative.
    pub base_url: String,
    /// Credential checks, shared by all listeners.
    pub gate: Arc<Gate>,
    /// What this listener allows.
    pub access: Access,
    /// Longest pause while a request body is read (`http.timeouts.body`).
    pub body_timeout: std::time::Duration,
    /// This listener's address, for its metrics.
    pub listener: String,
    /// What the console's node page says of this node.
    pub node: Arc<crate::console::NodeFacts>,
}

pub type Shared = Arc<AppState>;
pub type ApiResult = Result<Response, ApiError>;

/// The `/v2` API as an axum router (one fallback: routing is ours). Serve
/// it with [`crate::listen::serve`], which gives each request its
/// `ConnectInfo<PeerInfo>`.
pub fn router(state: Shared) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<Shared>, ConnectInfo(peer): ConnectInfo<PeerInfo>, req: Request) -> Response {
    let started = Instant::now();
    crate::metrics::get().http_in_flight.inc();
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, drain::drain_on_drop(body, state.body_timeout));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let mut user = "-".to_string();
    let mut label = "unknown";
    let mut resp = match route::parse(&path) {
        Ok(route) => {
            label = route.label();
            let authz = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            let needs = scopes(&route, req.method(), &req);
            match authorize(&state, authz, needs, &peer).await {
                Ok(identity) => {
                    user = match identity {
                        Identity::Anonymous => "-".to_string(),
                        Identity::User(name) => name,
                        Identity::Token(t) => t.subject,
                    };
                    let received = crate::metrics::get()
                        .http_bytes_in
                        .get_or_create(&crate::metrics::RouteLabels { route: label })
                        .clone();
                    let req = req.map(|b| Body::new(b.map_frame(move |f| count(&received, f))));
                    match route {
                        Route::Console => ui::page(&state, &user, req).await,
                        route => handle(&state, route, req).await.unwrap_or_else(IntoResponse::into_response),
                    }
                }
                Err(refusal) => {
                    let listener = crate::metrics::ListenerLabels { listener: state.listener.clone() };
                    crate::metrics::get().auth_failures.get_or_create(&listener).inc();
                    match route {
                        Route::Console => ui::refused(&state, refusal),
                        _ => refusal.into_response(),
                    }
                }
            }
        }
        Err(RouteError::NotFound) => {
            ApiError::NotFound(format!("no API endpoint at {path}; the registry API is under /v2/")).into_response()
        }
        Err(RouteError::Invalid(e)) => ApiError::from(e).into_response(),
    };
    let h = resp.headers_mut();
    if !state.base_url.is_empty() {
        if let Some(loc) = h.get(header::LOCATION).and_then(|v| v.to_str().ok()).filter(|l| l.starts_with('/')) {
            let absolute = format!("{}{loc}", state.base_url);
            set(h, header::LOCATION, &absolute);
        }
    }
    h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    for (name, value) in &state.headers {
        h.append(name.clone(), value.clone());
    }
    // Counted, timed and logged when the response body ends (or the client goes).
    let labels =
        crate::metrics::RequestLabels { route: label, method: method.to_string(), status: resp.status().as_u16() };
    let m = crate::metrics::get();
    m.http_requests.get_or_create(&labels).inc();
    let sent = m.http_bytes_out.get_or_create(&crate::metrics::RouteLabels { route: label }).clone();
    // registry:2's fields; never a credential (the path carries none, the
    // query and headers but the user agent are not logged).
    let access = state.access_log.then(|| AccessEntry { remote: peer.addr.to_string(), user, path, user_agent });
    let mut done = Finished { labels, started, bytes: 0, access };
    resp.map(|b| {
        Body::new(b.map_frame(move |f| {
            // The whole guard moves in (not only its counter): it drops
            // with the body.
            let done = &mut done;
            if let Some(data) = f.data_ref() {
                done.bytes += data.len() as u64;
            }
            count(&sent, f)
        }))
    })
}

/// Adds a data frame's length to `counter`.
fn count(counter: &prometheus_client::metrics::counter::Counter, frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(data) = frame.data_ref() {
        counter.inc_by(data.len() as u64);
    }
    frame
}

/// A request whose response body is being sent; dropped when it ended.
struct Finished {
    labels: crate::metrics::RequestLabels,
    started: Instant,
    /// Body bytes sent so far.
    bytes: u64,
    access: Option<AccessEntry>,
}

/// What the access log says of a request besides its metrics labels.
struct AccessEntry {
    remote: String,
    user: String,
    path: String,
    user_agent: String,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let m = crate::metrics::get();
        m.http_in_flight.dec();
        let elapsed = self.started.elapsed();
        m.http_duration.get_or_create(&self.labels).observe(elapsed.as_secs_f64());
        if let Some(a) = &self.access {
            tracing::info!(
                target: "berthd::access",
                remote = %a.remote,
                user = %a.user,
                method = %self.labels.method,
                path = %a.path,
                status = self.labels.status,
                bytes = self.bytes,
                ms = elapsed.as_millis() as u64,
                user_agent = %a.user_agent,
                "request"
            );
        }
    }
}

/// What a request needs from the listener's policy.
fn scopes(route: &Route, method: &Method, req: &Request) -> Vec<Scope> {
    let repo = |name: &RepoName, action| Scope::Repository { name: name.as_str().to_string(), action };
    match route {
        Route::Base => vec![Scope::Base],
        Route::Catalog => vec![Scope::Catalog],
        Route::Console => vec![ui::scope(req)],
        Route::Tags { repo: r }
        | Route::Referrers { repo: r, .. }
        | Route::LayerIndex { repo: r, .. }
        | Route::LayerTar { repo: r, .. } => vec![repo(r, Action::Pull)],
        Route::Manifest { repo: r, .. }
        | Route::BadManifestRef { repo: r, .. }
        | Route::Blob { repo: r, .. }
        | Route::LayerPrefetch { repo: r, .. } => match *method {
            Method::GET | Method::HEAD => vec![repo(r, Action::Pull)],
            Method::DELETE => vec![repo(r, Action::Delete)],
            _ => vec![repo(r, Action::Push)],
        },
        Route::Upload { repo: r, .. } => vec![repo(r, Action::Push)],
        Route::UploadStart { repo: r } => {
            let mut s = vec![repo(r, Action::Push)];
            let q = query_of(req.uri());
            if let Some(from) = query_param(&q, "from") {
                s.push(Scope::Repository { name: from.to_string(), action: Action::Pull });
            }
            s
        }
    }
}

/// Checks the request against the listener's policy. A password that
/// needs bcrypt is checked on the blocking pool, so logins do not slow down
/// the requests served beside them.
async fn authorize(
    state: &AppState,
    authz: Option<String>,
    scopes: Vec<Scope>,
    peer: &PeerInfo,
) -> Result<Identity, Refusal> {
    let authz = authz.as_deref();
    if state.gate.is_cheap(authz) {
        return state.gate.check(&state.access, authz, peer.client_cert.as_deref(), peer.addr.ip(), &scopes);
    }
    let (gate, policy, authz, cert, ip) =
        (state.gate.clone(), state.access, authz.map(str::to_string), peer.client_cert.clone(), peer.addr.ip());
    tokio::task::spawn_blocking(move || gate.check(&policy, authz.as_deref(), cert.as_deref(), ip, &scopes))
        .await
        .unwrap_or_else(|e| Err(Refusal::Denied(format!("the credential check failed: {e}"))))
}

async fn handle(state: &AppState, route: Route, req: Request) -> ApiResult {
    let reg = &state.registry;
    let (parts, body) = req.into_parts();
    let req = &parts;
    let method = req.method.clone();
    let not_allowed = || ApiError::MethodNotAllowed(format!("{method} is not supported on {}", req.uri.path()));
    // containerd names the registry a request is for in `?ns=`; the
    // registry decides, once, whether it serves that name.
    let q = query(req);
    let ns_params: Vec<(&str, &str)> =
        q.iter().filter(|(k, _)| k.eq_ignore_ascii_case("ns")).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ns = reg.namespace(&ns_params)?;
    let writes = !matches!(method, Method::GET | Method::HEAD);
    match &route {
        Route::Manifest { repo, .. }
        | Route::BadManifestRef { repo, .. }
        | Route::Blob { repo, .. }
        | Route::UploadStart { repo }
        | Route::Upload { repo, .. }
            if writes =>
        {
            reg.check_writable_name(&ns, repo)?
        }
        _ => {}
    }
    match (route, &method) {
        (Route::Base, &Method::GET | &Method::HEAD) => {
            Ok(json_response(StatusCode::OK, "{}".into(), "application/json"))
        }
        (Route::Catalog, &Method::GET) => discovery::catalog(reg, req).await,
        (Route::Tags { repo }, &Method::GET) => discovery::tags(reg, &ns, &repo, req).await,
        (Route::Referrers { repo, subject }, &Method::GET) => {
            discovery::referrers(reg, &ns, &repo, &subject, req).await
        }
        (Route::Manifest { repo, reference }, &Method::GET | &Method::HEAD) => {
            manifests::get(reg, &ns, &repo, &reference, req).await
        }
        (Route::Manifest { repo, reference }, &Method::PUT) => manifests::put(reg, &repo, &reference, req, body).await,
        (Route::Manifest { repo, reference }, &Method::DELETE) => manifests::delete(reg, &repo, &reference).await,
        (Route::BadManifestRef { reference, .. }, &Method::PUT) => {
            Err(match crate::names::Reference::parse(&reference) {
                Err(e) => Error::from(e).into(),
                Ok(_) => not_allowed(),
            })
        }
        (Route::BadManifestRef { repo, reference }, &Method::GET | &Method::HEAD | &Method::DELETE) => {
            Err(Error::ManifestUnknown(format!("{repo}:{reference} (no manifest can have that reference)")).into())
        }
        (Route::Blob { repo, digest }, &Method::GET | &Method::HEAD) => blobs::get(reg, &ns, &repo, &digest, req).await,
        (Route::Blob { repo, digest }, &Method::DELETE) => blobs::delete(reg, &repo, &digest).await,
        (Route::UploadStart { repo }, &Method::POST) => uploads::start(reg, &repo, req, body).await,
        (Route::Upload { repo, id }, &Method::GET) => uploads::status(reg, &repo, &id).await,
        (Route::Upload { repo, id }, &Method::PATCH) => uploads::patch(reg, &repo, &id, req, body).await,
        (Route::Upload { repo, id }, &Method::PUT) => uploads::finish(reg, &repo, &id, req, body).await,
        (Route::Upload { repo, id }, &Method::DELETE) => uploads::cancel(reg, &repo, &id).await,
        (Route::LayerIndex { repo, digest }, &Method::GET) => layers::index(reg, &ns, &repo, &digest).await,
        (Route::LayerTar { repo, digest }, &Method::GET) => layers::tar(reg, &ns, &repo, &digest, req).await,
        (Route::LayerPrefetch { repo, digest }, &Method::GET) => layers::prefetch(reg, &ns, &repo, &digest).await,
        (Route::LayerPrefetch { repo, digest }, &Method::PUT) => {
            layers::put_prefetch(reg, &ns, &repo, &digest, body).await
        }
        // Served by `ui::page` before this.
        (Route::Console, _) => Err(not_allowed()),
        _ => Err(not_allowed()),
    }
}

/// A response with a body and content type.
pub(crate) fn json_response(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Sets a header from a string the registry produced (digests, paths).
pub(crate) fn set(h: &mut HeaderMap, name: impl axum::http::header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Whether `If-None-Match` names `etag` (the client has this content).
pub(crate) fn etag_matches(h: &HeaderMap, etag: &str) -> bool {
    h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

/// Decoded query parameters.
pub(crate) fn query(req: &Parts) -> Vec<(String, String)> {
    query_of(&req.uri)
}

fn query_of(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

pub(crate) fn query_param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The request body as a stream for the registry.
pub(crate) fn body_stream(body: Body) -> crate::registry::BodyStream {
    use futures_util::TryStreamExt;
    Box::pin(TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other))
}

/// The `http.debug.addr` endpoint: `/debug/health` (and `/healthz`) answer
/// 200 when the storage backend answers, 503 with the reason otherwise.
pub fn debug_router(registry: Arc<Registry>) -> Router {
    Router::new().fallback(move |req: Request| {
        let registry = registry.clone();
        async move {
            match req.uri().path() {
                "/metrics" => {
                    let mut r = crate::metrics::get().render().into_response();
                    set(r.headers_mut(), header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE);
                    r
                }
                "/debug/health" | "/healthz" => match registry.check_storage().await {
                    Ok(()) => json_response(StatusCode::OK, "{}".into(), "application/json"),
                    Err(e) => {
                        let body = serde_json::json!({ "storage": e.to_string() }).to_string();
                        json_response(StatusCode::SERVICE_UNAVAILABLE, body, "application/json")
                    }
                },
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    })
}
