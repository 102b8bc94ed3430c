//! TLS, both ways, with rustls (TLS 1.2 and 1.3 only): [`server`] for
//! berthd's own listeners, [`client`] for its outbound connections (S3,
//! upstream registries), [`pem`] for the certificate files both read.
//! Errors name the file and what is wrong with it.

pub mod client;
pub mod pem;
pub mod server;

use std::path::PathBuf;

/// Why TLS could not be set up. Each says which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Unreadable { what: String, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {} is not valid PEM: {source}", path.display())]
    NotPem { what: String, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {} holds no CERTIFICATE block", path.display())]
    NoCertificate { what: String, path: PathBuf },
    #[error("key file {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {source}", path.display())]
    NoKey { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("key file {} is not a supported private key: {source}", path.display())]
    UnsupportedKey { path: PathBuf, source: rustls::Error },
    #[error("key file {} does not belong to the certificate in {}: {source}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, source: rustls::Error },
    #[error("{what} {}: {source}", path.display())]
    BadCa { what: String, path: PathBuf, source: rustls::Error },
    #[error("clientcas: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}
