//! Registry authentication challenges (`WWW-Authenticate`), as Docker Hub
//! and distribution-based registries send them: `Basic realm=…` or
//! `Bearer realm="…",service="…",scope="…"`; and where a mirror's
//! credentials may go.

use std::collections::HashMap;

/// Where a mirror's credentials may be sent: the upstream's own host, the
/// token hosts the mirror lists (Docker Hub's `auth.docker.io` is known),
/// over https — or plain http to loopback, or anywhere when the mirror
/// explicitly allows plain-HTTP credentials. A token realm an upstream
/// names elsewhere is asked anonymously.
pub struct CredentialPolicy<'a> {
    pub upstream: &'a reqwest::Url,
    pub token_hosts: &'a [String],
    pub docker_hub: bool,
    pub plain_http: bool,
}

impl CredentialPolicy<'_> {
    pub fn may_send_to(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        let own = self.upstream.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&host));
        let listed = self.token_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
            || (self.docker_hub && host == "auth.docker.io");
        if !own && !listed {
            return false;
        }
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        url.scheme() == "https" || loopback || self.plain_http
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses one challenge; unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// `key="value", key2=value2` with quoted values that may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (quoted[..end].to_string(), quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_where_configured() {
        let up = reqwest::Url::parse("https://registry.example.com").unwrap();
        let hosts = vec!["auth.example.com".to_string()];
        let p = CredentialPolicy { upstream: &up, token_hosts: &hosts, docker_hub: false, plain_http: false };
        let to = |u: &str| p.may_send_to(&reqwest::Url::parse(u).unwrap());
        assert!(to("https://registry.example.com/token"));
        assert!(to("https://auth.example.com/token"));
        assert!(!to("https://evil.example.net/token"), "a realm elsewhere gets no credentials");
        assert!(!to("http://registry.example.com/token"), "never over plain http to another machine");
        assert!(!to("https://auth.docker.io/token"), "Docker Hub's realm only for Docker Hub");
        let local = reqwest::Url::parse("http://127.0.0.1:5000").unwrap();
        let p = CredentialPolicy { upstream: &local, token_hosts: &[], docker_hub: false, plain_http: false };
        assert!(p.may_send_to(&reqwest::Url::parse("http://127.0.0.1:9000/token").unwrap()), "loopback is fine");
        assert!(!p.may_send_to(&reqwest::Url::parse("http://localhost:9000/token").unwrap()), "another host name");
        let hub = reqwest::Url::parse("https://registry-1.docker.io").unwrap();
        let p = CredentialPolicy { upstream: &hub, token_hosts: &[], docker_hub: true, plain_http: false };
        assert!(p.may_send_to(&reqwest::Url::parse("https://auth.docker.io/token").unwrap()));
        let lan = reqwest::Url::parse("http://10.0.0.5:5000").unwrap();
        let p = CredentialPolicy { upstream: &lan, token_hosts: &[], docker_hub: false, plain_http: true };
        assert!(p.may_send_to(&reqwest::Url::parse("http://10.0.0.5:5000/v2/").unwrap()), "when allowed explicitly");
    }

    #[test]
    fn parses_docker_hub_and_basic_challenges() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        let scopes = r#"Bearer realm="https://r/token", scope="repository:a:pull,push""#;
        assert!(
            matches!(parse_challenge(scopes), Some(Challenge::Bearer { scope: Some(s), service: None, .. }) if s == "repository:a:pull,push")
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "a bearer challenge needs a realm");
    }
}
