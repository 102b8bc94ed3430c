//! Who may do what, per listener: credentials (htpasswd users, bearer
//! tokens, client certificates) are checked here, and each listener's
//! access rules say what anonymous and authenticated clients may do. The HTTP
//! layer asks [`Gate::check`] before it calls the registry.

mod error;
pub mod htpasswd;
pub mod token;

pub use error::{AuthError, TokenRejected, UnknownAction};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// A set of actions, from config lists such as `[pull, push]` or `["*"]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    pub pull: bool,
    pub push: bool,
    pub delete: bool,
}

impl Actions {
    pub const ALL: Actions = Actions { pull: true, push: true, delete: true };
    pub const PULL: Actions = Actions { pull: true, push: false, delete: false };
    pub const NONE: Actions = Actions { pull: false, push: false, delete: false };

    pub fn parse(list: &[String]) -> Result<Actions, UnknownAction> {
        let mut a = Actions::NONE;
        for item in list {
            match item.as_str() {
                "pull" => a.pull = true,
                "push" => a.push = true,
                "delete" => a.delete = true,
                "*" => a = Actions::ALL,
                other => return Err(UnknownAction(other.to_string())),
            }
        }
        Ok(a)
    }

    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Pull => self.pull,
            Action::Push => self.push,
            Action::Delete => self.delete,
        }
    }
}

/// What one request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `GET /v2/`: any client the listener serves.
    Base,
    /// `GET /v2/_catalog`: `registry:catalog:*` for tokens, pull otherwise.
    Catalog,
    Repository {
        name: String,
        action: Action,
    },
}

impl Scope {
    /// The token scope string (`repository:app:push`).
    pub fn token_scope(&self) -> Option<String> {
        match self {
            Scope::Base => None,
            Scope::Catalog => Some("registry:catalog:*".into()),
            Scope::Repository { name, action } => Some(format!("repository:{name}:{}", action.as_str())),
        }
    }
}

/// A listener's access rules: `listeners[].access`.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub anonymous: Actions,
    pub authenticated: Actions,
}

/// The credential check configured in `auth`.
#[derive(Debug)]
pub enum Authenticator {
    None,
    Htpasswd { realm: String, file: htpasswd::Htpasswd },
    Token(token::TokenVerifier),
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    /// An htpasswd user or a client certificate's subject: the listener's
    /// `authenticated` actions apply.
    User(String),
    /// A bearer token: its grants apply, within the listener's access rules.
    Token(token::VerifiedToken),
}

/// Why a request was refused; rendered as 401/403/429 with the OCI codes.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// No or bad credentials: 401 with a challenge.
    Unauthorized { message: String, challenge: Option<String> },
    /// Authenticated but not allowed: 403.
    Denied(String),
    /// Too many failed logins from this address: 429.
    TooManyAttempts(String),
}

/// Failed logins per client address.
#[derive(Default)]
struct FailedLogins {
    by_addr: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const FAIL_WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILS: u32 = 10;

impl FailedLogins {
    fn blocked(&self, ip: IpAddr) -> bool {
        self.by_addr.lock().unwrap().get(&ip).is_some_and(|(n, t)| *n >= MAX_FAILS && t.elapsed() < FAIL_WINDOW)
    }

    fn record(&self, ip: IpAddr) {
        let mut map = self.by_addr.lock().unwrap();
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < FAIL_WINDOW);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAIL_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// The credential check plus the failed-login limiter, shared by listeners.
pub struct Gate {
    pub auth: Authenticator,
    failures: FailedLogins,
}

impl Gate {
    pub fn new(auth: Authenticator) -> Gate {
        Gate { auth, failures: FailedLogins::default() }
    }

    fn challenge(&self, scopes: &[Scope]) -> Option<String> {
        match &self.auth {
            Authenticator::None => None,
            Authenticator::Htpasswd { realm, .. } => Some(format!("Basic realm=\"{realm}\"")),
            Authenticator::Token(t) => {
                let scope: Vec<String> = scopes.iter().filter_map(Scope::token_scope).collect();
                let mut c = format!("Bearer realm=\"{}\",service=\"{}\"", t.realm, t.service);
                if !scope.is_empty() {
                    c.push_str(&format!(",scope=\"{}\"", scope.join(" ")));
                }
                Some(c)
            }
        }
    }

