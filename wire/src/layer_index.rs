//! The layer seek index: the table of contents of a layer's tar (every
//! entry with what unpacking it would produce and where its data sits in
//! the uncompressed stream), a sha256 per chunk of that stream, and the
//! points a compressed stream can be resumed from. berthd builds and
//! serves it; the snapshotter mounts layers from it.
//!
//! Whiteouts (`.wh.*`) are listed as the tar has them; turning them into
//! overlayfs's form is the snapshotter's job.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The index format; bumped on incompatible changes (berthd rebuilds old
/// indexes, the snapshotter falls back to a normal pull on others).
pub const FORMAT: u32 = 1;

/// Bounds an index must keep (berthd's chunks are 512 KiB).
const MIN_CHUNK: u64 = 4 << 10;
const MAX_CHUNK: u64 = 64 << 20;
const MAX_LAYER_SIZE: u64 = 1 << 40;
/// Year 9999: beyond it a time is garbage (and would overflow `SystemTime`).
const MAX_MTIME: u64 = 253_402_300_799;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// From a layer media type; `None` for ones that cannot be indexed.
    pub fn of_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Compression::None)
            }
            _ => None,
        }
    }
}

/// What a tar entry is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
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

/// One tar entry: type, mode, owner, time, link target, device numbers,
/// xattrs, and where its data sits in the uncompressed tar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, no leading `./` or `/`, no trailing `/`.
    pub path: String,
    pub kind: Kind,
    /// Permission and special bits (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Data size (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Offset of the data in the uncompressed tar (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Symlink target, or the path a hard link points to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub devmajor: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub devminor: u32,
    /// Extended attributes, values base64 (they are bytes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}

/// A point the compressed stream can be resumed from: uncompressed offset
/// `out` starts at compressed byte `input` (gzip: after `bits` bits of the
/// byte before, with the 32 KiB window of output before it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub out: u64,
    pub input: u64,
    pub bits: u8,
    /// Where this checkpoint's window sits in the windows object.
    #[serde(default)]
    pub window_at: u64,
    #[serde(default)]
    pub window_len: u32,
    /// sha256 (hex) of the window, checked when it is read from storage
    /// (absent in indexes built before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_sha256: Option<String>,
    /// base64 of the window, in indexes built before windows moved to
    /// their own object; still read, never written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    pub format: u32,
    /// The blob this indexes.
    pub digest: String,
    pub compression: Compression,
    /// Size of the blob as stored: what crossing the link costs (0 in
    /// indexes that do not say).
    #[serde(default)]
    pub compressed_size: u64,
    /// Size of the uncompressed tar.
    pub size: u64,
    pub chunk_size: u64,
    /// sha256 (hex) of each `chunk_size` piece of the uncompressed tar.
    pub chunks: Vec<String>,
    /// Resume points of a compressed stream (none for a plain tar).
    #[serde(default)]
    pub checkpoints: Vec<StoredCheckpoint>,
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
            compression: Compression::Gzip,
            compressed_size,
            size,
            chunk_size: 512 << 10,
            chunks: vec![],
            checkpoints: vec![],
            entries: vec![],
        }
    }

    #[test]
    fn link_bytes_follow_the_compression_ratio() {
        assert_eq!(index(60 << 20, 160 << 20).link_bytes(8 << 20), 3 << 20);
        assert_eq!(index(201 << 20, 200 << 20).link_bytes(2 << 20), (2 << 20) * 201 / 200);
        assert_eq!(index(0, 160 << 20).link_bytes(4096), 4096, "an index without the blob size counts tar bytes");
    }

    /// What berthd writes the snapshotter reads back as it was; fields a
    /// kind does not use are left out of the JSON and read as zero.
    #[test]
    fn json_round_trip_leaves_out_what_is_unused() {
        let mut i = index(100, 1 << 20);
        i.chunks = vec!["a".repeat(64); 2];
        let mut f = entry("bin/sh", Kind::File);
        f.size = 10;
        f.offset = 512;
        i.entries = vec![entry("bin", Kind::Dir), f];
        let json = serde_json::to_string(&i).unwrap();
        assert!(!json.contains("devmajor") && !json.contains("xattrs") && !json.contains("link"), "{json}");
        let back: LayerIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(back, i);
        assert!(back.validate().is_ok());
    }
}
