//! Upstream registries for pull-through mirroring: a client that speaks the
//! distribution API to one upstream, with its credentials, Docker Hub's
//! naming rules (`library/` for one-word names) and the token flow.
//!
//! Nothing an upstream sends is trusted ([`crate::registry::mirror`]
//! verifies every byte against its digest); this client also keeps an
//! upstream from taking the node down or taking secrets away:
//! - **credentials go only where they were configured for** ([`auth`]):
//!   never before a challenge, to a token realm only on the upstream's own
//!   host (or hosts the mirror lists; Docker Hub's `auth.docker.io` is
//!   known), and never over plain HTTP to another machine unless the
//!   mirror says so;
//! - **every request has a deadline** (`mirrors[].timeout`): a frozen
//!   upstream is an error after it, not a hung request;
//! - **every body has a size limit**: manifests as pushes (4 MiB), token
//!   responses 1 MiB;
//! - **429 is honoured**: after a `Retry-After` the upstream is left alone
//!   until then, and callers learn how long to wait.
//!
//! Outbound TLS uses berthd's own trust (system roots plus the cluster CA),
//! shared with the S3 backend.

pub mod challenge;

use crate::digest::Digest;
use crate::media_types::{MAX_MANIFEST_SIZE, SUPPORTED};
use bytes::{Bytes, BytesMut};
use challenge::Challenge;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of one upstream request (`mirrors[].timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause within a blob download before it counts as broken.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Longest an upstream's `Retry-After` is honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Wait after a 429 without `Retry-After`.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);

/// One configured upstream (`mirrors:` entry or registry:2's `proxy`).
#[derive(Clone)]
pub struct MirrorConfig {
    /// The registry host containerd asks for (`?ns=`), e.g. `docker.io`.
    pub name: String,
    /// Base URL of the upstream API, e.g. `https://registry-1.docker.io`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How long a tag's digest is trusted before it is revalidated upstream.
    pub tag_ttl: Duration,
    /// Repository patterns (`*` wildcards) that may be pulled; empty = all.
    pub allow: Vec<String>,
    /// Deadline of each upstream request (a blob download: until its
    /// headers arrive; then each pause may last a minute).
    pub timeout: Duration,
    /// Hosts besides the upstream's own whose token realms get the
    /// credentials (`mirrors[].tokenhosts`).
    pub token_hosts: Vec<String>,
    /// Send credentials over plain HTTP to a host that is not loopback
    /// (`mirrors[].plainhttpcredentials`); off, they are refused there.
    pub plain_http_credentials: bool,
}

impl std::fmt::Debug for MirrorConfig {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("tag_ttl", &self.tag_ttl)
            .field("allow", &self.allow)
            .field("timeout", &self.timeout)
            .field("token_hosts", &self.token_hosts)
            .finish_non_exhaustive()
    }
}

/// How talking to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name} ({url}) is unreachable: {message}")]
    Unreachable { name: String, url: String, message: String },
    #[error("upstream {name} did not answer {what} within {secs} s (mirrors[].timeout)")]
    Timeout { name: String, what: String, secs: u64 },
    #[error("upstream {name} refused access to {repo}: {message}")]
    Refused { name: String, repo: String, message: String },
    #[error("upstream {name} answered {status} for {what}")]
    Protocol { name: String, status: u16, what: String },
    #[error("upstream {name} sent an unusable answer for {what}: {why}")]
    Invalid { name: String, what: String, why: String },
    #[error("upstream {name} asks for a pause (429 Too Many Requests); retry in {} s", retry_after.as_secs())]
    TooManyRequests { name: String, retry_after: Duration },
}

impl UpstreamError {
    /// Whether the upstream is at fault (as opposed to refusing us): the
    /// last known answer may then stand in for a fresh one.
    pub fn is_upstream_fault(&self) -> bool {
        !matches!(self, UpstreamError::Refused { .. })
    }
}

/// A manifest as the upstream served it.
pub struct UpstreamManifest {
    pub body: Bytes,
    pub media_type: Option<String>,
}

pub struct Upstream {
    pub cfg: MirrorConfig,
    base: reqwest::Url,
    client: reqwest::Client,
    /// Bearer tokens by scope, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The upstream asked for Basic credentials once: send them with
    /// every request from then on (to its own host only).
    wants_basic: AtomicBool,
    /// No requests before this (a 429's `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// What the console shows of this mirror.
    pub activity: Activity,
}

