//! Upstream registries for pull-through mirroring: a client that speaks the
//! distribution API to one upstream, with its credentials, Docker Hub's
//! naming rules (`library/` for one-word names) and the token flow.
//!
//! Outbound TLS uses berthd's own trust (system roots plus the cluster CA),
//! shared with the S3 backend.

pub mod auth;

use crate::digest::Digest;
use crate::registry::manifest::SUPPORTED;
use auth::Challenge;
use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
            .finish_non_exhaustive()
    }
}

/// How talking to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name} ({url}) is unreachable: {message}")]
    Unreachable { name: String, url: String, message: String },
    #[error("upstream {name} refused access to {repo}: {message}")]
    Refused { name: String, repo: String, message: String },
    #[error("upstream {name} answered {status} for {what}")]
    Protocol { name: String, status: u16, what: String },
}

/// A manifest as the upstream served it.
pub struct UpstreamManifest {
    pub body: Bytes,
    pub media_type: Option<String>,
}

pub struct Upstream {
    pub cfg: MirrorConfig,
    base: String,
    client: reqwest::Client,
    /// Bearer tokens by scope, with their expiry.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// `*` matches any run of characters (including `/`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Upstream {
    pub fn new(cfg: MirrorConfig, tls: Arc<rustls::ClientConfig>) -> Result<Upstream, String> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("berthd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("mirror {}: cannot build HTTP client: {e}", cfg.name))?;
        let base = cfg.url.trim_end_matches('/').to_string();
        Ok(Upstream { cfg, base, client, tokens: Mutex::default() })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether the allow-list admits `repo` (as the client named it).
    pub fn allows(&self, repo: &str) -> bool {
        self.cfg.allow.is_empty() || self.cfg.allow.iter().any(|p| glob_match(p, repo))
    }

    /// The repository name upstream: Docker Hub puts one-word names under
    /// `library/`.
    pub fn upstream_repo(&self, repo: &str) -> String {
        let hub = self.cfg.name == "docker.io" || self.base.contains("docker.io");
        if hub && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable { name: self.cfg.name.clone(), url: self.base.clone(), message: e.to_string() }
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine;
        let (u, p) = (self.cfg.username.as_ref()?, self.cfg.password.as_ref()?);
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }

    /// Sends a request for `repo`, answering an auth challenge once.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}{path}", self.base);
        let scope = format!("repository:{repo}:pull");
        let cached =
            self.tokens.lock().unwrap().get(&scope).filter(|(_, exp)| *exp > Instant::now()).map(|(t, _)| t.clone());
        let build = |auth: Option<String>| {
            let mut r = self.client.request(method.clone(), &url);
            if let Some(a) = accept {
                r = r.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r
        };
        let first = build(cached.map(|t| format!("Bearer {t}")).or_else(|| self.basic()))
            .send()
            .await
            .map_err(|e| self.unreachable(crate::error::chain(&e)))?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let auth = match challenge {
            Some(Challenge::Bearer { realm, service, scope: challenged }) => {
                let token =
                    self.fetch_token(&realm, service.as_deref(), challenged.as_deref().unwrap_or(&scope), repo).await?;
                self.tokens.lock().unwrap().insert(scope, (token.0.clone(), token.1));
                format!("Bearer {}", token.0)
            }
            Some(Challenge::Basic) => self.basic().ok_or_else(|| UpstreamError::Refused {
                name: self.cfg.name.clone(),
                repo: repo.to_string(),
                message: "it requires credentials; set username and password for this mirror".into(),
            })?,
            None => {
                return Err(UpstreamError::Refused {
                    name: self.cfg.name.clone(),
                    repo: repo.to_string(),
                    message: "401 without a usable WWW-Authenticate challenge".into(),
                })
            }
        };
        let second = build(Some(auth)).send().await.map_err(|e| self.unreachable(crate::error::chain(&e)))?;
        if second.status() == StatusCode::UNAUTHORIZED || second.status() == StatusCode::FORBIDDEN {
            return Err(UpstreamError::Refused {
                name: self.cfg.name.clone(),
                repo: repo.to_string(),
                message: format!("{} with our credentials; check the mirror's username and password", second.status()),
            });
        }
        Ok(second)
    }

    /// The bearer token flow: GET realm?service=&scope= (with basic
    /// credentials when configured), answer `{token|access_token, expires_in}`.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        repo: &str,
    ) -> Result<(String, Instant), UpstreamError> {
        let mut req = self.client.get(realm).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        if let Some(b) = self.basic() {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.unreachable(format!("token service {realm}: {}", crate::error::chain(&e))))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Refused {
                name: self.cfg.name.clone(),
                repo: repo.to_string(),
                message: format!("token service {realm} answered {}", resp.status()),
            });
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token =
            v["token"].as_str().or_else(|| v["access_token"].as_str()).ok_or_else(|| UpstreamError::Refused {
                name: self.cfg.name.clone(),
                repo: repo.to_string(),
                message: format!("token service {realm} returned no token"),
            })?;
        let ttl = v["expires_in"].as_u64().unwrap_or(60).max(10);
        // Renew a little early.
        Ok((token.to_string(), Instant::now() + Duration::from_secs(ttl.saturating_sub(5))))
    }

    fn accept_manifests() -> String {
        SUPPORTED.join(", ")
    }

    /// The digest a tag (or digest) currently has upstream; `None` if the
    /// upstream does not know it.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Digest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(Method::HEAD, &path, repo, Some(&Self::accept_manifests())).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(UpstreamError::Protocol { name: self.cfg.name.clone(), status: s.as_u16(), what: path }),
        }
        let digest = header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok());
        match digest {
            Some(d) => Ok(Some(d)),
            // No digest header: fetch the manifest and hash it.
            None => Ok(self.get_manifest(repo, reference).await?.map(|m| Digest::sha256_of(&m.body))),
        }
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Option<UpstreamManifest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(Method::GET, &path, repo, Some(&Self::accept_manifests())).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            s => return Err(UpstreamError::Protocol { name: self.cfg.name.clone(), status: s.as_u16(), what: path }),
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(Some(UpstreamManifest { body, media_type }))
    }

    /// Starts a blob download; `None` if the upstream does not have it.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(reqwest::Response, Option<u64>)>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::GET, &path, repo, None).await?;
        match resp.status() {
            StatusCode::OK => {
                let len = header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
                Ok(Some((resp, len)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(UpstreamError::Protocol { name: self.cfg.name.clone(), status: s.as_u16(), what: path }),
        }
    }

    /// Size of a blob upstream; `None` if it does not have it.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::HEAD, &path, repo, None).await?;
        match resp.status() {
            StatusCode::OK => {
                Ok(Some(header_str(resp.headers(), CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok()).unwrap_or(0)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(UpstreamError::Protocol { name: self.cfg.name.clone(), status: s.as_u16(), what: path }),
        }
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_patterns() {
        assert!(glob_match("mjpitz/*", "mjpitz/app"));
        assert!(glob_match("mjpitz/*", "mjpitz/a/b"));
        assert!(!glob_match("mjpitz/*", "other/app"));
        assert!(glob_match("library/busybox", "library/busybox"));
        assert!(!glob_match("library/busybox", "library/busybox2"));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("a*c", "abbbc"));
    }
}
