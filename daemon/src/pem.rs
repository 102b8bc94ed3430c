//! PEM certificate files, read in one place so that every caller (TLS
//! listeners, client CAs, outbound trust, token signers) reports a bad file
//! the same way, naming it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;

/// The certificates in a PEM file; `what` names the file's role in errors
/// ("CA file", "auth.token.rootcertbundle", …).
pub fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}
