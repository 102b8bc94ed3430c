//! `http`, `auth` and `listeners`: where berthd listens, how clients
//! authenticate, and who may do what on each listener.

use super::raw;
use super::values::{List, Text};
use super::{
    invalid, typed, AuthConfig, ConfigError, HttpConfig, HttpTimeouts, ListenerConfig, TlsFiles, TokenAuthConfig,
    DEFAULT_ADDR,
};
use crate::auth::{Access, Actions};
use std::net::SocketAddr;
use yaml_serde::{Mapping, Value};

pub(super) fn http(raw: &raw::Http) -> Result<HttpConfig, ConfigError> {
    if let Some(Text(net)) = &raw.net {
        if net != "tcp" {
            return Err(invalid("http.net", format!("{net:?} is not supported; berthd listens on tcp")));
        }
    }
    let addr = parse_addr("http.addr", raw.addr.as_ref().map_or(DEFAULT_ADDR, |a| a.0.as_str()))?;
    let debug_addr = raw.debug.addr.as_ref().map(|a| parse_addr("http.debug.addr", &a.0)).transpose()?;
    let d = HttpTimeouts::default();
    let t = &raw.timeouts;
    let timeouts = HttpTimeouts {
        header: t.header.map_or(d.header, |v| v.0),
        body: t.body.map_or(d.body, |v| v.0),
        send: t.send.map_or(d.send, |v| v.0),
    };
    for (key, v) in [
        ("http.timeouts.header", timeouts.header),
        ("http.timeouts.body", timeouts.body),
        ("http.timeouts.send", timeouts.send),
    ] {
        if v.is_zero() {
            return Err(invalid(key, "must be greater than zero"));
        }
    }
    let max_connections = match &raw.maxconnections {
        None => None,
        Some(Text(v)) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("http.maxconnections", format!("{v:?} is not a positive number")))?,
        ),
    };
    let host = raw.host.as_ref().map(|h| h.0.clone());
    if let Some(h) = &host {
        if !(h.starts_with("http://") || h.starts_with("https://")) {
            return Err(invalid("http.host", format!("{h:?} must be a URL such as https://registry.example.com")));
        }
    }
    let headers = match &raw.headers {
        Some(map) => headers(map)?,
        // registry:2's shipped config sets this; keep the same default.
        None => vec![("X-Content-Type-Options".into(), "nosniff".into())],
    };
    let tls = tls_files(raw.tls.as_ref(), "http.tls")?;
    Ok(HttpConfig { addr, host, headers, tls, debug_addr, timeouts, max_connections })
}

/// `http.headers`: name → value or list of values, kept in file order.
fn headers(map: &Mapping) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, values) in map {
        let name = name.as_str().ok_or_else(|| invalid("http.headers", "header names must be strings"))?;
        let key = format!("http.headers.{name}");
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(&key, "is not a valid HTTP header name"));
        }
        let list: Vec<String> = match values {
            Value::Sequence(s) => s
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| invalid(&key, "values must be strings")))
                .collect::<Result<_, _>>()?,
            Value::String(s) => vec![s.clone()],
            _ => return Err(invalid(&key, "expected a list of strings")),
        };
        for value in list {
            if axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(invalid(&key, format!("{value:?} is not a valid header value")));
            }
            out.push((name.to_string(), value));
        }
    }
    Ok(out)
}

/// A `tls:` section (`http.tls` or `listeners[i].tls`).
fn tls_files(raw: Option<&raw::Tls>, prefix: &str) -> Result<Option<TlsFiles>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (certificate, key) = match (Text::non_empty(&raw.certificate), Text::non_empty(&raw.key)) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(invalid(&format!("{prefix}.key"), "is required when the certificate is set")),
        (None, Some(_)) => return Err(invalid(&format!("{prefix}.certificate"), "is required when the key is set")),
    };
    let tls13_only = match raw.minimumtls.as_ref().map(|t| t.0.as_str()) {
        None | Some("tls1.2") => false,
        Some("tls1.3") => true,
        Some(other) => {
            return Err(invalid(
                &format!("{prefix}.minimumtls"),
                format!("{other:?} is not supported; berthd speaks TLS 1.2 and 1.3 only (tls1.2 or tls1.3)"),
            ))
        }
    };
    let client_cas = raw.clientcas.as_ref().map(List::paths).unwrap_or_default();
    Ok(Some(TlsFiles { certificate: certificate.into(), key: key.into(), tls13_only, client_cas }))
}