    /// Identifies the client from its `Authorization` header (or its
    /// verified client certificate).
    fn identify(
        &self,
        authorization: Option<&str>,
        client_cert: Option<&str>,
        peer: IpAddr,
        scopes: &[Scope],
    ) -> Result<Identity, Refusal> {
        let unauthorized = |message: String| Refusal::Unauthorized { message, challenge: self.challenge(scopes) };
        let Some(header) = authorization.filter(|h| !h.trim().is_empty()) else {
            return Ok(client_cert.map(|c| Identity::User(c.to_string())).unwrap_or(Identity::Anonymous));
        };
        if self.failures.blocked(peer) {
            return Err(Refusal::TooManyAttempts(format!(
                "too many failed logins from {peer}; wait a minute before trying again"
            )));
        }
        let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
        let result = match (&self.auth, scheme.to_ascii_lowercase().as_str()) {
            (Authenticator::Htpasswd { file, .. }, "basic") => {
                match basic_credentials(header) {
                    Some((user, pass)) if file.verify(&user, &pass) => Ok(Identity::User(user)),
                    Some((user, _)) => {
                        // Never log the password.
                        tracing::warn!(%peer, user = %user, "failed login");
                        Err(unauthorized(format!("wrong user name or password for {user:?}")))
                    }
                    None => Err(unauthorized("the Basic credentials are malformed".into())),
                }
            }
            (Authenticator::Token(t), "bearer") => match t.verify(value.trim()) {
                Ok(v) => Ok(Identity::Token(v)),
                Err(why) => {
                    tracing::warn!(%peer, "token refused: {why}");
                    Err(unauthorized(why.to_string()))
                }
            },
            (Authenticator::None, _) => Err(unauthorized(
                "this listener has no authentication configured (auth.htpasswd or auth.token); send no credentials"
                    .into(),
            )),
            (_, s) => Err(unauthorized(format!("the {s:?} authorization scheme is not accepted here"))),
        };
        if result.is_err() {
            self.failures.record(peer);
        }
        result
    }

    /// Decides a request: identifies the client, then checks every scope
    /// against the listener's access rules (and the token's grants).
    /// Whether [`check`](Self::check) can answer without a password hash
    /// (bcrypt): otherwise the caller runs it on the blocking pool, so
    /// logins never stall the async workers that serve everyone else.
    pub fn is_cheap(&self, authorization: Option<&str>) -> bool {
        let Authenticator::Htpasswd { file, .. } = &self.auth else { return true };
        match authorization.and_then(basic_credentials) {
            Some((user, pass)) => file.remembers(&user, &pass),
            None => true,
        }
    }

