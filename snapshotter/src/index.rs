//! berthd's layer seek index as the snapshotter reads it (the JSON that
//! `GET /v2/<name>/_berth/layer/<digest>/index` returns; docs/api.md). Only
//! what mounting needs is read here: the table of contents and the chunk
//! digests. Decompression checkpoints stay berthd's business.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The index format this snapshotter understands; others fall back.
pub const FORMAT: u32 = 1;

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    pub devmajor: u32,
    #[serde(default)]
    pub devminor: u32,
    /// name → base64 value.
    #[serde(default)]
    pub xattrs: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct LayerIndex {
    pub format: u32,
    pub digest: String,
    /// Size of the blob as stored: what crossing the link costs (0 in
    /// indexes that do not say).
    #[serde(default)]
    pub compressed_size: u64,
    /// Size of the uncompressed tar.
    pub size: u64,
    pub chunk_size: u64,
    /// sha256 (hex) of each chunk of the uncompressed tar.
    pub chunks: Vec<String>,
    pub entries: Vec<Entry>,
}

impl LayerIndex {
    /// Checks what the snapshotter relies on, so a bad index means a
    /// fallback to a normal pull, never a broken mount.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("index format {} is not {FORMAT}", self.format));
        }
        if self.chunk_size == 0 || self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size) {
            return Err("index chunk table does not cover the layer".into());
        }
        for e in &self.entries {
            if e.kind == Kind::File && e.offset.checked_add(e.size).is_none_or(|end| end > self.size) {
                return Err(format!("entry {} points outside the layer", e.path));
            }
            if e.path.split('/').any(|p| p == ".." || p == ".") || e.path.starts_with('/') {
                return Err(format!("entry {:?} is not a clean relative path", e.path));
            }
        }
        Ok(())
    }

    /// Bytes of the stored blob that `tar_bytes` of this layer cost on
    /// average: the background fill's rate is a budget of the node's link,
    /// which carries the compressed blob, not the tar.
    pub fn link_bytes(&self, tar_bytes: u64) -> u64 {
        if self.compressed_size == 0 || self.size == 0 {
            return tar_bytes;
        }
        (tar_bytes as u128 * self.compressed_size as u128 / self.size as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(compressed_size: u64, size: u64) -> LayerIndex {
        LayerIndex {
            format: FORMAT,
            digest: "sha256:00".into(),
            compressed_size,
            size,
            chunk_size: 512 << 10,
            chunks: vec![],
            entries: vec![],
        }
    }

    #[test]
    fn link_bytes_follow_the_compression_ratio() {
        assert_eq!(index(60 << 20, 160 << 20).link_bytes(8 << 20), 3 << 20);
        assert_eq!(index(201 << 20, 200 << 20).link_bytes(2 << 20), (2 << 20) * 201 / 200);
        assert_eq!(index(0, 160 << 20).link_bytes(4096), 4096, "an index without the blob size counts tar bytes");
    }
}
