//! Token authentication, the docker_auth / registry:2 flow: clients get a
//! JWT from the `realm` and present it as `Bearer`. Tokens are verified
//! against the certificates in `rootcertbundle` (RS256/384/512,
//! ES256/384), the `issuer`, the audience (= `service`) and their expiry.
//! Their `access` claims grant actions per repository.

use super::{AuthError, TokenRejected};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::Path;

/// One `access` claim: `{"type":"repository","name":"app","actions":["pull"]}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<Grant>,
}

enum KeyKind {
    Rsa,
    Ec,
}

pub struct TokenVerifier {
    pub realm: String,
    pub service: String,
    issuer: String,
    keys: Vec<(KeyKind, DecodingKey)>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// A verified token: who it was issued to and what it grants.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub subject: String,
    pub grants: Vec<Grant>,
}

fn spki_pem(spki: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}

impl TokenVerifier {
    pub fn load(realm: &str, service: &str, issuer: &str, bundle: &Path) -> Result<TokenVerifier, AuthError> {
        let certs = crate::tls::pem::certificates(bundle, "auth.token.rootcertbundle")?;
        let mut keys = Vec::new();
        for (i, der) in certs.iter().enumerate() {
            let cert = webpki::EndEntityCert::try_from(der).map_err(|e| AuthError::BadCertificate {
                number: i + 1,
                path: bundle.to_path_buf(),
                detail: format!("{e:?}"),
            })?;
            let pem = spki_pem(cert.subject_public_key_info().as_ref());
            if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                keys.push((KeyKind::Rsa, k));
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                keys.push((KeyKind::Ec, k));
            } else {
                return Err(AuthError::UnsupportedKey { number: i + 1, path: bundle.to_path_buf() });
            }
        }
        Ok(TokenVerifier { realm: realm.into(), service: service.into(), issuer: issuer.into(), keys })
    }

    /// Verifies a token; the error says why it was refused.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenRejected> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenRejected::Malformed)?;
        let kind_ok = |k: &KeyKind| match header.alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => matches!(k, KeyKind::Rsa),
            Algorithm::ES256 | Algorithm::ES384 => matches!(k, KeyKind::Ec),
            _ => false,
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // A token is valid from `nbf` on, with the same leeway as `exp`.
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut last = TokenRejected::Algorithm(header.alg);
        for (kind, key) in self.keys.iter().filter(|(k, _)| kind_ok(k)) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(VerifiedToken { subject: data.claims.sub, grants: data.claims.access }),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind::*;
                    last = match e.kind() {
                        ExpiredSignature => TokenRejected::Expired,
                        ImmatureSignature => TokenRejected::NotYetValid,
                        InvalidIssuer => TokenRejected::WrongIssuer(self.issuer.clone()),
                        InvalidAudience => TokenRejected::WrongService(self.service.clone()),
                        InvalidSignature => TokenRejected::BadSignature,
                        _ => TokenRejected::Invalid(e),
                    };
                    let _ = kind;
                }
            }
        }
        Err(last)
    }
}
