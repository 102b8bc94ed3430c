//! Authenticating seek indexes. An index sits in the shared storage next
//! to its layer, where anyone holding the bucket's credentials (or one
//! compromised node) could edit it — and an index tells every node's
//! snapshotter which bytes make up which file. So each index is signed with
//! an HMAC under a key the cluster's berthd nodes hold and the bucket does
//! not (`layerindex.keyfile`), and a node serves an index to its
//! snapshotter only when the tag checks out; otherwise the snapshotter
//! pulls the layer normally (verified end to end by containerd).
//!
//! The tag covers the layer's digest and the stored index bytes, so an
//! index cannot be moved to another layer either.

use crate::digest::Digest;
use ring::hmac;

/// Domain separation: what the tag is a tag of.
const CONTEXT: &[u8] = b"berth layer index v1\n";

pub struct IndexKey(hmac::Key);

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

fn message(digest: &Digest, index: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 80 + 32);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(digest.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(Digest::sha256_of(index).hex().as_bytes());
    m
}

/// A layer index key shorter than 32 bytes.
#[derive(Debug, thiserror::Error)]
#[error("a layer index key needs at least 32 bytes, this one has {0}")]
pub struct ShortKey(pub usize);

impl IndexKey {
    /// A key from secret bytes (at least 32).
    pub fn new(secret: &[u8]) -> Result<IndexKey, ShortKey> {
        if secret.len() < 32 {
            return Err(ShortKey(secret.len()));
        }
        Ok(IndexKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// A fresh random secret, hex (for a key file berthd makes itself).
    pub fn generate_secret() -> String {
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        format!("{}{}", a.simple(), b.simple())
    }

    /// The tag of `index` (the stored bytes) for layer `digest`, hex.
    pub fn tag(&self, digest: &Digest, index: &[u8]) -> String {
        hex::encode(hmac::sign(&self.0, &message(digest, index)).as_ref())
    }

    /// Whether `tag` (hex, as stored) authenticates `index` for `digest`;
    /// compared in constant time.
    pub fn verify(&self, digest: &Digest, index: &[u8], tag: &[u8]) -> bool {
        let Ok(raw) = hex::decode(String::from_utf8_lossy(tag).trim()) else { return false };
        hmac::verify(&self.0, &message(digest, index), &raw).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_bind_key_layer_and_bytes() {
        let k = IndexKey::new(IndexKey::generate_secret().as_bytes()).unwrap();
        let other = IndexKey::new(IndexKey::generate_secret().as_bytes()).unwrap();
        let (a, b) = (Digest::sha256_of(b"layer a"), Digest::sha256_of(b"layer b"));
        let t = k.tag(&a, b"index");
        assert!(k.verify(&a, b"index", t.as_bytes()));
        assert!(!k.verify(&a, b"index!", t.as_bytes()), "edited index");
        assert!(!k.verify(&b, b"index", t.as_bytes()), "moved to another layer");
        assert!(!other.verify(&a, b"index", t.as_bytes()), "another cluster's key");
        assert!(!k.verify(&a, b"index", b"zz"));
        assert!(IndexKey::new(b"short").is_err());
        assert!(!format!("{k:?}").contains(&t));
    }
}
