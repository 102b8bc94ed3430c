//! Prefetch lists: the chunks of a layer that a container's start read
//! through a lazy mount, recorded by the first node that started it and
//! stored beside the layer's seek index. The next lazy mount of the layer,
//! on any node, fetches them all at once, in parallel, instead of paying
//! a round trip to storage for each read as the container asks (what SOCI
//! and nydus do with their prefetch lists).
//!
//! A list is a hint, never content: every chunk it names is still checked
//! against the signed index's digest when fetched. So it is not signed. A
//! stored list that does not fit the index (tampered, or written for other
//! chunking) is ignored with a warning; the worst a wrong list can do is
//! fetch early chunks the background fill would fetch anyway.

use super::error::{Error, Result};
use super::namespace::Namespace;
use super::{paths, Registry};
use crate::digest::Digest;
use crate::layerindex::LayerIndex;
use crate::names::RepoName;
use bytes::Bytes;

/// Largest body a list may have: 4096 chunk numbers of up to 7 digits.
pub const MAX_PREFETCH_BODY: usize = 64 << 10;

/// The chunks of the layer's index (numbers into its `chunks`), in the
/// order the start read them.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrefetchList {
    pub chunks: Vec<u32>,
}

impl PrefetchList {
    /// Whether the list fits `idx`: chunks it has, each once.
    fn check(&self, idx: &LayerIndex) -> std::result::Result<(), String> {
        let n = idx.chunks.len();
        if self.chunks.is_empty() {
            return Err("the list names no chunk".into());
        }
        let mut seen = vec![false; n];
        for &c in &self.chunks {
            let slot = seen.get_mut(c as usize).ok_or_else(|| format!("chunk {c} is past the layer's {n} chunks"))?;
            if std::mem::replace(slot, true) {
                return Err(format!("chunk {c} is named twice"));
            }
        }
        Ok(())
    }
}

impl Registry {
    /// The prefetch list of layer `digest`, `None` when none is recorded
    /// (or the stored one does not fit the index). Needs what reading the
    /// index needs.
    pub async fn layer_prefetch(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<PrefetchList>> {
        // The list is read beside the index and its access check (one round
        // trip, not two); it is dropped unless both succeed.
        let path = paths::layer_prefetch(digest);
        let (idx, stored) = tokio::join!(self.layer_index(ns, repo, digest), self.driver.get_content(&path));
        let idx = idx?;
        let stored = match stored {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let list = serde_json::from_slice::<PrefetchList>(&stored)
            .map_err(|e| e.to_string())
            .and_then(|l| l.check(&idx).map(|()| l));
        match list {
            Ok(l) => Ok(Some(l)),
            Err(why) => {
                tracing::warn!(%digest, "ignoring the stored prefetch list: {why}; the next lazy start records a new one");
                Ok(None)
            }
        }
    }

    /// Stores `body` (JSON, [`PrefetchList`]) as the prefetch list of layer
    /// `digest`, replacing any; it must fit the layer's index.
    pub async fn put_layer_prefetch(
        &self,
        ns: &Namespace,
        repo: &RepoName,
        digest: &Digest,
        body: &[u8],
    ) -> Result<()> {
        let idx = self.layer_index(ns, repo, digest).await?;
        let invalid = |why: String| Error::PrefetchInvalid(format!("prefetch list for {digest}: {why}"));
        let list: PrefetchList =
            serde_json::from_slice(body).map_err(|e| invalid(format!("{e}; send {{\"chunks\": [chunk numbers]}}")))?;
        list.check(&idx).map_err(invalid)?;
        let canonical = serde_json::to_vec(&list).expect("a list serializes");
        self.driver.put_content(&paths::layer_prefetch(digest), Bytes::from(canonical)).await?;
        tracing::info!(%digest, chunks = list.chunks.len(), "prefetch list recorded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(chunks: usize) -> LayerIndex {
        let mut idx: LayerIndex = serde_json::from_value(serde_json::json!({
            "format": crate::layerindex::FORMAT, "digest": "sha256:00", "compression": "gzip",
            "compressed_size": 0, "size": 0, "chunk_size": 524288, "chunks": [],
            "checkpoints": [], "entries": []
        }))
        .unwrap();
        idx.chunks = vec![String::new(); chunks];
        idx
    }

    #[test]
    fn a_list_must_name_chunks_the_index_has_once_each() {
        let idx = index(4);
        assert_eq!(PrefetchList { chunks: vec![3, 0, 1] }.check(&idx), Ok(()));
        for (chunks, why) in [
            (vec![], "names no chunk"),
            (vec![4], "past the layer's 4 chunks"),
            (vec![1, 2, 1], "chunk 1 is named twice"),
        ] {
            let err = PrefetchList { chunks }.check(&idx).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
