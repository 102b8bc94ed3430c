//! PEM certificate files, read in one place so that every caller (TLS
//! listeners, client CAs, outbound trust, token signers) reports a bad file
//! the same way, naming it.

use super::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;

/// The certificates in a PEM file; `what` names the file's role in errors
/// ("CA file", "auth.token.rootcertbundle", …).
pub fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (what, path) = (what.to_string(), path.to_path_buf());
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&path) {
        Err(source) => return Err(TlsError::Unreadable { what, path, source }),
        Ok(iter) => match iter.collect::<Result<_, _>>() {
            Err(source) => return Err(TlsError::NotPem { what, path, source }),
            Ok(certs) => certs,
        },
    };
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path });
    }
    Ok(certs)
}
