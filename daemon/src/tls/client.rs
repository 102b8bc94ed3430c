//! TLS for berthd's own outbound connections (S3, upstream registries).
//!
//! Trusted roots are the system's plus the cluster's CA, found where
//! Kubernetes distributions put it, plus any files named in `tls.cacerts`.
//! This is what lets a node pull from an S3 endpoint or registry signed by
//! the cluster CA without anyone installing that CA on the node.

use super::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the cluster CA is found, in order: a pod's service account, kubeadm,
/// k3s server, k3s agent.
pub const CLUSTER_CA_PATHS: [&str; 4] = [
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    "/etc/kubernetes/pki/ca.crt",
    "/var/lib/rancher/k3s/server/tls/server-ca.crt",
    "/var/lib/rancher/k3s/agent/server-ca.crt",
];

/// What to trust for outbound TLS.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `tls.cacerts`: PEM files that must load.
    pub ca_files: Vec<PathBuf>,
    /// Look for the cluster CA in [`CLUSTER_CA_PATHS`].
    pub discover_cluster_ca: bool,
}

/// The root store: system roots, discovered cluster CAs and `tls.cacerts`.
/// Returns the store and the CA files that were added.
pub fn root_store(trust: &Trust) -> Result<(RootCertStore, Vec<PathBuf>), TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system CA store: {e}");
    }
    let system = native.certs.len();
    roots.add_parsable_certificates(native.certs);
    if system == 0 {
        // A scratch image without a CA bundle: every upstream TLS handshake
        // would fail with "unknown issuer", far from the cause.
        tracing::warn!(
            "no system CA certificates found (install ca-certificates, or set SSL_CERT_FILE / tls.cacerts); \
             outbound TLS trusts only the CA files named in the config and the cluster CA"
        );
    }
    let mut used = Vec::new();
    for path in &trust.ca_files {
        for cert in super::pem::certificates(path, "CA file")? {
            roots.add(cert).map_err(|source| TlsError::BadCa { what: "CA file".into(), path: path.clone(), source })?;
        }
        used.push(path.clone());
    }
    if trust.discover_cluster_ca {
        for p in CLUSTER_CA_PATHS.iter().map(Path::new).filter(|p| p.is_file()) {
            match super::pem::certificates(p, "cluster CA file") {
                Ok(certs) => {
                    roots.add_parsable_certificates(certs);
                    used.push(p.to_path_buf());
                }
                Err(e) => tracing::warn!("cluster CA not used: {e}"),
            }
        }
    }
    Ok((roots, used))
}

/// A rustls client configuration for outbound connections. With
/// `skip_verify` certificates are not checked at all (registry:2's
/// `skipverify`); only for endpoints the operator explicitly marks so.
pub fn client_config(trust: &Trust, skip_verify: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
    let cfg = if skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        let (roots, used) = root_store(trust)?;
        for p in &used {
            tracing::info!(ca = %p.display(), "trusting CA for outbound TLS");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // ALPN is left to the HTTP client, which offers what it speaks.
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate (signatures are still checked so the
/// handshake itself is sound).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_ca_files_must_load() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.crt");
        std::fs::write(&bad, "not a certificate").unwrap();
        let trust = Trust { ca_files: vec![bad], discover_cluster_ca: false };
        let e = root_store(&trust).unwrap_err().to_string();
        assert!(e.contains("bad.crt"), "{e}");
        let missing = Trust { ca_files: vec![dir.path().join("none.crt")], discover_cluster_ca: false };
        assert!(root_store(&missing).unwrap_err().to_string().contains("none.crt"));
    }
}
