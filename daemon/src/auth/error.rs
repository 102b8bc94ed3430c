//! Why the configured authentication could not be loaded, or a
//! credential was refused. Each message says what to fix.

use std::path::PathBuf;

/// `auth.htpasswd` / `auth.token` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read htpasswd file {}: {source}", path.display())]
    ReadHtpasswd { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: not a `user:hash` line", path.display())]
    NotUserHash { path: PathBuf, line: usize },
    #[error(
        "{}:{line}: user {user:?} has a non-bcrypt hash; only bcrypt entries are accepted, recreate it with `htpasswd -B {} {user}`",
        path.display(),
        path.display()
    )]
    NotBcrypt { path: PathBuf, line: usize, user: String },
    #[error("cannot prepare password checks: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error(transparent)]
    Certificates(#[from] crate::tls::TlsError),
    #[error("certificate {number} in {} cannot be parsed: {detail}", path.display())]
    BadCertificate { number: usize, path: PathBuf, detail: String },
    #[error("certificate {number} in {} has neither an RSA nor an EC key", path.display())]
    UnsupportedKey { number: usize, path: PathBuf },
}

/// A `listeners[].access` entry that is not an action.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an action (pull, push, delete, *)")]
pub struct UnknownAction(pub String);

/// Why a bearer token was refused (the 401's message).
#[derive(Debug, thiserror::Error)]
pub enum TokenRejected {
    #[error("malformed token: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("token algorithm {0:?} is not accepted (RS256/384/512, ES256/384)")]
    Algorithm(jsonwebtoken::Algorithm),
    #[error("the token has expired; get a new one from the token service")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future); check the clocks of the token service and this node")]
    NotYetValid,
    #[error("the token was not issued by {0}")]
    WrongIssuer(String),
    #[error("the token is not for service {0}")]
    WrongService(String),
    #[error("the token's signature does not match any certificate in auth.token.rootcertbundle")]
    BadSignature,
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}
