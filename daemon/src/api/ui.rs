//! Hands `/ui/…` requests to the console: the scope a page needs, the
//! form body of a delete, and the page for a refused request.

use super::{AppState, Request};
use crate::auth::{Action, Refusal, Scope};
use crate::console::{Need, Page, Viewer};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// A console form is a confirmation word; more is not a form of ours.
const MAX_FORM: usize = 16 * 1024;

fn page_of(req: &Request) -> Page {
    Page::parse(req.uri().path(), req.uri().query())
}

/// What the listener's policy must allow for this console request.
pub(super) fn scope(req: &Request) -> Scope {
    let repo = |name: crate::names::RepoName, action| Scope::Repository { name: name.as_str().to_string(), action };
    match page_of(req).need() {
        Need::Base => Scope::Base,
        Need::Catalog => Scope::Catalog,
        Need::Pull(name) => repo(name, Action::Pull),
        Need::Delete(name) => repo(name, Action::Delete),
    }
}

/// Serves an authorised console request.
pub(super) async fn page(state: &AppState, user: &str, req: Request) -> Response {
    let page = page_of(&req);
    let (parts, body) = req.into_parts();
    let mut form = Vec::new();
    if parts.method == axum::http::Method::POST {
        let limited = http_body_util::Limited::new(body, MAX_FORM);
        match limited.collect().await {
            Ok(b) => form = form_urlencoded::parse(&b.to_bytes()).into_owned().collect(),
            Err(e) => {
                let message = format!("the form could not be read: {e}");
                return crate::console::refused(StatusCode::BAD_REQUEST, &message, &state.node);
            }
        }
    }
    let access = state.access;
    let viewer = Viewer {
        user: (user != "-").then_some(user),
        may_delete: access.anonymous.delete || access.authenticated.delete,
        facts: &state.node,
    };
    crate::console::serve(&state.registry, page, &parts.method, &parts.headers, &form, &viewer).await
}

/// A refused console request as a page; a 401 keeps its challenge, so the
/// browser asks for a user and password.
pub(super) fn refused(state: &AppState, refusal: Refusal) -> Response {
    let api = refusal.clone().into_response();
    let (status, message) = match refusal {
        Refusal::Unauthorized { message, .. } | Refusal::Denied(message) | Refusal::TooManyAttempts(message) => {
            (api.status(), message)
        }
    };
    let mut page = crate::console::refused(status, &message, &state.node);
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = api.headers().get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}