/// How a mirror has been serving, since this node started.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests answered from what the registry already held.
    pub hits: std::sync::atomic::AtomicU64,
    /// Requests that had to ask the upstream.
    pub misses: std::sync::atomic::AtomicU64,
    last_error: Mutex<Option<(std::time::SystemTime, String)>>,
}

impl Activity {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    /// The last failure talking to the upstream, and when.
    pub fn last_error(&self) -> Option<(std::time::SystemTime, String)> {
        self.last_error.lock().unwrap().clone()
    }

    fn failed(&self, message: String) {
        *self.last_error.lock().unwrap() = Some((std::time::SystemTime::now(), message));
    }
}

/// Reads a response body, refusing more than `limit` bytes (announced or
/// sent), within `deadline`.
async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, std::result::Result<String, ()>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Ok(format!("it announced {} bytes; the limit is {limit}", resp.content_length().unwrap_or(0))));
    }
    let mut body = resp.bytes_stream();
    let mut out = BytesMut::new();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), body.next()).await.map_err(|_| Err(()))?;
        match next {
            None => return Ok(out.freeze()),
            Some(Ok(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(Ok(format!("it sent more than {limit} bytes")));
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(e)) => return Err(Ok(format!("the body broke off: {e}"))),
        }
    }
}

/// A mirror whose client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("mirror {name}: cannot build HTTP client: {source}")]
    Client { name: String, source: reqwest::Error },
    #[error("mirror {name}: url {url:?} is not a URL: {detail}")]
    Url { name: String, url: String, detail: String },
}

