//! A token signer for token-auth tests, as a token service (docker_auth)
//! would sign: an RSA key and a self-signed certificate for
//! `auth.token.rootcertbundle`.

use crate::common::{require_tool, run};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// A token signer: an RSA key and a self-signed certificate for it.
pub struct Signer {
    pub key: EncodingKey,
    pub bundle: std::path::PathBuf,
}

impl Signer {
    pub fn new(dir: &Path) -> Signer {
        let openssl = require_tool("openssl");
        run(Command::new(&openssl).current_dir(dir).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signer.key",
            "-out",
            "signer.crt",
            "-subj",
            "/CN=token-signer",
            "-days",
            "2",
        ]));
        let key = EncodingKey::from_rsa_pem(&std::fs::read(dir.join("signer.key")).unwrap()).unwrap();
        Signer { key, bundle: dir.join("signer.crt") }
    }

    /// A signed token granting `access`, expiring in `expires_in` seconds.
    pub fn token(&self, access: serde_json::Value, expires_in: i64, issuer: &str, audience: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = serde_json::json!({
            "iss": issuer, "sub": "ci", "aud": audience, "iat": now, "nbf": now - 5, "exp": now + expires_in,
            "access": access,
        });
        self.sign(&claims)
    }

    /// Signs arbitrary claims (for tokens a token service should never issue).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        encode(&Header::new(Algorithm::RS256), claims, &self.key).unwrap()
    }
}
