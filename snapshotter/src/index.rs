//! berthd's layer seek index as the snapshotter reads it (the JSON that
//! `GET /v2/<name>/_berth/layer/<digest>/index` returns; docs/api.md). Only
//! what mounting needs is read here: the table of contents and the chunk
//! digests. Decompression checkpoints stay berthd's business.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The index format this snapshotter understands; others fall back.
pub const FORMAT: u32 = 1;

/// Bounds an index must keep (berthd's chunks are 512 KiB).
const MIN_CHUNK: u64 = 4 << 10;
const MAX_CHUNK: u64 = 64 << 20;
const MAX_LAYER_SIZE: u64 = 1 << 40;
/// Year 9999: beyond it a time is garbage (and would overflow `SystemTime`).
const MAX_MTIME: u64 = 253_402_300_799;

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
    /// Checks everything the snapshotter relies on, so a bad index means a
    /// fallback to a normal pull, never a broken mount, a panic or a file
    /// the tar does not have: sizes and chunking in bounds, every number in
    /// the range its tar field allows, clean relative paths, only
    /// permission and set-id bits in modes, device numbers only on devices,
    /// link targets only on links, chunk digests that are sha256 hex.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("index format {} is not {FORMAT}", self.format));
        }
        if self.size > MAX_LAYER_SIZE {
            return Err(format!("a layer of {} bytes is beyond what berthd indexes", self.size));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size)
            || self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size)
        {
            return Err("index chunk table does not cover the layer".into());
        }
        if !self.chunks.iter().all(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err("index chunk digests are not sha256 hex".into());
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.entries {
            let bad = |why: &str| Err(format!("entry {:?}: {why}", e.path));
            let root = e.path.is_empty() && e.kind == Kind::Dir;
            if (!root && e.path.split('/').any(str::is_empty))
                || e.path.starts_with('/')
                || e.path.ends_with('/')
                || e.path.split('/').any(|p| p == ".." || p == ".")
                || e.path.contains('\0')
            {
                return bad("not a clean relative path");
            }
            if !seen.insert(e.path.as_str()) && e.kind != Kind::Dir {
                return bad("listed twice");
            }
            if e.kind == Kind::File && e.offset.checked_add(e.size).is_none_or(|end| end > self.size) {
                return bad("points outside the layer");
            }
            if e.kind != Kind::File && (e.size != 0 || e.offset != 0) {
                return bad("only regular files have data");
            }
            if e.mode & !0o7777 != 0 {
                return bad("mode has more than permission and set-id bits");
            }
            if e.uid > u64::from(u32::MAX) || e.gid > u64::from(u32::MAX) {
                return bad("owner beyond 32 bits");
            }
            if e.mtime > MAX_MTIME {
                return bad("modification time out of range");
            }
            let device = matches!(e.kind, Kind::Char | Kind::Block);
            if !device && (e.devmajor != 0 || e.devminor != 0) {
                return bad("device numbers on something that is not a device");
            }
            let link = matches!(e.kind, Kind::Symlink | Kind::Hardlink);
            if link != e.link.is_some() || e.link.as_deref().is_some_and(|l| l.is_empty() || l.contains('\0')) {
                return bad("link target missing, or on something that is not a link");
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

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            offset: 0,
            link: None,
            devmajor: 0,
            devminor: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// What berthd never writes is refused: the layer is pulled normally.
    #[test]
    fn malformed_indexes_are_refused() {
        let good = || {
            let mut i = index(0, 1 << 20);
            i.chunks = vec!["a".repeat(64); 2];
            let mut f = entry("etc/passwd", Kind::File);
            f.size = 100;
            f.offset = 512;
            i.entries = vec![entry("etc", Kind::Dir), f];
            i
        };
        assert!(good().validate().is_ok());
        let mut with_root = good();
        with_root.entries.insert(0, entry("", Kind::Dir));
        assert!(with_root.validate().is_ok(), "the tar's own `./`");
        type Edit = Box<dyn Fn(&mut LayerIndex)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("mtime 2^64-1", Box::new(|i| i.entries[1].mtime = u64::MAX)),
            ("uid past 32 bits", Box::new(|i| i.entries[1].uid = 4_294_967_296)),
            ("a file type bit in mode", Box::new(|i| i.entries[1].mode = 0o100644)),
            ("an empty path component", Box::new(|i| i.entries[1].path = "etc//passwd".into())),
            ("a device number on a file", Box::new(|i| i.entries[1].devmajor = 8)),
            ("data on a directory", Box::new(|i| i.entries[0].size = 4)),
            (
                "a huge chunk",
                Box::new(|i| {
                    i.size = 1 << 63;
                    i.chunk_size = 1 << 62;
                    i.chunks = vec!["a".repeat(64); 2];
                }),
            ),
            ("a chunk digest that is not hex", Box::new(|i| i.chunks[0] = "z".repeat(64))),
            ("data past the end", Box::new(|i| i.entries[1].offset = (1 << 20) - 10)),
            ("a symlink without target", Box::new(|i| i.entries[1] = entry("etc/l", Kind::Symlink))),
            (
                "a path twice",
                Box::new(|i| {
                    let again = i.entries[1].clone();
                    i.entries.push(again);
                }),
            ),
        ];
        for (what, edit) in cases {
            let mut i = good();
            edit(&mut i);
            assert!(i.validate().is_err(), "{what} must be refused");
        }
    }

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