impl Upstream {
    pub fn new(cfg: MirrorConfig, tls: Arc<rustls::ClientConfig>) -> Result<Upstream, SetupError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(READ_TIMEOUT)
            // Blob downloads are redirected to storage (S3, a CDN): reqwest
            // follows redirects and drops Authorization when the host
            // changes, so credentials never follow them.
            .user_agent(concat!("berthd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| SetupError::Client { name: cfg.name.clone(), source })?;
        let base = reqwest::Url::parse(cfg.url.trim_end_matches('/')).map_err(|e| SetupError::Url {
            name: cfg.name.clone(),
            url: cfg.url.clone(),
            detail: e.to_string(),
        })?;
        Ok(Upstream {
            cfg,
            base,
            client,
            tokens: Mutex::default(),
            wants_basic: AtomicBool::new(false),
            activity: Activity::default(),
            paused_until: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether the allow-list admits `repo` (as the client named it).
    pub fn allows(&self, repo: &str) -> bool {
        self.cfg.allow.is_empty() || self.cfg.allow.iter().any(|p| crate::names::glob_match(p, repo))
    }

    fn is_docker_hub(&self) -> bool {
        self.cfg.name == "docker.io" || self.base.host_str().is_some_and(|h| h.ends_with("docker.io"))
    }

    /// The repository name upstream: Docker Hub puts one-word names under
    /// `library/`.
    pub fn upstream_repo(&self, repo: &str) -> String {
        if self.is_docker_hub() && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable { name: self.cfg.name.clone(), url: self.cfg.url.clone(), message: e.to_string() }
    }

    fn timeout(&self, what: &str) -> UpstreamError {
        UpstreamError::Timeout { name: self.cfg.name.clone(), what: what.to_string(), secs: self.cfg.timeout.as_secs() }
    }

    fn invalid(&self, what: &str, why: impl Into<String>) -> UpstreamError {
        UpstreamError::Invalid { name: self.cfg.name.clone(), what: what.to_string(), why: why.into() }
    }

    fn refused(&self, repo: &str, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Refused { name: self.cfg.name.clone(), repo: repo.to_string(), message: message.into() }
    }

    fn policy(&self) -> challenge::CredentialPolicy<'_> {
        challenge::CredentialPolicy {
            upstream: &self.base,
            token_hosts: &self.cfg.token_hosts,
            docker_hub: self.is_docker_hub(),
            plain_http: self.cfg.plain_http_credentials,
        }
    }

    /// `Basic …` for `url`, when credentials are configured and may go there.
    fn basic_for(&self, url: &reqwest::Url) -> Option<String> {
        use base64::Engine;
        let (u, p) = (self.cfg.username.as_ref()?, self.cfg.password.as_ref()?);
        if !self.policy().may_send_to(url) {
            return None;
        }
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }

    /// Refuses while the upstream asked for a pause.
    fn check_paused(&self) -> Result<(), UpstreamError> {
        let until = *self.paused_until.lock().unwrap();
        match until.map(|t| t.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() => {
                Err(UpstreamError::TooManyRequests { name: self.cfg.name.clone(), retry_after: left })
            }
            _ => Ok(()),
        }
    }

    /// Records a 429 and returns the error for it.
    fn paused(&self, resp: &reqwest::Response) -> UpstreamError {
        let wait = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_BACKOFF)
            .min(MAX_BACKOFF);
        *self.paused_until.lock().unwrap() = Some(Instant::now() + wait);
        tracing::warn!(mirror = %self.cfg.name, "upstream answered 429; pausing requests to it for {} s", wait.as_secs());
        UpstreamError::TooManyRequests { name: self.cfg.name.clone(), retry_after: wait }
    }

    /// Counts an upstream request for the metrics: its time to the
    /// response headers, and whether it failed (no answer, 429, 5xx).
    fn observe(&self, started: Instant, res: &Result<reqwest::Response, UpstreamError>) {
        let m = crate::metrics::get();
        let mirror = crate::metrics::MirrorLabels { mirror: self.cfg.name.clone() };
        m.upstream_requests.get_or_create(&mirror).inc();
        m.upstream_duration.get_or_create(&mirror).observe(started.elapsed().as_secs_f64());
        let failure = match res {
            Err(e) => Some(e.to_string()),
            Ok(r) if r.status().is_server_error() => Some(format!("{} answered {}", self.cfg.url, r.status())),
            Ok(_) => None,
        };
        if let Some(message) = failure {
            m.upstream_errors.get_or_create(&mirror).inc();
            self.activity.failed(message);
        }
    }

    /// Sends a request for `repo` within the mirror's deadline, answering
    /// an auth challenge once.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        accept: Option<&str>,
        deadline: Instant,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.check_paused()?;
        let url = self.base.join(path).map_err(|e| self.invalid(path, e.to_string()))?;
        let scope = format!("repository:{repo}:pull");
        let cached =
            self.tokens.lock().unwrap().get(&scope).filter(|(_, exp)| *exp > Instant::now()).map(|(t, _)| t.clone());
        let first_auth = match cached {
            Some(t) => Some(format!("Bearer {t}")),
            None if self.wants_basic.load(Relaxed) => self.basic_for(&url),
            None => None,
        };
        let send = |auth: Option<String>| {
            let mut r = self.client.request(method.clone(), url.clone());
            if let Some(a) = accept {
                r = r.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            async move {
                let started = Instant::now();
                let res = match tokio::time::timeout_at(deadline.into(), r.send()).await {
                    Err(_) => Err(self.timeout(path)),
                    Ok(Err(e)) => Err(self.unreachable(crate::error_chain::chain(&e))),
                    Ok(Ok(resp)) if resp.status() == StatusCode::TOO_MANY_REQUESTS => Err(self.paused(&resp)),
                    Ok(Ok(resp)) => Ok(resp),
                };
                self.observe(started, &res);
                res
            }
        };
        let first = send(first_auth).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(challenge::parse_challenge);
        let auth = match challenge {
            Some(Challenge::Bearer { realm, service, scope: challenged }) => {
                let token = self
                    .fetch_token(&realm, service.as_deref(), challenged.as_deref().unwrap_or(&scope), repo, deadline)
                    .await?;
                self.tokens.lock().unwrap().insert(scope, (token.0.clone(), token.1));
                format!("Bearer {}", token.0)
            }
            Some(Challenge::Basic) => {
                if self.cfg.username.is_none() {
                    return Err(
                        self.refused(repo, "it requires credentials; set username and password for this mirror")
                    );
                }
                let basic = self.basic_for(&url).ok_or_else(|| {
                    self.refused(
                        repo,
                        format!(
                            "it asks for credentials over plain HTTP ({}); they are not sent there unless the mirror sets plainhttpcredentials: true — use https",
                            self.base
                        ),
                    )
                })?;
                self.wants_basic.store(true, Relaxed);
                basic
            }
            None => return Err(self.refused(repo, "401 without a usable WWW-Authenticate challenge")),
        };
        let second = send(Some(auth)).await?;
        if second.status() == StatusCode::UNAUTHORIZED || second.status() == StatusCode::FORBIDDEN {
            return Err(self.refused(
                repo,
                format!("{} with our credentials; check the mirror's username and password", second.status()),
            ));
        }
        Ok(second)
    }

    /// The bearer token flow: GET realm?service=&scope= (with the basic
    /// credentials only where [`challenge::CredentialPolicy`] allows), answer
    /// `{token|access_token, expires_in}`.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        repo: &str,
        deadline: Instant,
    ) -> Result<(String, Instant), UpstreamError> {
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| self.invalid("the token realm", format!("{realm:?} is not a URL: {e}")))?;
        let mut req = self.client.get(realm_url.clone()).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        match self.basic_for(&realm_url) {
            Some(b) => req = req.header(AUTHORIZATION, b),
            None if self.cfg.username.is_some() => tracing::info!(
                mirror = %self.cfg.name,
                realm = %realm_url.host_str().unwrap_or_default(),
                "token realm is not on the upstream's host (nor in tokenhosts) or not https: asking it anonymously"
            ),
            None => {}
        }
        let resp = match tokio::time::timeout_at(deadline.into(), req.send()).await {
            Err(_) => return Err(self.timeout("the token request")),
            Ok(Err(e)) => {
                return Err(self.unreachable(format!("token service {realm}: {}", crate::error_chain::chain(&e))))
            }
            Ok(Ok(r)) if r.status() == StatusCode::TOO_MANY_REQUESTS => return Err(self.paused(&r)),
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(self.refused(repo, format!("token service {realm} answered {}", resp.status())));
        }
        let body = read_limited(resp, MAX_TOKEN_RESPONSE, deadline).await.map_err(|e| match e {
            Ok(why) => self.invalid("the token response", why),
            Err(()) => self.timeout("the token response"),
        })?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| self.refused(repo, format!("token service {realm} returned no token")))?;
        let ttl = v["expires_in"].as_u64().unwrap_or(60).clamp(10, 24 * 3600);
        // Renew a little early.
        Ok((token.to_string(), Instant::now() + Duration::from_secs(ttl.saturating_sub(5))))
    }

    fn accept_manifests() -> String {
        SUPPORTED.join(", ")
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.timeout
    }

    fn unexpected(&self, status: StatusCode, what: String) -> UpstreamError {
        UpstreamError::Protocol { name: self.cfg.name.clone(), status: status.as_u16(), what }
    }

    /// The digest a tag (or digest) currently has upstream; `None` if the
    /// upstream does not know it.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Digest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(Method::HEAD, &path, repo, Some(&Self::accept_manifests()), self.deadline()).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(self.unexpected(s, path)),
        }
        let digest = header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok());
        match digest {
            Some(d) => Ok(Some(d)),
            // No digest header: fetch the manifest and hash it.
            None => Ok(self.get_manifest(repo, reference).await?.map(|m| Digest::sha256_of(&m.body))),
        }
    }

    /// A manifest, at most 4 MiB, whose `Content-Type` is a manifest type
    /// (an HTML error page with 200 is the upstream's fault, not a
    /// manifest).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Option<UpstreamManifest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let deadline = self.deadline();
        let resp = self.send(Method::GET, &path, repo, Some(&Self::accept_manifests()), deadline).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(self.unexpected(s, path)),
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        if let Some(t) = media_type.as_deref().filter(|t| t.starts_with("text/")) {
            return Err(self.invalid(&path, format!("it is {t}, not a manifest")));
        }
        let body = read_limited(resp, MAX_MANIFEST_SIZE, deadline).await.map_err(|e| match e {
            Ok(why) => self.invalid(&path, format!("{why} (manifests are limited to {MAX_MANIFEST_SIZE} bytes)")),
            Err(()) => self.timeout(&path),
        })?;
        Ok(Some(UpstreamManifest { body, media_type }))
    }

    /// Starts a blob download; `None` if the upstream does not have it.
    /// The headers must arrive within the deadline; the body may then
    /// pause up to a minute at a time.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(reqwest::Response, Option<u64>)>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::GET, &path, repo, None, self.deadline()).await?;
        match resp.status() {
            StatusCode::OK => {
                let len = header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
                Ok(Some((resp, len)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.unexpected(s, path)),
        }
    }

    /// Size of a blob upstream; `None` if it does not have it.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::HEAD, &path, repo, None, self.deadline()).await?;
        match resp.status() {
            StatusCode::OK => match header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(self.invalid(&path, "no Content-Length")),
            },
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.unexpected(s, path)),
        }
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}