/// `auth`: one method, `htpasswd` or `token`. Any other method is refused
/// rather than ignored: ignoring it would leave the registry open.
pub(super) fn auth(raw: Option<&Mapping>, warnings: &mut Vec<String>) -> Result<AuthConfig, ConfigError> {
    let Some(map) = raw.filter(|m| !m.is_empty()) else { return Ok(AuthConfig::None) };
    let methods: Vec<String> = map.keys().map(|k| k.as_str().unwrap_or("?").to_string()).collect();
    for m in &methods {
        if m != "htpasswd" && m != "token" {
            return Err(invalid(
                &format!("auth.{m}"),
                "is not supported; berthd authenticates with auth.htpasswd or auth.token",
            ));
        }
    }
    if methods.len() > 1 {
        return Err(invalid("auth", "configure one method: auth.htpasswd or auth.token"));
    }
    let required = |v: &Option<Text>, key: &str| Text::non_empty(v).ok_or_else(|| invalid(key, "is required"));
    let (method, value) = map.iter().next().expect("one method");
    if method.as_str() == Some("htpasswd") {
        let h: raw::Htpasswd = typed(value, "auth.htpasswd", warnings)?;
        return Ok(AuthConfig::Htpasswd {
            realm: h.realm.map_or_else(|| "berth".into(), |r| r.0),
            path: required(&h.path, "auth.htpasswd.path")?.into(),
        });
    }
    let t: raw::Token = typed(value, "auth.token", warnings)?;
    Ok(AuthConfig::Token(TokenAuthConfig {
        realm: required(&t.realm, "auth.token.realm")?,
        service: required(&t.service, "auth.token.service")?,
        issuer: required(&t.issuer, "auth.token.issuer")?,
        rootcertbundle: required(&t.rootcertbundle, "auth.token.rootcertbundle")?.into(),
    }))
}

fn actions(list: Option<&List>, key: &str, default: Actions) -> Result<Actions, ConfigError> {
    match list {
        None => Ok(default),
        Some(List(items)) => Actions::parse(items).map_err(|e| invalid(key, e.to_string())),
    }
}

/// The listeners. Without `listeners:` there is one, on `http.addr`, with
/// registry:2's rules: with auth, everything needs credentials; without,
/// everyone may do everything — but only on loopback.
pub(super) fn listeners(
    raw: Option<&[raw::Listener]>,
    http: &HttpConfig,
    auth: &AuthConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let Some(items) = raw else {
        let addr = http.addr;
        let access = match auth {
            AuthConfig::None if addr.ip().is_loopback() => {
                Access { anonymous: Actions::ALL, authenticated: Actions::ALL }
            }
            AuthConfig::None => {
                warnings.push(format!(
                    "http.addr {addr} is not loopback and no auth is configured: anonymous clients may pull but not push or delete; configure auth or listeners[].access"
                ));
                Access { anonymous: Actions::PULL, authenticated: Actions::ALL }
            }
            _ => Access { anonymous: Actions::NONE, authenticated: Actions::ALL },
        };
        return Ok(vec![ListenerConfig { addr, tls: http.tls.clone(), access }]);
    };
    if items.is_empty() {
        return Err(invalid("listeners", "needs at least one listener"));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("listeners[{i}]");
        let addr = item.addr.as_ref().ok_or_else(|| invalid(&format!("{key}.addr"), "is required"))?;
        let addr = parse_addr(&format!("{key}.addr"), &addr.0)?;
        let tls = tls_files(item.tls.as_ref(), &format!("{key}.tls"))?;
        let anon_default = if addr.ip().is_loopback() { Actions::PULL } else { Actions::NONE };
        let access = Access {
            anonymous: actions(item.access.anonymous.as_ref(), &format!("{key}.access.anonymous"), anon_default)?,
            authenticated: actions(
                item.access.authenticated.as_ref(),
                &format!("{key}.access.authenticated"),
                Actions::ALL,
            )?,
        };
        if !addr.ip().is_loopback() && (access.anonymous.push || access.anonymous.delete) {
            warnings.push(format!("{key} ({addr}) lets anonymous clients write; anyone who can reach it can push"));
        }
        out.push(ListenerConfig { addr, tls, access });
    }
    Ok(out)
}

/// Parses registry:2 style listen addresses: `:5000`, `0.0.0.0:5000`,
/// `127.0.0.1:5000`, `[::1]:5000`, `localhost:5000`.
pub fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    let candidate = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if let Some(port) = s.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    candidate.parse().map_err(|_| {
        invalid(key, format!("{s:?} is not a listen address; use host:port such as 127.0.0.1:5000 or :5000"))
    })
}
