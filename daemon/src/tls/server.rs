//! TLS for berthd's listeners (`http.tls`, `listeners[].tls`).
//!
//! The certificate and key are re-read when their files change, so a
//! certificate rotated by cert-manager is served from the next handshake on
//! without a restart and without dropping open connections. A rotation that
//! leaves unreadable or mismatched files keeps the previous certificate and
//! logs why.
//!
//! Connections are accepted, and handshakes run, by [`crate::listen`].

use super::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often the files are checked for changes (on handshakes only).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and private key, checking they match.
/// Errors name the file and say what is wrong with it.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = super::pem::certificates(cert, "certificate file")?;
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::NoKey { path: key.to_path_buf(), source })?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::UnsupportedKey { path: key.to_path_buf(), source })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| TlsError::KeyMismatch {
        key: key.to_path_buf(),
        cert: cert.to_path_buf(),
        source,
    })?;
    Ok(certified)
}

/// A listener's TLS files (`http.tls`, `listeners[].tls`); the
/// configuration builds it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `http.tls.minimumtls: tls1.3` turns TLS 1.2 off.
    pub tls13_only: bool,
    /// `clientcas`: CA files; a client certificate they signed
    /// authenticates the client (certificates are optional).
    pub client_cas: Vec<PathBuf>,
}

/// Modification times of the certificate and key files.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn mtimes(cert: &Path, key: &Path) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

/// Serves the current certificate, reloading it when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
    last_check: Mutex<Instant>,
}

impl ReloadingCert {
    pub fn new(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let stamp = mtimes(cert, key);
        let ck = load_certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((Arc::new(ck), stamp)),
            last_check: Mutex::new(Instant::now()),
        })
    }

    fn maybe_reload(&self) {
        {
            let mut last = self.last_check.lock().unwrap();
            if last.elapsed() < RELOAD_CHECK {
                return;
            }
            *last = Instant::now();
        }
        let stamp = mtimes(&self.cert, &self.key);
        if self.current.read().unwrap().1 == stamp {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(ck) => {
                *self.current.write().unwrap() = (Arc::new(ck), stamp);
                tracing::info!(certificate = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Keep serving the old certificate; try again on the next change.
                self.current.write().unwrap().1 = stamp;
                tracing::error!("TLS certificate not reloaded, keeping the previous one: {e}");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(self.current.read().unwrap().0.clone())
    }
}

/// Builds the rustls server configuration for `http.tls`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(&files.certificate, &files.key)?);
    let client_verifier = if files.client_cas.is_empty() {
        None
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in &files.client_cas {
            let certs = super::pem::certificates(path, "clientcas file")?;
            for c in certs {
                roots.add(c).map_err(|source| TlsError::BadCa {
                    what: "clientcas file".into(),
                    path: path.clone(),
                    source,
                })?;
            }
        }
        // Certificates are optional: a client without one is anonymous.
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(TlsError::ClientVerifier)?;
        Some(v)
    };
    let versions: &[&rustls::SupportedProtocolVersion] =
        if files.tls13_only { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12, &rustls::version::TLS13] };
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