    pub fn check(
        &self,
        access: &Access,
        authorization: Option<&str>,
        client_cert: Option<&str>,
        peer: IpAddr,
        scopes: &[Scope],
    ) -> Result<Identity, Refusal> {
        let identity = self.identify(authorization, client_cert, peer, scopes)?;
        for scope in scopes {
            let action = match scope {
                Scope::Base => None,
                Scope::Catalog => Some(Action::Pull),
                Scope::Repository { action, .. } => Some(*action),
            };
            let allowed = match (&identity, action) {
                (Identity::Anonymous, None) => access.anonymous.pull || access.anonymous.push,
                (Identity::Anonymous, Some(a)) => access.anonymous.allows(a),
                (Identity::User(_), None) | (Identity::Token(_), None) => true,
                (Identity::User(_), Some(a)) => access.authenticated.allows(a),
                (Identity::Token(t), Some(a)) => access.authenticated.allows(a) && token_grants(t, scope),
            };
            if allowed {
                continue;
            }
            let what = scope.token_scope().unwrap_or_else(|| "access to this registry".into());
            return Err(match identity {
                Identity::Anonymous => {
                    let hint = match &self.auth {
                        Authenticator::None => {
                            " (this listener has no authentication configured; use a listener that allows it)"
                        }
                        _ => "; log in (e.g. `skopeo login`, `--creds`) and retry",
                    };
                    Refusal::Unauthorized {
                        message: format!(
                            "authentication required: anonymous clients lack {what} on this listener{hint}"
                        ),
                        challenge: self.challenge(scopes),
                    }
                }
                Identity::User(u) => Refusal::Denied(format!("user {u:?} is not allowed {what} on this listener")),
                Identity::Token(t) => Refusal::Denied(format!(
                    "the token for {:?} does not grant {what}; request a token with that scope",
                    t.subject
                )),
            });
        }
        Ok(identity)
    }
}

/// User and password of a `Basic` authorization header.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn token_grants(t: &token::VerifiedToken, scope: &Scope) -> bool {
    match scope {
        Scope::Base => true,
        Scope::Catalog => {
            t.grants.iter().any(|g| g.kind == "registry" && g.name == "catalog" && g.actions.iter().any(|a| a == "*"))
        }
        Scope::Repository { name, action } => t.grants.iter().any(|g| {
            g.kind == "repository"
                && (g.name == *name || crate::names::glob_match(&g.name, name))
                && g.actions.iter().any(|a| a == "*" || a == action.as_str())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(action: Action) -> Vec<Scope> {
        vec![Scope::Repository { name: "team/app".into(), action }]
    }

    #[test]
    fn anonymous_and_user_policies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let gate =
            Gate::new(Authenticator::Htpasswd { realm: "berth".into(), file: htpasswd::Htpasswd::load(&p).unwrap() });
        let access = Access { anonymous: Actions::PULL, authenticated: Actions::ALL };
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(gate.check(&access, None, None, ip, &repo(Action::Pull)).is_ok());
        let e = gate.check(&access, None, None, ip, &repo(Action::Push)).unwrap_err();
        assert!(
            matches!(&e, Refusal::Unauthorized { message, challenge: Some(c) } if message.contains("repository:team/app:push") && c.starts_with("Basic")),
            "{e:?}"
        );
        use base64::Engine;
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:pw"));
        let bad = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:nope"));
        assert!(gate.check(&access, Some(&good), None, ip, &repo(Action::Push)).is_ok());
        assert!(matches!(
            gate.check(&access, Some(&bad), None, ip, &repo(Action::Pull)),
            Err(Refusal::Unauthorized { .. })
        ));
        let pull_only = Access { anonymous: Actions::NONE, authenticated: Actions::PULL };
        assert!(
            matches!(gate.check(&pull_only, Some(&good), None, ip, &repo(Action::Delete)), Err(Refusal::Denied(m)) if m.contains("delete"))
        );
        // Failed logins are limited per address.
        for _ in 0..MAX_FAILS {
            let _ = gate.check(&access, Some(&bad), None, ip, &repo(Action::Pull));
        }
        assert!(matches!(
            gate.check(&access, Some(&good), None, ip, &repo(Action::Pull)),
            Err(Refusal::TooManyAttempts(_))
        ));
        let other: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(gate.check(&access, Some(&good), None, other, &repo(Action::Pull)).is_ok());
    }

    #[test]
    fn token_grants_are_per_repository_and_action() {
        let t = token::VerifiedToken {
            subject: "ci".into(),
            grants: vec![token::Grant {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
        };
        assert!(token_grants(&t, &Scope::Repository { name: "team/app".into(), action: Action::Pull }));
        assert!(!token_grants(&t, &Scope::Repository { name: "team/app".into(), action: Action::Push }));
        assert!(!token_grants(&t, &Scope::Repository { name: "team/other".into(), action: Action::Pull }));
        assert!(!token_grants(&t, &Scope::Catalog));
        assert_eq!(Actions::parse(&["*".into()]).unwrap(), Actions::ALL);
        assert!(Actions::parse(&["write".into()]).is_err());
    }
}
