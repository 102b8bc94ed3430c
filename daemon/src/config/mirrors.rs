//! `mirrors` (Berth's pull-through mirrors) and registry:2's `proxy`, which
//! becomes one more mirror.

use super::raw;
use super::values::flag;
use super::{invalid, ConfigError, DEFAULT_TAG_TTL};
use crate::upstream::{MirrorConfig, DEFAULT_TIMEOUT};

/// The registry name containerd uses for an upstream URL: Docker Hub's API
/// host is `registry-1.docker.io`, its image names say `docker.io`.
pub fn registry_name_of(url: &str) -> String {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

fn mirror_url(key: &str, url: &str) -> Result<String, ConfigError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.split("://").nth(1).is_none_or(str::is_empty)
    {
        return Err(invalid(key, format!("{url:?} must be an http:// or https:// URL of the upstream registry")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The mirrors, and the index of the one registry:2's `proxy` names (it
/// also serves requests that name no upstream).
pub(super) fn mirrors(
    list: Option<&[raw::Mirror]>,
    proxy: Option<&raw::Proxy>,
) -> Result<(Vec<MirrorConfig>, Option<usize>), ConfigError> {
    let mut out: Vec<MirrorConfig> = Vec::new();
    for (i, m) in list.unwrap_or_default().iter().enumerate() {
        let key = |field: &str| format!("mirrors[{i}].{field}");
        let url = m.url.as_ref().ok_or_else(|| invalid(&key("url"), "is required"))?;
        let url = mirror_url(&key("url"), &url.0)?;
        let name = m.name.as_ref().map_or_else(|| registry_name_of(&url), |n| n.0.clone()).to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)) {
            return Err(invalid(&key("name"), format!("{name:?} is not a registry host name such as docker.io")));
        }
        let (username, password) = (m.username.as_ref().map(|t| t.0.clone()), m.password.as_ref().map(|t| t.0.clone()));
        if username.is_some() != password.is_some() {
            return Err(invalid(&key("password"), "username and password must be given together"));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(&key("name"), format!("mirror {name} is configured twice")));
        }
        let timeout = match m.timeout {
            None => DEFAULT_TIMEOUT,
            Some(d) if d.0.is_zero() => {
                return Err(invalid(&key("timeout"), "must be a positive duration such as 30s"))
            }
            Some(d) => d.0,
        };
        out.push(MirrorConfig {
            name,
            url,
            username,
            password,
            tag_ttl: m.tagttl.map_or(DEFAULT_TAG_TTL, |d| d.0),
            allow: m.allow.clone().map(|l| l.0).unwrap_or_default(),
            timeout,
            token_hosts: m.tokenhosts.iter().flat_map(|l| &l.0).map(|h| h.to_ascii_lowercase()).collect(),
            plain_http_credentials: flag(m.plainhttpcredentials, false),
        });
    }
    let Some((proxy, remote)) = proxy.and_then(|p| Some((p, p.remoteurl.as_ref()?))) else {
        return Ok((out, None));
    };
    let url = mirror_url("proxy.remoteurl", &remote.0)?;
    let name = registry_name_of(&url);
    if let Some(i) = out.iter().position(|m| m.name == name) {
        return Ok((out, Some(i)));
    }
    out.push(MirrorConfig {
        name,
        url,
        username: proxy.username.as_ref().map(|t| t.0.clone()),
        password: proxy.password.as_ref().map(|t| t.0.clone()),
        tag_ttl: proxy.ttl.map_or(DEFAULT_TAG_TTL, |d| d.0),
        allow: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        token_hosts: Vec::new(),
        plain_http_credentials: false,
    });
    let index = out.len() - 1;
    Ok((out, Some(index)))
}
